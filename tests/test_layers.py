"""The import graph of docs/design.md: layers import only downward, and nothing is in a circle.

The contracts live in pyproject.toml (``[tool.importlinter]``); the same check by hand:
``.venv/bin/lint-imports``. Function-level imports count: import-linter reads every import
statement of a module, wherever it stands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_layers_and_no_circles() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache", "--config", str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout
