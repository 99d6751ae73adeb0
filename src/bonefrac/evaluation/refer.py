"""Per-image uncertainty and the refer rule (``bonefrac threshold RUN --refer-coverage X``).

Candidate scores, all higher = less sure:

- ``p_error``: the calibrated chance that the call is wrong, ``p`` below the threshold and
  ``1 - p`` at or above it (free: no extra model call);
- ``margin``: ``1 - |p - threshold| / max(threshold, 1 - threshold)`` (free); it stretches the
  shorter side of the scale, so with a threshold far from 0.5 it refers sure calls of that side
  first (what made a localising run's refer rule rank its errors near chance);
- ``tta_std``: the standard deviation of the logit over test-time augmentations of the image
  (:data:`TTA_VIEWS`: flips, small shifts and scales; 8 model calls per image).

The refer rule is fitted on val only: each score's ROC-AUC for telling wrong answers (at the
run's threshold) from right ones is measured; the better free score is kept unless ``tta_std``
ranks errors *clearly* better (the lower end of a paired bootstrap 95% interval of its gain
above 0), since it makes every prediction :data:`TTA_VIEWS`-fold more expensive. The cut-off
accepts the requested share of val images (coverage). Val's ``tta_std`` values are cached as a
column of ``predictions/val.csv``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from bonefrac.errors import ConfigError, DataError
from bonefrac.inference.loop import FileInputs, collect
from bonefrac.inference.predictor import Predictor
from bonefrac.inference.tta import TTA_VIEWS, tta_std
from bonefrac.metrics import coverage_cutoff, error_detection_auroc
from bonefrac.rundir import (
    TTA_STD_COLUMN,
    ModelMeta,
    RunDir,
    check_finite,
    error_probability,
    margin_uncertainty,
    run_probabilities,
)
from bonefrac.rundir.predictions import LABEL, PATH

log = logging.getLogger(__name__)


def split_tta_std(
    run: RunDir, name: str, predictor: Any = None, batch_size: int = 32
) -> np.ndarray:
    """``tta_std`` for every row of ``predictions/<name>.csv`` (computed once from the images,
    then cached as a column of that CSV)."""
    raw = run.read_predictions_raw(name)
    if TTA_STD_COLUMN in raw.columns and (raw[TTA_STD_COLUMN].astype(str) != "").all():
        return raw[TTA_STD_COLUMN].astype(float).to_numpy()
    if "path" not in raw.columns:
        raise DataError(f"{run.prediction_path(name)}: no 'path' column to compute TTA from")
    pred = predictor or Predictor.from_run(run)
    paths = raw[PATH].astype(str).tolist()
    log.info("test-time augmentation of %d %s images (%d views)", len(paths), name,
             len(TTA_VIEWS))  # fmt: skip
    inputs = FileInputs(paths, pred.image_size, pred.clahe)
    out = collect(pred, inputs, "tta", batch_size=batch_size, progress=False)
    if out.skipped:
        index, reason = out.skipped[0]
        raise DataError(f"{paths[index]}: {reason}; TTA needs every {name} image")
    views = check_finite(out.tta, f"{run.prediction_path(name)}: TTA logits")
    values = tta_std(views)
    raw[TTA_STD_COLUMN] = [f"{v:.6g}" for v in values]
    run.write_predictions(name, raw)
    return values


def uncertainty_for(
    score: str, run: RunDir, name: str, meta: ModelMeta, predictor: Any = None
) -> np.ndarray:
    """Uncertainty ``score`` (``margin`` | ``tta_std``) of every row of ``predictions/<name>``."""
    if score == "p_error":
        return error_probability(run_probabilities(run.predictions(name), meta), meta.threshold)
    if score == "margin":
        return margin_uncertainty(run_probabilities(run.predictions(name), meta), meta.threshold)
    if score == "tta_std":
        return split_tta_std(run, name, predictor)
    raise ConfigError(f"unknown uncertainty score {score!r}; choose p_error, margin or tta_std")


#: Free scores: read off the probability, no extra model call.
FREE_SCORES = ("p_error", "margin")


def refer_scores(tta: bool) -> tuple[str, ...]:
    """The uncertainty scores a refer fit compares: the free ones, plus TTA when asked."""
    return (*FREE_SCORES, "tta_std") if tta else FREE_SCORES


#: Paired bootstrap resamples of val for the test-time augmentation's gain.
TTA_GAIN_BOOT = 500


def tta_gain(u_tta: np.ndarray, u_free: np.ndarray, wrong: np.ndarray, seed: int = 0) -> dict:
    """Error-ranking ROC-AUC of ``tta_std`` minus the free score's on val, with a paired
    bootstrap 95% interval (``None`` values when val has no errors or only errors)."""
    base = error_detection_auroc(u_tta, wrong)
    free = error_detection_auroc(u_free, wrong)
    if base is None or free is None:
        return {"gain": None, "low": None, "high": None}
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(TTA_GAIN_BOOT):
        idx = rng.integers(0, len(wrong), len(wrong))
        a = error_detection_auroc(u_tta[idx], wrong[idx])
        b = error_detection_auroc(u_free[idx], wrong[idx])
        if a is not None and b is not None:
            diffs.append(a - b)
    low, high = np.percentile(diffs, [2.5, 97.5]) if diffs else (np.nan, np.nan)
    return {"gain": base - free, "low": float(low), "high": float(high)}


def fit_refer(
    run: RunDir,
    coverage: float,
    meta: ModelMeta,
    *,
    scores: Sequence[str] = refer_scores(tta=True),
    predictor: Any = None,
) -> dict[str, Any]:
    """The refer rule for ``meta``'s threshold and temperature, fitted on val (not written).

    Returns the model.json ``refer`` record; its ``error_auroc`` lists each score's ROC-AUC for
    ranking val's wrong answers above its right ones, ``tta_gain`` the test-time augmentation's
    gain over the best free score (with its 95% interval), and ``val_coverage`` the share
    answered.
    """
    if not 0 < coverage <= 1:
        raise ConfigError(f"--refer-coverage {coverage}: must be in (0, 1], e.g. 0.8")
    val = run.predictions("val")
    y = val[LABEL].to_numpy()
    wrong = (meta.decide(run_probabilities(val, meta)) != (y == 1)).astype(int)
    candidates = {s: uncertainty_for(s, run, "val", meta, predictor) for s in scores}
    aurocs = {s: error_detection_auroc(u, wrong) for s, u in candidates.items()}
    free = [s for s in candidates if s in FREE_SCORES] or list(candidates)
    best = free[0]
    for s in free[1:]:
        if aurocs[s] is not None and (aurocs[best] is None or aurocs[s] > aurocs[best]):
            best = s
    gain = None
    if "tta_std" in candidates and best != "tta_std":
        gain = tta_gain(candidates[TTA_STD_COLUMN], candidates[best], wrong)
        if gain["low"] is not None and gain["low"] > 0:
            best = "tta_std"
    u = candidates[best]
    cutoff = coverage_cutoff(u, coverage)
    record = {
        "score": best,
        "coverage": float(coverage),
        "cutoff": cutoff,
        "threshold": meta.threshold,
        "temperature": meta.temperature,
        "tuned_on": "val",
        "val_coverage": float(np.mean(u <= cutoff)),
        "val_n": len(u),
        "val_error_rate": float(wrong.mean()),
        "error_auroc": aurocs,
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if gain is not None:
        record["tta_gain"] = gain
        record["tta_model_calls_per_image"] = len(TTA_VIEWS)
    return record
