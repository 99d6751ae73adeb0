"""Evaluation plots (PNG). Uses matplotlib's object API (``Figure``), so no GUI backend and no
global pyplot state; every file is written atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from bonefrac.fileio import atomic_path
from bonefrac.metrics import confusion_counts, reliability_bins, risk_coverage

DPI = 110


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _two_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_roc(
    y_true: Any, prob: Any, threshold: float, path: str | Path, title: str = "ROC curve"
) -> Path:
    """ROC curve with its AUC and the operating point at ``threshold``."""
    y, p = np.asarray(y_true).astype(int), np.asarray(prob, dtype=float)
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    if _two_classes(y):
        fpr, tpr, _ = skm.roc_curve(y, p)
        auc = skm.roc_auc_score(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {auc:.3f})")
        cm = confusion_counts(y, p, threshold)
        op_fpr = cm["fp"] / max(cm["fp"] + cm["tn"], 1)
        op_tpr = cm["tp"] / max(cm["tp"] + cm["fn"], 1)
        ax.plot(
            [op_fpr], [op_tpr], "o", ms=8, color="tab:red",
            label=f"threshold {threshold:.3f} (sens {op_tpr:.2f}, spec {1 - op_fpr:.2f})",
        )  # fmt: skip
    else:
        _note(ax, "undefined: one class only")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)")
    ax.set(ylabel="sensitivity (TPR)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_pr(
    y_true: Any, prob: Any, threshold: float, path: str | Path, title: str = "Precision-recall"
) -> Path:
    """Precision-recall curve with average precision, the prevalence baseline and the
    operating point."""
    y, p = np.asarray(y_true).astype(int), np.asarray(prob, dtype=float)
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    prevalence = float(np.mean(y)) if len(y) else 0.0
    ax.axhline(prevalence, ls="--", color="0.6", lw=1, label=f"prevalence {prevalence:.3f}")
    if _two_classes(y):
        prec, rec, _ = skm.precision_recall_curve(y, p)
        ap = skm.average_precision_score(y, p)
        ax.step(rec, prec, where="post", lw=2, label=f"PR (AP = {ap:.3f})")
        cm = confusion_counts(y, p, threshold)
        r = cm["tp"] / max(cm["tp"] + cm["fn"], 1)
        pr = cm["tp"] / (cm["tp"] + cm["fp"]) if cm["tp"] + cm["fp"] else 1.0
        ax.plot([r], [pr], "o", ms=8, color="tab:red", label=f"threshold {threshold:.3f}")
    else:
        _note(ax, "undefined: one class only")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_confusion(
    counts: Mapping[str, int],
    path: str | Path,
    class_names: tuple[str, str] | list[str] = ("not_fractured", "fractured"),
    title: str = "Confusion matrix",
) -> Path:
    """2x2 confusion matrix: counts and row percentages (rows = true class)."""
    mat = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    rows = mat.sum(axis=1, keepdims=True)
    pct = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j, i, f"{int(mat[i, j])}\n{100 * pct[i, j]:.1f}%", ha="center", va="center",
                color="white" if pct[i, j] > 0.6 else "black", fontsize=11,
            )  # fmt: skip
    names = list(class_names)
    ax.set_xticks([0, 1], labels=[f"pred {n}" for n in names], fontsize=8)
    ax.set_yticks([0, 1], labels=[f"true {n}" for n in names], fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="row fraction")
    return save_figure(fig, path)


def _reliability_axes(
    ax: Any, y: np.ndarray, curves: Mapping[str, np.ndarray], n_bins: int
) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    for label, p in curves.items():
        bins = reliability_bins(y, p, n_bins)
        keep = bins["count"] > 0
        ax.plot(
            bins["mean_prob"][keep], bins["frac_pos"][keep], "o-", ms=4,
            label=f"{label} (ECE {bins['ece']:.3f})",
        )  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability (fractured)")
    ax.set(ylabel="observed fraction fractured")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)


def plot_reliability(
    y_true: Any,
    curves: Mapping[str, Any] | Any,
    path: str | Path,
    n_bins: int = 15,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagram; ``curves`` is one probability array or ``{label: probs}``
    (e.g. before/after temperature scaling). A histogram of predictions sits underneath."""
    y = np.asarray(y_true).astype(int)
    if not isinstance(curves, Mapping):
        curves = {"model": curves}
    curves = {k: np.asarray(v, dtype=float) for k, v in curves.items()}
    fig = Figure(figsize=(5, 6))
    ax, hist_ax = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    _reliability_axes(ax, y, curves, n_bins)
    ax.set_title(title)
    for label, p in curves.items():
        hist_ax.hist(p, bins=n_bins, range=(0, 1), alpha=0.5, label=label)
    hist_ax.set(xlabel="predicted probability (fractured)", ylabel="count")
    return save_figure(fig, path)


def plot_threshold_curve(
    y_true: Any, prob: Any, threshold: float, path: str | Path, title: str = "Metrics vs threshold"
) -> Path:
    """Sensitivity, specificity, precision and F1 as the threshold moves; current one marked."""
    y, p = np.asarray(y_true).astype(int), np.asarray(prob, dtype=float)
    ts = np.linspace(0.0, 1.0, 201)
    pred = p[None, :] >= ts[:, None]
    pos = y == 1
    tp = (pred & pos).sum(1).astype(float)
    fp = (pred & ~pos).sum(1).astype(float)
    fn = pos.sum() - tp
    tn = (~pos).sum() - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        curves = {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "F1": 2 * tp / (2 * tp + fp + fn),
        }
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for label, vals in curves.items():
        ax.plot(ts, vals, lw=1.8, label=label)
    ax.axvline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold on P(fractured)", ylabel="value")
    ax.set_title(title)
    ax.legend(loc="lower center", ncol=3, fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_roc_overlay(
    curves: Mapping[str, tuple[Any, Any]], path: str | Path, title: str = "ROC curves"
) -> Path:
    """Several ROC curves on one plot: ``{name: (y_true, prob)}``."""
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    for name, (y_true, prob) in curves.items():
        y, p = np.asarray(y_true).astype(int), np.asarray(prob, dtype=float)
        if not _two_classes(y):
            continue
        fpr, tpr, _ = skm.roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {skm.roc_auc_score(y, p):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)")
    ax.set(ylabel="sensitivity (TPR)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_risk_coverage(
    uncertainty: Any,
    errors: Any,
    path: str | Path,
    title: str = "Risk-coverage",
    coverage: float | None = None,
) -> Path:
    """Selective and generalized risk against coverage (images accepted most certain first),
    with the random and the perfect ranking's generalized risk, and the refer rule's coverage."""
    rc = risk_coverage(uncertainty, errors)
    cov, gen, sel = rc["coverage"], rc["generalized_risk"], rc["selective_risk"]
    err = float(np.mean(errors)) if len(np.atleast_1d(errors)) else 0.0
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    ax.plot(cov[1:], sel[1:], lw=2, label="selective risk (errors / accepted)")
    ax.plot(cov, gen, lw=2, label="generalized risk (errors accepted / all)")
    grid = np.linspace(0, 1, 101)
    ax.plot(grid, err * grid, ls="--", color="0.6", lw=1, label="random ranking (generalized risk)")
    ax.plot(grid, np.clip(grid - (1 - err), 0, None), ls=":", color="0.4", lw=1,
            label="perfect ranking (generalized risk)")  # fmt: skip
    if coverage is not None:
        ax.axvline(coverage, color="tab:red", lw=1, label=f"refer rule (coverage {coverage:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, max(0.05, float(np.max(sel[1:], initial=0)) * 1.1)))
    ax.set(xlabel="coverage (share of images answered)", ylabel="risk", title=title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
