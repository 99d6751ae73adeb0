"""Per-image uncertainty and the refer rule (``bonefrac threshold RUN --refer-coverage X``).

Two candidate scores, both higher = less sure:

- ``margin``: ``1 - |p - threshold| / max(threshold, 1 - threshold)`` from the calibrated
  probability (free: no extra model call);
- ``tta_std``: the standard deviation of the logit over test-time augmentations of the image
  (:data:`TTA_VIEWS`: flips, small shifts and scales; 8 model calls per image).

The refer rule is fitted on val only: each score's ROC-AUC for telling wrong answers (at the
run's threshold) from right ones is measured, ``tta_std`` is kept only when it ranks errors
better than ``margin``, and the cut-off accepts the requested share of val images (coverage).
Val's ``tta_std`` values are cached as a column of ``predictions/val.csv``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from bonefrac.errors import ConfigError, DataError
from bonefrac.inference.predictor import Predictor
from bonefrac.inference.tta import TTA_VIEWS, tta_std
from bonefrac.metrics import coverage_cutoff, error_detection_auroc
from bonefrac.rundir import (
    TTA_STD_COLUMN,
    ModelMeta,
    RunDir,
    check_finite,
    margin_uncertainty,
    run_probabilities,
)

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
    out: list[np.ndarray] = []
    paths = raw["path"].astype(str).tolist()
    log.info("test-time augmentation of %d %s images (%d views)", len(paths), name,
             len(TTA_VIEWS))  # fmt: skip
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        arrays = [pred.prepare(p, name=p).array for p in chunk]
        out.append(tta_std(pred.tta_logits(arrays)))
    values = check_finite(np.concatenate(out), f"{run.prediction_path(name)}: TTA logits")
    raw[TTA_STD_COLUMN] = [f"{v:.6g}" for v in values]
    run.write_predictions(name, raw)
    return values


def uncertainty_for(
    score: str, run: RunDir, name: str, meta: ModelMeta, predictor: Any = None
) -> np.ndarray:
    """Uncertainty ``score`` (``margin`` | ``tta_std``) of every row of ``predictions/<name>``."""
    if score == "margin":
        return margin_uncertainty(run_probabilities(run.predictions(name), meta), meta.threshold)
    if score == "tta_std":
        return split_tta_std(run, name, predictor)
    raise ConfigError(f"unknown uncertainty score {score!r}; choose margin or tta_std")


def fit_refer(
    run: RunDir,
    coverage: float,
    meta: ModelMeta,
    *,
    scores: Sequence[str] = ("margin", "tta_std"),
    predictor: Any = None,
) -> dict[str, Any]:
    """The refer rule for ``meta``'s threshold and temperature, fitted on val (not written).

    Returns the model.json ``refer`` record; its ``error_auroc`` lists each score's ROC-AUC for
    ranking val's wrong answers above its right ones, and ``val_coverage`` the share answered.
    """
    if not 0 < coverage <= 1:
        raise ConfigError(f"--refer-coverage {coverage}: must be in (0, 1], e.g. 0.8")
    val = run.predictions("val")
    y = val["label"].to_numpy()
    wrong = (meta.decide(run_probabilities(val, meta)) != (y == 1)).astype(int)
    candidates = {s: uncertainty_for(s, run, "val", meta, predictor) for s in scores}
    aurocs = {s: error_detection_auroc(u, wrong) for s, u in candidates.items()}
    best = "margin" if "margin" in candidates else next(iter(candidates))
    for s, a in aurocs.items():
        if a is not None and (aurocs.get(best) is None or a > aurocs[best]):
            best = s
    u = candidates[best]
    cutoff = coverage_cutoff(u, coverage)
    return {
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
