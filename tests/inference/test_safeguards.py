"""bonefrac predict warns once per job for each safeguard the run lacks."""

from __future__ import annotations

import logging
from pathlib import Path

from typer.testing import CliRunner

from bonefrac.cli import app


def _predict(run: Path, images: list[Path], out: Path, caplog) -> list[str]:
    caplog.clear()
    args = ["predict", str(run), *map(str, images), "--out", str(out), "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="bonefrac"):
        result = CliRunner().invoke(app, args + ["--batch-size", "1", "--workers", "0"])
    assert result.exit_code == 0, result.output
    return [r.getMessage() for r in caplog.records if r.name == "bonefrac.rundir.meta"]


def test_predict_warns_once_per_missing_safeguard(
    tiny_run: Path, ready_run: Path, synthetic_manifest: Path, tmp_path: Path, caplog
) -> None:
    images = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[:3]
    lines = _predict(tiny_run, images, tmp_path / "bare.csv", caplog)
    # one line per safeguard (not per image: three images, batch size 1), then the retrain hint
    assert len(lines) == 5, lines
    for command in (
        "--criterion specificity:0.95",
        "bonefrac calibrate",
        "bonefrac ood",
        "--rule-out-sensitivity 0.95",
    ):
        assert sum(command in line for line in lines[:4]) == 1, (command, lines)
    assert all(str(tiny_run) in line for line in lines)  # the commands name this run
    assert "--no-deploy" in lines[4]
    assert _predict(ready_run, images, tmp_path / "ready.csv", caplog) == []
