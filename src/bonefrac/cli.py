"""Command-line interface: one sub-command per stage. Parse, call the library, print."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from bonefrac.errors import BonefracError

if TYPE_CHECKING:
    from bonefrac.rundir import RunDir


class _FriendlyGroup(TyperGroup):
    """Every command: a known bad input (:class:`BonefracError`, an unreadable or unwritable
    file) is one red line naming the file and the fix, exit status 2, no traceback (``-v``
    shows it)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BonefracError, OSError) as exc:
            if isinstance(exc, OSError) and not exc.filename:
                raise  # not about a file the user named: a bug, show the traceback
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                err_console.print_exception()
            error(_describe(exc))
            raise typer.Exit(code=2) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, BonefracError):
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{where}: {exc.strerror or exc}; check the path and its permissions"
    return str(exc)


app = typer.Typer(
    cls=_FriendlyGroup,
    help="bonefrac: train, evaluate, explain and serve fracture classifiers for radiographs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Build and inspect dataset manifests.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def error(message: str) -> None:
    """One red ``error:`` line on stderr; the message is printed as is (no markup; raw
    bytes of undecodable file names as ``\\xNN``)."""
    from bonefrac.csvpaths import printable

    err_console.print(Text.assemble(("error: ", "bold red"), printable(message)), soft_wrap=True)


def show(*parts: str | tuple[str, str]) -> None:
    """Print plain text and ``(text, style)`` parts; text is never read as markup."""
    console.print(Text.assemble(*parts), soft_wrap=True, highlight=False)


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


# --- data commands ---


@data_app.command("build")
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
    show(
        (str(c["manifest_rows"]), "bold"),
        f" images in {out / 'manifest.csv'} (split {c['by_split']}, labels {c['by_label']}); ",
        (str(c["quarantined"]), "bold"),
        f" quarantined {summary['quarantine_reasons']}; "
        f"{summary['label_conflicts']['groups']} label-conflict groups; "
        f"{summary['timing']['build_seconds']:.1f} s",
    )
    if summary["warnings"]:
        show(
            (f"{len(summary['warnings'])} warning(s)", "yellow"),
            f", listed above and in {out / 'summary.json'}",
        )


@data_app.command("report")
def data_report(
    manifest: Path = typer.Argument(..., help="Manifest folder or manifest.csv."),
) -> None:
    """Counts per split x label x region, duplicate groups, quarantine reasons, bar chart."""
    from bonefrac.data.report import report

    report(manifest, console=console)


# --- train command ---


@app.command()
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
    from bonefrac.training import fit
    from bonefrac.training.distributed import is_launcher_rank_zero
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
        err_console.print(Text.assemble(("training collapsed: ", "bold red"), str(exc)))
        raise typer.Exit(code=TrainingCollapsedError.exit_code) from None
    if is_launcher_rank_zero():  # the other ranks of a multi-process run write nothing
        report = None if no_deploy else _deploy(run)
        _print_run_summary(run)
        if report is not None:
            _print_deploy_report(report)
        _exit_if_collapsed(run)


def _deploy(path: Path) -> Any:
    from bonefrac.deploy import deploy_trained_run

    return deploy_trained_run(
        path,
        on_start=lambda: show("fitting on val what deploying needs (skip with --no-deploy) ..."),
    )


def _print_deploy_report(report: Any) -> None:
    for name, line in report.fitted.items():
        show(("deploy: ", "green"), f"{name}: {line}")
    for name, why in report.failed.items():
        show(("deploy: ", "bold yellow"), f"{name} NOT fitted: {why}")
    if report.skipped:
        show(("deploy: ", "yellow"), "skipped by the config: " + ", ".join(report.skipped))
    if report.seconds:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
        share = ""
        if report.train_seconds:
            share = f" ({report.total_seconds / report.train_seconds:.1%} of the training time)"
        show(f"deploy fits took {report.total_seconds:.0f} s{share}: {parts}")


def _exit_if_collapsed(path: Path) -> None:
    """A collapsed run (model.json ``training_status``) ends in red with exit status 3."""
    from bonefrac.rundir import RunDir
    from bonefrac.training.guard import TrainingCollapsedError

    run = RunDir(path)
    if not run.meta_path.is_file():  # interrupted before its outputs: the summary said so
        return
    meta = run.raw_meta()
    if meta.get("training_status") != "collapsed":
        return
    err_console.print(
        Text.assemble(
            ("training collapsed: ", "bold red"),
            f"{meta.get('collapse_reason')}. Training stopped; the best checkpoint was kept and "
            f"its outputs written to {path}, but do not trust this model. Try: "
            f"{meta.get('collapse_advice')}.",
        ),
        soft_wrap=True,
    )
    raise typer.Exit(code=TrainingCollapsedError.exit_code)


def _print_run_summary(path: Path) -> None:
    from bonefrac.rundir import RunDir

    run = RunDir(path)
    if not run.meta_path.is_file():
        show(f"run directory: {path} (incomplete; resume with --resume {path})")
        return
    for split, values in run.metrics().items():
        parts = []
        for key in ("roc_auc", "sensitivity", "specificity", "f1"):
            v = values.get(key, {}).get("value")
            parts.append(f"{key}={v:.3f}" if isinstance(v, (int, float)) else f"{key}=n/a")
        show((split, "bold"), ": " + "  ".join(parts))
    _print_best_epoch_note(run)
    show("run directory: ", (str(path), "bold"))


def _print_best_epoch_note(run: RunDir) -> None:
    """Say so when the best checkpoint is a head-only epoch of the frozen warm-up."""
    meta = run.raw_meta()
    if meta.get("best_in_frozen_warmup"):
        show(
            ("note: ", "yellow"),
            f"the best epoch ({meta['best_epoch'] + 1}) lies inside the frozen warm-up: the "
            "kept model is a head-only fit; fine-tuning the backbone never beat it",
        )


# --- evaluation commands ---


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory (from 'bonefrac train')."),
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
) -> None:
    """Metrics with bootstrap CIs, plots, subgroup table and report.html for one split."""
    from bonefrac.evaluation.evaluate import evaluate_run
    from bonefrac.evaluation.tables import localization_table, metrics_table

    res = evaluate_run(
        run, split=split, manifest=manifest, name=name, all_rows=all_rows, n_boot=n_boot,
        seed=seed, force=force, batch_size=batch_size, study_column=study_column,
        study_agg=study_agg,
    )  # fmt: skip
    st = res.metrics["settings"]
    console.print(
        metrics_table(
            res.metrics, f"{res.key}: threshold {st['threshold']:.3f}, T {st['temperature']:.3f}"
        )
    )
    for note in res.metrics["notes"].values():
        show(("note: ", "yellow"), note)
    loc = localization_table(res.metrics, f"{res.key}: localisation (boxes and map)")
    if loc is not None:
        console.print(loc)
        st = res.metrics["localization"]["settings"]
        show(
            f"hit rate: map peak inside a true box (tolerance {st['tolerance']:g} of the longer "
            f"side); baselines: centre_hit_rate (always the image centre), chance_hit_rate "
            f"(random point). AP50: COCO AP at IoU {st['ap_iou']:g} over all images "
            "(ap50_boxed: images with true boxes only, as detection benchmarks score). "
            f"FROC: {st['froc_budgets']} ({st['froc_match']})."
        )
        for note in res.metrics["localization"]["notes"].values():
            show(("note: ", "yellow"), note)
    if "study" in res.metrics:
        sm = res.metrics["study"]
        title = (
            f"{res.key} studies ({sm['support']['n']} from {sm['support']['n_images']} images, "
            f"{sm['settings']['aggregation']}; positive if any image is)"
        )
        console.print(metrics_table(sm, title))
    sel = res.metrics.get("selective") or {}
    if "augrc" in res.metrics:
        from bonefrac.metrics import format_ci

        show(
            f"AUGRC ({sel.get('score')} uncertainty; lower is better): "
            f"{format_ci(res.metrics['augrc'], 4)} (random ranking "
            f"{sel.get('augrc_random', float('nan')):.4f}, perfect "
            f"{sel.get('augrc_optimal', float('nan')):.4f})"
        )
        ref = sel.get("refer")
        if ref:
            show(
                f"refer rule: answers {ref['coverage']:.1%} (val target "
                f"{ref['coverage_target']:.0%}); on the answered images sensitivity "
                f"{format_ci(ref['sensitivity'])}, specificity {format_ci(ref['specificity'])}"
            )
    if res.skipped:
        show(
            ("warning: ", "bold yellow"),
            f"skipped {len(res.skipped)} image(s) that could not be decoded; "
            f"evaluated the other {res.metrics['support']['n']}:",
        )
        for path, reason in res.skipped[:20]:
            show(f"  {path}: {reason}")
        if len(res.skipped) > 20:
            show(f"  ... and {len(res.skipped) - 20} more (the metrics file lists them all)")
    if res.predictions:
        show(f"predictions: {res.predictions}")
    from bonefrac.rundir import RunDir

    layout = RunDir(run)
    show(f"metrics: {layout.metrics_path}  plots: {layout.plots_dir}")
    if res.report:
        show("report: ", (str(res.report), "bold"))


@app.command()
def threshold(
    run: Path = typer.Argument(..., help="Run directory."),
    criterion: str = typer.Option(
        None, "--criterion", help="f1 | youden | sensitivity:X | specificity:X (e.g. sens:0.9)"
    ),
    on: str = typer.Option("val", "--on", help="Predictions to tune on: val only (test refused)."),
    refer_coverage: float = typer.Option(
        None,
        "--refer-coverage",
        help="Also store a refer rule answering this share of val images (e.g. 0.8); "
        "the rest is 'refer'.",
    ),
    refer_tta: bool = typer.Option(
        False,
        "--refer-tta/--no-refer-tta",
        help="Also try the test-time augmentation spread as the refer score (8 model calls per "
        "val image; kept only when clearly better than the free scores).",
    ),
) -> None:
    """Choose the decision threshold (and refer rule) on validation predictions; store them in
    model.json."""
    from bonefrac.evaluation.tables import threshold_table
    from bonefrac.evaluation.thresholds import tune_threshold
    from bonefrac.rundir import RunDir

    result = tune_threshold(
        run, criterion, on=on, refer_coverage=refer_coverage, refer_tta=refer_tta
    )
    if "metrics" in result:
        console.print(threshold_table(result))
    if result["temperature"] != 1.0:
        show(f"(on calibrated probabilities, temperature {result['temperature']:.3f})")
    rule = result.get("refer")
    if rule:
        aurocs = ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in rule["error_auroc"].items()
        )
        show(
            f"refer rule: score {rule['score']} (error-ranking ROC-AUC on val: {aurocs}), "
            f"refer when uncertainty > {rule['cutoff']:.4g}; answers {rule['val_coverage']:.1%} "
            f"of {rule['val_n']} val images (requested {rule['coverage']:.1%})"
        )
    show(
        f"stored threshold {result['new_threshold']:.4f}"
        + (" and the refer rule" if rule else "")
        + f" in {RunDir(run).meta_path}; "
        f"run 'bonefrac evaluate {run}' to refresh the metrics and the report"
    )


@app.command()
def ood(
    run: Path = typer.Argument(..., help="Run directory."),
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
) -> None:
    """Fit the out-of-scope detector (train-split features, val cut-off) and store it in the
    run: inputs above the cut-off get the decision 'out_of_scope'."""
    from bonefrac.evaluation.ood import fit_ood
    from bonefrac.rundir import RunDir

    rec = fit_ood(run, method, percentile=percentile, max_images=max_images,
                  batch_size=batch_size, force=force)  # fmt: skip
    show(
        f"out-of-scope detector: {rec['method']}"
        + (f" on {rec['n_train']} train images" if rec["n_train"] else "")
        + f"; cut-off {rec['cutoff']:.4g} (val percentile {rec['percentile']:g}: "
        f"{rec['val_flagged']:.1%} of {rec['val_n']} val images flagged)"
    )
    show(f"stored in {RunDir(run).meta_path}")


@app.command()
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
    from bonefrac.rundir import RunDir

    show(f"reliability diagrams: {RunDir(run).plots_dir}/calibration_*.png")
    show(f"run 'bonefrac evaluate {run}' to refresh the metrics and the report")


@app.command()
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
    from bonefrac.evaluation.compare import auc_test_sentence, augrc_sentence, compare_runs
    from bonefrac.evaluation.tables import compare_table

    result = compare_runs(runs, split=split, out_dir=out, n_boot=n_boot, seed=seed)
    console.print(compare_table(result))
    show(augrc_sentence(result))
    show(auc_test_sentence(result))
    show(f"written: {', '.join(str(p) for p in result.outputs.values())}")


@app.command()
def relocate(
    run: Path = typer.Argument(..., help="Run directory copied from another machine."),
    manifest: Path = typer.Option(
        ..., "--manifest", help="Manifest of the same images at this machine's paths."
    ),
) -> None:
    """Point a copied run at this machine's copy of its images (predictions, model.json,
    config.yaml); rows are matched by source and image_id and must keep their labels."""
    from bonefrac.rundir import RunDir

    summary = RunDir.open(run).relocate(manifest)
    counts = ", ".join(f"{name} ({n} rows)" for name, n in summary["files"].items())
    show(f"relocated {counts}")
    show(f"manifest: {summary['previous_manifest']} -> {summary['manifest']}")


@app.command()
def report(run: Path = typer.Argument(..., help="Run directory.")) -> None:
    """(Re)build RUN/report.html from what the run directory holds."""
    from bonefrac.evaluation.report import build_report

    show("report: ", (str(build_report(run)), "bold"))


# --- explain command ---


@app.command()
def explain(
    run: Path = typer.Argument(..., help="Run directory."),
    more_images: list[Path] = typer.Argument(
        None,
        hidden=True,
        metavar="IMAGES",
        help="Extra --images paths (so '--images dir/*.png' works).",
    ),
    split: str = typer.Option(
        "test", "--split", help="Explain the images of these predictions (val, test or a name)."
    ),
    images: list[Path] = typer.Option(
        None, "--images", help="Image files or folders instead of a split (repeatable)."
    ),
    method: str = typer.Option(
        None,
        "--method",
        help="model | gradcam | gradcam++ | eigencam | saliency | smoothgrad (default: model, "
        "the learned map, for a run trained with model.localize: true; else gradcam)",
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
    show(
        f"{res['method']}{where}: {len(res['overlays'])} overlays in "
        f"{res['out_dir'] / res['method']}"
    )
    if res["grid"]:
        show(f"grid: {res['grid']}")
    loc = res["localization"]
    if loc is not None:
        if loc["n_scored"]:
            show(
                "localisation on ",
                (str(loc["n_scored"]), "bold"),
                " boxed images: hit rate ",
                (f"{loc['hit_rate']:.3f}", "bold"),
                f" (95% CI {loc['hit_rate_low']:.3f}-{loc['hit_rate_high']:.3f}; chance "
                f"{loc['chance_hit_rate']:.3f}), energy in box ",
                (f"{loc['energy_in_box']:.3f}", "bold"),
                f" (chance {loc['chance_energy_in_box']:.3f})",
            )
        else:
            show(("note: ", "yellow"), loc.get("note", "nothing scored"))
        show(f"localisation: {res['localization_path']}")
    show(f"run 'bonefrac report {run}' to include them in report.html")


# --- tune commands ---

tune_app = typer.Typer(
    help="Hyperparameter search (Optuna): 'tune --config ...' runs trials, 'tune report' ranks them.",
    invoke_without_command=True,
    no_args_is_help=True,
)
app.add_typer(tune_app, name="tune")


@tune_app.callback()
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
        err_console.print(
            "interrupted; re-run the same command to continue the study", markup=False
        )
        raise typer.Exit(code=130) from None
    states: dict[str, int] = {}
    for t in result.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    show("study ", (result.study_name, "bold"), f": {len(result.trials)} trials {states}")
    try:
        best = result.best_trial
        show(
            f"best: trial {best.number} {result.user_attrs.get('objective')}={best.value:.4f} "
            f"({best.user_attrs.get('run_dir')})"
        )
    except ValueError:
        show("no completed trial yet")
    show(f"ranked table, plots and best.yaml: bonefrac tune report --study {result.study_name}")


@tune_app.command("report")
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
    show("study ", (study, "bold"), f": {rep.state_counts()} (objective {rep.objective})")
    if not rep.completed.empty:
        console.print(
            ranked_table(rep, "sensitivity", "ranked by sensitivity (val, threshold 0.5)")
        )
        console.print(ranked_table(rep, "f1", "ranked by F1 (val, threshold 0.5)"))
    if rep.importances:
        console.print(importance_table(rep))
    for note in rep.notes:
        show(("note: ", "yellow"), note)
    if rep.best_trial is not None:
        show(f"best trial {rep.best_trial}: {rep.objective}={rep.best_value:.4f}")
    outputs = {"best config": rep.best_yaml, "trials": rep.trials_csv, **rep.plots}
    for what, path in outputs.items():
        if path is not None:
            show(f"{what}: {path}")


# --- inference commands ---


@app.command()
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
        None, "--workers", help="Decode processes per process (default: its CPUs - 1, at most 4)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Start --out afresh (also when another run or setting wrote it)."
    ),
    retry_errors: bool = typer.Option(
        False, "--retry-errors", help="Predict again the files whose row in --out has an error."
    ),
    devices: int = typer.Option(
        1, "--devices", help="Processes (one per device) to share the files; parts are merged."
    ),
    accelerator: str = typer.Option("cpu", "--accelerator", help="cpu | gpu (Lightning)."),
    strategy: str = typer.Option(
        "ddp", "--strategy", help="Lightning launcher with --devices > 1: ddp | ddp_spawn."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    dicom_out: Path = typer.Option(
        None, "--dicom-out", help="Write a DICOM Secondary Capture + SR per DICOM input here."
    ),
    study_column: str = typer.Option(
        None, "--study-column", help="PATHS is one CSV list (path + this column): study rows."
    ),
    study_by: str = typer.Option(
        None, "--study-by", help="'folder': the images of one folder form a study."
    ),
    study_agg: str = typer.Option(
        "max", "--study-agg", help="Study probability from its images: max | mean | noisy_or."
    ),
) -> None:
    """Predict files and folders into a CSV (path, prob, decision, error, ...); resumable.

    With --study-column or --study-by, also one row per study in <out>.studies.csv.

    Exit status: 0 every file predicted; 1 some files failed (their rows have the error);
    2 the job itself failed (bad run or arguments, unwritable --out, a CSV written by another
    run or setting, or a model that gave no usable output for any file).
    """
    from bonefrac.csvpaths import safe_text
    from bonefrac.inference.predict_files import predict_to_csv
    from bonefrac.inference.studies import check_aggregation, study_inputs

    grouped = bool(study_column or study_by)
    if grouped:
        check_aggregation(study_agg)
    paths, study_of = study_inputs(paths, study_column, study_by)
    if workers is None:
        workers = _default_decode_workers(devices)
    try:
        summary = predict_to_csv(
            run, paths, out, backend=backend, batch_size=batch_size, cam_dir=cam_dir,
            dicom_frame=dicom_frame, workers=workers, force=force, retry_errors=retry_errors,
            progress=not no_progress, devices=devices, accelerator=accelerator,
            strategy=strategy, dicom_out=dicom_out,
        )  # fmt: skip
    except (BonefracError, KeyboardInterrupt):
        raise
    except Exception as exc:  # an unexpected failure is still the job's, not a file's: exit 2
        logging.getLogger(__name__).debug("predict failed", exc_info=True)
        err_console.print(
            f"error: {safe_text(f'{type(exc).__name__}: {exc}')} (-v shows the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(code=2) from None
    if summary is None:  # a helper process of a multi-process job: the first one reports
        return
    shown = safe_text(str(out))

    def say(text: str, **style: Any) -> None:  # file names are printed literally (no markup)
        console.print(text, markup=False, highlight=False, soft_wrap=True, **style)

    say(
        f"{summary.total} inputs: {summary.predicted} predicted "
        f"({summary.positives} fracture, {summary.referred} refer, {summary.out_of_scope} out of "
        f"scope), {summary.failed} failed, "
        f"{summary.skipped} already in {shown} ({summary.earlier_failed} of them error rows); "
        f"{summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s"
        + (f", {summary.processes} processes)" if summary.processes > 1 else ")")
    )
    for path, err in summary.errors[:10]:
        say(f"failed: {path}: {err}", style="red")
    if len(summary.errors) > 10:
        say(f"... and {len(summary.errors) - 10} more; see the error column of {shown}")
    if dicom_out is not None:
        _report_dicom_out(summary.dicom_out, dicom_out, say)
    if grouped:
        from bonefrac.inference.batch import read_rows
        from bonefrac.inference.studies import write_studies

        target, studies = write_studies(out, read_rows(out), study_of, study_agg)
        say(f"{len(studies)} studies ({study_agg} of their images): {safe_text(str(target))}")
    if summary.model_broken:
        say(
            f"error: the model gave no usable output for any of {summary.model_failed} "
            f"image(s) (e.g. non-finite logits): check {safe_text(str(run))} (weights, "
            "metadata); its rows are error rows, re-run with --retry-errors once fixed",
            style="bold red",
        )
        raise typer.Exit(code=2)
    if summary.any_failed:
        n_bad = summary.failed + summary.earlier_failed
        say(f"{n_bad} file(s) failed; rows with an error are in {shown}", style="bold red")
        raise typer.Exit(code=1)
    if summary.dicom_out.failed:  # every prediction stands, but a requested output is missing
        raise typer.Exit(code=1)


def _report_dicom_out(counts: Any, folder: Path, say: Any) -> None:
    """One line on what --dicom-out wrote; the files it could not make, in red."""
    from bonefrac.csvpaths import safe_text

    say(
        f"dicom out: {counts.written} capture + report pair(s) in {safe_text(str(folder))}; "
        f"{counts.not_dicom} input(s) not DICOM (no DICOM out for them), {counts.failed} failed"
    )
    for _path, reason in counts.failures[:10]:
        say(f"dicom out failed: {safe_text(reason)}", style="red")


def _default_decode_workers(processes: int) -> int:
    """DataLoader decode workers per prediction process: its share of CPUs - 1, at most 4."""
    from bonefrac.system import usable_cpus

    share = usable_cpus() // max(1, processes)
    return min(4, share - 1) if share > 2 else 0


@app.command()
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
        show(f"{result.path} is up to date (same weights, opset {result.opset})")
    else:
        show(
            "wrote ",
            (str(result.path), "bold"),
            f" (opset {result.opset}, parity max |Δlogit| {result.max_abs_diff:.2e}, "
            f"{result.seconds:.1f} s)",
        )


@app.command()
def serve(
    run: Path = typer.Argument(..., help="Run directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    backend: str = typer.Option("torch", "--backend", help="torch | onnx (RUN/model.onnx)."),
    max_body_mb: float = typer.Option(32.0, "--max-body-mb", help="Largest upload, in MiB."),
    max_pixels: int = typer.Option(
        36_000_000, "--max-pixels", help="Largest image (width x height) accepted."
    ),
    max_image_mb: float = typer.Option(
        64.0, "--max-image-mb", help="Largest decoded image (w x h x channels x bytes), MiB."
    ),
    max_concurrency: int = typer.Option(
        2, "--max-concurrency", help="Requests decoding + predicting at once."
    ),
    queue: int = typer.Option(16, "--queue", help="Requests that may wait; then 503."),
    allowed_host: list[str] | None = typer.Option(
        None, "--allowed-host", help="Extra Host header name to accept (*.dom, *); repeatable."
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="Require 'Authorization: Bearer <token in FILE>' on /v1/."
    ),
    docs: bool = typer.Option(True, "--docs/--no-docs", help="Serve Swagger UI at /docs."),
    keep_alive_s: int = typer.Option(5, "--keep-alive-s", help="Close idle connections after."),
    body_timeout_s: float = typer.Option(
        30.0, "--body-timeout-s", help="408 when an upload stalls this long."
    ),
    max_connections: int = typer.Option(
        64, "--max-connections", help="Open connections before uvicorn answers 503."
    ),
) -> None:
    """Serve the model: POST /v1/predict, GET /v1/model, /health, /docs and a page at /."""
    from bonefrac.serving.app import serve as run_server

    console.print(f"serving {run} on http://{host}:{port}/", highlight=False, markup=False)
    run_server(
        run, host=host, port=port, backend=backend,
        max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=max_pixels,
        max_image_bytes=int(max_image_mb * 1024 * 1024), max_concurrency=max_concurrency,
        queue=queue, allowed_hosts=allowed_host or (), token_file=token_file, docs=docs,
        keep_alive_s=keep_alive_s, body_timeout_s=body_timeout_s, max_connections=max_connections,
    )  # fmt: skip
