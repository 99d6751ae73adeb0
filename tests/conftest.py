"""Shared fixtures: a synthetic manifest and one tiny trained run (session-scoped)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.synthetic import FAST_OVERRIDES, make_manifest

REPO = Path(__file__).resolve().parents[1]

# The test models are tiny: one thread beats two (thread hand-off costs more than it saves,
# and much more on a busy 2-core machine).
torch.set_num_threads(1)


def shared_data_dir() -> Path | None:
    """Real radiographs: $BONEFRAC_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("BONEFRAC_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if (path / "fracatlas" / "dataset.csv").is_file():
            return path
    return None


def tree_digests(folder: Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file under ``folder``: equal before and after a
    command means the command changed nothing there."""
    from bonefrac.fileio import file_sha256

    return {str(p.relative_to(folder)): file_sha256(p) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, synthetic_manifest: Path) -> Path:
    """A simple_cnn run directory trained for a few seconds on the synthetic set.

    Treat it as read-only; copy it (shutil.copytree) before modifying.
    """
    from bonefrac.config import load_config
    from bonefrac.training.fit import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config(None, FAST_OVERRIDES + ["train.epochs=6"])
    return train(cfg, synthetic_manifest, out, progress=False)


@pytest.fixture(scope="session")
def loc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A localising simple_cnn run (``model.localize``) on a balanced synthetic set.

    Treat it as read-only; copy it (shutil.copytree) before modifying.
    """
    from bonefrac.config import load_config
    from bonefrac.training.fit import train

    root = tmp_path_factory.mktemp("synthetic_loc")
    manifest = make_manifest(root, {"train": 120, "val": 30, "test": 30}, pos_rate=0.5)
    out = tmp_path_factory.mktemp("runs") / "loc"
    cfg = load_config(None, FAST_OVERRIDES + ["model.localize=true", "model.loc_levels=[8, 16]"])
    return train(cfg, manifest, out, progress=False)


@pytest.fixture(scope="session")
def ready_run(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """A copy of ``tiny_run`` with all four safeguards, fitted by the functions the commands
    use: temperature, the two cuts (rule-in at specificity 0.95, rule-out at sensitivity
    0.95), out-of-scope detector.

    Treat it as read-only; copy it (shutil.copytree) before modifying.
    """
    import shutil

    from bonefrac.evaluation.calibration import calibrate_run
    from bonefrac.evaluation.ood import fit_ood
    from bonefrac.evaluation.thresholds import tune_threshold

    run = tmp_path_factory.mktemp("ready") / "tiny"
    shutil.copytree(tiny_run, run)
    calibrate_run(run)
    tune_threshold(run, "specificity:0.95", rule_out_sensitivity=0.95)
    fit_ood(run, "mahalanobis")
    return run


#: Fixtures that train a Lightning run: a test using one is marked ``slow``.
TRAINING_FIXTURES = {"tiny_run", "exported_run", "loc_run", "ready_run"}
#: Test modules whose tests train runs themselves.
TRAINING_MODULES = {"test_fit.py", "test_study.py", "test_ddp.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that train Lightning runs ``slow`` (``pytest -m "not slow"``)."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if uses & TRAINING_FIXTURES or item.path.name in TRAINING_MODULES:
            item.add_marker(pytest.mark.slow)
