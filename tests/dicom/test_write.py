"""DICOM out: Secondary Capture + SR in the input's study, read back with pydicom and highdicom;
``predict --dicom-out`` and ``POST /v1/predict?dicom=true``."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.dicom.write import (
    SC_SERIES_NUMBER,
    DicomOutError,
    ModelInfo,
    build_outputs,
    decision_label,
    read_header,
    with_heatmap,
    write_outputs,
)
from bonefrac.inference.predictor import Prediction
from tests.inference.dicom_files import marker_image, write_dicom

MODEL = ModelInfo("tiny", "simple_cnn", "ab" * 32)


def study_dicom(path: Path, study_uid: str | None = None, **extra: str) -> Path:
    """A small DX file with the patient/study attributes a PACS export carries."""
    write_dicom(path, marker_image())
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study_uid or hd.UID()
    ds.SeriesInstanceUID = hd.UID()
    ds.PatientID = "P0001"
    ds.AccessionNumber = "ACC42"
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def fake_prediction(decision: object = True, boxes: list | None = None) -> Prediction:
    rng = np.random.default_rng(0)
    display = Image.fromarray((marker_image() / 12).astype(np.uint8))
    pred = Prediction(
        probability=0.8, logit=1.4, decision=decision, threshold=0.5, name="x.dcm",
        heatmap=rng.random((48, 32)).astype(np.float32), display=display,
    )  # fmt: skip
    if boxes is not None:
        pred.pred_boxes = boxes
    return pred


def roundtrip(tmp_path: Path, pred: Prediction, src: Path) -> tuple:
    outputs = build_outputs(read_header(src), pred, MODEL)
    sc_path, sr_path = write_outputs(outputs, tmp_path / "out", "x")
    return pydicom.dcmread(sc_path), hd.imread(sc_path), hd.sr.srread(sr_path)


def test_capture_and_report_round_trip_in_the_input_study(tmp_path):
    src = study_dicom(tmp_path / "in.dcm")
    ref = pydicom.dcmread(src)
    sc, sc_image, sr = roundtrip(tmp_path, fake_prediction(boxes=[[0.3, 0.25, 0.2, 0.1, 0.9]]), src)
    for ds in (sc, sr):
        assert ds.StudyInstanceUID == ref.StudyInstanceUID
        assert ds.PatientID == "P0001" and ds.AccessionNumber == "ACC42"
        assert str(ds.PatientName) == str(ref.PatientName)
        assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
        assert ds.SOPInstanceUID != ref.SOPInstanceUID
        assert ds.Manufacturer == "bonefrac"
        assert any("tiny" in v for v in ds.SoftwareVersions)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.SeriesNumber == SC_SERIES_NUMBER and sc.PhotometricInterpretation == "RGB"
    assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[2] == 3
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ref.SOPInstanceUID
    assert "probability 0.80" in sc.ImageComments
    assert isinstance(sc_image, hd.Image)

    assert isinstance(sr, hd.sr.ComprehensiveSR)
    (group,) = sr.content.get_image_measurement_groups()
    (prob,) = group.get_measurements()
    assert prob.value == pytest.approx(0.8)
    presence, decision = group.get_qualitative_evaluations()
    assert (presence.name.value, presence.value.value) == ("121052", "121053")  # DCM Present
    assert decision.value.value == "fracture"
    assert decision.value.meaning == "fracture (firm finding)"
    assert group.finding_type.value == "125605004" and group.finding_type.scheme_designator == "SCT"
    assert prob.name.value == "122157" and prob.name.scheme_designator == "DCM"  # Probability
    (roi,) = sr.content.get_planar_roi_measurement_groups()
    coords = np.asarray(roi.roi.value)  # closed rectangle in the input's pixel grid (32 x 48)
    assert coords.shape == (5, 2)
    np.testing.assert_allclose(coords[0], [0.2 * 32, 0.2 * 48], atol=1e-4)
    np.testing.assert_allclose(coords[2], [0.4 * 32, 0.3 * 48], atol=1e-4)
    assert roi.get_measurements()[0].value == pytest.approx(0.9)


def test_series_are_shared_per_study_and_model(tmp_path):
    study = hd.UID()
    a = study_dicom(tmp_path / "a.dcm", study)
    b = study_dicom(tmp_path / "b.dcm", study)
    out_a = build_outputs(read_header(a), fake_prediction(), MODEL)
    out_b = build_outputs(read_header(b), fake_prediction(), MODEL)
    assert out_a.capture.SeriesInstanceUID == out_b.capture.SeriesInstanceUID
    assert out_a.report.SeriesInstanceUID == out_b.report.SeriesInstanceUID
    assert out_a.capture.SOPInstanceUID != out_b.capture.SOPInstanceUID


def test_no_boxes_and_decision_words(tmp_path):
    src = study_dicom(tmp_path / "in.dcm")
    _, _, sr = roundtrip(tmp_path, fake_prediction(decision="refer"), src)
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    presence, decision = group.get_qualitative_evaluations()
    assert presence.value.value == "121059"  # DCM Presence Undetermined
    assert decision.value.value == "refer"
    assert decision.value.meaning == "doubt: look here, refer to a radiologist"
    oos = fake_prediction(decision="out_of_scope")
    oos.ood_reason = "colour"
    sc, _, sr = roundtrip(tmp_path, oos, src)
    (group,) = sr.content.get_image_measurement_groups()
    assert group.get_measurements() == []  # no fracture call, so no probability
    assert "probability" not in sc.ImageComments and "(colour)" in sc.ImageComments
    assert decision_label(fake_prediction(decision=False)) == "no_fracture"


def test_header_without_study_uid_is_refused(tmp_path):
    src = write_dicom(tmp_path / "bare.dcm", marker_image())
    with pytest.raises(DicomOutError, match="StudyInstanceUID"):
        read_header(src)


def predict_dicom_out(run: Path, inputs: Path, csv: Path, out_dir: Path):
    """``bonefrac predict RUN INPUTS --out CSV --dicom-out OUT_DIR`` in this process."""
    return CliRunner().invoke(
        app,
        ["predict", str(run), str(inputs), "--out", str(csv), "--dicom-out", str(out_dir),
         "--no-progress", "--workers", "0"],
    )  # fmt: skip


def test_predict_dicom_out_writes_dicom_and_skips_other_inputs(tiny_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    src = study_dicom(folder / "wrist.dcm")
    Image.fromarray((marker_image() / 12).astype(np.uint8)).save(folder / "photo.png")
    write_dicom(folder / "bare.dcm", marker_image())  # no study: a DICOM out failure
    out_dir = tmp_path / "dicom"
    res = predict_dicom_out(tiny_run, folder, tmp_path / "p.csv", out_dir)
    assert res.exit_code == 1, res.output  # predictions stand, one requested output is missing
    assert "1 input(s) not DICOM" in res.output and "1 failed" in res.output
    assert "StudyInstanceUID" in res.output
    files = sorted(p.name for p in out_dir.iterdir())
    assert len(files) == 2 and files[0].startswith("wrist-")
    sc = pydicom.dcmread(out_dir / files[0])
    assert sc.StudyInstanceUID == pydicom.dcmread(src).StudyInstanceUID
    sr = hd.sr.srread(out_dir / files[1])
    (group,) = sr.content.get_image_measurement_groups()
    rows = (tmp_path / "p.csv").read_text().splitlines()
    wrist = next(r for r in rows if "wrist.dcm" in r)
    assert f"{group.get_measurements()[0].value:.6f}" in wrist  # the CSV's probability


def test_service_dicom_zip(tiny_run, tmp_path):
    from fastapi.testclient import TestClient

    from bonefrac.inference.predictor import Predictor
    from bonefrac.serving.app import create_app

    src = study_dicom(tmp_path / "in.dcm")
    app_ = create_app(tiny_run, predictor=Predictor.from_run(tiny_run))
    with TestClient(app_) as client:
        resp = client.post(
            "/v1/predict", files={"file": ("in.dcm", src.read_bytes())}, params={"dicom": "true"}
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
            names = sorted(zf.namelist())
            assert names == ["bonefrac_sc.dcm", "bonefrac_sr.dcm"]
            sc = pydicom.dcmread(io.BytesIO(zf.read(names[0])))
            sr = hd.sr.srread(io.BytesIO(zf.read(names[1])))
        assert sc.StudyInstanceUID == sr.StudyInstanceUID == pydicom.dcmread(src).StudyInstanceUID
        buf = io.BytesIO()
        Image.fromarray((marker_image() / 12).astype(np.uint8)).save(buf, format="PNG")
        resp = client.post(
            "/v1/predict", files={"file": ("x.png", buf.getvalue())}, params={"dicom": "true"}
        )
        assert resp.status_code == 415 and resp.json()["reason"] == "not DICOM"


@pytest.mark.parametrize("fixture", ["loc_run", "tiny_run"])
def test_predict_and_serve_burn_in_the_same_map(fixture, tmp_path, request):
    """Every output of one image shows the Predictor's map: the learned map of a localising
    run (Grad-CAM for a classification run), through `predict --dicom-out` and `?dicom=true`
    alike (predict used to fall back to Grad-CAM without --cam-dir)."""
    from fastapi.testclient import TestClient

    from bonefrac.inference.predictor import Predictor
    from bonefrac.serving.app import create_app

    run = request.getfixturevalue(fixture)
    src = study_dicom(tmp_path / "wrist.dcm")
    out_dir = tmp_path / "dicom"
    res = predict_dicom_out(run, src, tmp_path / "p.csv", out_dir)
    assert res.exit_code == 0, res.output
    by_predict = pydicom.dcmread(next(p for p in out_dir.iterdir() if "_sc" in p.name))
    with TestClient(create_app(run, predictor=Predictor.from_run(run))) as client:
        resp = client.post(
            "/v1/predict", files={"file": ("wrist.dcm", src.read_bytes())}, params={"dicom": "true"}
        )
        assert resp.status_code == 200, resp.text
        with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
            by_serve = pydicom.dcmread(io.BytesIO(zf.read("bonefrac_sc.dcm")))
    assert np.array_equal(by_predict.pixel_array, by_serve.pixel_array)
    learned = fixture == "loc_run"
    assert ("learned fracture map" in by_serve.DerivationDescription) is learned
    assert ("Grad-CAM" in by_predict.DerivationDescription) is not learned


def test_every_output_of_a_localising_run_shows_the_predictors_map(loc_run, tmp_path):
    """One DICOM image of a localising run: `predict --dicom-out --cam-dir`, `?dicom=true`,
    `?heatmap=true` and the Predictor itself carry one map, the learned one
    (:meth:`Predictor.heatmaps`): byte-identical Secondary Capture PixelData, identical
    overlay pixels."""
    import base64

    from fastapi.testclient import TestClient

    from bonefrac.inference.predictor import Predictor, heatmap_for_display
    from bonefrac.serving.app import create_app

    src = study_dicom(tmp_path / "wrist.dcm")
    out_dir, cams = tmp_path / "dicom", tmp_path / "cams"
    res = CliRunner().invoke(
        app,
        ["predict", str(loc_run), str(src), "--out", str(tmp_path / "p.csv"), "--dicom-out",
         str(out_dir), "--cam-dir", str(cams), "--no-progress", "--workers", "0"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    by_predict = pydicom.dcmread(next(p for p in out_dir.iterdir() if "_sc" in p.name))
    (cam_png,) = cams.glob("*.png")

    predictor = Predictor.from_run(loc_run)
    with TestClient(create_app(loc_run, predictor=predictor)) as client:
        files = {"file": ("wrist.dcm", src.read_bytes())}
        zipped = client.post("/v1/predict", files=files, params={"dicom": "true"})
        answer = client.post("/v1/predict", files=files, params={"heatmap": "true"})
    assert zipped.status_code == 200 and answer.status_code == 200, answer.text
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        by_serve = pydicom.dcmread(io.BytesIO(zf.read("bonefrac_sc.dcm")))
    api_overlay = Image.open(io.BytesIO(base64.b64decode(answer.json()["heatmap_png"])))

    prepared = predictor.prepare(src, keep_display=True)
    (pred,) = predictor.predict_prepared([prepared], heatmap=True)
    learned = heatmap_for_display(predictor.maps([prepared.array])[0], prepared)
    np.testing.assert_array_equal(pred.heatmap, learned)
    np.testing.assert_array_equal(
        predictor.heatmaps([prepared.array]), predictor.maps([prepared.array])
    )
    by_api = build_outputs(read_header(src), pred, ModelInfo.of(predictor)).capture

    assert by_predict.PixelData == by_serve.PixelData == by_api.PixelData
    assert "learned fracture map" in by_predict.DerivationDescription
    overlay = np.asarray(pred.overlay())
    np.testing.assert_array_equal(np.asarray(Image.open(cam_png)), overlay)
    np.testing.assert_array_equal(np.asarray(api_overlay.convert("RGB")), overlay)


def test_a_prediction_without_its_map_gets_no_capture():
    pred = fake_prediction()
    pred.heatmap = None
    with pytest.raises(DicomOutError, match="without a heatmap"):
        with_heatmap(pred)
    pred = fake_prediction()
    pred.display = None
    with pytest.raises(DicomOutError, match="keep_display"):
        with_heatmap(pred)
