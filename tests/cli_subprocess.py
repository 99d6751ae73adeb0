"""Run the ``bonefrac`` console script as a real subprocess (for multi-process tests)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
#: Rank/launcher variables a test process may have inherited; a child must start clean.
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE")


def bonefrac_command() -> list[str]:
    """The ``bonefrac`` script beside this interpreter (else on PATH); skip when absent."""
    script = Path(sys.executable).parent / "bonefrac"
    if script.is_file():
        return [str(script)]
    found = shutil.which("bonefrac")
    if found is None:
        pytest.skip("the 'bonefrac' console script is not installed (pip install -e .)")
    return [found]


def cli_env() -> dict[str, str]:
    """This environment, importing this checkout's ``src``, one torch thread, no rank set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCHER_VARIABLES and not k.startswith(("PL_", "LT_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def set_args(overrides: list[str]) -> list[str]:
    """``--set a --set b`` from ``[a, b]``."""
    return [arg for item in overrides for arg in ("--set", item)]
