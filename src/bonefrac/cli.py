"""Command-line interface: one sub-command per stage. Parse, call the library, print."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from bonefrac.errors import BonefracError

app = typer.Typer(
    help="bonefrac: train, evaluate, explain and serve fracture classifiers for radiographs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Build and inspect dataset manifests.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Print BonefracError as one red line (no traceback) and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BonefracError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("PIL", "matplotlib", "fsspec", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Lightning prints through its own handler on the "lightning" logger; propagating to ours
    # as well showed every message twice. Its litlogger advertisement is dropped.
    logging.getLogger("lightning").propagate = False
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_tip)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)


# --- data commands (issue: foundation) ---


@data_app.command("build")
@friendly_errors
def data_build(
    out: Path = typer.Option(
        ..., "--out", help="Folder for manifest.csv, quarantine.csv, summary.json."
    ),
    fracatlas: Path | None = typer.Option(None, "--fracatlas", help="FracAtlas root folder."),
    yolo: Path | None = typer.Option(None, "--yolo", help="YOLO detection folder (data.yaml)."),
    folder: list[Path] | None = typer.Option(
        None, "--folder", help="Image folder root/<class>/*; repeatable."
    ),
    dicom_dir: list[Path] | None = typer.Option(
        None, "--dicom-dir", help="DICOM files as root/<class>/**; repeatable."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val/test split."),
    unlabelled_negative: bool = typer.Option(
        False, "--unlabelled-negative", help="YOLO images without a label file count as label 0."
    ),
    fracture_classes: str | None = typer.Option(
        None, "--fracture-classes", help='YOLO class names that count as fracture, e.g. "a,b".'
    ),
    class_map: str | None = typer.Option(
        None, "--class-map", help='Extra folder class -> label pairs, e.g. "broken=1,intact=0".'
    ),
    freeze_split: Path | None = typer.Option(
        None, "--freeze-split", help="Older manifest.csv whose split assignments are kept."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Decode processes (default: CPUs)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing manifest."),
) -> None:
    """Validate, de-duplicate and split the sources into DIR/manifest.csv."""
    from bonefrac.data.manifest import build_manifest

    summary = build_manifest(
        out=out,
        fracatlas=fracatlas,
        yolo=yolo,
        folders=folder or [],
        dicom_dirs=dicom_dir or [],
        seed=seed,
        unlabelled_negative=unlabelled_negative,
        fracture_classes=[c for c in fracture_classes.split(",") if c.strip()]
        if fracture_classes
        else None,
        class_map=class_map,
        freeze_split=freeze_split,
        force=force,
        workers=workers,
        progress=True,
    )
    c = summary["counts"]
    console.print(
        f"[bold]{c['manifest_rows']}[/] images in {out / 'manifest.csv'} "
        f"(split {c['by_split']}, labels {c['by_label']}); "
        f"[bold]{c['quarantined']}[/] quarantined {summary['quarantine_reasons']}; "
        f"{summary['label_conflicts']['groups']} label-conflict groups; "
        f"{summary['timing']['build_seconds']:.1f} s",
        highlight=False,
    )


@data_app.command("report")
@friendly_errors
def data_report(
    manifest: Path = typer.Argument(..., help="Manifest folder or manifest.csv."),
) -> None:
    """Counts per split x label x region, duplicate groups, quarantine reasons, bar chart."""
    from bonefrac.data.report import report

    report(manifest, console=console)


# --- train command (issue: training) ---


@app.command()
@friendly_errors
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
) -> None:
    """Train a model and write a run directory (weights, predictions, metrics, plots)."""
    from bonefrac.config import load_config
    from bonefrac.errors import ConfigError
    from bonefrac.training import fit
    from bonefrac.training.guard import TrainingCollapsedError

    try:
        if resume is not None:
            run = fit.resume(resume, progress=not no_progress)
        else:
            cfg = load_config(config, overrides)
            manifest = manifest or (Path(cfg.data.manifest) if cfg.data.manifest else None)
            if manifest is None or out is None:
                raise ConfigError(
                    "train needs --manifest MANIFEST.csv and --out RUN_DIR (or --resume RUN)"
                )
            run = fit.train(cfg, manifest, out, force=force, progress=not no_progress)
    except TrainingCollapsedError as exc:
        err_console.print(
            f"[bold red]training collapsed:[/] {exc}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=TrainingCollapsedError.exit_code) from None
    _print_run_summary(run)
    _exit_if_collapsed(run)


def _exit_if_collapsed(run: Path) -> None:
    """A collapsed run (model.json ``training_status``) ends in red with exit status 3."""
    from bonefrac.models.runio import read_model_json
    from bonefrac.training.guard import TrainingCollapsedError

    try:
        meta = read_model_json(run)
    except BonefracError:  # interrupted before its outputs: the summary said so
        return
    if meta.get("training_status") != "collapsed":
        return
    err_console.print(
        f"[bold red]training collapsed:[/] {meta.get('collapse_reason')}. Training stopped; "
        f"the best checkpoint was kept and its outputs written to {run}, but do not trust "
        f"this model. Try: {meta.get('collapse_advice')}.",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(code=TrainingCollapsedError.exit_code)


def _print_run_summary(run: Path) -> None:
    from bonefrac.fileio import read_json

    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        console.print(f"run directory: {run} (incomplete; resume with --resume {run})")
        return
    metrics = read_json(metrics_path)
    for split, values in metrics.items():
        parts = []
        for key in ("roc_auc", "sensitivity", "specificity", "f1"):
            v = values.get(key, {}).get("value")
            parts.append(f"{key}={v:.3f}" if isinstance(v, (int, float)) else f"{key}=n/a")
        console.print(f"[bold]{split}[/]: " + "  ".join(parts))
    _print_best_epoch_note(run)
    console.print(f"run directory: [bold]{run}[/]")


def _print_best_epoch_note(run: Path) -> None:
    """Say so when the best checkpoint is a head-only epoch of the frozen warm-up."""
    from bonefrac.models.runio import read_model_json

    try:
        meta = read_model_json(run)
    except BonefracError:
        return
    if meta.get("best_in_frozen_warmup"):
        console.print(
            f"[yellow]note:[/] the best epoch ({meta['best_epoch'] + 1}) lies inside the frozen "
            "warm-up: the kept model is a head-only fit; fine-tuning the backbone never beat it",
            highlight=False,
        )


# --- evaluation commands (issue: evaluation) ---


@app.command()
@friendly_errors
def evaluate(
    run: Path = typer.Argument(..., help="Run directory (from 'bonefrac train')."),
    split: str = typer.Option(
        "test", "--split", help="Which predictions/<split>.csv to score (val, test or a name)."
    ),
    manifest: Path = typer.Option(
        None, "--manifest", help="Predict on this manifest (or a path,label CSV): external data."
    ),
    name: str = typer.Option(
        None, "--name", help="Name for --manifest predictions (predictions/<name>.csv)."
    ),
    all_rows: bool = typer.Option(
        False, "--all-rows", help="With --manifest: use every row, not only split == test."
    ),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    force: bool = typer.Option(False, "--force", help="Re-predict an existing --name."),
    batch_size: int = typer.Option(32, "--batch-size", help="Batch size for --manifest."),
) -> None:
    """Metrics with bootstrap CIs, plots, subgroup table and report.html for one split."""
    from bonefrac.evaluation.evaluate import evaluate_run
    from bonefrac.evaluation.tables import metrics_table

    res = evaluate_run(
        run, split=split, manifest=manifest, name=name, all_rows=all_rows, n_boot=n_boot,
        seed=seed, force=force, batch_size=batch_size,
    )  # fmt: skip
    st = res.metrics["settings"]
    console.print(
        metrics_table(
            res.metrics, f"{res.key}: threshold {st['threshold']:.3f}, T {st['temperature']:.3f}"
        )
    )
    for note in res.metrics["notes"].values():
        console.print(f"[yellow]note:[/] {note}")
    if res.predictions:
        console.print(f"predictions: {res.predictions}")
    console.print(f"metrics: {run / 'metrics.json'}  plots: {run / 'plots'}")
    if res.report:
        console.print(f"report: [bold]{res.report}[/]")


@app.command()
@friendly_errors
def threshold(
    run: Path = typer.Argument(..., help="Run directory."),
    criterion: str = typer.Option(
        ..., "--criterion", help="f1 | youden | sensitivity:X | specificity:X (e.g. sens:0.9)"
    ),
    on: str = typer.Option("val", "--on", help="Predictions to tune on: val only (test refused)."),
) -> None:
    """Choose the decision threshold on validation predictions and store it in model.json."""
    from bonefrac.evaluation.tables import threshold_table
    from bonefrac.evaluation.thresholds import tune_threshold

    result = tune_threshold(run, criterion, on=on)
    console.print(threshold_table(result))
    if result["temperature"] != 1.0:
        console.print(f"(on calibrated probabilities, temperature {result['temperature']:.3f})")
    console.print(
        f"stored threshold {result['new_threshold']:.4f} in {run / 'model.json'}; "
        f"run 'bonefrac evaluate {run}' to refresh metrics.json and the report"
    )


@app.command()
@friendly_errors
def calibrate(run: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Fit temperature scaling on validation logits; store the temperature in model.json."""
    from bonefrac.evaluation.calibration import calibrate_run
    from bonefrac.evaluation.tables import calibration_table

    summary = calibrate_run(run)
    console.print(calibration_table(summary))
    if summary["threshold_after"] != summary["threshold_before"]:
        console.print(
            f"threshold moved {summary['threshold_before']:.4f} -> "
            f"{summary['threshold_after']:.4f} so decisions stay the same"
        )
    console.print(f"reliability diagrams: {run / 'plots'}/calibration_*.png")
    console.print(f"run 'bonefrac evaluate {run}' to refresh metrics.json and the report")


@app.command()
@friendly_errors
def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run directories."),
    split: str = typer.Option("test", "--split", help="Predictions to compare on."),
    out: Path = typer.Option(
        None, "--out", help="Output folder (default: <parent of RUN1>/compare_<split>)."
    ),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Compare runs on the same images: metrics with CIs, overlaid ROC, DeLong AUC test."""
    from bonefrac.evaluation.compare import auc_test_sentence, compare_runs
    from bonefrac.evaluation.tables import compare_table

    result = compare_runs(runs, split=split, out_dir=out, n_boot=n_boot, seed=seed)
    console.print(compare_table(result))
    console.print(auc_test_sentence(result))
    console.print(f"written: {', '.join(str(p) for p in result.outputs.values())}")


@app.command()
@friendly_errors
def relocate(
    run: Path = typer.Argument(..., help="Run directory copied from another machine."),
    manifest: Path = typer.Option(
        ..., "--manifest", help="Manifest of the same images at this machine's paths."
    ),
) -> None:
    """Point a copied run at this machine's copy of its images (predictions, model.json,
    config.yaml); rows are matched by source and image_id and must keep their labels."""
    from bonefrac.evaluation.relocate import relocate_run

    summary = relocate_run(run, manifest)
    counts = ", ".join(f"{name} ({n} rows)" for name, n in summary["files"].items())
    console.print(f"relocated {counts}")
    console.print(f"manifest: {summary['previous_manifest']} -> {summary['manifest']}")


@app.command()
@friendly_errors
def report(run: Path = typer.Argument(..., help="Run directory.")) -> None:
    """(Re)build RUN/report.html from what the run directory holds."""
    from bonefrac.evaluation.report import build_report

    console.print(f"report: [bold]{build_report(run)}[/]")


# --- explain command (issue: explainability) ---


@app.command()
@friendly_errors
def explain(
    run: Path = typer.Argument(..., help="Run directory."),
    more_images: list[Path] = typer.Argument(
        None,
        hidden=True,
        metavar="IMAGES",
        help="Extra --images paths (so '--images dir/*.png' works).",
    ),
    split: str = typer.Option("test", "--split", help="Explain predictions/<split>.csv images."),
    images: list[Path] = typer.Option(
        None, "--images", help="Image files or folders instead of a split (repeatable)."
    ),
    method: str = typer.Option(
        "gradcam", "--method", help="gradcam | gradcam++ | eigencam | saliency | smoothgrad"
    ),
    n: int = typer.Option(16, "--n", help="How many images get an overlay (and the grid)."),
    layer: str = typer.Option(
        None, "--layer", help="CAM target layer, a dotted module path, e.g. backbone.stages.3."
    ),
    score: bool = typer.Option(
        False, "--score", help="Score every image with fracture boxes: localization.json."
    ),
    out: Path = typer.Option(None, "--out", help="Output folder (default: RUN/explain)."),
) -> None:
    """Heatmap overlays for the fracture logit; with --score, a localisation score vs boxes."""
    from bonefrac.errors import ConfigError
    from bonefrac.explain.run import explain_run

    if more_images and not images:
        raise ConfigError(
            f"unexpected argument(s) {' '.join(map(str, more_images))}; "
            "to explain image files use --images PATH..."
        )
    paths = [*(images or []), *(more_images or [])]
    res = explain_run(
        run, split=split, images=paths or None, method=method, n=n, layer=layer, score=score,
        out_dir=out, progress=True,
    )  # fmt: skip
    where = f" @ {res['layer']}" if res["layer"] else ""
    console.print(
        f"{res['method']}{where}: {len(res['overlays'])} overlays in "
        f"{res['out_dir'] / res['method']}",
        highlight=False,
    )
    if res["grid"]:
        console.print(f"grid: {res['grid']}")
    loc = res["localization"]
    if loc is not None:
        if loc["n_scored"]:
            console.print(
                f"localisation on [bold]{loc['n_scored']}[/] boxed images: hit rate "
                f"[bold]{loc['hit_rate']:.3f}[/] (95% CI {loc['hit_rate_low']:.3f}-"
                f"{loc['hit_rate_high']:.3f}; chance {loc['chance_hit_rate']:.3f}), energy in box "
                f"[bold]{loc['energy_in_box']:.3f}[/] (chance {loc['chance_energy_in_box']:.3f})",
                highlight=False,
            )
        else:
            console.print(f"[yellow]note:[/] {loc.get('note', 'nothing scored')}")
        console.print(f"localisation: {res['localization_path']}")
    console.print(f"run 'bonefrac report {run}' to include them in report.html")


# --- tune commands (issue: tuning) ---

tune_app = typer.Typer(
    help="Hyperparameter search (Optuna): 'tune --config ...' runs trials, 'tune report' ranks them.",
    invoke_without_command=True,
    no_args_is_help=True,
)
app.add_typer(tune_app, name="tune")


@tune_app.callback()
@friendly_errors
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
        err_console.print("interrupted; re-run the same command to continue the study")
        raise typer.Exit(code=130) from None
    states: dict[str, int] = {}
    for t in result.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    console.print(
        f"study [bold]{result.study_name}[/]: {len(result.trials)} trials {states}", highlight=False
    )
    try:
        best = result.best_trial
        console.print(
            f"best: trial {best.number} {result.user_attrs.get('objective')}={best.value:.4f} "
            f"({best.user_attrs.get('run_dir')})"
        )
    except ValueError:
        console.print("no completed trial yet")
    console.print(
        f"ranked table, plots and best.yaml: bonefrac tune report --study {result.study_name}"
    )


@tune_app.command("report")
@friendly_errors
def tune_report(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: str = typer.Option(
        None, "--storage", help="Optuna storage URL (default sqlite:///runs/tune.db)."
    ),
) -> None:
    """Trials ranked by sensitivity and by F1, importance/history PNGs, best.yaml."""
    from bonefrac.tuning.report import importance_table, ranked_table
    from bonefrac.tuning.report import tune_report as build_tune_report

    rep = build_tune_report(study, storage)
    console.print(f"study [bold]{study}[/]: {rep.state_counts()} (objective {rep.objective})")
    if not rep.completed.empty:
        console.print(
            ranked_table(rep, "sensitivity", "ranked by sensitivity (val, threshold 0.5)")
        )
        console.print(ranked_table(rep, "f1", "ranked by F1 (val, threshold 0.5)"))
    if rep.importances:
        console.print(importance_table(rep))
    for note in rep.notes:
        console.print(f"[yellow]note:[/] {note}")
    if rep.best_trial is not None:
        console.print(f"best trial {rep.best_trial}: {rep.objective}={rep.best_value:.4f}")
    outputs = {"best config": rep.best_yaml, "trials": rep.trials_csv, **rep.plots}
    for what, path in outputs.items():
        if path is not None:
            console.print(f"{what}: {path}")


# --- inference commands (issue: predict / export / serve) ---


@app.command()
@friendly_errors
def predict(
    run: Path = typer.Argument(..., help="Run directory (from 'bonefrac train')."),
    paths: list[Path] = typer.Argument(..., help="Image/DICOM files or folders (recursive)."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV to write; re-running resumes it."),
    backend: str = typer.Option("torch", "--backend", help="torch | onnx (RUN/model.onnx)."),
    cam_dir: Path = typer.Option(None, "--cam-dir", help="Also save heatmap overlays here."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per model call."),
    dicom_frame: int = typer.Option(
        None, "--dicom-frame", help="Frame of multi-frame DICOMs (default: refuse them)."
    ),
    workers: int = typer.Option(
        None, "--workers", help="Decode processes (default: CPUs - 1, at most 4)."
    ),
    force: bool = typer.Option(False, "--force", help="Start --out afresh instead of resuming."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Predict files and folders into a CSV (path, prob, decision, error, ...); resumable.

    Exits 1 when any file could not be read (its row has the error).
    """
    import os

    from bonefrac.inference.batch import predict_to_csv

    if workers is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        workers = min(4, n - 1) if n > 2 else 0
    summary = predict_to_csv(
        run, paths, out, backend=backend, batch_size=batch_size, cam_dir=cam_dir,
        dicom_frame=dicom_frame, workers=workers, force=force, progress=not no_progress,
    )  # fmt: skip
    console.print(
        f"{summary.total} inputs: [bold]{summary.predicted}[/] predicted "
        f"({summary.positives} at or above the threshold), [bold]{summary.failed}[/] failed, "
        f"{summary.skipped} already in {out} ({summary.earlier_failed} of them error rows); "
        f"{summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s)",
        highlight=False,
    )
    for path, err in summary.errors[:10]:
        console.print(f"[red]failed:[/] {path}: {err}", highlight=False)
    if len(summary.errors) > 10:
        console.print(f"... and {len(summary.errors) - 10} more; see the error column of {out}")
    if summary.any_failed:
        n_bad = summary.failed + summary.earlier_failed
        console.print(f"[bold red]{n_bad} file(s) failed[/]; rows with an error are in {out}")
        raise typer.Exit(code=1)


@app.command()
@friendly_errors
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    onnx: bool = typer.Option(False, "--onnx", help="Write RUN/model.onnx (dynamic batch)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    force: bool = typer.Option(False, "--force", help="Re-export even when up to date."),
) -> None:
    """Export the model; --onnx writes RUN/model.onnx after a PyTorch parity check."""
    from bonefrac.errors import ConfigError
    from bonefrac.inference.onnx import export_onnx

    if not onnx:
        raise ConfigError("choose an export format: bonefrac export RUN --onnx")
    result = export_onnx(run, opset=opset, force=force)
    if result.skipped:
        console.print(f"{result.path} is up to date (same weights, opset {result.opset})")
    else:
        console.print(
            f"wrote [bold]{result.path}[/] (opset {result.opset}, parity max |Δlogit| "
            f"{result.max_abs_diff:.2e}, {result.seconds:.1f} s)",
            highlight=False,
        )


@app.command()
@friendly_errors
def serve(
    run: Path = typer.Argument(..., help="Run directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    backend: str = typer.Option("torch", "--backend", help="torch | onnx (RUN/model.onnx)."),
    max_body_mb: float = typer.Option(32.0, "--max-body-mb", help="Largest upload, in MiB."),
    max_pixels: int = typer.Option(
        100_000_000, "--max-pixels", help="Largest image (width x height) accepted."
    ),
) -> None:
    """Serve the model: POST /v1/predict, GET /v1/model, /health, /docs and a page at /."""
    from bonefrac.serving.app import serve as run_server

    console.print(f"serving {run} on http://{host}:{port}/ (API docs at /docs)")
    run_server(
        run, host=host, port=port, backend=backend,
        max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=max_pixels,
    )  # fmt: skip


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
