"""Every experiment config shipped in configs/ loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonefrac.config import load_config
from bonefrac.models.registry import resolve_spec

CONFIGS = sorted(
    p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if p.stem != "space"
)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert resolve_spec(cfg.model.name).name == cfg.model.name  # a model the registry knows
