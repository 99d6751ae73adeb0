"""The report's first section: the answer before the details.

What a reader needs first, in this order: which safeguards the run lacks (and the command that
adds each), the misses first (miss rate, normals cleared, referred, PPV of fracture calls under
the run's decision rule), test ROC-AUC and PR-AUC with 95% CIs, sensitivity / specificity / PPV / NPV at the
stored threshold (and how that threshold was chosen), one line per source when the test split
mixes sources, the share referred and flagged out of scope, the ROC curve, and a gallery of
overlays on distinct images (:mod:`.report_gallery`). Config, versions and subgroup tables
follow in later sections of :mod:`.report`.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from bonefrac.errors import BonefracError
from bonefrac.evaluation import report_gallery, report_localization
from bonefrac.metrics import format_ci
from bonefrac.rundir import RETRAIN_HINT, ModelMeta, RunDir, missing_safeguards
from bonefrac.rundir.predictions import SUBGROUP_VALUE

SPLIT = "test"
#: The headline metrics: (metrics.json key, label).
HEADLINE = (
    ("miss_rate", "miss rate (fractured called no_fracture)"),
    ("normals_cleared", "normals cleared (no_fracture)"),
    ("referred", "referred"),
    ("fracture_ppv", "PPV of fracture calls"),
    ("roc_auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("precision", "PPV (precision)"),
    ("npv", "NPV"),
)
SOURCE_METRICS = (("miss_rate", "miss rate"), ("normals_cleared", "normals cleared"),
                  ("referred", "referred"), ("fracture_ppv", "PPV of fracture calls"),
                  ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"), ("sensitivity", "sensitivity"),
                  ("specificity", "specificity"))  # fmt: skip


def _e(value: Any) -> str:
    return html.escape(str(value))


def _muted(text: str) -> str:
    return f'<p class="muted">{_e(text)}</p>'


def section(
    run: RunDir,
    model: dict[str, Any],
    metrics: dict[str, Any] | None,
    overlays: report_gallery.Gallery | None = None,
) -> str:
    """The first section's HTML; ``overlays``: the test split's distinct-image gallery
    (:func:`.report_gallery.overlay_gallery`), else a localising run's box gallery is shown."""
    try:
        meta: ModelMeta | None = ModelMeta.parse(model, run.meta_path)
    except BonefracError as exc:
        meta = None
        problem = f'<p class="warn">{_e(exc)}</p>'
    else:
        problem = ""
    entry = (metrics or {}).get(SPLIT)
    parts = [problem, safeguards_notice(meta) if meta is not None else ""]
    if not isinstance(entry, dict):
        parts.append(_muted(f"no {SPLIT} metrics yet: run 'bonefrac evaluate RUN'"))
    else:
        parts.append(headline(entry, model))
        parts.append(per_source(run, SPLIT))
        parts.append(selective_lines(entry, model))
        roc = run.plot_path(f"{SPLIT}_roc")
        if roc.is_file():
            parts.append('<div class="figs">' + _plot(roc, f"ROC curve ({SPLIT})") + "</div>")
    parts.append(others(metrics))
    parts.append(
        gallery(run, meta, overlays, SPLIT in report_localization.localization_splits(metrics))
    )
    return "".join(parts)


def safeguards_notice(meta: ModelMeta) -> str:
    """A boxed list of the missing safeguards with their commands (empty when none)."""
    missing = missing_safeguards(meta)
    if not missing:
        return (
            '<p class="ok">Safeguards: tuned threshold, fitted temperature, out-of-scope '
            "detector and refer rule are all in model.json.</p>"
        )
    items = "".join(
        f"<li><b>{_e(m.name)}</b>: {_e(m.detail)}; add it with <code>{_e(m.command)}</code></li>"
        for m in missing
    )
    return (
        '<div class="warn" id="missing-safeguards"><b>Not ready for use: '
        f"{len(missing)} of 4 safeguards missing.</b><ul>{items}</ul>"
        f"<p>Run the commands in this order (RUN is this run directory); alternatively, "
        f"{_e(RETRAIN_HINT)}."
        "</p></div>"
    )


def threshold_sentence(model: dict[str, Any], entry: dict[str, Any]) -> str:
    """Which threshold the metrics use and how it was chosen (and a warning when model.json
    now holds another one)."""
    settings = entry.get("settings") if isinstance(entry.get("settings"), dict) else {}
    used = settings.get("threshold", model.get("threshold", 0.5))
    criterion = settings.get("threshold_criterion", model.get("threshold_criterion", "default"))
    temperature = settings.get("temperature", model.get("temperature", 1.0)) or 1.0
    if criterion in (None, "default"):
        how = "the default threshold, not tuned on val"
    else:
        how = f"chosen on {model.get('threshold_tuned_on', 'val')} by the criterion '{criterion}'"
    scale = (
        f"; probabilities calibrated with temperature {float(temperature):.3g}"
        if float(temperature) != 1.0
        else "; probabilities not calibrated (temperature 1)"
    )
    text = _e(f"At threshold {float(used):.3f} ({how}{scale}): fractured when p >= threshold.")
    rule_out = settings.get("rule_out")
    if isinstance(rule_out, int | float):
        text = _e(
            f"Two cuts ({how}{scale}): fracture when p >= {float(used):.3f} (the rule-in cut), "
            f"no_fracture when p < {float(rule_out):.3f} (the rule-out cut), refer between; "
            "sensitivity, specificity, PPV and NPV below are at the rule-in cut."
        )
    now = model.get("threshold", 0.5)
    if isinstance(now, int | float) and abs(float(now) - float(used)) > 1e-9:
        text += (
            f' <span class="warn-inline">model.json now holds threshold {float(now):.3f}: re-run '
            "'bonefrac evaluate RUN' to score it.</span>"
        )
    return f'<p id="threshold-used">{text}</p>'


def headline(entry: dict[str, Any], model: dict[str, Any]) -> str:
    """The headline metrics table of one split, with its size and threshold."""
    support = entry.get("support") if isinstance(entry.get("support"), dict) else {}
    size = ""
    if support:
        size = f" ({support.get('n', '?')} images, {support.get('n_pos', '?')} fractured)"
    rows = "".join(
        f'<tr><th>{_e(label)}</th><td class="num">{_e(format_ci(entry.get(key)))}</td></tr>'
        for key, label in HEADLINE
    )
    return (
        f"<p><b>{_e(SPLIT)} split</b>{_e(size)}: value [95% CI], stratified bootstrap; "
        "positive = fractured.</p>"
        f'<table id="headline"><tr><th>metric</th><th>{_e(SPLIT)}</th></tr>{rows}</table>'
        + threshold_sentence(model, entry)
    )


def per_source(run: RunDir, split: str) -> str:
    """One line per source when the split mixes sources (from ``subgroups/<split>.csv``)."""
    path = run.subgroup_path(split)
    if not path.is_file():
        return ""
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except Exception:  # noqa: BLE001 - a broken file must not break the report
        return ""
    rows = df[df["column"].astype(str) == "source"] if "column" in df.columns else df.iloc[:0]
    if len(rows) < 2:
        return ""
    lines = []
    for _, row in rows.iterrows():
        cells = [f"{label} {_ci(row, key)}" for key, label in SOURCE_METRICS if key in rows.columns]
        lines.append(
            f"<li><b>{_e(row[SUBGROUP_VALUE])}</b> ({int(row['n'])} images, {int(row['n_pos'])} "
            f"fractured): {_e('; '.join(cells))}</li>"
        )
    return f"<p>Per source ({_e(split)}):</p><ul>{''.join(lines)}</ul>"


def _ci(row: pd.Series, key: str) -> str:
    value = row.get(key)
    if value is None or pd.isna(value):
        return "n/a"
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    entry = {
        "value": float(value),
        "ci_low": None if low is None or pd.isna(low) else float(low),
        "ci_high": None if high is None or pd.isna(high) else float(high),
    }
    return format_ci(entry)


def selective_lines(entry: dict[str, Any], model: dict[str, Any]) -> str:
    """The share referred (test) and flagged out of scope (val), when the run has the rules."""
    items = []
    rule = model.get("refer")
    sel = entry.get("selective") if isinstance(entry.get("selective"), dict) else {}
    refer = sel.get("refer") if isinstance(sel.get("refer"), dict) else None
    if not isinstance(rule, dict):
        items.append("Referred: no refer rule (see the missing safeguards above).")
    elif refer is None:
        items.append(
            f"Referred: a refer rule for {rule.get('coverage')} coverage on val is in model.json, "
            "but these metrics predate it: re-run 'bonefrac evaluate RUN'."
        )
    else:
        n_ref, n_acc = int(refer.get("n_referred", 0)), int(refer.get("n_accepted", 0))
        share = n_ref / (n_ref + n_acc) if n_ref + n_acc else float("nan")
        items.append(
            f"Referred: {share:.1%} of {SPLIT} images ({n_ref} of {n_ref + n_acc}; rule fitted "
            f"on val for {float(rule.get('coverage', 0)):.0%} answered). On the answered "
            f"images: sensitivity {format_ci(refer.get('sensitivity'))}, specificity "
            f"{format_ci(refer.get('specificity'))}."
        )
    ood = model.get("ood")
    if not isinstance(ood, dict):
        items.append("Out of scope: no out-of-scope detector (see the missing safeguards above).")
    else:
        flagged = ood.get("val_flagged")
        shown = f"{float(flagged):.1%}" if isinstance(flagged, int | float) else "n/a"
        items.append(
            f"Out of scope: {shown} of val images flagged by the {ood.get('method')} detector "
            f"(cut-off at the {ood.get('percentile', '?')}th percentile of val scores); "
            f"{SPLIT} images are scored as in scope (the split holds radiographs by "
            "construction)."
        )
    return "<ul>" + "".join(f"<li>{_e(t)}</li>" for t in items) + "</ul>"


def others(metrics: dict[str, Any] | None) -> str:
    """One line per evaluated set other than val and test (external data)."""
    lines = []
    for key, entry in (metrics or {}).items():
        if key in ("val", SPLIT) or not isinstance(entry, dict) or "roc_auc" not in entry:
            continue
        n = (entry.get("support") or {}).get("n", "?")
        lines.append(
            f"<li><b>{_e(key)}</b> ({_e(n)} images): ROC-AUC {_e(format_ci(entry.get('roc_auc')))}"
            f"; sensitivity {_e(format_ci(entry.get('sensitivity')))}; specificity "
            f"{_e(format_ci(entry.get('specificity')))}</li>"
        )
    return f"<p>Other evaluated sets:</p><ul>{''.join(lines)}</ul>" if lines else ""


def gallery(
    run: RunDir, meta: ModelMeta | None, overlays: report_gallery.Gallery | None, boxes: bool
) -> str:
    """Overlays on distinct images (explain), else (``boxes``: the split has localisation
    metrics) the localising run's box gallery."""
    head = "<h3>Where the model looks (distinct images)</h3>"
    if overlays is not None and meta is not None:
        return head + report_gallery.gallery_html(overlays, meta.threshold)
    if boxes:
        return report_localization.gallery(run, SPLIT)
    return head + _muted(f"no overlays of {SPLIT} images yet: 'bonefrac explain RUN' writes them")


def _plot(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )
