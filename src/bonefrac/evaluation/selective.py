"""Selective prediction: how well does the run know when not to answer?

For one set of predictions: the risk-coverage curve, AUGRC (area under the generalized
risk-coverage curve, Traub et al. 2024; lower is better; a random ranking gives error_rate / 2,
a perfect one error_rate^2 / 2) with a bootstrap CI, and -- when the run has a refer rule --
sensitivity and specificity on the images the rule accepts, with CIs. The uncertainty is the
refer rule's score (``margin`` when the run has no rule). Out-of-scope flags are not applied:
evaluation splits are in-scope radiographs by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bonefrac.metrics import augrc_with_ci, compute_metrics, error_detection_auroc
from bonefrac.rundir import ModelMeta, RunDir


def selective_entry(
    run: RunDir,
    key: str,
    y: np.ndarray,
    prob: np.ndarray,
    meta: ModelMeta,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    predictor: Any = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """``(metrics.json[key]["selective"], uncertainty, errors)`` for ``predictions/<key>``."""
    from bonefrac.evaluation.refer import uncertainty_for

    rule = meta.refer
    score = rule.score if rule is not None else "margin"
    u = uncertainty_for(score, run, key, meta, predictor)
    errors = (meta.decide(prob) != (np.asarray(y) == 1)).astype(int)
    err = float(errors.mean()) if len(errors) else float("nan")
    entry: dict[str, Any] = {
        "score": score,
        "augrc": augrc_with_ci(u, errors, n_boot=n_boot, seed=seed),
        "augrc_random": err / 2,
        "augrc_optimal": err**2 / 2,
        "error_rate": err,
        "error_auroc": error_detection_auroc(u, errors),
    }
    if rule is not None:
        accepted = u <= rule.cutoff
        sub = compute_metrics(y[accepted], prob[accepted], meta.threshold, n_boot=n_boot,
                              seed=seed)  # fmt: skip
        entry["refer"] = {
            "coverage_target": rule.coverage,
            "cutoff": rule.cutoff,
            "coverage": float(accepted.mean()),
            "n_accepted": int(accepted.sum()),
            "n_referred": int((~accepted).sum()),
            "sensitivity": sub["sensitivity"],
            "specificity": sub["specificity"],
            "accuracy": sub["accuracy"],
            "notes": sub["notes"],
        }
    return entry, u, errors
