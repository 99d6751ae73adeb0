"""``bonefrac evaluate``: metrics with CIs, plots and subgroup table for one set of predictions.

The probabilities scored are the run's: ``sigmoid(logit / temperature)`` (``prob`` as is while the
temperature is 1) against model.json's ``threshold``. Results are merged into ``RUN/metrics.json``
under the split (or external name), plots go to ``RUN/plots/<key>_*.png``, the subgroup table to
``RUN/subgroups/<key>.csv``, and ``RUN/report.html`` is regenerated. Predictions of a localising
run (``boxes`` plus ``pred_boxes`` / ``map_peak`` / ``energy_in_box`` columns) also get the
localisation metrics of :mod:`bonefrac.evaluation.localization_metrics` under the same key.
Selective prediction
(:mod:`bonefrac.evaluation.selective`): ``metrics.json[key]["augrc"]`` and ``["selective"]``
(the refer rule's coverage and sensitivity / specificity on the accepted images) and the
risk-coverage plot.

External validation (``manifest=...``): the run's model predicts on the manifest's rows (only
``split == "test"`` when the manifest has a split column, unless ``all_rows``) and the
predictions are written to ``RUN/predictions/<name>.csv`` before scoring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.data.schema import SPLIT, SUBGROUP_COLUMNS, read_manifest
from bonefrac.errors import ConfigError, DataError, RunDirError
from bonefrac.evaluation import plots
from bonefrac.evaluation.localization_metrics import split_localization
from bonefrac.evaluation.selective import selective_entry
from bonefrac.fileio import write_csv
from bonefrac.metrics import DECISION_METRIC_NAMES, compute_metrics, decision_metrics
from bonefrac.rundir import RunDir, check_name, metrics_entry, run_decisions, run_probabilities
from bonefrac.rundir.predictions import LABEL, SUBGROUP_KEYS

log = logging.getLogger(__name__)

RESERVED_NAMES = ("train", "val", "test")
SUBGROUP_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc")


@dataclass
class EvaluationResult:
    key: str
    metrics: dict[str, Any]
    subgroups: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)
    predictions: Path | None = None
    report: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def group_labels(column: pd.Series) -> pd.Series:
    """Subgroup names as text; blanks become ``unknown``. A flag read as float because some
    rows are blank (``hardware``: 0.0 / 1.0 / NaN) is named ``0`` / ``1``, not ``0.0``."""
    if pd.api.types.is_float_dtype(column):
        known = column.dropna()
        if len(known) and (known == known.round()).all():
            column = column.astype("Int64")
    return column.astype("string").fillna("").str.strip().replace("", "unknown")


def subgroup_table(
    df: pd.DataFrame,
    prob: np.ndarray,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    decisions: Any = None,
) -> pd.DataFrame:
    """One row per (column, value) for each subgroup column present: n, n_pos, the decision
    metrics (miss rate first; with ``decisions``) and accuracy/sensitivity/specificity/
    roc_auc/pr_auc with bootstrap CIs (``<metric>_low/_high``)."""
    rows: list[dict[str, Any]] = []
    y = df[LABEL].to_numpy()
    words = None if decisions is None else np.asarray(decisions, dtype=object)
    names = (*DECISION_METRIC_NAMES, *SUBGROUP_METRICS) if words is not None else SUBGROUP_METRICS
    for col in SUBGROUP_COLUMNS:
        if col not in df.columns:
            continue
        values = group_labels(df[col])
        if (values == "unknown").all():
            continue
        for value in sorted(values.unique()):
            mask = (values == value).to_numpy()
            m = compute_metrics(y[mask], prob[mask], threshold, n_boot=n_boot, seed=seed)
            if words is not None:
                m.update(decision_metrics(y[mask], words[mask], n_boot=n_boot, seed=seed))
            counts = (col, value, m["support"]["n"], m["support"]["n_pos"])
            row: dict[str, Any] = dict(zip(SUBGROUP_KEYS, counts, strict=True))
            for name in names:
                row[name] = m[name]["value"]
                row[f"{name}_low"] = m[name]["ci_low"]
                row[f"{name}_high"] = m[name]["ci_high"]
            rows.append(row)
    cols = [*SUBGROUP_KEYS] + [f"{m}{s}" for m in names for s in ("", "_low", "_high")]
    return pd.DataFrame(rows, columns=cols)


def _predict_external(
    run: RunDir, manifest: Path, name: str, all_rows: bool, force: bool, batch_size: int
) -> tuple[Path, list[tuple[str, str]]]:
    """Predict the manifest's (test) rows into ``predictions/<name>.csv``; return the path
    and the images that could not be decoded (skipped and listed)."""
    from bonefrac.inference import run_predictions

    if check_name(name) in RESERVED_NAMES:
        raise ConfigError(
            f"--name {name}: reserved for the run's own splits; choose another, e.g. --name external"
        )
    out = run.prediction_path(name)
    if out.exists() and not force:
        raise RunDirError(
            f"{out}: already exists; pass --force to predict again, or score the existing file "
            f"with 'bonefrac evaluate {run.path} --split {name}'"
        )
    df = read_manifest(manifest)
    if SPLIT in df.columns and not all_rows:
        df = df[df[SPLIT].astype(str) == "test"].reset_index(drop=True)
        if df.empty:
            raise DataError(
                f"{manifest}: no rows with split == 'test'; pass --all-rows to use every row"
            )
    if df.empty:
        raise DataError(f"{manifest}: no rows to evaluate")
    log.info("predicting %d images from %s with %s", len(df), manifest, run.path)
    result = run_predictions.predict_run_frame(run.path, df, batch_size=batch_size)
    run.write_predictions(name, result.predictions)
    return out, result.skipped


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    manifest: str | Path | None = None,
    name: str | None = None,
    all_rows: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    force: bool = False,
    batch_size: int = 32,
    report: bool = True,
    study_column: str | None = None,
    study_agg: str = "max",
) -> EvaluationResult:
    """Score ``predictions/<split>.csv`` (or, with ``manifest``, predict then score
    ``predictions/<name>.csv``); write metrics.json, plots, subgroup table and report.

    ``study_column``: also score studies (:mod:`bonefrac.evaluation.studies`), stored as
    ``metrics.json[key]["study"]``."""
    run = RunDir.open(run_dir, writable=True)
    if n_boot < 0:
        raise ConfigError(f"--n-boot {n_boot}: must be >= 0 (1000 or more for a 95% CI)")
    meta = run.meta()
    threshold = meta.threshold

    pred_path = None
    skipped: list[tuple[str, str]] = []
    if manifest is not None:
        key = name or "external"
        pred_path, skipped = _predict_external(
            run, Path(manifest), key, all_rows, force, batch_size
        )
    else:
        if name is not None:
            raise ConfigError("--name only applies with --manifest; use --split to pick a split")
        key = split
    df = run.predictions(key)
    y = df[LABEL].to_numpy()
    prob = run_probabilities(df, meta)

    decisions = run_decisions(df, meta)
    metrics = metrics_entry(y, prob, meta, n_boot=n_boot, seed=seed, decisions=decisions)
    loc = split_localization(df, run.prediction_path(key), n_boot=n_boot, seed=seed)
    if loc is not None:
        metrics.update(loc)
    selective, uncertainty, errors = selective_entry(
        run, key, y, prob, meta, n_boot=n_boot, seed=seed
    )
    metrics["augrc"] = selective.pop("augrc")
    metrics["selective"] = selective
    if skipped:
        metrics["skipped_images"] = [{"path": p, "reason": r} for p, r in skipped]
    if study_column:
        from bonefrac.evaluation.studies import study_ids, study_metrics

        ids = study_ids(df, run, study_column, manifest)
        metrics["study"] = study_metrics(
            df, prob, ids, meta, study_agg, n_boot=n_boot, seed=seed, study_column=study_column
        )
    run.merge_metrics(key, metrics)

    sub = subgroup_table(df, prob, threshold, n_boot=n_boot, seed=seed, decisions=decisions)
    if len(sub):
        write_csv(run.subgroup_path(key), sub)

    class_names = meta.class_names
    out = {
        "roc": plots.plot_roc(y, prob, threshold, run.plot_path(f"{key}_roc"), f"ROC ({key})"),
        "pr": plots.plot_pr(
            y, prob, threshold, run.plot_path(f"{key}_pr"), f"Precision-recall ({key})"
        ),
        "confusion": plots.plot_confusion(
            metrics["confusion_matrix"],
            run.plot_path(f"{key}_confusion"),
            class_names,
            f"Confusion matrix ({key}, threshold {threshold:.3f})",
        ),  # fmt: skip
        "reliability": plots.plot_reliability(
            y, prob, run.plot_path(f"{key}_reliability"), title=f"Reliability ({key})"
        ),
        "threshold": plots.plot_threshold_curve(
            y, prob, threshold, run.plot_path(f"{key}_threshold"), f"Metrics vs threshold ({key})"
        ),
        "risk_coverage": plots.plot_risk_coverage(
            uncertainty,
            errors,
            run.plot_path(f"{key}_risk_coverage"),
            f"Risk-coverage ({key}, {selective['score']})",
            meta.refer.coverage if meta.refer is not None else None,
        ),  # fmt: skip
    }
    result = EvaluationResult(key, metrics, sub, out, pred_path, skipped=skipped)
    if report:
        from bonefrac.evaluation.report import build_report

        result.report = build_report(run.path)
    return result
