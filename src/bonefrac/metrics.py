"""Classification metrics with stratified, seeded bootstrap confidence intervals.

Conventions (DESIGN.md): positive class = fractured = 1; a prediction is positive when
``prob >= threshold``. Sensitivity is the recall of class 1, specificity the recall of class 0.

``compute_metrics`` returns plain Python values ready for JSON: every metric is
``{"value": v, "ci_low": a, "ci_high": b}`` where an undefined value (e.g. ROC-AUC when only one
class is present) is ``None`` and the reason is given under ``"notes"``.

The bootstrap resamples positives and negatives separately (stratified, so every resample has
both classes and the same prevalence) and is fully vectorised: every metric, ROC-AUC and average
precision included, is computed from a ``(n_boot, n)`` matrix of resample counts, so 1,000
resamples of a few thousand rows take well under a second.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

#: Metrics that carry a value and a confidence interval, in display order.
METRIC_NAMES = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "roc_auc",
    "pr_auc",
    "balanced_accuracy",
)

#: Equal-width probability bins of the reliability diagram and ECE.
N_BINS = 15
_MAX_CELLS = 4_000_000  # bootstrap chunk size (resamples x rows) to bound memory


def sigmoid(x: Any) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=float)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def logit_from_prob(prob: Any, eps: float = 1e-7) -> np.ndarray:
    """Inverse sigmoid, clipped so that probabilities of exactly 0 or 1 stay finite."""
    p = np.clip(np.asarray(prob, dtype=float), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def apply_temperature(logit: Any, temperature: float) -> np.ndarray:
    """Calibrated probability ``sigmoid(logit / T)`` (temperature scaling, Guo et al. 2017)."""
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return sigmoid(np.asarray(logit, dtype=float) / t)


def confusion_counts(y_true: Any, prob: Any, threshold: float = 0.5) -> dict[str, int]:
    """``{"tn", "fp", "fn", "tp"}`` at ``prob >= threshold``."""
    y = np.asarray(y_true).astype(int)
    pred = np.asarray(prob, dtype=float) >= threshold
    return {
        "tn": int(np.sum((y == 0) & ~pred)),
        "fp": int(np.sum((y == 0) & pred)),
        "fn": int(np.sum((y == 1) & ~pred)),
        "tp": int(np.sum((y == 1) & pred)),
    }


def _rates(tn: Any, fp: Any, fn: Any, tp: Any) -> dict[str, np.ndarray]:
    """Threshold metrics from (arrays of) confusion counts; NaN where undefined.

    Precision (PPV) and F1 follow scikit-learn's ``zero_division=0``; sensitivity,
    specificity and balanced accuracy are NaN when the class they need is absent, and NPV
    (``tn / (tn + fn)``) when no image is called negative.
    """
    tn, fp, fn, tp = (np.asarray(v, dtype=float) for v in (tn, fp, fn, tp))
    n = tn + fp + fn + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        acc = np.where(n > 0, (tp + tn) / n, np.nan)
    return {
        "accuracy": acc,
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "npv": npv,
        "f1": f1,
        "balanced_accuracy": (sens + spec) / 2.0,
    }


def point_metrics(y_true: Any, prob: Any, threshold: float = 0.5) -> dict[str, float]:
    """Point estimates only (no bootstrap); NaN where undefined (ROC-AUC and PR-AUC also when
    a score is not finite). Training logs these for its validation split every epoch."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    cm = confusion_counts(y, p, threshold)
    out = {k: float(v) for k, v in _rates(cm["tn"], cm["fp"], cm["fn"], cm["tp"]).items()}
    # Non-finite scores (a diverged model) have no ranking: NaN, not an error.
    if 0 < y.sum() < len(y) and np.isfinite(p).all():
        out["roc_auc"] = float(skm.roc_auc_score(y, p))
        out["pr_auc"] = float(skm.average_precision_score(y, p))
    else:
        out["roc_auc"] = out["pr_auc"] = float("nan")
    return {name: out[name] for name in METRIC_NAMES}


def _group_starts(sorted_scores: np.ndarray) -> np.ndarray:
    """Start index of each run of equal scores in an ascending array."""
    if len(sorted_scores) == 0:
        return np.zeros(0, dtype=int)
    change = np.flatnonzero(np.diff(sorted_scores) != 0) + 1
    return np.concatenate([[0], change])


def _bootstrap_distribution(
    y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int, seed: int
) -> dict[str, np.ndarray]:
    """Metric values over ``n_boot`` stratified resamples (arrays of length ``n_boot``)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(p, kind="mergesort")  # ascending score
    ys, ps = y[order], p[order]
    n = len(ys)
    pos_idx = np.flatnonzero(ys == 1)
    neg_idx = np.flatnonzero(ys == 0)
    n_pos, n_neg = len(pos_idx), len(neg_idx)
    pred = (ps >= threshold).astype(float)
    is_pos = ys.astype(float)
    starts = _group_starts(ps)
    both = n_pos > 0 and n_neg > 0

    chunk = max(1, _MAX_CELLS // max(n, 1))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        done += b
        # resample counts per (sorted) row: stratified, so each class keeps its size
        draws = []
        if n_pos:
            draws.append(pos_idx[rng.integers(0, n_pos, size=(b, n_pos))])
        if n_neg:
            draws.append(neg_idx[rng.integers(0, n_neg, size=(b, n_neg))])
        idx = np.concatenate(draws, axis=1)
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        w = np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)

        wp = w * is_pos  # positive weight per row
        wn = w - wp
        tp = wp @ pred
        fn = n_pos - tp
        fp = wn @ pred
        tn = n_neg - fp
        for name, arr in _rates(tn, fp, fn, tp).items():
            parts[name].append(arr)

        if both:
            # aggregate weights per distinct score (ties share a group), ascending score
            pg = np.add.reduceat(wp, starts, axis=1)
            ng = np.add.reduceat(wn, starts, axis=1)
            neg_below = np.cumsum(ng, axis=1) - ng
            auc = (pg * (neg_below + 0.5 * ng)).sum(axis=1) / (n_pos * n_neg)
            # average precision: walk groups from the highest score down
            tp_c = np.cumsum(pg[:, ::-1], axis=1)
            fp_c = np.cumsum(ng[:, ::-1], axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                prec_c = np.where(tp_c + fp_c > 0, tp_c / (tp_c + fp_c), 1.0)
            ap = (pg[:, ::-1] * prec_c).sum(axis=1) / n_pos
        else:
            auc = ap = np.full(b, np.nan)
        parts["roc_auc"].append(auc)
        parts["pr_auc"].append(ap)
    return {name: np.concatenate(vals) for name, vals in parts.items()}


def _clean(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def _entries(
    names: Any, point: dict[str, Any], dist: dict[str, np.ndarray], ci: float
) -> dict[str, dict]:
    """``{name: {"value", "ci_low", "ci_high"}}``: each point value with the percentile
    interval of its finite bootstrap values (``None`` where undefined or not resampled)."""
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 - (1 - ci) / 2)
    out: dict[str, dict] = {}
    for name in names:
        value = _clean(point[name])
        low = high = None
        if value is not None and name in dist:
            d = dist[name][np.isfinite(dist[name])]
            if len(d):
                low, high = _clean(np.percentile(d, lo_q)), _clean(np.percentile(d, hi_q))
        out[name] = {"value": value, "ci_low": low, "ci_high": high}
    return out


def compute_metrics(
    y_true: Any,
    prob: Any,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, dict]:
    """Metrics at ``threshold`` with stratified percentile-bootstrap confidence intervals.

    Returns ``{metric: {"value", "ci_low", "ci_high"}}`` for every name in ``METRIC_NAMES``, plus
    ``"confusion_matrix"`` (tn, fp, fn, tp), ``"support"`` (n, n_pos, n_neg), ``"settings"``
    (threshold, n_boot, seed, ci, method) and ``"notes"`` (metric -> why it is undefined).
    Undefined values are ``None``. ``n_boot=0`` skips the bootstrap (CIs are ``None``).
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and prob differ in length: {len(y)} vs {len(p)}")
    if len(y) and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    if np.isnan(p).any():
        raise ValueError("prob contains NaN")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    threshold = float(threshold)
    n, n_pos = len(y), int(y.sum())
    n_neg = n - n_pos

    point = point_metrics(y, p, threshold) if n else dict.fromkeys(METRIC_NAMES, float("nan"))
    notes: dict[str, str] = {}
    if n == 0:
        notes["all"] = "no rows"
    if n and n_pos == 0:
        for k in ("sensitivity", "roc_auc", "pr_auc", "balanced_accuracy"):
            notes[k] = "undefined: no positive (fractured) cases"
    if n and n_neg == 0:
        for k in ("specificity", "roc_auc", "pr_auc", "balanced_accuracy"):
            notes[k] = "undefined: no negative (not fractured) cases"

    dist = _bootstrap_distribution(y, p, threshold, int(n_boot), seed) if n and n_boot > 0 else {}
    out: dict[str, dict] = _entries(METRIC_NAMES, point, dist, ci)
    out["confusion_matrix"] = confusion_counts(y, p, threshold)
    out["support"] = {"n": n, "n_pos": n_pos, "n_neg": n_neg}
    out["settings"] = {
        "threshold": threshold,
        "n_boot": int(n_boot),
        "seed": int(seed),
        "ci": float(ci),
        "method": "stratified percentile bootstrap",
    }
    out["notes"] = notes
    return out


def is_metric_entry(value: Any) -> bool:
    """True for ``{"value", "ci_low", "ci_high"}`` entries (as opposed to counts and settings)."""
    return isinstance(value, dict) and "value" in value and "ci_low" in value


def format_ci(entry: dict | None, digits: int = 3) -> str:
    """``0.912 [0.881, 0.940]``; ``n/a`` when undefined."""
    if not entry or entry.get("value") is None:
        return "n/a"
    v = f"{entry['value']:.{digits}f}"
    if entry.get("ci_low") is None or entry.get("ci_high") is None:
        return v
    return f"{v} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"


# --- calibration ----------------------------------------------------------------------------


def reliability_bins(y_true: Any, prob: Any, n_bins: int = N_BINS) -> dict[str, Any]:
    """Equal-width bins over [0, 1]: edges, count, mean_prob, frac_pos (NaN when empty), ece."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(prob, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        frac = np.where(count > 0, sum_y / count, np.nan)
    n = max(len(p), 1)
    ece = float(np.nansum(count / n * np.abs(frac - mean_p))) if len(p) else float("nan")
    return {"edges": edges, "count": count, "mean_prob": mean_p, "frac_pos": frac, "ece": ece}


def expected_calibration_error(y_true: Any, prob: Any, n_bins: int = N_BINS) -> float:
    """Binary reliability ECE: ``sum_b n_b / n * |mean(y)_b - mean(p)_b|`` over equal bins."""
    return reliability_bins(y_true, prob, n_bins)["ece"]


def brier_score(y_true: Any, prob: Any) -> float:
    """Mean squared error of the probabilities (scikit-learn's ``brier_score_loss``)."""
    y = np.asarray(y_true, dtype=int)
    if not len(y):
        return float("nan")
    return float(skm.brier_score_loss(y, np.asarray(prob, dtype=float), pos_label=1))


# --- selective prediction -------------------------------------------------------------------
# An image is "accepted" when its uncertainty is at or below a cut-off and "referred" otherwise.
# The generalized risk at a coverage (Traub et al. 2024, "Overcoming common flaws in the
# evaluation of selective classification systems") is P(wrong and accepted) = errors among the
# accepted / all images; its area over coverage (AUGRC, lower is better) is the average share of
# undetected errors. A random ranking gives error_rate / 2, a perfect one error_rate^2 / 2.


def risk_coverage(uncertainty: Any, errors: Any) -> dict[str, np.ndarray]:
    """The risk-coverage curve at every distinct uncertainty cut-off (ties move together).

    Returns ``coverage``, ``generalized_risk`` (errors accepted / n) and ``selective_risk``
    (errors accepted / accepted), each starting at coverage 0, and the ``cutoff`` of each point.
    """
    u = np.asarray(uncertainty, dtype=float).ravel()
    e = np.asarray(errors, dtype=float).ravel()
    if u.shape != e.shape:
        raise ValueError(f"uncertainty and errors differ in length: {len(u)} vs {len(e)}")
    n = len(u)
    if n == 0:
        zero = np.zeros(1)
        return {"coverage": zero, "generalized_risk": zero, "selective_risk": zero,
                "cutoff": np.full(1, -np.inf)}  # fmt: skip
    order = np.argsort(u, kind="mergesort")  # most certain first
    us, es = u[order], e[order]
    starts = _group_starts(us)
    ends = np.append(starts[1:], n)  # accepted count after each tie group
    cum_err = np.cumsum(es)[ends - 1]
    accepted = ends.astype(float)
    coverage = np.concatenate([[0.0], accepted / n])
    gen = np.concatenate([[0.0], cum_err / n])
    sel = np.concatenate([[0.0], cum_err / accepted])
    cutoff = np.concatenate([[-np.inf], us[ends - 1]])
    return {"coverage": coverage, "generalized_risk": gen, "selective_risk": sel,
            "cutoff": cutoff}  # fmt: skip


def augrc(uncertainty: Any, errors: Any) -> float:
    """Area under the generalized risk-coverage curve (trapezoids between tie groups)."""
    rc = risk_coverage(uncertainty, errors)
    cov, risk = rc["coverage"], rc["generalized_risk"]
    if len(cov) < 2:
        return float("nan")
    return float(np.sum(np.diff(cov) * (risk[1:] + risk[:-1]) / 2.0))


def augrc_with_ci(
    uncertainty: Any, errors: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> dict[str, float | None]:
    """AUGRC with a percentile-bootstrap CI (images resampled with replacement)."""
    u = np.asarray(uncertainty, dtype=float).ravel()
    e = np.asarray(errors, dtype=float).ravel()
    value = _clean(augrc(u, e)) if len(u) else None
    low = high = None
    if value is not None and n_boot > 0:
        rng = np.random.default_rng(seed)
        boots = np.empty(n_boot)
        for b in range(n_boot):
            idx = rng.integers(0, len(u), len(u))
            boots[b] = augrc(u[idx], e[idx])
        lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 - (1 - ci) / 2)
        low, high = _clean(np.percentile(boots, lo_q)), _clean(np.percentile(boots, hi_q))
    return {"value": value, "ci_low": low, "ci_high": high}


def error_detection_auroc(uncertainty: Any, errors: Any) -> float | None:
    """ROC-AUC of ``uncertainty`` for telling wrong answers (1) from right ones (0); ``None``
    when all answers are right or all wrong."""
    e = np.asarray(errors).astype(int).ravel()
    if e.min(initial=0) == e.max(initial=0):
        return None
    return float(skm.roc_auc_score(e, np.asarray(uncertainty, dtype=float).ravel()))


def coverage_cutoff(uncertainty: Any, coverage: float) -> float:
    """The uncertainty cut-off that accepts (``<= cutoff``) a share ``coverage`` of the images:
    the ``ceil(coverage * n)``-th smallest value (exact when the values are distinct)."""
    u = np.sort(np.asarray(uncertainty, dtype=float).ravel())
    if not len(u):
        raise ValueError("no uncertainties to choose a cut-off from")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage {coverage} must be in (0, 1]")
    k = max(1, math.ceil(round(coverage * len(u), 9)))
    return float(u[k - 1])


# --- decisions: what a second reader's user sees ---------------------------------------------

#: Decision metrics, misses first (``decision_metrics``): the share of fractured images called
#: ``no_fracture`` (the costly error of a second reader), the share of normals cleared as
#: ``no_fracture`` (the work it saves), the share referred, and the PPV of ``fracture`` calls.
DECISION_METRIC_NAMES = ("miss_rate", "normals_cleared", "referred", "fracture_ppv")


def decision_metrics(
    y_true: Any,
    decisions: Any,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, dict]:
    """Decision metrics (:data:`DECISION_METRIC_NAMES`) of ``decisions`` (the vocabulary words
    ``fracture`` / ``no_fracture`` / ``refer`` / ``out_of_scope``) against ``y_true``, with
    stratified percentile-bootstrap CIs (positives and negatives resampled apart, as in
    :func:`compute_metrics`).

    ``miss_rate``: fractured called ``no_fracture``, over all fractured (an ``out_of_scope``
    fractured image is no miss: it got no answer, and is counted under ``out_of_scope``);
    ``normals_cleared``: not fractured called ``no_fracture``, over all not fractured;
    ``referred``: ``refer`` over all; ``fracture_ppv``: fractured among ``fracture`` calls.
    Also ``"counts"`` (decision -> {"pos", "neg"}) and ``"out_of_scope"`` (its share).
    """
    y = np.asarray(y_true).astype(int).ravel()
    d = np.asarray(decisions, dtype=object).ravel()
    if y.shape != d.shape:
        raise ValueError(f"y_true and decisions differ in length: {len(y)} vs {len(d)}")
    words = ("fracture", "no_fracture", "refer", "out_of_scope")
    unknown = sorted({str(v) for v in d} - set(words))
    if unknown:
        raise ValueError(f"unknown decision(s) {unknown}; expected one of {list(words)}")
    pos, neg = y == 1, y == 0
    counts = np.array([[np.sum((d == w) & pos), np.sum((d == w) & neg)] for w in words], float)

    def rates(c: np.ndarray) -> dict[str, np.ndarray]:
        """``c``: (..., 4 words, 2 classes) counts -> each rate, NaN where undefined."""
        fx, nf, rf, oos = (c[..., i, :] for i in range(4))
        n_pos, n_neg = c[..., :, 0].sum(-1), c[..., :, 1].sum(-1)
        n = n_pos + n_neg
        called = fx[..., 0] + fx[..., 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return {
                "miss_rate": np.where(n_pos > 0, nf[..., 0] / n_pos, np.nan),
                "normals_cleared": np.where(n_neg > 0, nf[..., 1] / n_neg, np.nan),
                "referred": np.where(n > 0, (rf[..., 0] + rf[..., 1]) / n, np.nan),
                "fracture_ppv": np.where(called > 0, fx[..., 0] / np.maximum(called, 1), np.nan),
                "out_of_scope": np.where(n > 0, (oos[..., 0] + oos[..., 1]) / n, np.nan),
            }

    point = rates(counts)
    dist: dict[str, np.ndarray] = {}
    if n_boot > 0 and len(y):
        rng = np.random.default_rng(seed)
        draws = np.zeros((int(n_boot), len(words), 2))
        for k in range(2):  # a stratified resample of one class is a multinomial draw
            total = counts[:, k].sum()
            if total > 0:
                draws[:, :, k] = rng.multinomial(int(total), counts[:, k] / total, size=n_boot)
        dist = rates(draws)
    out: dict[str, Any] = _entries((*DECISION_METRIC_NAMES, "out_of_scope"), point, dist, ci)
    out["counts"] = {
        w: {"pos": int(counts[i, 0]), "neg": int(counts[i, 1])} for i, w in enumerate(words)
    }
    return out
