"""Shared helpers for the tuning tests: fast overrides, a small space, one CPU thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.synthetic import FAST_OVERRIDES

#: FAST_OVERRIDES without train.lr (the space searches it), 2 epochs on 32 images per split.
TUNE_OVERRIDES = [o for o in FAST_OVERRIDES if not o.startswith("train.lr=")] + [
    "train.epochs=2",
    "data.limit_per_split=32",
]

SMALL_SPACE = {
    "params": {
        "train.lr": {"type": "float", "low": 3.0e-4, "high": 3.0e-3, "log": True},
        "data.sampler": {"type": "categorical", "choices": ["none", "weighted"]},
    }
}


def write_space(path: Path, space: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump(space or SMALL_SPACE), encoding="utf-8")
    return path


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """Tiny CNNs train several times faster on one thread on a shared, busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
