"""A tiny localising run: its map finds the synthetic mark, and boxes come out everywhere
(predictions CSVs, predict CSV, API, explain --method model, ONNX)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir
from bonefrac.rundir.predictions import LOC_COLUMNS, answer


def _inside(point: list[float], box: list[float], tol: float = 0.05) -> bool:
    return abs(point[0] - box[0]) <= box[2] / 2 + tol and abs(point[1] - box[1]) <= box[3] / 2 + tol


@pytest.fixture(scope="module")
def test_preds(loc_run: Path) -> pd.DataFrame:
    return RunDir.open(loc_run).predictions("test")


def test_meta_records_head_and_box_threshold(loc_run: Path):
    meta = RunDir.open(loc_run).meta()
    assert meta.localize is True
    assert 0.0 < meta.box_threshold < 1.0
    assert "val" in str(meta.get("box_threshold_criterion"))


def test_map_peaks_inside_the_mark(test_preds: pd.DataFrame):
    for col in LOC_COLUMNS:
        assert col in test_preds.columns
    pos = test_preds[test_preds["label"] == 1]
    hits = [_inside(json.loads(r.map_peak), json.loads(r.boxes)[0]) for r in pos.itertuples()]
    assert np.mean(hits) >= 0.8
    assert pos["energy_in_box"].notna().all()
    assert test_preds.loc[test_preds["label"] == 0, "energy_in_box"].isna().all()


def test_negatives_give_no_box(test_preds: pd.DataFrame):
    neg = test_preds[test_preds["label"] == 0]
    with_box = [bool(json.loads(v)) for v in neg["pred_boxes"]]
    assert np.mean(with_box) <= 0.2
    pos = test_preds[test_preds["label"] == 1]
    found = [
        any(_inside(b[:2], json.loads(r.boxes)[0]) for b in json.loads(r.pred_boxes))
        for r in pos.itertuples()
    ]
    assert np.mean(found) >= 0.7


def test_predictor_maps_and_boxes(loc_run: Path, test_preds: pd.DataFrame):
    predictor = Predictor.from_run(loc_run)
    assert predictor.localizes
    row = test_preds[test_preds["label"] == 1].iloc[0]
    prepared = predictor.prepare(row["path"])
    maps = predictor.maps([prepared.array])
    assert maps.shape == (1, predictor.image_size, predictor.image_size)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    (pred,) = predictor.predict(row["path"], heatmap=True)
    assert pred.pred_boxes == json.loads(row["pred_boxes"])
    assert answer(pred)["pred_boxes"] == pred.pred_boxes
    # the heatmap shown is the learned map (its peak is the CSV's map_peak), not Grad-CAM
    h, w = pred.heatmap.shape
    y, x = np.unravel_index(int(np.argmax(pred.heatmap)), pred.heatmap.shape)
    assert _inside([(x + 0.5) / w, (y + 0.5) / h], json.loads(row["boxes"])[0])


def test_evaluate_manifest_frame_has_loc_columns(loc_run: Path, test_preds: pd.DataFrame):
    from bonefrac.inference.run_predictions import predict_run_frame

    manifest = pd.read_csv(RunDir.open(loc_run).meta().get("manifest"))
    part = manifest[manifest["split"] == "test"]
    got = predict_run_frame(loc_run, part, progress=False).predictions
    assert list(got["pred_boxes"]) == list(test_preds["pred_boxes"])
    assert list(got["map_peak"]) == list(test_preds["map_peak"])


def test_predict_csv_has_pred_boxes(loc_run: Path, test_preds: pd.DataFrame, tmp_path: Path):
    from bonefrac.batch_predict.job import predict_to_csv
    from bonefrac.config import PredictConfig

    paths = list(test_preds["path"][:6])
    out = tmp_path / "pred.csv"
    predict_to_csv(loc_run, paths, out, PredictConfig(progress=False))
    with open(out, newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    for _, r in test_preds.iloc[:6].iterrows():
        assert json.loads(rows[r["path"]]["pred_boxes"]) == json.loads(r["pred_boxes"])


def test_api_returns_pred_boxes(loc_run: Path, test_preds: pd.DataFrame):
    from fastapi.testclient import TestClient

    from bonefrac.serving.app import create_app

    row = test_preds[test_preds["label"] == 1].iloc[0]
    with TestClient(create_app(loc_run)) as client:
        data = Path(row["path"]).read_bytes()
        res = client.post(
            "/v1/predict", files={"file": ("x.png", data, "image/png")}, params={"heatmap": True}
        )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["pred_boxes"] == json.loads(row["pred_boxes"])
    assert body["heatmap_png"]
    assert body["map"] == "detector"  # the page captions the map by this
    best = body["best_box"]  # the detector's best box at any score: the shown box's, if any
    assert len(best) == 5 and (not body["pred_boxes"] or best == body["pred_boxes"][0])


def test_a_run_without_detector_answers_gradcam_and_no_best_box(tiny_run: Path):
    from fastapi.testclient import TestClient

    from bonefrac.serving.app import create_app

    preds = RunDir.open(tiny_run).predictions("test")
    with TestClient(create_app(tiny_run)) as client:
        data = Path(preds["path"].iloc[0]).read_bytes()
        body = client.post("/v1/predict", files={"file": ("x.png", data, "image/png")}).json()
    assert body["map"] == "gradcam" and body["best_box"] is None and body["pred_boxes"] is None


def test_explain_defaults_to_the_model_map(loc_run: Path, tmp_path: Path):
    from bonefrac.explain.run import explain_run

    res = explain_run(loc_run, n=2, score=True, out_dir=tmp_path / "explain")
    assert res["method"] == "model"
    loc = res["localization"]
    assert loc["n_scored"] > 0 and loc["hit_rate"] >= 0.8


def test_onnx_map_parity_and_same_boxes(loc_run: Path, test_preds: pd.DataFrame, tmp_path: Path):
    from bonefrac.inference.onnx import export_onnx

    run = tmp_path / "run"
    shutil.copytree(loc_run, run)
    res = export_onnx(run)
    assert res.max_abs_diff < 1e-4
    assert RunDir.open(run).meta().get("onnx")["outputs"] == ["logit", "detector"]
    onnx = Predictor.from_run(run, backend="onnx")
    torch_pred = Predictor.from_run(run)
    paths = list(test_preds["path"][:8])
    arrays = [onnx.prepare(p).array for p in paths]
    np.testing.assert_allclose(onnx.maps(arrays), torch_pred.maps(arrays), atol=1e-4)
    got = [p.pred_boxes for p in onnx.predict(paths)]
    assert got == [json.loads(v) for v in test_preds["pred_boxes"][:8]]


def test_image_score_fuses_logit_and_map_peak(loc_run: Path, test_preds: pd.DataFrame):
    # fitted on val after training and stored in model.json; the reloaded model scores with it
    meta = RunDir.open(loc_run).meta()
    assert meta.score_fusion is not None and meta.score_fusion.fitted_on == "val"
    predictor = Predictor.from_run(loc_run)
    assert predictor.torch_model.score_fusion == meta.score_fusion.as_tuple()
    rows = test_preds.head(6)
    preds = predictor.predict(list(rows["path"]))
    np.testing.assert_allclose([p.logit for p in preds], rows["logit"], atol=1e-4)
    # the fused logit is a * class logit + b * the map's highest logit + c
    import torch

    from bonefrac.models.detector import map_peak_logit

    model = predictor.torch_model
    x = predictor.input_tensor([predictor.prepare(p).array for p in rows["path"]])
    with torch.no_grad():
        fused, maps = model.forward_with_map(x)
        model.score_fusion = None
        try:
            plain, _ = model.forward_with_map(x)
        finally:
            model.score_fusion = meta.score_fusion.as_tuple()
    a, b, c = meta.score_fusion.as_tuple()
    torch.testing.assert_close(fused, a * plain + b * map_peak_logit(maps) + c)
    torch.testing.assert_close(model(x), fused)  # forward() scores the same way
    # the CSV keeps the class logit alone beside the fused one (the fused-vs-logit comparison)
    np.testing.assert_allclose(rows["class_logit"], plain[:, 0].numpy(), atol=1e-4)
    assert not np.allclose(rows["class_logit"], rows["logit"], atol=1e-3)


@pytest.mark.slow  # trains a (tiny) run
def test_a_stride_4_run_round_trips(tmp_path: Path):
    from bonefrac.config import load_config
    from bonefrac.training.fit import train
    from tests.synthetic import FAST_OVERRIDES, make_manifest

    manifest = make_manifest(tmp_path, {"train": 24, "val": 12, "test": 12}, pos_rate=0.5)
    overrides = ["model.localize=true", "model.loc_levels=[4, 8, 16]", "train.epochs=1"]
    run = train(load_config(None, FAST_OVERRIDES + overrides), manifest, tmp_path / "run")
    meta = RunDir.open(run).meta()
    assert meta.loc_levels == [4, 8, 16]
    predictor = Predictor.from_run(run)
    preds = RunDir.open(run).predictions("test")
    _, head = predictor.logits_and_map_logits([predictor.prepare(preds["path"].iloc[0]).array])
    size = predictor.image_size  # the reloaded model reads three levels, finest stride 4
    assert head.shape[1:] == ((size // 4) ** 2 + (size // 8) ** 2 + (size // 16) ** 2, 6)
    assert "pred_boxes" in preds.columns and "cand_boxes" in preds.columns
