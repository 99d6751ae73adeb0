"""Choosing the decision threshold on validation predictions.

Criteria (``prob >= threshold`` is positive; every candidate threshold is an observed score):

- ``f1``: the threshold with the highest F1 (the highest such threshold on ties);
- ``youden``: max of sensitivity + specificity - 1 (highest on ties);
- ``sensitivity:X``: the highest threshold whose sensitivity is >= X (the most specific operating
  point that still catches a fraction X of fractures);
- ``specificity:X``: the lowest threshold whose specificity is >= X (the most sensitive operating
  point that keeps a fraction X of normals negative).

``--refer-coverage X`` also fits the refer rule (:mod:`bonefrac.evaluation.refer`) at the
resulting threshold, on val, so that a share X of val images gets a fracture / no-fracture
answer and the rest is referred; a rule already in model.json is refitted at its coverage
whenever the threshold changes.

Tuning happens on ``val`` only: choosing the threshold on test would make the test metrics
optimistic. When model.json has a temperature other than 1, thresholds are chosen on the
calibrated probabilities ``sigmoid(logit / T)`` -- the scale the stored threshold applies to.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from bonefrac.config import parse_criterion
from bonefrac.errors import ConfigError, DataError
from bonefrac.metrics import compute_metrics
from bonefrac.rundir import ModelMeta, RunDir, run_probabilities, usable_threshold


def choose_threshold(y_true: Any, prob: Any, criterion: str) -> float:
    """The threshold ``criterion`` picks on (y_true, prob)."""
    name, target = parse_criterion(criterion)
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError("threshold tuning needs both classes (fractured and not) in the data")
    # all distinct scores as candidates, highest first; drop roc_curve's leading +inf
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    if name == "f1":
        tp, fp = tpr * n_pos, fpr * n_neg
        f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
        return float(thr[int(np.argmax(f1))])
    if name == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    eps = 1e-12
    if name == "sensitivity":
        ok = np.flatnonzero(tpr >= target - eps)
        return float(thr[ok[0]])  # tpr reaches 1 at the lowest score, so ok is never empty
    spec = 1.0 - fpr
    ok = np.flatnonzero(spec >= target - eps)
    if len(ok) == 0:  # even the highest score lets a negative through: predict nothing positive
        return float(np.nextafter(p.max(), np.inf))
    return float(thr[ok[-1]])


def tune_threshold(
    run_dir: str | Path,
    criterion: str | None,
    on: str = "val",
    refer_coverage: float | None = None,
    refer_tta: bool = False,
) -> dict[str, Any]:
    """Choose the threshold on ``predictions/val.csv`` (``criterion``; ``None`` keeps it) and
    the refer rule (``refer_coverage``; ``refer_tta``: also try the test-time augmentation
    spread, which costs 8 model calls per val image), store them in model.json, and return val/test metrics
    at the old and the new threshold (point estimates) and the refer record."""
    if criterion is None and refer_coverage is None:
        raise ConfigError("give --criterion, --refer-coverage or both")
    if on == "test":
        raise ConfigError(
            "refusing to tune the threshold on the test split: a threshold chosen on test makes "
            "every test metric optimistic. Tune on validation predictions instead: "
            "'bonefrac threshold RUN --criterion ... --on val'"
        )
    if on != "val":
        raise ConfigError(f"--on {on!r}: thresholds are tuned on 'val' only")
    if refer_coverage is not None and not 0 < refer_coverage <= 1:
        raise ConfigError(f"--refer-coverage {refer_coverage}: must be in (0, 1], e.g. 0.8")
    run = RunDir.open(run_dir, writable=True)
    if criterion is None:
        return _refer_only(run, float(refer_coverage), refer_tta)
    name, target = parse_criterion(criterion)
    criterion = name if target is None else f"{name}:{target:g}"
    meta = run.meta()
    temperature = meta.temperature
    old = meta.threshold

    val = run.predictions("val")
    y_val = val["label"].to_numpy()
    p_val = run_probabilities(val, meta)
    try:
        new = usable_threshold(choose_threshold(y_val, p_val, criterion))
    except DataError as exc:
        raise DataError(f"{run.prediction_path('val')}: {exc}") from exc

    splits = {"val": (y_val, p_val)}
    if run.prediction_path("test").is_file():
        test = run.predictions("test")
        splits["test"] = (test["label"].to_numpy(), run_probabilities(test, meta))

    result: dict[str, Any] = {
        "criterion": criterion,
        "tuned_on": "val",
        "temperature": temperature,
        "old_threshold": old,
        "old_criterion": meta.get("threshold_criterion"),
        "new_threshold": new,
        "metrics": {},
    }
    for split, (y, p) in splits.items():
        result["metrics"][split] = {
            "old": compute_metrics(y, p, old, n_boot=0),
            "new": compute_metrics(y, p, new, n_boot=0),
        }
    changes: dict[str, Any] = {
        "threshold": new,
        "threshold_criterion": criterion,
        "threshold_tuned_on": "val",
        "threshold_updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    coverage = refer_coverage if refer_coverage is not None else _kept_coverage(meta)
    if coverage is not None:
        from bonefrac.evaluation.refer import fit_refer, refer_scores

        raw = run.raw_meta()
        raw.update(changes)
        raw.pop("refer", None)
        changes["refer"] = fit_refer(
            run, coverage, ModelMeta.parse(raw, run.meta_path), scores=refer_scores(refer_tta)
        )
        result["refer"] = changes["refer"]
    run.update_meta(**changes)
    return result


def _kept_coverage(meta: ModelMeta) -> float | None:
    return meta.refer.coverage if meta.refer is not None else None


def _refer_only(run: RunDir, coverage: float, tta: bool) -> dict[str, Any]:
    from bonefrac.evaluation.refer import fit_refer, refer_scores

    meta = run.meta()
    record = fit_refer(run, coverage, meta, scores=refer_scores(tta))
    run.update_meta(refer=record)
    return {"refer": record, "temperature": meta.temperature, "new_threshold": meta.threshold}
