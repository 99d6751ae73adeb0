"""The evaluation commands on a real (tiny, synthetic) trained run: the training contract."""

from __future__ import annotations

import shutil

import pandas as pd
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.fileio import read_json


def test_commands_on_tiny_run(tiny_run, synthetic_manifest, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    runner = CliRunner()
    for args in (
        ["threshold", str(run), "--criterion", "f1"],
        ["calibrate", str(run)],
        ["evaluate", str(run), "--n-boot", "100"],
        ["evaluate", str(run), "--manifest", str(synthetic_manifest), "--name", "ext",
         "--n-boot", "100"],
    ):  # fmt: skip
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
    metrics = read_json(run / "metrics.json")
    assert {"test", "ext"} <= set(metrics)
    ext = pd.read_csv(run / "predictions" / "ext.csv")
    test = pd.read_csv(run / "predictions" / "test.csv")
    assert len(ext) == len(test)  # the manifest's test rows only
    text = (run / "report.html").read_text()
    assert 'id="training"' in text and "data:image/png;base64," in text
