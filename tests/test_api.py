"""The public Python API: ``bonefrac.load(PATH).predict(source)`` on the tiny trained runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import bonefrac
from bonefrac.errors import ImageDecodeError, RunDirError
from bonefrac.inference.predictor import Prediction, Predictor
from bonefrac.rundir import DECISIONS, ModelMeta
from tests.inference.dicom_files import write_dicom


def _test_images(run: Path, n: int) -> list[str]:
    return list(pd.read_csv(run / "predictions" / "test.csv")["path"].iloc[:n])


def test_import_stays_cheap():
    code = "import sys, bonefrac; print('torch' in sys.modules, bonefrac.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", bonefrac.__version__]


def test_load_and_predict_one_image_gives_one_prediction(tiny_run):
    run = bonefrac.load(tiny_run)
    assert isinstance(run, bonefrac.Run) and run.path == Path(tiny_run)
    assert isinstance(run.meta, ModelMeta) and isinstance(run.predictor, Predictor)
    path = _test_images(tiny_run, 1)[0]
    pred = run.predict(path)
    assert isinstance(pred, Prediction)
    assert 0.0 <= pred.probability <= 1.0 and pred.decision in DECISIONS
    assert pred.pred_boxes is None  # no localisation head
    assert pred.heatmap is not None and pred.display is not None
    assert pred.heatmap.shape == (pred.display.height, pred.display.width)
    # the same answer as the Predictor (and so as predict / serve), bit for bit
    (direct,) = Predictor.from_run(tiny_run).predict(path, heatmap=True)
    assert (pred.logit, pred.probability, pred.decision) == (
        direct.logit,
        direct.probability,
        direct.decision,
    )
    np.testing.assert_array_equal(pred.heatmap, direct.heatmap)
    assert run.predict(path, heatmap=False).heatmap is None


def test_a_list_gives_a_list_in_order_whatever_the_input_kind(tiny_run):
    run = bonefrac.load(tiny_run)
    paths = _test_images(tiny_run, 3)
    preds = run.predict(paths, heatmap=False)
    assert isinstance(preds, list) and len(preds) == 3
    one_by_one = [run.predict(p, heatmap=False).logit for p in paths]
    np.testing.assert_allclose([p.logit for p in preds], one_by_one, rtol=1e-5, atol=1e-5)
    first = Path(paths[0])
    kinds = [first.read_bytes(), np.asarray(Image.open(first)), Image.open(first)]
    got = run.predict(tuple(kinds), heatmap=False)
    np.testing.assert_allclose([p.logit for p in got], preds[0].logit, rtol=1e-5, atol=1e-5)
    assert run.predict([]) == []


def test_a_localising_run_gives_boxes_and_its_map(loc_run):
    run = bonefrac.load(loc_run)
    test = pd.read_csv(loc_run / "predictions" / "test.csv")
    path = test.sort_values("map_max", ascending=False)["path"].iloc[0]  # its surest box
    pred = run.predict(path)
    assert isinstance(pred.pred_boxes, list) and pred.pred_boxes
    assert all(len(b) == 5 and 0.0 <= b[4] <= 1.0 for b in pred.pred_boxes)
    (direct,) = Predictor.from_run(loc_run).predict(path, heatmap=True)
    assert pred.pred_boxes == direct.pred_boxes and pred.probability == direct.probability
    np.testing.assert_array_equal(pred.heatmap, direct.heatmap)  # the learned map


def test_a_dicom_input(tiny_run, tmp_path):
    arr = np.asarray(Image.open(_test_images(tiny_run, 1)[0]).convert("L"), dtype=np.uint8)
    dcm = write_dicom(tmp_path / "scan.dcm", arr)
    run = bonefrac.load(tiny_run)
    pred = run.predict(dcm)
    assert pred.decision in DECISIONS and pred.heatmap is not None
    assert run.predict(str(dcm)).logit == pred.logit == run.predictor.predict(dcm)[0].logit


def test_a_missing_run_or_image_is_a_clear_error(tiny_run, tmp_path):
    with pytest.raises(RunDirError, match=r"nope: run directory not found .*bonefrac train"):
        bonefrac.load(tmp_path / "nope")
    with pytest.raises(ImageDecodeError, match="gone.png"):
        bonefrac.load(tiny_run).predict(tmp_path / "gone.png")


def test_the_readme_snippet_runs_as_written(loc_run, tmp_path, capsys):
    """README.md's Python block as written (the shipped default), on a DICOM file."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme, flags=re.S).group(1)
    assert 'bonefrac.load("default")' in code and 'run.predict("scan.dcm")' in code
    scan = write_dicom(tmp_path / "scan.dcm", np.asarray(Image.open(_test_images(loc_run, 1)[0])))
    code = code.replace('"scan.dcm"', repr(str(scan)))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split(maxsplit=2)
    assert 0.0 <= float(printed[0]) <= 1.0 and printed[1] in DECISIONS
    assert printed[2].startswith("[")  # the shipped model localises: a list, maybe empty
