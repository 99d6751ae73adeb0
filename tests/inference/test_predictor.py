"""Predictor (torch/ONNX), ONNX export, and the predict CLI (resume, error rows, exit code)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from bonefrac.batch_predict.stream import collect_inputs
from bonefrac.cli import app
from bonefrac.errors import ImageDecodeError, ModelError, RunDirError
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir
from bonefrac.rundir.predictions import PREDICT_COLUMNS
from tests.inference.dicom_files import write_dicom


def test_torch_predictor_matches_evaluation(tiny_run):
    """Same preprocessing as evaluation: logits equal predictions/test.csv."""
    df = pd.read_csv(tiny_run / "predictions" / "test.csv")
    pred = Predictor.from_run(tiny_run)
    out = pred.predict(list(df["path"]), batch_size=7)
    logits = np.array([p.logit for p in out])
    np.testing.assert_allclose(logits, df["logit"].to_numpy(), atol=1e-4)
    meta = RunDir.open(tiny_run).raw_meta()
    temperature = float(meta.get("temperature", 1.0) or 1.0)
    probs = 1 / (1 + np.exp(-logits / temperature))
    np.testing.assert_allclose([p.probability for p in out], probs, rtol=1e-6)
    assert all((p.decision == "fracture") == (p.probability >= p.threshold) for p in out)
    assert all(p.threshold == pytest.approx(float(meta.get("threshold", 0.5))) for p in out)


def test_input_kinds_agree(tiny_run, synthetic_manifest):
    path = sorted((synthetic_manifest.parent / "images").glob("*.png"))[0]
    pred = Predictor.from_run(tiny_run)
    data = path.read_bytes()
    arr = np.asarray(Image.open(path))
    outs = pred.predict([path, str(path), data, arr, Image.open(path)])
    assert len(outs) == 5
    np.testing.assert_allclose([o.logit for o in outs], outs[0].logit, rtol=1e-5, atol=1e-5)


def test_threshold_and_temperature_from_model_json(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    RunDir.open(run).update_meta(threshold=0.3, temperature=2.0)
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    p = Predictor.from_run(run).predict(img)[0]
    assert p.threshold == 0.3
    assert p.probability == pytest.approx(1 / (1 + np.exp(-p.logit / 2.0)))
    assert (p.decision == "fracture") == (p.probability >= 0.3)


def test_heatmap_aligned_with_image(tiny_run):
    img = np.zeros((40, 64), np.uint8)  # landscape: letterbox padding top and bottom
    img[10:12, 20:40] = 250
    p = Predictor.from_run(tiny_run).predict(img, heatmap=True)[0]
    assert p.heatmap.shape == (40, 64) and p.heatmap.dtype == np.float32
    assert p.heatmap.min() >= 0.0 and p.heatmap.max() <= 1.0
    overlay = p.overlay()
    assert overlay.mode == "RGB" and overlay.size == (64, 40)


def test_bad_input_raises_decode_error(tiny_run):
    with pytest.raises(ImageDecodeError) as info:
        Predictor.from_run(tiny_run).predict(b"not an image at all")
    assert info.value.reason == "not an image"


def test_onnx_backend_agrees_with_torch(exported_run, synthetic_manifest):
    paths = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[:10]
    torch_out = Predictor.from_run(exported_run, backend="torch").predict(paths, batch_size=4)
    onnx_pred = Predictor.from_run(exported_run, backend="onnx")
    onnx_out = onnx_pred.predict(paths, batch_size=3)  # other batch sizes: dynamic batch axis
    diff = np.abs(np.array([a.logit for a in torch_out]) - [b.logit for b in onnx_out])
    assert diff.max() < 1e-4
    assert [a.decision for a in torch_out] == [b.decision for b in onnx_out]
    record = RunDir.open(exported_run).raw_meta()["onnx"]
    assert record["opset"] == 17 and record["max_abs_diff"] < 1e-4
    heat = onnx_pred.predict(paths[0], heatmap=True)[0].heatmap  # CAM via the torch model
    assert heat.shape == (64, 64)


def test_export_is_up_to_date_and_stale_export_is_refused(exported_run, tmp_path):
    from bonefrac.inference.onnx import export_onnx

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    assert export_onnx(run).skipped
    meta = RunDir.open(run).raw_meta()
    meta["onnx"]["weights_sha256"] = "0" * 64
    RunDir.open(run).update_meta(onnx=meta["onnx"])
    with pytest.raises(RunDirError, match="re-run 'bonefrac export"):
        Predictor.from_run(run, backend="onnx")


def test_failed_parity_leaves_nothing_behind(tiny_run, tmp_path):
    from bonefrac.inference.onnx import export_onnx

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ModelError, match="parity"):
        export_onnx(run, atol=0.0)  # nothing is < 0: the check must fail
    assert sorted(p.name for p in run.iterdir()) == before
    assert "onnx" not in RunDir.open(run).raw_meta()
    with pytest.raises(RunDirError, match="bonefrac export"):
        Predictor.from_run(run, backend="onnx")


def test_export_cli(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(app, ["export", str(run)])
    assert result.exit_code == 2 and "--onnx" in result.output
    result = CliRunner().invoke(app, ["export", str(run), "--onnx"])
    assert result.exit_code == 0, result.output
    assert (run / "model.onnx").is_file() and "parity" in result.output


# --- predict CLI ---------------------------------------------------------------------------


def _read(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


def _job_folder(root: Path, synthetic_manifest: Path, n_good: int = 5) -> Path:
    images = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[:n_good]
    folder = root / "job"
    (folder / "sub").mkdir(parents=True)
    for i, src in enumerate(images):
        shutil.copy(src, (folder if i % 2 else folder / "sub") / src.name)
    (folder / "not_an_image.png").write_bytes(b"hello, I am text")
    good = images[0].read_bytes()
    (folder / "sub" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("ignored: not an image suffix and no DICM magic")
    arr = np.asarray(Image.open(images[0])).astype(np.uint16) * 16
    write_dicom(folder / "sub" / "IM0001", arr)  # DICOM by magic, no suffix
    write_dicom(folder / "nopix.dcm", None)
    return folder


def test_predict_cli_error_rows_exit_code_and_resume(tiny_run, synthetic_manifest, tmp_path):
    folder = _job_folder(tmp_path, synthetic_manifest)
    out = tmp_path / "preds.csv"
    args = ["predict", str(tiny_run), str(folder), "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args + ["--batch-size", "3", "--workers", "0"])
    assert result.exit_code == 1, result.output
    assert "3 failed" in result.output and "3 file(s) failed" in result.output
    rows = _read(out)
    assert list(rows[0]) == PREDICT_COLUMNS
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "notes.txt" not in by_name
    assert len(rows) == 9  # 5 PNG + 1 DICOM + 2 bad PNG + 1 DICOM without pixels
    assert by_name["not_an_image.png"]["error"].startswith("not an image")
    assert by_name["truncated.png"]["error"].startswith(("truncated", "undecodable"))
    assert by_name["nopix.dcm"]["error"].startswith("no pixel data")
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6
    for r in good:
        assert 0.0 <= float(r["prob"]) <= 1.0 and r["decision"] in ("fracture", "no_fracture")
        assert (float(r["prob"]) >= float(r["threshold"])) == (r["decision"] == "fracture")
    assert by_name["IM0001"]["prob"]  # DICOM predicted

    # resume: a new file is predicted, nothing else is redone; a half-written line is dropped
    extra = sorted((synthetic_manifest.parent / "images").glob("val_*.png"))[0]
    shutil.copy(extra, folder / extra.name)
    with open(out, "a") as fh:
        fh.write(str(folder / "half-written-row.png") + ",0.5")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1  # the earlier error rows still count
    assert "9 already in" in result.output
    rows2 = _read(out)
    assert len(rows2) == 10 and rows2[:9] == rows
    assert Path(rows2[-1]["path"]).name == extra.name and not rows2[-1]["error"]
    assert len({r["path"] for r in rows2}) == 10


def test_predict_cli_clean_job_exits_zero_with_onnx_and_cams(
    exported_run, synthetic_manifest, tmp_path
):
    images = sorted((synthetic_manifest.parent / "images").glob("val_*.png"))[:4]
    out = tmp_path / "preds.csv"
    cams = tmp_path / "cams"
    result = CliRunner().invoke(
        app,
        ["predict", str(exported_run), *map(str, images), "--out", str(out), "--backend", "onnx"]
        + ["--cam-dir", str(cams), "--no-progress", "--workers", "0"],
    )
    assert result.exit_code == 0, result.output
    rows = _read(out)
    assert len(rows) == 4 and not any(r["error"] for r in rows)
    for r in rows:
        cam = Image.open(r["cam_path"])
        assert cam.size == (64, 64) and cam.mode == "RGB"
    # the same images through the torch backend give the same probabilities
    torch_out = Predictor.from_run(exported_run).predict(images)
    np.testing.assert_allclose(
        [float(r["prob"]) for r in rows], [p.probability for p in torch_out], atol=1e-5
    )


def test_predict_refuses_foreign_csv(tiny_run, synthetic_manifest, tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("a,b\n1,2\n")
    img = sorted((synthetic_manifest.parent / "images").glob("*.png"))[0]
    args = ["predict", str(tiny_run), str(img), "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--force" in result.output
    result = CliRunner().invoke(app, args + ["--force"])
    assert result.exit_code == 0 and len(_read(out)) == 1


def test_collect_inputs_keeps_missing_named_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    assert collect_inputs([missing]) == [missing.absolute()]


def test_predict_workers_decode_in_processes(tiny_run, synthetic_manifest, tmp_path):
    from bonefrac.batch_predict.job import predict_to_csv
    from bonefrac.config import PredictConfig

    images = sorted((synthetic_manifest.parent / "images").glob("train_*.png"))[:6]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\0" * 10)
    summary = predict_to_csv(
        tiny_run,
        [*images, bad],
        tmp_path / "p.csv",
        PredictConfig(workers=2, batch_size=4, progress=False),
    )
    assert summary.predicted == 6 and summary.failed == 1 and summary.any_failed
    buf = io.StringIO((tmp_path / "p.csv").read_text())
    assert len(list(csv.DictReader(buf))) == 7


def test_every_forward_goes_through_one_method(tiny_run, loc_run, monkeypatch):
    """logits (and their TTA), features, Grad-CAM, the learned map and the heatmap of a
    prediction all come from ``Predictor._run``: no side door to the model."""
    outputs: list[str] = []
    run = Predictor._run

    def counted(self, x, output="logits"):
        outputs.append(output)
        return run(self, x, output)

    monkeypatch.setattr(Predictor, "_run", counted)
    cls, loc = Predictor.from_run(tiny_run), Predictor.from_run(loc_run)
    arrays = [np.zeros((64, 64), np.uint8), np.full((64, 64), 90, np.uint8)]
    outputs.clear()
    cls.logits(arrays)
    cls.logits(arrays, tta=True)
    assert cls.tta_logits(arrays).shape == (2, 8)
    cls.features(arrays)
    np.testing.assert_array_equal(cls.heatmaps(arrays), cls.cams(arrays))
    assert outputs == ["logits"] * 11 + ["features", "cam", "cam"]
    outputs.clear()
    loc.logits_and_map_logits(arrays)
    loc.maps(arrays)
    (pred,) = loc.predict(arrays[1], heatmap=True)
    assert pred.heatmap is not None and outputs == ["head"] * 3


def test_onnx_backend_borrows_the_torch_model_with_the_same_input(exported_run):
    """Features (out-of-scope scores) and Grad-CAM of the ONNX backend are the PyTorch
    model's, bit for bit: the same conversion feeds both backends."""
    torch_pred = Predictor.from_run(exported_run)
    onnx_pred = Predictor.from_run(exported_run, backend="onnx")
    arrays = [np.random.default_rng(i).integers(0, 255, (64, 64), np.uint8) for i in range(3)]
    for a, b in zip(onnx_pred.features(arrays), torch_pred.features(arrays), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(onnx_pred.cams(arrays), torch_pred.cams(arrays))
    np.testing.assert_allclose(onnx_pred.logits(arrays), torch_pred.logits(arrays), atol=1e-4)
