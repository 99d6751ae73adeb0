"""A trained run becomes a shipped model: fp16 weights with a parity record, every safeguard
refitted on them, a model card; found by name, verified like any run, never written into."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import bonefrac
from bonefrac.errors import RunDirError
from bonefrac.evaluation.thresholds import tune_threshold
from bonefrac.fileio import file_sha256
from bonefrac.packaging import package_run
from bonefrac.rundir import RunDir, copy_run, missing_safeguards, shipped
from tests.conftest import tree_digests
from tests.synthetic import make_image

NAME = "tiny-loc-1"


@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory: pytest.TempPathFactory, loc_run: Path) -> Path:
    root = tmp_path_factory.mktemp("shipped")
    src = tmp_path_factory.mktemp("src") / "loc"
    shutil.copytree(loc_run, src)
    package_run(src, NAME, root=root)
    return root


@pytest.fixture()
def as_package(shipped_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", shipped_root)
    return shipped_root / NAME


def test_a_packaged_model_has_fp16_weights_every_safeguard_and_a_card(shipped_root: Path) -> None:
    folder = shipped_root / NAME
    run = RunDir.open(folder)
    meta = run.meta()
    assert not (folder / "checkpoints").exists()
    assert not (folder / "plots").exists()  # the deploy fits' figures stay out
    assert sorted(p.name for p in (folder / "predictions").iterdir()) == [
        "test.csv.gz",
        "val.csv.gz",
    ]
    assert run.available_predictions() == ["test", "val"]
    with safe_open(str(run.weights_path), framework="pt") as fh:
        dtypes = {str(fh.get_tensor(k).dtype) for k in fh.keys()}  # noqa: SIM118
    assert "torch.float16" in dtypes and "torch.float32" not in dtypes
    assert meta.get("weights_dtype") == "float16"
    assert meta.weights_sha256 == file_sha256(run.weights_path)
    assert missing_safeguards(meta) == []
    assert meta.ood is not None and meta.ood.weights_sha256 == meta.weights_sha256
    parity = meta.get("shipped")["parity"]
    assert parity["passed"] and 0 <= parity["max_abs_delta_prob"] <= 0.05
    assert parity["n_images"] == len(run.predictions("test"))
    card = run.model_card()
    assert card is not None and f"# Model card: {NAME}" in card
    assert (
        "## Misses first" in card
        and "## Ranking and boxes" in card
        and "CC BY 4.0" in card
        and "never a diagnosis" in card
    )
    assert str(folder) not in card and "/tmp" not in card  # no paths on the page
    assert json.loads((shipped_root / shipped.ALIASES_FILE).read_text()) == {"default": NAME}


def test_the_default_name_loads_verifies_and_predicts_offline(
    as_package: Path, tmp_path: Path
) -> None:
    from PIL import Image

    arr, _ = make_image(np.random.default_rng(3), 64, fractured=True)
    img = tmp_path / "x.png"
    Image.fromarray(arr).save(img)
    run = bonefrac.load("default")
    assert run.path is not None and run.path.resolve() == as_package.resolve()
    pred = run.predict(img)
    assert 0.0 <= pred.probability <= 1.0
    assert pred.decision in ("fracture", "no_fracture", "refer", "out_of_scope")


def test_a_tampered_shipped_weights_file_is_refused(as_package: Path, tmp_path: Path) -> None:
    root = tmp_path / "shipped"
    shutil.copytree(as_package.parent, root)
    weights = root / NAME / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    shipped.SHIPPED_ROOT = root  # monkeypatch (as_package) restores it
    with pytest.raises(RunDirError, match="SHA-256 differs"):
        bonefrac.load("default")


def test_a_shipped_model_is_never_written_into_and_a_copy_is(
    as_package: Path, tmp_path: Path
) -> None:
    before = tree_digests(as_package)
    with pytest.raises(RunDirError, match="--into"):
        tune_threshold("default", "youden")
    assert tree_digests(as_package) == before
    copy = copy_run("default", tmp_path / "mine")
    tune_threshold(copy, "youden")
    assert RunDir.open(copy).meta().get("threshold_criterion") == "youden"
    assert tree_digests(as_package) == before


def test_an_unknown_name_says_what_ships(as_package: Path) -> None:
    with pytest.raises(RunDirError, match=f"default \\({NAME}\\)"):
        RunDir.open("no-such-model")


def test_ood_statistics_round_trip_and_an_old_layout_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from bonefrac.inference.ood_stats import MahalanobisStats

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 64))
    stats = MahalanobisStats.fit(feats)
    path = tmp_path / "ood.safetensors"
    stats.save(path)
    query = rng.normal(size=(50, 40)) @ rng.normal(size=(40, 64))
    loaded = MahalanobisStats.load(path)
    np.testing.assert_allclose(loaded.score(query), stats.score(query), rtol=1e-4)
    save_file({"mean": stats.mean, "precision": stats.precision}, str(path))  # the old layout
    with pytest.raises(RunDirError, match="another format"):
        MahalanobisStats.load(path)


def test_refit_makes_every_fit_again_on_the_same_weights(
    shipped_root: Path, loc_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/refit_shipped.py's library call: same weights and parity, fits made again (the
    two cuts), no path of this machine, the old model left as it was."""
    from bonefrac.packaging import refit_shipped

    monkeypatch.setattr(shipped, "SHIPPED_ROOT", shipped_root)
    before = tree_digests(shipped_root / NAME)
    manifest = RunDir.open(loc_run).meta().get("manifest")
    report = refit_shipped(NAME, "tiny-loc-2", manifest, default=False)
    assert tree_digests(shipped_root / NAME) == before
    new = RunDir.open(shipped_root / "tiny-loc-2")
    old_meta, meta = RunDir.open(shipped_root / NAME).meta(), new.meta()
    assert meta.weights_sha256 == old_meta.weights_sha256
    assert meta.get("shipped")["refitted_from"] == NAME
    assert meta.get("shipped")["parity"] == old_meta.get("shipped")["parity"]
    assert meta.get("threshold_criterion") == "specificity:0.95" and meta.rule_out is not None
    assert missing_safeguards(meta) == [] and report.bytes > 0
    assert json.loads((shipped_root / shipped.ALIASES_FILE).read_text()) == {"default": NAME}
    for split in ("val", "test"):
        assert not new.predictions(split)["path"].astype(str).str.startswith("/").any()
    assert "/" not in str(meta.get("manifest"))
