"""The appearance rule and the tint-free colour rule: non-radiographs refused, radiographs kept."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from bonefrac.data.chroma import chroma_of
from bonefrac.inference import appearance, scope
from bonefrac.inference.predictor import Predictor
from tests.conftest import shared_data_dir
from tests.fixtures.nonradiographs import gradient, photos, skimage_images


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def grey_photograph() -> np.ndarray:
    return np.asarray(skimage_images()["camera"], dtype=np.uint8)


def test_colour_photographs_stay_colour_and_a_tint_is_not_colour() -> None:
    colour = {k: v for k, v in photos().items() if v.ndim == 3 and k != "hubble_deep_field"}
    assert len(colour) >= 6
    for name, img in colour.items():
        assert scope.is_colour(chroma_of(Image.fromarray(img[..., :3]))), name
    grey = Image.fromarray(grey_photograph())
    for tint in ((255, 230, 180), (170, 200, 255), (120, 255, 230)):
        tinted = ImageOps.colorize(grey, (0, 0, 0), tint)
        assert chroma_of(tinted) <= 2 and not scope.is_colour(chroma_of(tinted)), tint


def test_an_annotation_under_five_percent_is_not_colour() -> None:
    img = Image.fromarray(grey_photograph()).convert("RGB")  # 512 x 512
    draw = ImageDraw.Draw(img)
    draw.ellipse((100, 100, 300, 300), outline=(255, 0, 0), width=8)  # about 2 % of the pixels
    assert not scope.is_colour(chroma_of(img))
    draw.rectangle((0, 0, 511, 60), fill=(255, 0, 0))  # now about 14 %
    assert scope.is_colour(chroma_of(img))


def test_roboflow_sr2022_annotated_and_tinted_radiographs_are_not_colour() -> None:
    data = shared_data_dir()
    root = None if data is None else data / "roboflow_sr2022"
    if root is None or not root.is_dir():
        pytest.skip("the shared data (roboflow_sr2022) is absent")
    from bonefrac.data.imageio import decode_image

    # a red circle drawn round the fracture, a viewer's blue frame line, a teal-tinted film:
    # the five the 99th-percentile absolute chroma called colour
    stems = ("43_jpg.rf.", "73.rf.df67", "237.rf.")
    paths = [p for p in sorted(root.glob("*/images/*.jpg")) if p.name.startswith(stems)]
    assert len(paths) >= 5
    for path in paths:
        assert not scope.is_colour(decode_image(path, draft_size=384).chroma), path.name


def test_reason_order_puts_appearance_after_blank_and_before_features() -> None:
    from types import SimpleNamespace

    grey = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    items = [SimpleNamespace(array=grey, chroma=0.0, modality=None) for _ in range(3)]
    items[2].array = np.zeros((8, 8), np.uint8)
    got = scope.ood_reasons(items, [True, False, True], [True, True, True])
    assert got == ["appearance", "appearance", "blank"]
    assert scope.appearance_out_of_scope([1.0, 2.0, float("nan")], 1.5).tolist() == [
        False, True, True
    ]  # fmt: skip


def test_features_have_the_spec_dimension(fresh_predictor: Predictor) -> None:
    prepared = [
        fresh_predictor.prepare(grey_photograph()),
        fresh_predictor.prepare(gradient("radial")),
    ]
    feats = appearance.appearance_features(prepared)
    widths = {1: 24, 2: 40, 4: 112, 6: 320}
    assert feats.shape == (2, 2 * sum(widths[i] for i in appearance.LEVELS))
    assert np.isfinite(feats).all()


@pytest.fixture(scope="module")
def fresh_predictor(untrained_run: Path) -> Predictor:
    return Predictor.from_run(untrained_run)


def test_a_fitted_run_refuses_what_its_rule_flags(loc_run: Path, tmp_path: Path) -> None:
    """``bonefrac ood`` fits the rule; the Predictor applies it to every input, the reason
    ``appearance``; a changed statistics file is refused, never ignored."""
    from bonefrac.errors import RunDirError
    from bonefrac.evaluation.ood import fit_ood
    from bonefrac.rundir import RunDir

    run = tmp_path / "loc"
    shutil.copytree(loc_run, run)
    record = fit_ood(run, "energy", percentile=90, max_images=60)
    meta = RunDir.open(run).meta()
    assert meta.appearance is not None and record["appearance_cutoff"] == meta.appearance.cutoff
    assert RunDir.open(run).appearance_stats_path.is_file()
    predictor = Predictor.from_run(run)
    paths = RunDir.open(run).predictions("val")["path"].astype(str).tolist()
    flags = predictor.appearance_flags([predictor.prepare(p) for p in paths])
    assert flags is not None
    assert flags.mean() == pytest.approx(meta.appearance.val_flagged)  # type: ignore[attr-defined]
    for source in (png(gradient("linear")), grey_photograph()):
        pred = predictor.predict(source)[0]
        assert (pred.decision, pred.ood_reason) == ("out_of_scope", "appearance")
    RunDir.open(run).appearance_stats_path.write_bytes(b"changed")
    with pytest.raises(RunDirError, match="appearance"):
        Predictor.from_run(run).predict(grey_photograph())


@pytest.mark.parametrize("probe", ["grey photograph", "synthetic gradient"])
def test_shipped_default_refuses_a_grey_photograph_and_a_gradient(probe: str) -> None:
    predictor = _default()
    source = grey_photograph() if probe == "grey photograph" else png(gradient("linear"))
    pred = predictor.predict(source)[0]
    assert pred.decision == "out_of_scope", (probe, pred.ood_reason, pred.probability)


_DEFAULT: list[Predictor] = []


def _default() -> Predictor:
    if not _DEFAULT:
        _DEFAULT.append(Predictor.from_run("default"))
    return _DEFAULT[0]
