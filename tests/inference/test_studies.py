"""Study-level decisions: aggregation rules, ``predict --study-column/--study-by folder`` and
``evaluate --study-column`` on synthetic 3-view studies."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.csvpaths import encode_path
from bonefrac.errors import DataError
from bonefrac.inference.studies import aggregate, studies_path, study_inputs, study_rows
from tests.synthetic import make_image


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def make_studies(root: Path, n_studies: int = 2, views: int = 3, seed: int = 0) -> pd.DataFrame:
    """``n_studies`` folders of ``views`` PNGs; in even studies the last view shows a fracture."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_studies):
        folder = root / f"study{s}"
        folder.mkdir(parents=True)
        for v in range(views):
            fractured = s % 2 == 0 and v == views - 1
            arr, _ = make_image(rng, 64, fractured)
            path = folder / f"view{v}.png"
            Image.fromarray(arr).save(path)
            rows.append(
                {"path": f"study{s}/view{v}.png", "study": f"S{s}", "label": int(fractured)}
            )
    return pd.DataFrame(rows)


def test_aggregations_on_a_three_view_study():
    probs = [0.1, 0.2, 0.7]
    assert aggregate(probs, "max") == pytest.approx(0.7)
    assert aggregate(probs, "mean") == pytest.approx(1.0 / 3)  # one clear view is diluted
    assert aggregate(probs, "noisy_or") == pytest.approx(1 - 0.9 * 0.8 * 0.3)
    assert aggregate([0.3] * 3, "noisy_or") > 0.5 > aggregate([0.3] * 3, "max")  # inflates


def test_study_rows_decisions_errors_and_vocabulary(tmp_path):
    def row(name: str, prob: str, decision: str, error: str = "") -> dict[str, str]:
        return {"path": encode_path(tmp_path / name), "prob": prob, "decision": decision,
                "threshold": "0.5", "error": error}  # fmt: skip

    rows = [
        row("a1.png", "0.2", "0"), row("a2.png", "0.6", "1"), row("a3.png", "", "", "bad file"),
        row("b1.png", "0.3", "no_fracture"), row("b2.png", "0.45", "refer"),
        row("c1.png", "0.9", "out_of_scope"),
        row("d1.png", "0.1", "0"),
    ]  # fmt: skip
    study_of = {tmp_path / n: n[0] for n in ("a1.png", "a2.png", "a3.png", "b1.png", "b2.png",
                                             "c1.png")}  # fmt: skip
    out = {r["study"]: r for r in study_rows(rows, study_of, "max")}
    assert set(out) == {"a", "b", "c"}  # d1 is in no study
    assert out["a"]["decision"] == "fracture" and out["a"]["prob"] == "0.600000"
    assert out["a"]["n_images"] == 3 and out["a"]["n_failed"] == 1
    assert len(json.loads(out["a"]["images"])) == 3
    assert out["b"]["decision"] == "refer"
    assert out["c"]["decision"] == "out_of_scope" and out["c"]["prob"] == ""
    by_folder = study_rows(rows, None, "mean")
    assert len(by_folder) == 1 and by_folder[0]["n_images"] == 7


def test_study_inputs_checks_its_list(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,study\nx/a.png,S1\nb.png,\n")
    with pytest.raises(DataError, match="without a study"):
        study_inputs([listing], "study", None)
    with pytest.raises(DataError, match="no column accession"):
        study_inputs([listing], "accession", None)
    with pytest.raises(DataError, match="exclude each other"):
        study_inputs([listing], "study", "folder")


def _predict(*args: object) -> object:
    return CliRunner().invoke(app, ["predict", *map(str, args), "--no-progress", "--workers", "0"])


def test_predict_study_column_and_folder(tiny_run, tmp_path):
    frame = make_studies(tmp_path / "data")
    listing = tmp_path / "data" / "list.csv"
    frame[["path", "study"]].to_csv(listing, index=False)
    out = tmp_path / "p.csv"
    res = _predict(tiny_run, listing, "--out", out, "--study-column", "study")
    assert res.exit_code == 0, res.output
    images = {Path(r["path"]).name + Path(r["path"]).parent.name: float(r["prob"])
              for r in _rows(out)}  # fmt: skip
    studies = _rows(studies_path(out))
    assert studies_path(out).name == "p.studies.csv"
    assert [s["study"] for s in studies] == ["S0", "S1"]
    for s, study in enumerate(studies):
        views = [images[f"view{v}.pngstudy{s}"] for v in range(3)]
        assert float(study["prob"]) == pytest.approx(max(views), abs=1e-6)
        assert study["n_images"] == "3" and len(json.loads(study["images"])) == 3
        called = max(views) >= float(study["threshold"])
        assert study["decision"] == ("fracture" if called else "no_fracture")

    out2 = tmp_path / "q.csv"
    res = _predict(tiny_run, tmp_path / "data" / "study0", tmp_path / "data" / "study1",
                   "--out", out2, "--study-by", "folder", "--study-agg", "mean")  # fmt: skip
    assert res.exit_code == 0, res.output
    studies = _rows(studies_path(out2))
    assert len(studies) == 2 and {s["aggregation"] for s in studies} == {"mean"}
    assert Path(studies[0]["study"]).name == "study0"


def test_evaluate_study_column(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    frame = make_studies(tmp_path / "data", n_studies=4)
    manifest = tmp_path / "data" / "external.csv"
    frame.to_csv(manifest, index=False)
    res = CliRunner().invoke(
        app,
        ["evaluate", str(run), "--manifest", str(manifest), "--all-rows", "--n-boot", "0",
         "--study-column", "study"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "studies (4 from 12 images, max" in res.output
    metrics = json.loads((run / "metrics.json").read_text())["external"]
    study = metrics["study"]
    assert study["support"] == {"n": 4, "n_pos": 2, "n_neg": 2, "n_images": 12}
    assert study["settings"]["aggregation"] == "max"
    preds = pd.read_csv(run / "predictions" / "external.csv")
    preds["study"] = [Path(p).parent.name for p in preds["path"]]
    thr = study["settings"]["threshold"]
    n_pos_calls = int((preds.groupby("study")["prob"].max() >= thr).sum())
    cm = study["confusion_matrix"]
    assert cm["tp"] + cm["fp"] == n_pos_calls


def test_predict_job_writes_the_studies_the_config_asks_for(tiny_run, tmp_path):
    """The library call behind ``bonefrac predict --study-by``: the same studies CSV."""
    from bonefrac.batch_predict.job import predict_job
    from bonefrac.config import PredictConfig

    make_studies(tmp_path / "data")
    folders = [tmp_path / "data" / "study0", tmp_path / "data" / "study1"]
    out = tmp_path / "p.csv"
    config = PredictConfig(progress=False, study_by="folder", study_agg="noisy_or")
    job = predict_job(tiny_run, folders, out, config)
    assert job is not None and job.summary.predicted == 6
    assert job.studies_path == studies_path(out)
    assert [Path(s["study"]).name for s in job.studies] == ["study0", "study1"]
    assert [s["aggregation"] for s in _rows(studies_path(out))] == ["noisy_or"] * 2
    plain = predict_job(tiny_run, folders, tmp_path / "q.csv", PredictConfig(progress=False))
    assert plain.studies is None and not studies_path(tmp_path / "q.csv").exists()
    with pytest.raises(DataError, match="--study-agg"):
        predict_job(tiny_run, folders, out, PredictConfig(study_by="folder", study_agg="median"))
