from __future__ import annotations

import base64
import io
import re

from PIL import Image
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.evaluation.calibration import calibrate_run
from bonefrac.evaluation.evaluate import evaluate_run
from bonefrac.evaluation.report import build_report
from bonefrac.evaluation.thresholds import tune_threshold
from tests.evaluation.conftest import add_explain


def _images(text):
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)


def test_report_sections_and_embedded_pngs(fake_run):
    add_explain(fake_run)
    (fake_run / "plots").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), "white").save(fake_run / "plots" / "training_curves.png")
    tune_threshold(fake_run, "f1")
    calibrate_run(fake_run)
    evaluate_run(fake_run, split="val", n_boot=50, report=False)
    evaluate_run(fake_run, split="test", n_boot=50)
    text = (fake_run / "report.html").read_text()
    for sid in (
        "config",
        "data",
        "training",
        "metrics",
        "plots",
        "threshold",
        "subgroups",
        "explain",
    ):
        assert f'id="{sid}"' in text, sid
    assert "simple_cnn" in text and "epochs: 2" in text  # config.yaml shown
    assert "roc_auc" in text and "[" in text  # metrics with CIs
    assert "hit_rate" in text and "energy_in_box" in text  # localisation
    assert "Temperature scaling fitted on val" in text
    assert "region" in text and "hand" in text
    imgs = _images(text)
    # 2 splits x 5 plots + training curves + 2 calibration + grid + 1 overlay
    assert len(imgs) >= 15
    for data in imgs:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.verify()
    assert "http://" not in text and "<script" not in text  # self-contained


def test_report_on_bare_run(fake_run):
    path = build_report(fake_run)
    text = path.read_text()
    assert 'id="metrics"' in text and "bonefrac evaluate" in text
    assert 'id="explain"' not in text  # no explain output -> no section


def test_cli_report(fake_run):
    r = CliRunner().invoke(app, ["report", str(fake_run)])
    assert r.exit_code == 0, r.output
    assert (fake_run / "report.html").is_file()
