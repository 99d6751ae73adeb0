"""The fits on val that end ``bonefrac train``: a trained run becomes a deployable one.

After the fit, on the val split only (never test) and with the same functions the separate
commands use, :func:`deploy_run` fits, in this order and as the config's ``deploy`` block asks:

1. the temperature (``bonefrac calibrate``);
2. the decision rule on the calibrated probabilities: by default the two cuts, rule-in
   (``--criterion specificity:X``) and rule-out (``--rule-out-sensitivity X``), else a
   threshold with a refer band (``bonefrac threshold --criterion ... --refer-coverage ...``);
3. the out-of-scope detector (``bonefrac ood --method ...``).

Each lands in model.json exactly as its command writes it. A fit that cannot be done (a val
split with one class, a manifest that moved, a failing feature pass) is skipped with a warning
naming the split or file and what was not fitted: the trained weights are already saved, and
model.json's ``deploy`` record lists what is missing. Then val's and test's metrics.json entries
are refreshed at the new threshold and temperature.

Layer: above training and evaluation (it uses evaluation's fits on a run that training wrote;
neither of those imports the other), below the CLI.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bonefrac.config import DeployConfig
from bonefrac.errors import BonefracError
from bonefrac.evaluation.calibration import calibrate_run
from bonefrac.evaluation.ood import fit_ood
from bonefrac.evaluation.thresholds import rule_out_summary, tune_threshold
from bonefrac.rundir import RUN_SPLITS, RunDir, metrics_entry, run_decisions, run_probabilities
from bonefrac.rundir.predictions import LABEL

log = logging.getLogger(__name__)


@dataclass
class DeployReport:
    """What :func:`deploy_run` fitted, skipped (by config) and could not fit (with why)."""

    fitted: dict[str, str] = field(default_factory=dict)
    """step -> one line saying what was stored."""
    skipped: list[str] = field(default_factory=list)
    """steps turned off in the config."""
    failed: dict[str, str] = field(default_factory=dict)
    """step -> why it was not fitted."""
    seconds: dict[str, float] = field(default_factory=dict)
    train_seconds: float | None = None

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def record(self, config: DeployConfig) -> dict[str, Any]:
        """model.json's ``deploy`` record."""
        return {
            "config": config.model_dump(mode="json"),
            "fitted": sorted(self.fitted),
            "skipped": list(self.skipped),
            "failed": dict(self.failed),
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "fitted_on": "val",
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }


def _one_class(run: RunDir) -> str | None:
    """Why val cannot tune anything that needs both classes, or None when it can."""
    val = run.predictions("val")
    n = len(val)
    n_pos = int((val[LABEL].astype(int) == 1).sum())
    if 0 < n_pos < n:
        return None
    which = "fractured" if n_pos else "not fractured"
    return (
        f"the val split ({run.prediction_path('val')}) has one class only ({n} images, all {which})"
    )


def deploy_run(run_dir: str | Path, config: DeployConfig) -> DeployReport:
    """Fit what ``config`` asks on val, store it in the run, and return what happened."""
    run = RunDir.open(run_dir, writable=True)
    report = DeployReport(train_seconds=run.raw_meta().get("train_seconds"))
    one_class = _one_class(run)

    def step(name: str, needs_both: bool, fn: Any) -> None:
        if needs_both and one_class is not None:
            report.failed[name] = f"{one_class}; it needs both classes"
            return
        start = time.perf_counter()
        try:
            report.fitted[name] = fn()
        except BonefracError as exc:
            report.failed[name] = str(exc)
        except Exception as exc:  # noqa: BLE001  a failed fit never loses the trained run
            log.debug("deploy step %s failed", name, exc_info=True)
            report.failed[name] = f"{type(exc).__name__}: {exc}"
        report.seconds[name] = time.perf_counter() - start

    if config.calibrate:
        step("calibrate", True, lambda: _calibrate(run.path))
    else:
        report.skipped.append("calibrate")
    criterion = config.rule_in_criterion
    rule_out = config.rule_out_sensitivity
    if criterion is None:
        report.skipped.append("threshold")
    if rule_out is None and config.refer_coverage is None:
        report.skipped.append("refer")
    if criterion is not None or rule_out is not None or config.refer_coverage is not None:
        # one call tunes the rule-in cut and the refer rule at it, as the command does
        name = "threshold" if criterion is not None else "refer"
        step(name, True, lambda: _threshold(run.path, config, report))
        refers = rule_out is not None or config.refer_coverage is not None
        if name in report.failed and criterion is not None and refers:
            report.failed["refer"] = "not fitted: the threshold step failed"
    if config.ood != "none":
        step("ood", False, lambda: _ood(run.path, config))
    else:
        report.skipped.append("ood")

    run.update_meta(deploy=report.record(config))
    if report.fitted:
        _refresh_metrics(run)
    for name, why in report.failed.items():
        log.info("deploy: %s not fitted: %s", name, why)
    return report


def deploy_trained_run(
    run_dir: str | Path, on_start: Callable[[], None] | None = None
) -> DeployReport | None:
    """:func:`deploy_run` with the run's own ``deploy`` config, for a run that training just
    finished; None (nothing fitted) for an interrupted or a collapsed run."""
    run = RunDir(Path(run_dir))
    if not run.meta_path.is_file() or run.raw_meta().get("training_status") == "collapsed":
        return None
    if on_start is not None:
        on_start()
    return deploy_run(run.path, run.config().deploy)


def _calibrate(run: Path) -> str:
    summary = calibrate_run(run)
    return (
        f"temperature {summary['temperature']:.3f} (val ECE {summary['val']['ece_before']:.3f}"
        f" -> {summary['val']['ece_after']:.3f})"
    )


def _threshold(run: Path, config: DeployConfig, report: DeployReport) -> str:
    criterion = config.rule_in_criterion
    result = tune_threshold(
        run,
        criterion,
        refer_coverage=config.refer_coverage,
        refer_tta=config.refer_tta,
        rule_out_sensitivity=config.rule_out_sensitivity,
    )
    refer_line = None
    rule_out = result.get("rule_out")
    rule = result.get("refer")
    if rule_out:
        refer_line = rule_out_summary(rule_out)
        if rule_out.get("warning"):
            refer_line += f"; warning: {rule_out['warning']}"
    elif rule:
        aurocs = ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in rule["error_auroc"].items()
        )
        refer_line = (
            f"refer rule on {rule['score']} (val error-ranking ROC-AUC: {aurocs}); answers "
            f"{rule['val_coverage']:.1%} of {rule['val_n']} val images"
        )
    if criterion is None:
        return refer_line or "no refer rule"
    if refer_line:
        report.fitted["refer"] = refer_line
    return f"rule-in threshold {result['new_threshold']:.4f} ({criterion} on val)"


def _ood(run: Path, config: DeployConfig) -> str:
    rec = fit_ood(run, config.ood, max_images=config.ood_max_images, force=True)
    return (
        f"out-of-scope detector {rec['method']}, cut-off {rec['cutoff']:.4g} "
        f"({rec['val_flagged']:.1%} of {rec['val_n']} val images flagged)"
    )


def _refresh_metrics(run: RunDir) -> None:
    """val's and test's metrics.json entries at the deployed threshold and temperature."""
    meta = run.meta()
    for split in RUN_SPLITS:
        if not run.prediction_path(split).is_file():
            continue
        preds = run.predictions(split)
        y, prob = preds[LABEL].to_numpy(), run_probabilities(preds, meta)
        entry = metrics_entry(y, prob, meta, decisions=run_decisions(preds, meta))
        run.merge_metrics(split, entry)
