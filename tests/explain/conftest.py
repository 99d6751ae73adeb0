"""Explain fixtures: a writable copy of the session's tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a busy 2-core machine run several times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the session's tiny run."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst
