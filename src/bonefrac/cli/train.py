"""``bonefrac train``: fit a model into a run directory, then the fits on val deploying needs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bonefrac.cli import render

if TYPE_CHECKING:
    from bonefrac.deploy import DeployReport


def train(
    config: Path = typer.Option(None, "--config", "-c", help="Experiment YAML (configs/*.yaml)."),
    manifest: Path = typer.Option(None, "--manifest", "-m", help="manifest.csv from 'data build'."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory to create."),
    overrides: list[str] = typer.Option(
        None, "--set", help="Override a config field, e.g. --set train.epochs=3 (repeatable)."
    ),
    resume: Path = typer.Option(None, "--resume", help="Continue a run from its last.ckpt."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run directory."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
    no_deploy: bool = typer.Option(
        False,
        "--no-deploy",
        help="Skip the fits on val that end training (threshold, temperature, refer rule, "
        "out-of-scope detector; the config's deploy block).",
    ),
) -> None:
    """Train a model and write a run directory (weights, predictions, metrics, plots), then fit
    on val what deploying it needs (threshold, temperature, refer rule, out-of-scope detector)."""
    from bonefrac.config import load_config
    from bonefrac.errors import ConfigError
    from bonefrac.rundir import RunDir
    from bonefrac.training import fit
    from bonefrac.training.distributed import is_launcher_rank_zero
    from bonefrac.training.guard import TrainingCollapsedError

    try:
        if resume is not None:
            path = fit.resume(resume, progress=not no_progress)
        else:
            cfg = load_config(config, overrides)
            manifest = manifest or (Path(cfg.data.manifest) if cfg.data.manifest else None)
            if manifest is None or out is None:
                raise ConfigError(
                    "train needs --manifest MANIFEST.csv and --out RUN_DIR (or --resume RUN)"
                )
            path = fit.train(cfg, manifest, out, force=force, progress=not no_progress)
    except TrainingCollapsedError as exc:
        render.training_collapsed(render.err_console, str(exc))
        raise typer.Exit(code=TrainingCollapsedError.exit_code) from None
    if not is_launcher_rank_zero():  # the other ranks of a multi-process run write nothing
        return
    report = None if no_deploy else _deploy(path)
    run = RunDir(path)
    render.run_summary(render.console, run)
    if report is not None:
        render.deploy_report(render.console, report)
    # a collapsed run (model.json training_status) ends in red with exit status 3; one
    # interrupted before its outputs has no model.json, and its summary said so
    meta = run.raw_meta() if run.meta_path.is_file() else {}
    if meta.get("training_status") == "collapsed":
        render.collapsed_run(render.err_console, meta, path)
        raise typer.Exit(code=TrainingCollapsedError.exit_code)


def _deploy(path: Path) -> DeployReport:
    from bonefrac.deploy import deploy_trained_run

    return deploy_trained_run(path, on_start=lambda: render.deploy_started(render.console))


def ensemble(
    members: list[Path] = typer.Argument(
        ..., help="Two or more finished runs of one recipe (e.g. its seeds), same splits."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Ensemble run directory to create."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    batch_size: int = typer.Option(32, "--batch-size", help="Batch size for val and test."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    ood: str = typer.Option(
        None,
        "--ood",
        help="Out-of-scope detector to fit: mahalanobis | energy | none "
        "(default: the members' config).",
    ),
) -> None:
    """Combine trained runs into one ensemble run: its logit is the mean of the members'
    logits, its map the mean of their maps; its threshold, rule-out cut, calibration and
    out-of-scope detector are fitted on its own val predictions. Every command takes it as
    a run; a member file whose SHA-256 differs from model.json's is refused at load."""
    from bonefrac.ensembling import build_ensemble
    from bonefrac.rundir import RunDir

    built = build_ensemble(
        members, out, force=force, batch_size=batch_size, progress=progress, ood=ood
    )
    render.show(render.console, f"ensemble of {len(built.members)}: {', '.join(built.members)}; "
                f"box threshold {built.box_threshold:.3f} (val negatives)")  # fmt: skip
    render.deploy_report(render.console, built.deployed)
    render.run_summary(render.console, RunDir.open(built.path))


COMMANDS = (train, ensemble)
