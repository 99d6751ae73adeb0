"""Fixtures for inference tests: an exported copy of the tiny run (module-shared)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """A copy of ``tiny_run`` with ``model.onnx`` (read-only for tests; copy to modify)."""
    from bonefrac.inference.onnx import export_onnx

    run = tmp_path_factory.mktemp("exported") / "tiny"
    shutil.copytree(tiny_run, run)
    export_onnx(run)
    return run


def make_untrained_run(out: Path, size: int = 64, **meta) -> Path:
    """A simple_cnn run directory with untrained weights (no training: fast, not ``slow``)."""
    import torch

    from bonefrac.models import build_model, resolve_spec
    from bonefrac.models.runio import save_weights
    from bonefrac.rundir import FORMAT_VERSION, RunDir

    spec = resolve_spec("simple_cnn")
    torch.manual_seed(0)
    model = build_model("simple_cnn", pretrained="none").eval()
    run = RunDir.create(out, force=True)
    run.write_meta(
        {
            "format_version": FORMAT_VERSION,
            "architecture": "simple_cnn",
            "image_size": size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "threshold": 0.5,
            "threshold_criterion": "default",
            "temperature": 1.0,
            "preprocess": {"letterbox": True, "jpeg_draft": True, "clahe": False},
            "weights_sha256": save_weights(model, run),
            **meta,
        }
    )
    return out


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly made run without an out-of-scope detector (read-only for tests)."""
    return make_untrained_run(tmp_path_factory.mktemp("untrained") / "fresh")
