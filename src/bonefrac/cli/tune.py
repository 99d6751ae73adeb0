"""``bonefrac tune`` (run trials of a resumable Optuna study) and ``tune report`` (rank them)."""

from __future__ import annotations

from pathlib import Path

import typer

from bonefrac.cli import render

app = typer.Typer(
    help="Hyperparameter search (Optuna): 'tune --config ...' runs trials, 'tune report' ranks them.",
    invoke_without_command=True,
    no_args_is_help=True,
)


@app.callback()
def tune(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="Base experiment YAML."),
    manifest: Path = typer.Option(None, "--manifest", "-m", help="manifest.csv from 'data build'."),
    space: Path = typer.Option(None, "--space", help="Search space YAML (configs/space.yaml)."),
    trials: int = typer.Option(None, "--trials", "-n", help="How many more trials to run."),
    storage: str = typer.Option(
        None, "--storage", help="Optuna storage URL (default sqlite:///runs/tune.db)."
    ),
    study: str = typer.Option(None, "--study", help="Study name (default <config name>-tune)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for trial-<k>/ (runs/<study>)."),
    overrides: list[str] = typer.Option(
        None, "--set", help="Fix a config field for every trial, e.g. --set train.epochs=5."
    ),
    objective: str = typer.Option(
        None, "--objective", help="val_roc_auc (default) | val_f1 | val_pr_auc | sens_at_spec:X"
    ),
) -> None:
    """Run N more trials of a resumable study; each trial is a run directory."""
    if ctx.invoked_subcommand is not None:
        return
    from bonefrac.errors import ConfigError
    from bonefrac.tuning.study import run_study

    missing = [f for f, v in (("--space", space), ("--trials", trials)) if v is None]
    if missing:
        raise ConfigError(f"tune needs {', '.join(missing)} (see 'bonefrac tune --help')")
    try:
        result = run_study(
            config, manifest, space, trials, storage=storage, study_name=study, out=out,
            overrides=overrides, objective=objective,
        )  # fmt: skip
    except KeyboardInterrupt:
        render.err_console.print(
            "interrupted; re-run the same command to continue the study", markup=False
        )
        raise typer.Exit(code=130) from None
    render.study(render.console, result)


@app.command("report")
def report(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: str = typer.Option(
        None, "--storage", help="Optuna storage URL (default sqlite:///runs/tune.db)."
    ),
) -> None:
    """Trials ranked by sensitivity and by F1, importance/history PNGs, best.yaml."""
    from bonefrac.tuning.report import tune_report

    render.tune_report(render.console, tune_report(study, storage), study)
