"""Temperature scaling, ECE and Brier score.

``bonefrac calibrate RUN`` fits one temperature ``T`` on the validation logits (minimising the
negative log-likelihood of ``sigmoid(logit / T)``), stores it in model.json and reports ECE and
Brier score before (``T = 1``, the raw model) and after, on val and test.

Temperature scaling is monotonic, so it never changes ROC-AUC or the ranking of images. To keep
the run's *decisions* unchanged, the stored threshold is moved onto the new probability scale
(``t_new = sigmoid(logit(t_old) * T_old / T_new)``): a threshold tuned earlier keeps its
operating point; 0.5 stays 0.5.

ECE here is the binary reliability ECE on P(fractured): 15 equal-width bins over [0, 1],
``sum_b n_b / n * |mean(y)_b - mean(p)_b|`` (the same bins as the reliability diagram).
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from bonefrac.errors import DataError
from bonefrac.metrics import (
    N_BINS,
    apply_temperature,
    brier_score,
    expected_calibration_error,
    logit_from_prob,
    sigmoid,
)
from bonefrac.rundir import RunDir, raw_logits, usable_threshold
from bonefrac.rundir.predictions import LABEL

log = logging.getLogger(__name__)

_LOG_T_BOUNDS = (np.log(0.01), np.log(100.0))


def binary_nll(y_true: Any, logit: Any, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logit / T)`` (computed stably from logits)."""
    y = np.asarray(y_true, dtype=float)
    z = np.asarray(logit, dtype=float) / temperature
    # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logit: Any, y_true: Any) -> float:
    """Temperature ``T > 0`` minimising the NLL of ``sigmoid(logit / T)`` (bounded Brent on
    log T, T in [0.01, 100])."""
    z = np.asarray(logit, dtype=float)
    y = np.asarray(y_true, dtype=float)
    if len(z) == 0 or y.min() == y.max():
        raise DataError("temperature scaling needs both classes in the validation predictions")
    res = minimize_scalar(
        lambda lt: binary_nll(y, z, float(np.exp(lt))),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    t = float(np.exp(res.x))
    if binary_nll(y, z, t) > binary_nll(y, z, 1.0):  # never worse than doing nothing
        t = 1.0
    return t


def calibration_summary(y_true: Any, logit: Any, temperature: float, n_bins: int = N_BINS) -> dict:
    """ECE, Brier and NLL before (T = 1) and after (T = temperature)."""
    before = sigmoid(logit)
    after = apply_temperature(logit, temperature)
    return {
        "n": len(np.asarray(y_true)),
        "ece_before": expected_calibration_error(y_true, before, n_bins),
        "ece_after": expected_calibration_error(y_true, after, n_bins),
        "brier_before": brier_score(y_true, before),
        "brier_after": brier_score(y_true, after),
        "nll_before": binary_nll(y_true, logit, 1.0),
        "nll_after": binary_nll(y_true, logit, temperature),
    }


def rescale_threshold(threshold: float, old_temperature: float, new_temperature: float) -> float:
    """The threshold on the new probability scale that makes the same decisions."""
    if old_temperature == new_temperature or threshold in (0.0, 1.0):
        return float(threshold)
    raw = float(logit_from_prob(threshold, eps=1e-12)) * old_temperature
    return float(sigmoid(raw / new_temperature))


def calibrate_run(run_dir: str | Path, n_bins: int = N_BINS) -> dict[str, Any]:
    """Fit the temperature on ``RUN/predictions/val.csv``; update model.json; write
    ``plots/calibration_<split>.png``. Returns the summary that is also stored in model.json
    under ``"calibration"``."""
    from bonefrac.evaluation import plots

    run = RunDir.open(run_dir, writable=True)
    meta = run.meta()
    old_t = meta.temperature
    old_threshold = meta.threshold

    val = run.predictions("val")
    if "logit" not in val.columns:
        log.warning(
            "%s has no 'logit' column; logits recovered from 'prob'", run.prediction_path("val")
        )
    y_val, z_val = val[LABEL].to_numpy(), raw_logits(val)
    try:
        temperature = fit_temperature(z_val, y_val)
    except DataError as exc:
        raise DataError(f"{run.prediction_path('val')}: {exc}") from exc

    splits: dict[str, Any] = {"val": (y_val, z_val)}
    if run.prediction_path("test").is_file():
        test = run.predictions("test")
        splits["test"] = (test[LABEL].to_numpy(), raw_logits(test))

    summary: dict[str, Any] = {
        "method": "temperature scaling",
        "fitted_on": "val",
        "temperature": temperature,
        "previous_temperature": old_t,
        "n_bins": n_bins,
        "threshold_before": old_threshold,
        "threshold_after": usable_threshold(rescale_threshold(old_threshold, old_t, temperature)),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "plots": {},
    }
    for split, (y, z) in splits.items():
        summary[split] = calibration_summary(y, z, temperature, n_bins)
        png = run.plot_path(f"calibration_{split}")
        plots.plot_reliability(
            y,
            {
                "before (T=1)": sigmoid(z),
                f"after (T={temperature:.2f})": apply_temperature(z, temperature),
            },
            png,
            n_bins=n_bins,
            title=f"Reliability before/after temperature scaling ({split})",
        )
        summary["plots"][split] = str(png.relative_to(run.path))

    changes: dict[str, Any] = {}
    if meta.rule_out is not None:  # the rule-out cut keeps its decisions too
        changes["rule_out"] = min(
            usable_threshold(rescale_threshold(meta.rule_out, old_t, temperature)),
            summary["threshold_after"],
        )
    run.update_meta(
        temperature=temperature,
        threshold=summary["threshold_after"],
        calibration=summary,
        **changes,
    )
    return summary
