"""Evaluation commands: evaluate, threshold, ood, calibrate, compare, relocate, report."""

from __future__ import annotations

from pathlib import Path

import typer

from bonefrac.cli import render
from bonefrac.cli.runarg import RUN_HELP, into_option, run_arg


def evaluate(
    run: Path = typer.Argument(..., help=RUN_HELP),
    split: str = typer.Option(
        "test",
        "--split",
        help="Which predictions to score: val, test or a name given to --manifest.",
    ),
    manifest: Path = typer.Option(
        None, "--manifest", help="Predict on this manifest (or a path,label CSV): external data."
    ),
    name: str = typer.Option(
        None, "--name", help="Name for the --manifest predictions (default: external)."
    ),
    all_rows: bool = typer.Option(
        False, "--all-rows", help="With --manifest: use every row, not only split == test."
    ),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    force: bool = typer.Option(False, "--force", help="Re-predict an existing --name."),
    batch_size: int = typer.Option(32, "--batch-size", help="Batch size for --manifest."),
    study_column: str = typer.Option(
        None, "--study-column", help="Also score studies: the column holding each image's study."
    ),
    study_agg: str = typer.Option(
        "max", "--study-agg", help="Study probability from its images: max | mean | noisy_or."
    ),
    into: Path | None = into_option(),
) -> None:
    """Metrics with bootstrap CIs, plots, subgroup table and report.html for one split."""
    from bonefrac.evaluation.evaluate import evaluate_run
    from bonefrac.rundir import RunDir

    run = run_arg(run, into)
    res = evaluate_run(
        run, split=split, manifest=manifest, name=name, all_rows=all_rows, n_boot=n_boot,
        seed=seed, force=force, batch_size=batch_size, study_column=study_column,
        study_agg=study_agg,
    )  # fmt: skip
    render.evaluation(render.console, res, RunDir(run))


def threshold(
    run: Path = typer.Argument(..., help=RUN_HELP),
    criterion: str = typer.Option(
        None, "--criterion", help="f1 | youden | sensitivity:X | specificity:X (e.g. sens:0.9)"
    ),
    rule_out_sensitivity: float = typer.Option(
        None,
        "--rule-out-sensitivity",
        help="The two-cut rule (the default of 'bonefrac train'): no_fracture only below the "
        "cut that flags this share of val fractures (e.g. 0.95); refer between it and the "
        "threshold.",
    ),
    refer_coverage: float = typer.Option(
        None,
        "--refer-coverage",
        help="Instead of a rule-out cut, a refer band answering this share of val images "
        "(e.g. 0.8); the rest is 'refer'.",
    ),
    refer_tta: bool = typer.Option(
        False,
        "--refer-tta/--no-refer-tta",
        help="Also try the test-time augmentation spread as the refer score (8 model calls per "
        "val image; kept only when clearly better than the free scores).",
    ),
    into: Path | None = into_option(),
) -> None:
    """Choose the decision rule on the validation predictions (never on test: a rule chosen
    there makes every test figure optimistic) and store it in model.json: the rule-in threshold (--criterion, e.g. specificity:0.95) and the rule-out cut
    (--rule-out-sensitivity) or a refer band (--refer-coverage)."""
    from bonefrac.evaluation.thresholds import tune_threshold
    from bonefrac.rundir import RunDir

    run = run_arg(run, into)
    result = tune_threshold(
        run,
        criterion,
        refer_coverage=refer_coverage,
        refer_tta=refer_tta,
        rule_out_sensitivity=rule_out_sensitivity,
    )
    render.threshold(render.console, result, RunDir(run), run)


def ood(
    run: Path = typer.Argument(..., help=RUN_HELP),
    method: str = typer.Option(
        "mahalanobis", "--method", help="mahalanobis (train features) | energy (the logit)."
    ),
    percentile: float = typer.Option(
        99.0, "--percentile", help="Cut-off: this percentile of val's scores (in scope)."
    ),
    max_images: int = typer.Option(
        2000, "--max-images", help="At most this many train images for the statistics."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per model call."),
    force: bool = typer.Option(False, "--force", help="Replace an existing detector."),
    into: Path | None = into_option(),
) -> None:
    """Fit the out-of-scope detector (train-split features, val cut-off) and store it in the
    run: inputs above the cut-off get the decision 'out_of_scope'."""
    from bonefrac.evaluation.ood import fit_ood
    from bonefrac.rundir import RunDir

    run = run_arg(run, into)
    rec = fit_ood(run, method, percentile=percentile, max_images=max_images,
                  batch_size=batch_size, force=force)  # fmt: skip
    render.ood(render.console, rec, RunDir(run))


def calibrate(
    run: Path = typer.Argument(..., help=RUN_HELP), into: Path | None = into_option()
) -> None:
    """Fit temperature scaling on validation logits; store the temperature in model.json."""
    from bonefrac.evaluation.calibration import calibrate_run
    from bonefrac.rundir import RunDir

    run = run_arg(run, into)
    render.calibration(render.console, calibrate_run(run), RunDir(run), run)


def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Two or more run directories or shipped model names."
    ),
    split: str = typer.Option("test", "--split", help="Predictions to compare on."),
    out: Path = typer.Option(
        None, "--out", help="Output folder (default: <parent of RUN1>/compare_<split>)."
    ),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Compare runs on the same images: metrics with CIs, overlaid ROC, DeLong AUC test."""
    from bonefrac.evaluation.compare import compare_runs

    runs = [run_arg(run) for run in runs]
    result = compare_runs(runs, split=split, out_dir=out, n_boot=n_boot, seed=seed)
    render.comparison(render.console, result)


def relocate(
    run: Path = typer.Argument(
        ..., help="Run directory copied from another machine (or a shipped model, with --into)."
    ),
    manifest: Path = typer.Option(
        ..., "--manifest", help="Manifest of the same images at this machine's paths."
    ),
    into: Path | None = into_option(),
) -> None:
    """Point a copied run at this machine's copy of its images (predictions, model.json,
    config.yaml); rows are matched by source and image_id and must keep their labels."""
    from bonefrac.rundir import RunDir

    run = run_arg(run, into)
    render.relocation(render.console, RunDir.open(run).relocate(manifest))


def report(
    run: Path = typer.Argument(..., help=RUN_HELP), into: Path | None = into_option()
) -> None:
    """(Re)build RUN/report.html from what the run directory holds."""
    from bonefrac.evaluation.report import build_report

    render.report_path(render.console, build_report(run_arg(run, into)))


COMMANDS = (evaluate, threshold, ood, calibrate, compare, relocate, report)
