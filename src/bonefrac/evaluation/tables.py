"""Tables for the evaluation commands (presentation only): rich tables the CLI prints, and
GitHub-flavoured markdown tables for reports and benches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from bonefrac.metrics import DECISION_METRIC_NAMES, METRIC_NAMES, format_ci

#: How the decision metrics are named where a person reads them.
DECISION_METRIC_LABELS = {
    "miss_rate": "miss rate (fractured -> no_fracture)",
    "normals_cleared": "normals cleared (no_fracture)",
    "referred": "referred",
    "fracture_ppv": "PPV of fracture calls",
}

#: localisation metrics `bonefrac compare` shows beside the classification table
COMPARE_LOC_METRICS = ("hit_rate", "ap50", "ap50_boxed")


def markdown_table(head: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table: header, ``---`` rule, one line per row (cells via ``str``)."""
    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(metrics: dict[str, Any], title: str = "") -> Table:
    """Misses first: the decision metrics under the run's rule (when the entry has them),
    then the metrics at the threshold."""
    table = Table(title=title or None)
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    for name in DECISION_METRIC_NAMES:
        if name in metrics:
            table.add_row(DECISION_METRIC_LABELS[name], format_ci(metrics.get(name)))
    if any(name in metrics for name in DECISION_METRIC_NAMES):
        table.add_section()
    for name in METRIC_NAMES:
        table.add_row(name, format_ci(metrics.get(name)))
    cm = metrics.get("confusion_matrix")
    if cm:
        table.add_row("confusion", f"TN {cm['tn']}  FP {cm['fp']}  FN {cm['fn']}  TP {cm['tp']}")
    sup = metrics.get("support")
    if sup:
        table.add_row("n (fractured)", f"{sup['n']} ({sup['n_pos']})")
    return table


def localization_table(metrics: dict[str, Any], title: str = "") -> Table | None:
    """The localisation metrics of one split (``None`` when it has none)."""
    from bonefrac.evaluation.localization_metrics import LOC_METRIC_NAMES

    names = [n for n in LOC_METRIC_NAMES if n in metrics]
    if not names:
        return None
    table = Table(title=title or None)
    table.add_column("localisation")
    table.add_column("value [95% CI]", justify="right")
    for name in names:
        table.add_row(name, format_ci(metrics.get(name)))
    sup = metrics.get("localization", {}).get("support")
    if sup:
        table.add_row("images (with boxes)", f"{sup['n_images']} ({sup['n_with_boxes']})")
        table.add_row("boxes true / predicted", f"{sup['n_true_boxes']} / {sup['n_pred_boxes']}")
    return table


def threshold_table(result: dict[str, Any]) -> Table:
    """Old vs new threshold, val and test side by side."""
    old, new = result["old_threshold"], result["new_threshold"]
    table = Table(title=f"threshold {old:.4f} -> {new:.4f} ({result['criterion']}, tuned on val)")
    table.add_column("metric")
    splits = list(result["metrics"])
    for split in splits:
        table.add_column(f"{split} @ {old:.3f}", justify="right")
        table.add_column(f"{split} @ {new:.3f}", justify="right")
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy"):
        cells = []
        for split in splits:
            for which in ("old", "new"):
                cells.append(format_ci(result["metrics"][split][which][name]))
        table.add_row(name, *cells)
    return table


def calibration_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"temperature scaling (fitted on val): T = {summary['temperature']:.4f}")
    table.add_column("split")
    for col in (
        "ECE before",
        "ECE after",
        "Brier before",
        "Brier after",
        "NLL before",
        "NLL after",
    ):
        table.add_column(col, justify="right")
    for split in ("val", "test"):
        s = summary.get(split)
        if not s:
            continue
        table.add_row(
            split,
            *(
                f"{s[k]:.4f}"
                for k in (
                    "ece_before",
                    "ece_after",
                    "brier_before",
                    "brier_after",
                    "nll_before",
                    "nll_after",
                )  # fmt: skip
            ),
        )
    return table


def compare_table(result: Any) -> Table:
    """Metrics as rows, runs (ranked by ROC-AUC) as columns; best per metric in bold green."""
    table = Table(title=f"runs on {result.split} ({result.n_images} images); best in bold")
    table.add_column("metric")
    for i, name in enumerate(result.names, 1):
        table.add_column(f"{i}. {escape(name)}", justify="right")
    for metric in (*METRIC_NAMES, "augrc"):
        cells = []
        for name in result.names:
            text = format_ci(result.metrics[name][metric])
            best = name in result.best.get(metric, [])
            cells.append(f"[bold green]{text}[/]" if best else text)
        table.add_row(metric, *cells)
    if getattr(result, "has_localization", False):
        for metric in COMPARE_LOC_METRICS:
            cells = [
                format_ci((result.localization.get(name) or {}).get(metric))
                for name in result.names
            ]
            table.add_row(metric, *cells)
    return table
