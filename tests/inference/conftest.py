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
