"""The decision in DICOM out (issue 35's vocabulary): a ``fracture`` call is a firm finding with
SOLID boxes, ``refer`` a doubt with DASHED boxes ("doubt: look here"); repeated predictions give
the same SOP Instance UIDs; the study report aggregates a study's images."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from PIL import Image

from bonefrac.dicom.write import (
    DECISION_COLOUR,
    ModelInfo,
    build_outputs,
    build_study_report,
    dataset_bytes,
    read_header,
    render_capture,
)
from bonefrac.inference.predictor import Prediction
from tests.dicom.test_write import study_dicom

MODEL = ModelInfo("tiny", "simple_cnn", "ab" * 32, settings="s1")
SIZE = 400  # display side: outline width round(400 / 250) = 2 px, dash 8 on, 6 off
BOX = [0.5, 0.5, 0.5, 0.5, 0.9]  # pixels 100..299; the coloured outline runs at rows 98-99


def prediction(decision: str, boxes: list | None = None, best: list | None = None) -> Prediction:
    pred = Prediction(
        probability=0.7, logit=0.8, decision=decision, threshold=0.5, name="x.dcm",
        heatmap=np.zeros((SIZE, SIZE), np.float32),
        display=Image.fromarray(np.full((SIZE, SIZE), 128, np.uint8)),
        pred_boxes=[BOX] if boxes is None else boxes, best_box=best,
    )  # fmt: skip
    return pred


def top_edge(decision: str, **kw: object) -> np.ndarray:
    """True where the capture's top box edge (the coloured row) has the decision's colour."""
    pixels = render_capture(prediction(decision, **kw), MODEL)
    left = (pixels.shape[1] - SIZE) // 2  # the picture is centred on a 512 px wide canvas
    row = pixels[98, left + 98 : left + 302].astype(int)
    return np.all(np.abs(row - np.array(DECISION_COLOUR[decision])) <= 2, axis=1)


def read_back(sr: object) -> hd.sr.ComprehensiveSR:
    """An SR as a viewer reads it (highdicom's content accessors work on read datasets)."""
    import io

    return hd.sr.srread(io.BytesIO(dataset_bytes(sr)))


def runs(mask: np.ndarray) -> int:
    """Number of separate stretches of True."""
    return int(mask[0]) + int(np.sum(mask[1:] & ~mask[:-1]))


def test_fracture_box_is_solid_and_refer_box_is_dashed():
    solid = top_edge("fracture")
    assert solid.mean() > 0.97 and runs(solid) == 1
    dashed = top_edge("refer")
    assert 0.4 < dashed.mean() < 0.75, dashed.mean()  # 8 of every 14 pixels drawn
    assert runs(dashed) >= 10  # gaps all along the edge


def test_refer_without_a_box_above_threshold_dashes_the_best_box():
    dashed = top_edge("refer", boxes=[], best=BOX)
    assert runs(dashed) >= 10
    no_box = render_capture(prediction("no_fracture", boxes=[], best=BOX), MODEL)
    plain = render_capture(prediction("no_fracture", boxes=[]), MODEL)
    assert np.array_equal(no_box, plain)  # no "look here" for a no-fracture call


def test_caption_and_report_say_the_decision_words(tmp_path):
    src = read_header(study_dicom(tmp_path / "in.dcm", Laterality="R"))
    out = build_outputs(src, prediction("refer"), MODEL)
    assert "doubt: look here" in out.capture.ImageComments and out.capture.Laterality == "R"
    (group,) = read_back(out.report).content.get_image_measurement_groups()
    assert group.get_qualitative_evaluations()[-1].value.meaning.startswith("doubt: look here")
    out = build_outputs(src, prediction("fracture"), MODEL)
    assert "fracture (firm finding)" in out.capture.ImageComments
    (box,) = read_back(out.report).content.get_planar_roi_measurement_groups()
    assert box.get_measurements()[0].name.value == "111012"  # DCM Certainty of Finding


def test_same_input_same_uids_other_model_settings_other_uids(tmp_path):
    src = read_header(study_dicom(tmp_path / "in.dcm"))
    a = build_outputs(src, prediction("fracture"), MODEL)
    b = build_outputs(src, prediction("fracture"), MODEL)
    assert a.capture.SOPInstanceUID == b.capture.SOPInstanceUID
    assert a.report.SOPInstanceUID == b.report.SOPInstanceUID
    other = ModelInfo("tiny", "simple_cnn", "ab" * 32, settings="s2")  # e.g. a refitted threshold
    c = build_outputs(src, prediction("fracture"), other)
    assert c.report.SOPInstanceUID != a.report.SOPInstanceUID
    only = build_outputs(src, prediction("out_of_scope"), MODEL, capture=False)
    assert only.capture is None and only.datasets == [only.report]


def test_study_report_references_every_image_and_its_predecessor(tmp_path):
    study = hd.UID()
    images = [read_header(study_dicom(tmp_path / f"{i}.dcm", study)) for i in range(3)]
    first = build_study_report(images[:2], "refer", 0.4, "max", MODEL)
    (group,) = read_back(first).content.get_image_measurement_groups()
    assert len(group.source_images) == 2 and "max of 2 images" in group.tracking_identifier
    assert group.get_measurements()[0].value == pytest.approx(0.4)
    assert first.StudyInstanceUID == study and first.SeriesNumber == 9103
    second = build_study_report(images, "fracture", 0.8, "max", MODEL, previous=[first])
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.PredecessorDocumentsSequence[0].StudyInstanceUID == study
    again = build_study_report(images, "fracture", 0.8, "max", MODEL, previous=[first])
    assert again.SOPInstanceUID == second.SOPInstanceUID
