"""What the CLI prints: one function per library result, printing to the console it is given.

The commands only parse, call the library and hand its result here, so a test can render a
result into ``Console(file=io.StringIO())`` without running a command. Text that comes from
files or users (paths, error messages) is never read as rich markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from bonefrac.rundir.predictions import ENERGY

if TYPE_CHECKING:
    from bonefrac.batch_predict.stream import BatchSummary
    from bonefrac.deploy import DeployReport
    from bonefrac.dicom.write import DicomOutCounts
    from bonefrac.rundir import RunDir

console = Console()
err_console = Console(stderr=True)


def show(out: Console, *parts: str | tuple[str, str]) -> None:
    """Print plain text and ``(text, style)`` parts; text is never read as markup."""
    out.print(Text.assemble(*parts), soft_wrap=True, highlight=False)


def say(out: Console, text: str, **style: Any) -> None:
    """Print ``text`` literally (file names: no markup, no highlighting)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True, **style)


def error(out: Console, message: str) -> None:
    """One red ``error:`` line; the message is printed as is (no markup; raw bytes of
    undecodable file names as ``\\xNN``)."""
    from bonefrac.csvpaths import printable

    out.print(Text.assemble(("error: ", "bold red"), printable(message)), soft_wrap=True)


# --- data ---


def data_build(out: Console, summary: dict[str, Any], folder: Path) -> None:
    c = summary["counts"]
    show(
        out,
        (str(c["manifest_rows"]), "bold"),
        f" images in {folder / 'manifest.csv'} (split {c['by_split']}, labels {c['by_label']}); ",
        (str(c["quarantined"]), "bold"),
        f" quarantined {summary['quarantine_reasons']}; "
        f"{summary['label_conflicts']['groups']} label-conflict groups; "
        f"{summary['timing']['build_seconds']:.1f} s",
    )
    if summary["warnings"]:
        show(
            out,
            (f"{len(summary['warnings'])} warning(s)", "yellow"),
            f", listed above and in {folder / 'summary.json'}",
        )


# --- train ---


def deploy_started(out: Console) -> None:
    show(out, "fitting on val what deploying needs (skip with --no-deploy) ...")


def deploy_report(out: Console, report: DeployReport) -> None:
    for name, line in report.fitted.items():
        show(out, ("deploy: ", "green"), f"{name}: {line}")
    for name, why in report.failed.items():
        show(out, ("deploy: ", "bold yellow"), f"{name} NOT fitted: {why}")
    if report.skipped:
        show(out, ("deploy: ", "yellow"), "skipped by the config: " + ", ".join(report.skipped))
    if report.seconds:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
        share = ""
        if report.train_seconds:
            share = f" ({report.total_seconds / report.train_seconds:.1%} of the training time)"
        show(out, f"deploy fits took {report.total_seconds:.0f} s{share}: {parts}")


def run_summary(out: Console, run: RunDir) -> None:
    """The metrics of each split of a finished run, or how to resume an interrupted one."""
    path = run.path
    if not run.meta_path.is_file():
        show(out, f"run directory: {path} (incomplete; resume with --resume {path})")
        return
    for split, values in run.metrics().items():
        parts = []
        for key in ("miss_rate", "normals_cleared", "referred", "roc_auc"):
            v = values.get(key, {}).get("value")
            parts.append(f"{key}={v:.3f}" if isinstance(v, (int, float)) else f"{key}=n/a")
        show(out, (split, "bold"), ": " + "  ".join(parts))
    meta = run.raw_meta()
    if meta.get("best_in_frozen_warmup"):  # the kept model is a head-only epoch
        show(
            out,
            ("note: ", "yellow"),
            f"the best epoch ({meta['best_epoch'] + 1}) lies inside the frozen warm-up: the "
            "kept model is a head-only fit; fine-tuning the backbone never beat it",
        )
    show(out, "run directory: ", (str(path), "bold"))


def training_collapsed(out: Console, reason: str) -> None:
    out.print(Text.assemble(("training collapsed: ", "bold red"), reason))


def collapsed_run(out: Console, meta: dict[str, Any], path: Path) -> None:
    """A run whose model.json says ``training_status: collapsed``: why, and what to try."""
    out.print(
        Text.assemble(
            ("training collapsed: ", "bold red"),
            f"{meta.get('collapse_reason')}. Training stopped; the best checkpoint was kept and "
            f"its outputs written to {path}, but do not trust this model. Try: "
            f"{meta.get('collapse_advice')}.",
        ),
        soft_wrap=True,
    )


# --- evaluation ---


def evaluation(out: Console, res: Any, run: RunDir) -> None:
    """``evaluate``: metrics, localisation, studies, selective prediction, skipped files."""
    from bonefrac.evaluation.tables import localization_table, metrics_table

    st = res.metrics["settings"]
    cuts = f"threshold {st['threshold']:.3f}"
    if st.get("rule_out") is not None:
        cuts = f"rule-out {st['rule_out']:.3f}, rule-in {st['threshold']:.3f}"
    out.print(metrics_table(res.metrics, f"{res.key}: {cuts}, T {st['temperature']:.3f}"))
    for note in res.metrics["notes"].values():
        show(out, ("note: ", "yellow"), note)
    loc = localization_table(res.metrics, f"{res.key}: localisation (boxes and map)")
    if loc is not None:
        out.print(loc)
        st = res.metrics["localization"]["settings"]
        show(
            out,
            f"hit rate: map peak inside a true box (tolerance {st['tolerance']:g} of the longer "
            f"side); baselines: centre_hit_rate (always the image centre), chance_hit_rate "
            f"(random point). AP50: COCO AP at IoU {st['ap_iou']:g} over all images "
            "(ap50_boxed: images with true boxes only, as detection benchmarks score). "
            f"FROC: {st['froc_budgets']} ({st['froc_match']}).",
        )
        for note in res.metrics["localization"]["notes"].values():
            show(out, ("note: ", "yellow"), note)
    if "study" in res.metrics:
        sm = res.metrics["study"]
        title = (
            f"{res.key} studies ({sm['support']['n']} from {sm['support']['n_images']} images, "
            f"{sm['settings']['aggregation']}; positive if any image is)"
        )
        out.print(metrics_table(sm, title))
    if "augrc" in res.metrics:
        _selective(out, res.metrics)
    if res.skipped:
        show(
            out,
            ("warning: ", "bold yellow"),
            f"skipped {len(res.skipped)} image(s) that could not be decoded; "
            f"evaluated the other {res.metrics['support']['n']}:",
        )
        for path, reason in res.skipped[:20]:
            show(out, f"  {path}: {reason}")
        if len(res.skipped) > 20:
            show(out, f"  ... and {len(res.skipped) - 20} more (the metrics file lists them all)")
    if res.predictions:
        show(out, f"predictions: {res.predictions}")
    show(out, f"metrics: {run.metrics_path}  plots: {run.plots_dir}")
    if res.report:
        show(out, "report: ", (str(res.report), "bold"))


def _selective(out: Console, metrics: dict[str, Any]) -> None:
    """AUGRC and, when the run has one, the refer rule's coverage and answered metrics."""
    from bonefrac.metrics import format_ci

    sel = metrics.get("selective") or {}
    show(
        out,
        f"AUGRC ({sel.get('score')} uncertainty; lower is better): "
        f"{format_ci(metrics['augrc'], 4)} (random ranking "
        f"{sel.get('augrc_random', float('nan')):.4f}, perfect "
        f"{sel.get('augrc_optimal', float('nan')):.4f})",
    )
    ref = sel.get("refer")
    if ref:
        show(
            out,
            f"refer rule: answers {ref['coverage']:.1%} (val target "
            f"{ref['coverage_target']:.0%}); on the answered images sensitivity "
            f"{format_ci(ref['sensitivity'])}, specificity {format_ci(ref['specificity'])}",
        )


def threshold(out: Console, result: dict[str, Any], run: RunDir, run_arg: Path) -> None:
    from bonefrac.evaluation.tables import threshold_table

    if "metrics" in result:
        out.print(threshold_table(result))
    if result["temperature"] != 1.0:
        show(out, f"(on calibrated probabilities, temperature {result['temperature']:.3f})")
    rule_out = result.get("rule_out")
    if rule_out:
        from bonefrac.evaluation.thresholds import rule_out_summary

        show(out, rule_out_summary(rule_out))
        if rule_out.get("warning"):
            show(out, ("warning: ", "bold yellow"), rule_out["warning"])
    rule = result.get("refer")
    if rule:
        aurocs = ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in rule["error_auroc"].items()
        )
        show(
            out,
            f"refer rule: score {rule['score']} (error-ranking ROC-AUC on val: {aurocs}), "
            f"refer when uncertainty > {rule['cutoff']:.4g}; answers {rule['val_coverage']:.1%} "
            f"of {rule['val_n']} val images (requested {rule['coverage']:.1%})",
        )
    show(
        out,
        f"stored threshold {result['new_threshold']:.4f}"
        + (" and the refer rule" if rule else "")
        + (" and the rule-out cut" if rule_out else "")
        + f" in {run.meta_path}; "
        f"run 'bonefrac evaluate {run_arg}' to refresh the metrics and the report",
    )


def ood(out: Console, rec: dict[str, Any], run: RunDir) -> None:
    show(
        out,
        f"out-of-scope detector: {rec['method']}"
        + (f" on {rec['n_train']} train images" if rec["n_train"] else "")
        + f"; cut-off {rec['cutoff']:.4g} (val percentile {rec['percentile']:g}: "
        f"{rec['val_flagged']:.1%} of {rec['val_n']} val images flagged)",
    )
    show(out, f"stored in {run.meta_path}")


def calibration(out: Console, summary: dict[str, Any], run: RunDir, run_arg: Path) -> None:
    from bonefrac.evaluation.tables import calibration_table

    out.print(calibration_table(summary))
    if summary["threshold_after"] != summary["threshold_before"]:
        out.print(
            f"threshold moved {summary['threshold_before']:.4f} -> "
            f"{summary['threshold_after']:.4f} so decisions stay the same"
        )
    show(out, f"reliability diagrams: {run.plots_dir}/calibration_*.png")
    show(out, f"run 'bonefrac evaluate {run_arg}' to refresh the metrics and the report")


def comparison(out: Console, result: Any) -> None:
    from bonefrac.evaluation.compare import auc_test_sentence, augrc_sentence
    from bonefrac.evaluation.tables import compare_table

    out.print(compare_table(result))
    show(out, augrc_sentence(result))
    show(out, auc_test_sentence(result))
    show(out, f"written: {', '.join(str(p) for p in result.outputs.values())}")


def relocation(out: Console, summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{name} ({n} rows)" for name, n in summary["files"].items())
    show(out, f"relocated {counts}")
    show(out, f"manifest: {summary['previous_manifest']} -> {summary['manifest']}")


def report_path(out: Console, path: Path) -> None:
    show(out, "report: ", (str(path), "bold"))


# --- explain ---


def explanation(out: Console, res: dict[str, Any], run_arg: Path) -> None:
    where = f" @ {res['layer']}" if res["layer"] else ""
    show(
        out,
        f"{res['method']}{where}: {len(res['overlays'])} overlays in "
        f"{res['out_dir'] / res['method']}",
    )
    if res["grid"]:
        show(out, f"grid: {res['grid']}")
    loc = res["localization"]
    if loc is not None:
        if loc["n_scored"]:
            show(
                out,
                "localisation on ",
                (str(loc["n_scored"]), "bold"),
                " boxed images: hit rate ",
                (f"{loc['hit_rate']:.3f}", "bold"),
                f" (95% CI {loc['hit_rate_low']:.3f}-{loc['hit_rate_high']:.3f}; chance "
                f"{loc['chance_hit_rate']:.3f}), energy in box ",
                (f"{loc[ENERGY]:.3f}", "bold"),
                f" (chance {loc['chance_energy_in_box']:.3f})",
            )
        else:
            show(out, ("note: ", "yellow"), loc.get("note", "nothing scored"))
        show(out, f"localisation: {res['localization_path']}")
    show(out, f"run 'bonefrac report {run_arg}' to include them in report.html")


# --- tune ---


def study(out: Console, result: Any) -> None:
    """An Optuna study after ``tune``: trial states, the best trial, where the report is."""
    states: dict[str, int] = {}
    for t in result.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    show(out, "study ", (result.study_name, "bold"), f": {len(result.trials)} trials {states}")
    try:
        best = result.best_trial
        show(
            out,
            f"best: trial {best.number} {result.user_attrs.get('objective')}={best.value:.4f} "
            f"({best.user_attrs.get('run_dir')})",
        )
    except ValueError:
        show(out, "no completed trial yet")
    show(
        out, f"ranked table, plots and best.yaml: bonefrac tune report --study {result.study_name}"
    )


def tune_report(out: Console, rep: Any, study_name: str) -> None:
    from bonefrac.tuning.report import importance_table, ranked_table

    show(out, "study ", (study_name, "bold"), f": {rep.state_counts()} (objective {rep.objective})")
    if not rep.completed.empty:
        out.print(ranked_table(rep, "sensitivity", "ranked by sensitivity (val, threshold 0.5)"))
        out.print(ranked_table(rep, "f1", "ranked by F1 (val, threshold 0.5)"))
    if rep.importances:
        out.print(importance_table(rep))
    for note in rep.notes:
        show(out, ("note: ", "yellow"), note)
    if rep.best_trial is not None:
        show(out, f"best trial {rep.best_trial}: {rep.objective}={rep.best_value:.4f}")
    outputs = {"best config": rep.best_yaml, "trials": rep.trials_csv, **rep.plots}
    for what, path in outputs.items():
        if path is not None:
            show(out, f"{what}: {path}")


# --- predict, export, serve ---


def prediction_rows(out: Console, rows: list[dict[str, str]]) -> None:
    """One line per predicted file (``bonefrac predict`` without ``--out``): its decision,
    probability and boxes, or its error in red."""
    from bonefrac.csvpaths import safe_text
    from bonefrac.rundir.predictions import (
        DECISION,
        ERROR,
        OOD_REASON,
        PATH,
        PRED_BOXES,
        PROB,
        THRESHOLD,
        parse_boxes,
    )

    for row in rows:
        name = safe_text(row[PATH])
        if row[ERROR]:
            say(out, f"{name}: error: {safe_text(row[ERROR])}", style="red")
            continue
        boxes = len(parse_boxes(row[PRED_BOXES], 5, source=name, column=PRED_BOXES))
        reason = f" ({safe_text(row[OOD_REASON])})" if row[OOD_REASON] else ""
        show(
            out,
            f"{name}: ",
            (row[DECISION] + reason, _DECISION_STYLE.get(row[DECISION], "")),
            f"  probability {float(row[PROB]):.3f} (threshold {float(row[THRESHOLD]):.3f}), "
            f"{boxes} box{'es' if boxes != 1 else ''}",
        )


_DECISION_STYLE = {"fracture": "bold red", "refer": "bold yellow", "out_of_scope": "bold yellow"}


def predict_summary(out: Console, summary: BatchSummary, csv: Path | None) -> None:
    """Counts of a predict job, and its first failures (``csv`` None: nothing was written)."""
    from bonefrac.csvpaths import safe_text

    shown = safe_text(str(csv)) if csv is not None else ""
    resumed = (
        f"{summary.skipped} already in {shown} ({summary.earlier_failed} of them error rows); "
        if csv is not None
        else ""
    )
    say(
        out,
        f"{summary.total} inputs: {summary.predicted} predicted "
        f"({summary.positives} fracture, {summary.referred} refer, {summary.out_of_scope} out of "
        f"scope), {summary.failed} failed, {resumed}"
        f"{summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s"
        + (f", {summary.processes} processes)" if summary.processes > 1 else ")"),
    )
    if csv is None:  # every row, failures included, was printed above
        return
    for path, err in summary.errors[:10]:
        say(out, f"failed: {path}: {err}", style="red")
    if len(summary.errors) > 10:
        say(out, f"... and {len(summary.errors) - 10} more; see the error column of {shown}")


def dicom_out(out: Console, counts: DicomOutCounts, folder: Path) -> None:
    """One line on what --dicom-out wrote; the files it could not make, in red."""
    from bonefrac.csvpaths import safe_text

    say(
        out,
        f"dicom out: {counts.written} capture + report pair(s) in {safe_text(str(folder))}; "
        f"{counts.not_dicom} input(s) not DICOM (no DICOM out for them), {counts.failed} failed",
    )
    for _path, reason in counts.failures[:10]:
        say(out, f"dicom out failed: {safe_text(reason)}", style="red")


def studies(out: Console, target: Path, rows: list[dict[str, Any]], aggregation: str) -> None:
    from bonefrac.csvpaths import safe_text

    say(out, f"{len(rows)} studies ({aggregation} of their images): {safe_text(str(target))}")


def predict_failures(out: Console, summary: BatchSummary, run: Path, csv: Path | None) -> None:
    """The closing red line of a job whose model answered for nothing, or with failed files."""
    from bonefrac.csvpaths import safe_text

    if summary.model_broken:
        say(
            out,
            f"error: the model gave no usable output for any of {summary.model_failed} "
            f"image(s) (e.g. non-finite logits): check {safe_text(str(run))} (weights, "
            "metadata); its rows are error rows, re-run with --retry-errors once fixed",
            style="bold red",
        )
    elif summary.any_failed:
        n_bad = summary.failed + summary.earlier_failed
        where = f"rows with an error are in {safe_text(str(csv))}" if csv else "see above"
        say(out, f"{n_bad} file(s) failed; {where}", style="bold red")


def job_failed(out: Console, exc: BaseException) -> None:
    """An unexpected failure of a whole job (not of one file): one line, no traceback."""
    from bonefrac.csvpaths import safe_text

    say(out, f"error: {safe_text(f'{type(exc).__name__}: {exc}')} (-v shows the traceback)")


def export(out: Console, result: Any) -> None:
    if result.skipped:
        show(out, f"{result.path} is up to date (same weights, opset {result.opset})")
    else:
        show(
            out,
            "wrote ",
            (str(result.path), "bold"),
            f" (opset {result.opset}, parity max |Δlogit| {result.max_abs_diff:.2e}, "
            f"{result.seconds:.1f} s)",
        )


def serving(out: Console, run: Path, host: str, port: int) -> None:
    out.print(f"serving {run} on http://{host}:{port}/", highlight=False, markup=False)


# --- shipped models ---


def copied_run(out: Console, source: Path, copy: Path) -> None:
    """``--into``: the one line saying which run was copied where."""
    show(out, f"copied {source} to ", (str(copy), "bold"), "; working on the copy")


def shipped_models(out: Console, models: dict[str, Path], aliases: dict[str, str]) -> None:
    """``bonefrac models``: one row per shipped model (or one line when none is installed)."""
    from rich.table import Table

    from bonefrac.fileio import folder_bytes
    from bonefrac.rundir import RunDir

    if not models:
        show(
            out,
            "no shipped model is installed; pass a run directory (from 'bonefrac train') as RUN",
        )
        return
    table = Table(title="shipped models")
    table.add_column("name", no_wrap=True)
    for column in ("architecture", "input px", "weights", "MB", "test ROC-AUC"):
        table.add_column(column, justify="right" if column in ("input px", "MB") else "left")
    table.add_column("model card", overflow="fold")
    for name, folder in models.items():
        run = RunDir(folder)
        meta = run.raw_meta()
        names = [a for a, target in aliases.items() if target == name]
        auc = run.metrics().get("test", {}).get("roc_auc", {}).get("value")
        size = folder_bytes(folder)
        table.add_row(
            Text(name + (f" ({', '.join(names)})" if names else "")),
            Text(str(meta.get("architecture", "?"))),
            Text(str(meta.get("image_size", "?"))),
            Text(str(meta.get("weights_dtype", "float32"))),
            Text(f"{size / 1e6:.1f}"),
            Text(f"{auc:.3f}" if isinstance(auc, (int, float)) else "n/a"),
            Text(str(run.card_path) if run.card_path.is_file() else "none"),
        )
    out.print(table)


def model_card(out: Console, run: RunDir) -> None:
    """``bonefrac models NAME``: the model card (Markdown), or where it is missing."""
    from rich.markdown import Markdown

    text = run.model_card()
    if text is None:
        show(out, ("note: ", "yellow"), f"{run.card_path}: missing; this model has no card")
        return
    out.print(Markdown(text))
