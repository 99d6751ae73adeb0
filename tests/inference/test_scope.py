"""Scope rules (modality, colour, blank, features) and ``ood_reason`` through every output path,
on a run without a fitted out-of-scope detector."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from bonefrac.inference import scope
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir.predictions import answer
from tests.conftest import shared_data_dir
from tests.fixtures.ood_probes import colour_images, dicom_probes, tinted
from tests.inference.conftest import make_untrained_run
from tests.inference.dicom_files import write_dicom
from tests.synthetic import make_image

ANSWERS = ("fracture", "no_fracture")


def radiograph_like(seed: int = 0, size: int = 96) -> np.ndarray:
    return make_image(np.random.default_rng(seed), size, fractured=False)[0]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def fresh(untrained_run: Path) -> Predictor:
    return Predictor.from_run(untrained_run)


def test_modality_rule() -> None:
    for value in ("CT", "MR", "US", "NM", "PT", "MG", "SR", "XC", "ct "):
        assert scope.modality_out_of_scope(value), value
    for value in ("CR", "DX", "DR", "RG", "RF", "XA", "dx", "OT", "", " ", None):
        assert not scope.modality_out_of_scope(value), value


def test_reason_order_and_colour_cut_off() -> None:
    grey, flat = radiograph_like(), np.zeros((8, 8), np.uint8)

    def item(array=grey, chroma=0.0, modality=None):
        return SimpleNamespace(array=array, chroma=chroma, modality=modality)

    items = [item(), item(modality="CT", chroma=40, array=flat), item(chroma=40, array=flat),
             item(array=flat), item(), item(chroma=scope.MAX_CHROMA), item(chroma=float("nan"))]  # fmt: skip
    features = [False, True, True, True, True, False, False]
    assert scope.ood_reasons(items, features) == [
        None, "modality", "colour", "blank", "features", None, "colour"
    ]  # fmt: skip
    assert scope.ood_reasons(items[:1]) == [None] and scope.ood_reasons([]) == []


def test_colour_image_is_out_of_scope_without_a_detector(fresh: Predictor) -> None:
    assert fresh.meta.ood is None
    photos = colour_images(np.random.default_rng(0), n=4)
    for source in [*photos, png(photos[0]), jpeg(photos[1]), Image.fromarray(photos[2])]:
        prepared = fresh.prepare(source)
        assert prepared.colour and prepared.chroma > scope.MAX_CHROMA
        p = fresh.predict_prepared([prepared])[0]
        assert (p.decision, p.ood_reason, p.out_of_scope) == ("out_of_scope", "colour", True)
        assert p.ood_score is None and answer(p)["ood_reason"] == "colour"


def test_a_tinted_radiograph_is_judged_by_its_grey_content(fresh: Predictor) -> None:
    """A film photographed under a coloured light or a viewer's tinted colour map is still a
    radiograph: a tint (colour as one function of luminance) is not colour."""
    grey = radiograph_like().astype(float)
    full_range = ((grey - grey.min()) / np.ptp(grey) * 255).astype(np.uint8)  # bright bone
    for name, tint in tinted(full_range).items():
        for source in (tint, jpeg(tint)):
            prepared = fresh.prepare(source)
            assert not prepared.colour and prepared.chroma <= 3, name
            assert fresh.predict_prepared([prepared])[0].ood_reason is None, name


def test_grey_content_stored_as_colour_stays_in_scope(fresh: Predictor) -> None:
    grey = radiograph_like()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for source in (grey, rgb, png(rgb), jpeg(rgb), Image.fromarray(rgb).convert("P")):
        p = fresh.predict(source)[0]
        assert p.decision in ANSWERS and p.ood_reason is None and not p.out_of_scope


def test_fracatlas_radiograph_encoded_as_rgb_stays_in_scope(fresh: Predictor) -> None:
    data = shared_data_dir()
    if data is None:
        pytest.skip("the shared data (FracAtlas) is absent")
    path = next(
        p
        for p in sorted((data / "fracatlas" / "images" / "Fractured").glob("*.jpg"))
        if Image.open(p).mode == "RGB"
    )
    prepared = fresh.prepare(path)
    assert prepared.chroma == 0.0 and not prepared.colour
    p = fresh.predict_prepared([prepared])[0]
    assert p.decision in ANSWERS and p.ood_reason is None


def test_ct_dicom_is_out_of_scope_by_modality(fresh: Predictor, tmp_path: Path) -> None:
    pixels = (radiograph_like().astype(np.uint16) * 16).astype(np.uint16)
    for modality in ("CT", "MR", "US"):
        path = write_dicom(tmp_path / f"{modality}.dcm", pixels, modality=modality)
        p = fresh.predict(path)[0]
        assert (p.decision, p.ood_reason) == ("out_of_scope", "modality"), modality
    for modality in ("DX", "CR", "OT", "", None):  # projection radiographs, or unstated
        path = write_dicom(tmp_path / f"in_{modality}.dcm", pixels, modality=modality)
        prepared = fresh.prepare(path)
        assert prepared.modality == (modality.upper() if modality is not None else None)
        p = fresh.predict_prepared([prepared])[0]
        assert p.decision in ANSWERS and p.ood_reason is None, modality
    for kind, files in dicom_probes(n=1).items():
        assert fresh.predict(files[0])[0].ood_reason == "modality", kind


def test_blank_frame_is_out_of_scope_without_a_detector(fresh: Predictor) -> None:
    for value in (0, 128, 255):
        p = fresh.predict(np.full((64, 64), value, np.uint8))[0]
        assert (p.decision, p.ood_reason) == ("out_of_scope", "blank")


def test_features_reason_comes_after_the_rules(tmp_path: Path) -> None:
    # an energy detector whose cut-off flags everything: reason 'features' unless a rule applies
    run = make_untrained_run(tmp_path / "flag_all", ood={"method": "energy", "cutoff": -1e9})
    pred = Predictor.from_run(run)
    grey, photo = radiograph_like(), colour_images(np.random.default_rng(1), n=2)[0]
    out = pred.predict([grey, photo, np.zeros((32, 32), np.uint8)])
    assert [p.ood_reason for p in out] == ["features", "colour", "blank"]
    assert all(p.decision == "out_of_scope" and p.ood_score is not None for p in out)


def test_predict_csv_has_ood_reason(untrained_run: Path, tmp_path: Path) -> None:
    from bonefrac.batch_predict.job import predict_to_csv
    from bonefrac.config import PredictConfig
    from bonefrac.rundir.predictions import PREDICT_COLUMNS

    Image.fromarray(radiograph_like()).save(tmp_path / "grey.png")
    Image.fromarray(colour_images(np.random.default_rng(2), n=2)[0]).save(tmp_path / "photo.jpg")
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(tmp_path / "blank.png")
    pixels = radiograph_like().astype(np.uint16)
    write_dicom(tmp_path / "ct.dcm", pixels, modality="CT")
    out = tmp_path / "preds" / "p.csv"
    summary = predict_to_csv(untrained_run, [tmp_path], out, PredictConfig(progress=False))
    assert summary.failed == 0 and summary.out_of_scope == 3
    assert PREDICT_COLUMNS[-1] == "ood_reason"
    with open(out, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    reasons = {
        name: (r["decision"], r["ood_reason"], r["out_of_scope"]) for name, r in rows.items()
    }
    assert reasons["photo.jpg"] == ("out_of_scope", "colour", "1")
    assert reasons["blank.png"] == ("out_of_scope", "blank", "1")
    assert reasons["ct.dcm"] == ("out_of_scope", "modality", "1")
    assert reasons["grey.png"][1:] == ("", "0") and reasons["grey.png"][0] in ANSWERS
