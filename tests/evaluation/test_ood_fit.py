"""The out-of-scope fit scores val exactly as the Predictor scores at prediction time."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bonefrac.evaluation.ood import fit_ood
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir


@pytest.mark.parametrize("method", ["energy", "mahalanobis"])
def test_cutoff_is_the_percentile_of_the_scores_predict_gives(loc_run, tmp_path: Path, method):
    """A localising run's logits are fused with its map's peak: the energy cut-off is fitted on
    those (not on the class head's logits), so its val share flagged is what predict flags."""
    run = tmp_path / "loc"
    shutil.copytree(loc_run, run)
    assert RunDir.open(run).meta().score_fusion is not None  # the case that used to differ
    record = fit_ood(run, method, percentile=90, max_images=60)
    predictor = Predictor.from_run(run)
    paths = RunDir.open(run).predictions("val")["path"].astype(str).tolist()
    arrays = [predictor.prepare(p).array for p in paths]
    scores = predictor.ood_scores(arrays)
    assert scores is not None
    assert record["cutoff"] == pytest.approx(float(np.percentile(scores, 90)), rel=1e-5)
    assert record["val_flagged"] == pytest.approx(float(np.mean(scores > record["cutoff"])))
