"""Explain fixtures: a writable copy of the session's tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.maps.conftest import _one_thread  # noqa: F401  (autouse: one torch thread)


@pytest.fixture()
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the session's tiny run."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst
