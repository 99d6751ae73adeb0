from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.evaluation.calibration import calibrate_run
from bonefrac.evaluation.evaluate import evaluate_run
from bonefrac.evaluation.report import build_report
from bonefrac.evaluation.thresholds import tune_threshold
from bonefrac.rundir import RunDir
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


# --- the first section: the answer before the details --------------------------------------


class _Sections(HTMLParser):
    """Each ``<section>``'s id (its h2's), text and figure captions, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self.sections.append({"id": dict(attrs).get("id"), "text": "", "captions": []})
        elif tag == "figcaption":
            self._in = "caption"

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in = None

    def handle_data(self, data):
        if self.sections:
            self.sections[-1]["text"] += data
            if self._in == "caption":
                self.sections[-1]["captions"].append(data)


def _sections(text: str) -> dict[str, dict]:
    parser = _Sections()
    parser.feed(text)
    return {s["id"]: s for s in parser.sections} | {"_order": [s["id"] for s in parser.sections]}


def _with_groups_and_overlays(run: Path, n_overlays: int = 60) -> dict[str, str]:
    """A manifest whose test images come in duplicate groups of three (Roboflow siblings),
    two sources, and an overlay per image for the first ``n_overlays`` test images."""
    test = pd.read_csv(run / "predictions" / "test.csv", dtype={"image_id": str})
    test["source"] = np.where(np.arange(len(test)) % 2 == 0, "fracatlas", "roboflow")
    test.to_csv(run / "predictions" / "test.csv", index=False)
    groups = {i: f"g{k // 3}" for k, i in enumerate(test["image_id"])}
    manifest = run.parent / "manifest.csv"
    pd.DataFrame(
        {
            "image_id": test["image_id"],
            "path": test["path"],
            "label": test["label"],
            "split": "test",
            "group": [groups[i] for i in test["image_id"]],
        }
    ).to_csv(manifest, index=False)
    RunDir(run).update_meta(manifest=str(manifest))
    folder = run / "explain" / "gradcam"
    folder.mkdir(parents=True)
    for image_id in test["image_id"][:n_overlays]:
        Image.new("RGB", (600, 400), (180, 30, 30)).save(folder / f"{image_id}.png")
    Image.new("RGB", (64, 32), "white").save(run / "explain" / "grid.png")
    return groups


def test_report_leads_with_the_answer_and_missing_safeguards(fake_run):
    _with_groups_and_overlays(fake_run)
    evaluate_run(fake_run, split="test", n_boot=50)
    text = (fake_run / "report.html").read_text()
    sections = _sections(text)
    assert sections["_order"][0] == "summary"
    assert sections["_order"].index("config") > sections["_order"].index("subgroups")
    first = sections["summary"]["text"]
    # ROC-AUC with its CI in the first section, long before any config table
    assert re.search(r"ROC-AUC\s*\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", first), first[:500]
    assert text.index("ROC-AUC") < text.index('id="config"') < text.index("Versions")
    for label in ("PR-AUC", "sensitivity", "specificity", "PPV", "NPV"):
        assert label in first, label
    assert "threshold 0.500 (the default threshold, not tuned on val" in first
    # the run lacks every safeguard: each is named with its command
    for command in (
        "bonefrac threshold RUN --criterion specificity:0.95",
        "bonefrac calibrate RUN",
        "bonefrac ood RUN",
        "bonefrac threshold RUN --rule-out-sensitivity 0.95",
    ):
        assert command in first, command
    assert "4 of 4 safeguards missing" in first and "--no-deploy" in first
    # two sources in test: one line each
    assert "Per source" in first and "fracatlas" in first and "roboflow" in first
    assert "ROC curve (test)" in sections["summary"]["captions"]


def test_gallery_shows_one_image_per_duplicate_group_hits_and_misses(fake_run):
    groups = _with_groups_and_overlays(fake_run)
    evaluate_run(fake_run, split="test", n_boot=0)
    summary = _sections((fake_run / "report.html").read_text())["summary"]
    tiles = [c for c in summary["captions"] if c.startswith("t_")]
    ids = [c.split(" · ")[0] for c in tiles]
    assert 4 <= len(ids) <= 12
    assert len({groups[i] for i in ids}) == len(ids)  # never two siblings
    assert all(int(i[2:]) < 60 for i in ids)  # only images that have an overlay
    kinds = {c.split(" · ")[-1] for c in tiles}
    assert {"fracture found", "normal cleared"} <= kinds  # fractured and not, hits ...
    assert kinds & {"fracture missed", "false alarm"}  # ... and misses
    # the overlays are not shown a second time (with their siblings) further down
    explain = _sections((fake_run / "report.html").read_text())["explain"]
    assert explain["captions"] == [] and "one image per duplicate group" in explain["text"]


def test_report_of_a_ready_run_gives_shares_and_no_notice(fake_run):
    tune_threshold(fake_run, "f1")
    calibrate_run(fake_run)
    run = RunDir(fake_run)
    meta = run.meta()
    run.update_meta(
        ood={"method": "energy", "cutoff": 3.0, "percentile": 99.0, "val_flagged": 0.01},
        refer={"score": "margin", "coverage": 0.9, "cutoff": 0.9, "threshold": meta.threshold,
               "temperature": meta.temperature},
    )  # fmt: skip
    evaluate_run(fake_run, split="test", n_boot=50)
    first = _sections((fake_run / "report.html").read_text())["summary"]["text"]
    assert "safeguards missing" not in first and "are all in model.json" in first
    assert "by the criterion 'f1'" in first and "calibrated with temperature" in first
    assert re.search(r"Referred: \d+\.\d% of test images", first), first
    assert "Out of scope: 1.0% of val images" in first
