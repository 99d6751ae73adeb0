"""Choosing the decision threshold on validation predictions.

Criteria (``prob >= threshold`` is positive; every candidate threshold is an observed score):

- ``f1``: the threshold with the highest F1 (the highest such threshold on ties);
- ``youden``: max of sensitivity + specificity - 1 (highest on ties);
- ``sensitivity:X``: the highest threshold whose sensitivity is >= X (the most specific operating
  point that still catches a fraction X of fractures);
- ``specificity:X``: the lowest threshold whose specificity is >= X (the most sensitive operating
  point that keeps a fraction X of normals negative).

The default decision rule has two cuts (``--rule-out-sensitivity X``, config
``deploy.rule_out_sensitivity``): ``no_fracture`` only below a rule-out cut, the highest
``sensitivity:X`` threshold (so that at least a share X of val fractures is flagged, as
``fracture`` or ``refer``, by construction), and ``fracture`` at or above the rule-in cut (the
stored ``threshold``, by default ``specificity:0.95``: config ``deploy.rule_in_specificity``);
``refer`` between. When val holds too few fractures to show the target (fewer than
:func:`min_positives` ones: the rule of three), a warning says so; the achieved val sensitivity
is always stored with its Wilson 95% interval.

``--refer-coverage X`` instead fits the one-cut rule's refer band
(:mod:`bonefrac.evaluation.refer`) at the threshold, on val, so that a share X of val images
gets a fracture / no-fracture answer and the rest is referred; a band already in model.json is
refitted at its coverage whenever the threshold changes. A run has one rule or the other.

Tuning happens on ``val`` only: choosing the threshold on test would make the test metrics
optimistic. When model.json has a temperature other than 1, thresholds are chosen on the
calibrated probabilities ``sigmoid(logit / T)`` -- the scale the stored threshold applies to.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from bonefrac.config import Criterion, parse_criterion
from bonefrac.errors import ConfigError, DataError
from bonefrac.metrics import compute_metrics
from bonefrac.rundir import ModelMeta, RunDir, run_probabilities, usable_threshold
from bonefrac.rundir.predictions import LABEL

log = logging.getLogger(__name__)


def choose_threshold(y_true: Any, prob: Any, criterion: Criterion | str) -> float:
    """The threshold ``criterion`` picks on (y_true, prob) (text is parsed here)."""
    name, target = parse_criterion(criterion) if isinstance(criterion, str) else criterion
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


def min_positives(sensitivity: float) -> int:
    """The fewest val fractures that can show a miss rate of at most ``1 - sensitivity`` at
    95% confidence: with none missed, the upper bound of the miss rate is about ``3 / n``
    (the rule of three), so ``n >= 3 / (1 - sensitivity)`` (60 for 0.95)."""
    return math.ceil(3.0 / (1.0 - sensitivity) - 1e-9)


def wilson_interval(k: int, n: int) -> tuple[float | None, float | None]:
    """Wilson 95% interval of the proportion ``k / n`` (``None``s for ``n == 0``)."""
    if n == 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def fit_rule_out(
    y_true: Any, prob: Any, sensitivity: float, source: object = "val"
) -> dict[str, Any]:
    """The rule-out cut at val ``sensitivity`` (not clipped to the rule-in cut) and what it
    achieves on val: the model.json ``rule_out_fit`` record (``cut``, ``target``,
    ``sensitivity`` with its Wilson interval, counts, and a ``warning`` when val has too few
    fractures)."""
    if not 0 < sensitivity < 1:
        raise ConfigError(f"rule-out sensitivity {sensitivity}: must be in (0, 1), e.g. 0.95")
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    cut = usable_threshold(choose_threshold(y, p, Criterion("sensitivity", sensitivity)))
    n_pos = int(y.sum())
    caught = int(((p >= cut) & (y == 1)).sum())
    low, high = wilson_interval(caught, n_pos)
    record: dict[str, Any] = {
        "cut": cut,
        "target": float(sensitivity),
        "tuned_on": "val",
        "val_n_pos": n_pos,
        "val_n_neg": len(y) - n_pos,
        "val_sensitivity": {"value": caught / n_pos, "ci_low": low, "ci_high": high},
        "val_normals_cleared": float(((p < cut) & (y == 0)).sum() / max(len(y) - n_pos, 1)),
    }
    need = min_positives(sensitivity)
    if n_pos < need:
        record["warning"] = (
            f"{source}: {n_pos} fractured images, fewer than the {need} needed to show a "
            f"sensitivity of {sensitivity:g} (rule of three); the rule-out cut's val "
            f"sensitivity is {caught}/{n_pos} (95% CI {low:.3f}-{high:.3f})"
        )
        log.warning("%s", record["warning"])
    return record


def rule_out_summary(record: dict[str, Any]) -> str:
    """One line on a fitted rule-out cut (:func:`fit_rule_out`'s record with ``applied``):
    what ``bonefrac threshold`` prints and ``bonefrac train``'s deploy report says."""
    sens = record["val_sensitivity"]
    return (
        f"rule-out cut {record['applied']:.4f}: no_fracture only below it; val sensitivity "
        f"{sens['value']:.3f} [{sens['ci_low']:.3f}, {sens['ci_high']:.3f}] (target "
        f"{record['target']:g}, {record['val_n_pos']} val fractures); "
        f"{record['val_normals_cleared']:.1%} of val normals cleared; between the cuts: refer"
    )


def tune_threshold(
    run_dir: str | Path,
    criterion: Criterion | str | None,
    refer_coverage: float | None = None,
    refer_tta: bool = False,
    rule_out_sensitivity: float | None = None,
) -> dict[str, Any]:
    """Choose the rule-in threshold on ``predictions/val.csv`` (``criterion``; ``None`` keeps
    it) and the rule that makes ``refer`` calls: the rule-out cut of the two-cut rule
    (``rule_out_sensitivity``) or the one-cut rule's refer band (``refer_coverage``;
    ``refer_tta``: also try the test-time augmentation spread, which costs 8 model calls per
    val image). Neither given: the run's own rule is refitted at its stored target. Stores
    them in model.json and returns val/test metrics at the old and the new threshold (point
    estimates), the refer record or the rule-out record."""
    _check_rule_options(criterion, refer_coverage, rule_out_sensitivity)
    run = RunDir.open(run_dir, writable=True)
    meta = run.meta()
    if rule_out_sensitivity is None and refer_coverage is None:
        kept = meta.get("rule_out_fit")
        if meta.rule_out is not None and isinstance(kept, dict):
            rule_out_sensitivity = float(kept["target"])
    if criterion is None and rule_out_sensitivity is None:
        return _refer_only(run, float(refer_coverage), refer_tta)
    if isinstance(criterion, str):  # the command's text: parsed once, here
        criterion = parse_criterion(criterion)
    old = meta.threshold
    new, rule_out, splits = _fit_on_val(run, meta, criterion, rule_out_sensitivity)
    result: dict[str, Any] = {
        "criterion": str(criterion) if criterion else meta.get("threshold_criterion"),
        "tuned_on": "val",
        "temperature": meta.temperature,
        "old_threshold": old,
        "old_criterion": meta.get("threshold_criterion"),
        "new_threshold": new,
        "metrics": {
            split: {
                "old": compute_metrics(y, p, old, n_boot=0),
                "new": compute_metrics(y, p, new, n_boot=0),
            }
            for split, (y, p) in splits.items()
        },
    }
    changes: dict[str, Any] = {"threshold": new}
    if criterion is not None:
        changes.update(
            threshold_criterion=str(criterion),
            threshold_tuned_on="val",
            threshold_updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
    _store_rule(run, meta, changes, result, rule_out, refer_coverage, refer_tta)
    return result


def _check_rule_options(
    criterion: Criterion | str | None,
    refer_coverage: float | None,
    rule_out_sensitivity: float | None,
) -> None:
    if criterion is None and refer_coverage is None and rule_out_sensitivity is None:
        raise ConfigError("give --criterion, --rule-out-sensitivity, --refer-coverage or both")
    if refer_coverage is not None and rule_out_sensitivity is not None:
        raise ConfigError(
            "--refer-coverage and --rule-out-sensitivity are two different refer rules; "
            "choose one (the two-cut rule, --rule-out-sensitivity, is the default)"
        )
    if refer_coverage is not None and not 0 < refer_coverage <= 1:
        raise ConfigError(f"--refer-coverage {refer_coverage}: must be in (0, 1], e.g. 0.8")


def _fit_on_val(
    run: RunDir, meta: ModelMeta, criterion: Criterion | None, rule_out_sensitivity: float | None
) -> tuple[float, dict[str, Any] | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The new rule-in threshold and rule-out record fitted on val, and ``(labels,
    probabilities)`` of val and (when there) test."""
    val = run.predictions("val")
    y_val = val[LABEL].to_numpy()
    p_val = run_probabilities(val, meta)
    try:
        new = (
            meta.threshold
            if criterion is None
            else usable_threshold(choose_threshold(y_val, p_val, criterion))
        )
        rule_out = (
            None
            if rule_out_sensitivity is None
            else fit_rule_out(y_val, p_val, rule_out_sensitivity, run.prediction_path("val"))
        )
    except DataError as exc:
        raise DataError(f"{run.prediction_path('val')}: {exc}") from exc
    splits = {"val": (y_val, p_val)}
    if run.prediction_path("test").is_file():
        test = run.predictions("test")
        splits["test"] = (test[LABEL].to_numpy(), run_probabilities(test, meta))
    return new, rule_out, splits


def _store_rule(
    run: RunDir,
    meta: ModelMeta,
    changes: dict[str, Any],
    result: dict[str, Any],
    rule_out: dict[str, Any] | None,
    refer_coverage: float | None,
    refer_tta: bool,
) -> None:
    """Write the threshold ``changes`` with the rule-out cut, or with the refer band refitted
    at the new threshold (when one is asked for or kept), into model.json and ``result``."""
    if rule_out is not None:
        rule_out["applied"] = min(rule_out["cut"], changes["threshold"])
        changes.update(rule_out=rule_out["applied"], rule_out_fit=rule_out, refer=None)
        result["rule_out"] = rule_out
        run.update_meta(**changes)
        return
    coverage = refer_coverage if refer_coverage is not None else _kept_coverage(meta)
    changes.update(rule_out=None, rule_out_fit=None)
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


def _kept_coverage(meta: ModelMeta) -> float | None:
    return meta.refer.coverage if meta.refer is not None else None


def _refer_only(run: RunDir, coverage: float, tta: bool) -> dict[str, Any]:
    from bonefrac.evaluation.refer import fit_refer, refer_scores

    raw = run.raw_meta()
    raw.update(rule_out=None, rule_out_fit=None, refer=None)
    meta = ModelMeta.parse(raw, run.meta_path)
    record = fit_refer(run, coverage, meta, scores=refer_scores(tta))
    run.update_meta(refer=record, rule_out=None, rule_out_fit=None)
    return {"refer": record, "temperature": meta.temperature, "new_threshold": meta.threshold}
