"""``bonefrac tune report``: ranked trials, importance and history plots, ``best.yaml``.

Everything comes from the study's storage (parameters, objective values and the per-trial user
attributes written by :mod:`bonefrac.tuning.study`) plus the best trial's ``config.yaml``, so a
report works from any machine that reaches the storage.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from rich.markup import escape
from rich.table import Table

from bonefrac.config import build_config, config_to_yaml
from bonefrac.fileio import atomic_open, atomic_path, write_csv
from bonefrac.rundir import RunDir
from bonefrac.tuning.study import TRIAL_METRICS, load_study

log = logging.getLogger(__name__)


@dataclass
class TuneReport:
    study_name: str
    objective: str
    out_dir: Path
    trials: pd.DataFrame
    """One row per trial: number, state, value, metrics, params (``param:<path>``), run_dir."""
    best_trial: int | None = None
    best_value: float | None = None
    best_yaml: Path | None = None
    importances: dict[str, float] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    trials_csv: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> pd.DataFrame:
        return self.trials[self.trials["state"] == "COMPLETE"]

    def state_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.trials["state"].value_counts().items()}


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """All trials of ``study`` as a flat table."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "value": t.value if t.value is not None else math.nan,
        }
        for key in TRIAL_METRICS:
            value = t.user_attrs.get(key)
            row[key] = math.nan if value is None else float(value)
        row["epochs_reported"] = len(t.intermediate_values)
        row["seconds"] = t.duration.total_seconds() if t.duration is not None else math.nan
        for name, value in sorted(t.params.items()):
            row[f"param:{name}"] = value
        row["run_dir"] = t.user_attrs.get("run_dir", "")
        rows.append(row)
    columns = ["trial", "state", "value", *TRIAL_METRICS, "epochs_reported", "seconds", "run_dir"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def ranked(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Completed trials ranked by ``by`` (ties: ROC-AUC, then the objective), best first."""
    done = frame[frame["state"] == "COMPLETE"]
    keys = [k for k in (by, "roc_auc", "value") if k in done.columns]
    keys = list(dict.fromkeys(keys))
    return done.sort_values(keys, ascending=False, na_position="last", kind="stable")


def tune_report(study_name: str, storage: str | None = None) -> TuneReport:
    """Collect the study, write ``trials.csv``, plots and ``best.yaml`` beside the trials."""
    study = load_study(study_name, storage)
    frame = trials_frame(study)
    out_dir = _study_dir(study)
    rep = TuneReport(
        study_name=study_name,
        objective=str(study.user_attrs.get("objective", "value")),
        out_dir=out_dir,
        trials=frame,
    )
    if frame.empty:
        rep.notes.append("the study has no trials yet")
        return rep
    rep.trials_csv = out_dir / "trials.csv"
    write_csv(rep.trials_csv, frame)

    completed = rep.completed
    if completed.empty:
        rep.notes.append("no completed trial yet: no best config, importance or history plot")
        return rep

    best = study.best_trial
    rep.best_trial, rep.best_value = best.number, best.value
    rep.best_yaml = _write_best_yaml(study, best, out_dir / "best.yaml", rep.notes)

    rep.plots["history"] = _plot_history(frame, rep.objective, out_dir / "tune_history.png")
    if len(completed) < 2:
        rep.notes.append("parameter importance needs at least 2 completed trials")
    else:
        try:
            rep.importances = {
                k: float(v) for k, v in optuna.importance.get_param_importances(study).items()
            }
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            rep.notes.append(f"parameter importance unavailable ({exc})")
        if rep.importances:
            rep.plots["importance"] = _plot_importance(
                rep.importances, rep.objective, out_dir / "tune_importance.png"
            )
    return rep


def _study_dir(study: optuna.Study) -> Path:
    """Where the trials live: beside the best (else any) trial's run dir, else the study attr."""
    candidates = []
    with contextlib.suppress(ValueError):  # no completed trial
        candidates.append(study.best_trial.user_attrs.get("run_dir"))
    candidates += [t.user_attrs.get("run_dir") for t in study.get_trials(deepcopy=False)]
    for run_dir in candidates:
        if run_dir and Path(run_dir).parent.is_dir():
            return Path(run_dir).parent
    return Path(study.user_attrs.get("out_dir") or Path("runs") / study.study_name)


def _write_best_yaml(
    study: optuna.Study, best: optuna.trial.FrozenTrial, path: Path, notes: list[str]
) -> Path | None:
    run = RunDir(Path(best.user_attrs.get("run_dir", "")))
    if run.config_path.is_file():
        cfg = run.config()
    elif isinstance(best.user_attrs.get("config"), dict):
        cfg = build_config(
            best.user_attrs["config"], f"study {study.study_name} trial {best.number}"
        )
        notes.append(f"{run.config_path} not found here; best.yaml rebuilt from the study")
    else:
        notes.append(f"best trial {best.number}: no {run.config_path.name} and no stored config")
        return None
    cfg.name = f"{study.study_name}-best"
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    header = (
        f"# Best trial {best.number} of study {study.study_name!r}: "
        f"{study.user_attrs.get('objective', 'value')} = {best.value:.4f}\n"
        f"# run directory: {run.path}\n"
        f"# searched parameters: {params}\n"
        "# Train it with: bonefrac train --config best.yaml --manifest MANIFEST --out RUN_DIR\n"
    )
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(header + config_to_yaml(cfg))
    return path


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_history(frame: pd.DataFrame, objective: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {
        "COMPLETE": ("o", "tab:blue", "completed"),
        "PRUNED": ("x", "tab:orange", "pruned (last reported epoch)"),
    }
    done = frame[frame["state"] == "COMPLETE"].sort_values("trial")
    for state, (marker, color, label) in styles.items():
        rows = frame[frame["state"] == state]
        if rows.empty:
            continue
        ax.scatter(rows["trial"], rows["value"], marker=marker, color=color, label=label)
    if not done.empty:
        ax.step(done["trial"], done["value"].cummax(), where="post", color="tab:red", label="best")
    failed = frame[frame["state"] == "FAIL"]
    for number in failed["trial"]:
        ax.axvline(number, color="0.85", lw=1, zorder=0)
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"optimisation history ({len(failed)} failed trials shaded)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _plot_importance(importances: dict[str, float], objective: str, path: Path) -> Path:
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.4))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for {objective} (optuna default evaluator)")
    ax.set_title("hyperparameter importance")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ rich tables


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


def ranked_table(rep: TuneReport, by: str, title: str, limit: int = 10) -> Table:
    """Top ``limit`` completed trials by ``by`` with objective, metrics and parameters."""
    rows = ranked(rep.trials, by).head(limit)
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("trial", justify="right")
    for col, head in (
        ("value", rep.objective),
        ("sensitivity", "sens"),
        ("specificity", "spec"),
        ("f1", "F1"),
        ("roc_auc", "AUC"),
    ):
        table.add_column(head, justify="right", style="bold" if col == by else None)
    table.add_column("parameters")
    param_cols = [c for c in rep.trials.columns if c.startswith("param:")]
    for rank, (_, row) in enumerate(rows.iterrows(), start=1):
        params = "  ".join(
            f"{c.removeprefix('param:')}={_fmt(row[c])}"
            for c in param_cols
            if not (isinstance(row[c], float) and math.isnan(row[c]))
        )
        table.add_row(
            str(rank),
            str(int(row["trial"])),
            *(_fmt(row[c]) for c in ("value", "sensitivity", "specificity", "f1", "roc_auc")),
            escape(params),
        )
    return table


def importance_table(rep: TuneReport) -> Table:
    table = Table(title=f"parameter importance for {rep.objective}")
    table.add_column("parameter")
    table.add_column("importance", justify="right")
    for name, value in rep.importances.items():
        table.add_row(escape(name), f"{value:.3f}")
    return table
