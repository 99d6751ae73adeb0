"""``RUN/report.html``: one self-contained page (PNGs embedded as base64 data URIs, inline CSS,
no scripts) that opens in a browser without a server.

Sections (each an ``<h2 id=...>``), the answer first: summary (:mod:`.report_summary`: missing
safeguards, test ROC-AUC / PR-AUC with CIs, sensitivity / specificity / PPV / NPV at the stored
threshold, per-source lines, refer and out-of-scope shares, ROC curve, a gallery of overlays on
distinct images), then metrics of every split (with CIs), plots, localisation (only for a
localising run: :mod:`.report_localization`), threshold & calibration, refer & out of scope,
subgroups, explanations (only when ``RUN/explain`` exists), data, training, and last model &
config (versions, config.yaml). Missing inputs give a short "not available" line rather than an
error, so a report can be produced at any stage of a run's life.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from bonefrac.evaluation import report_gallery, report_localization, report_summary
from bonefrac.fileio import atomic_open, read_json
from bonefrac.metrics import METRIC_NAMES, format_ci, is_metric_entry
from bonefrac.rundir import RunDir
from bonefrac.rundir.predictions import LABEL, SUBGROUP_KEYS

log = logging.getLogger(__name__)

PLOT_KINDS = ("roc", "pr", "confusion", "reliability", "threshold", "risk_coverage")
MAX_CAM_IMAGES = 24
SECTIONS = (
    ("summary", "Summary: how well it works (test)"),
    ("metrics", "Metrics"),
    ("plots", "Plots"),
    ("localization", "Localisation (boxes and map)"),
    ("threshold", "Threshold and calibration"),
    ("selective", "Refer and out-of-scope (selective prediction)"),
    ("subgroups", "Subgroups"),
    ("explain", "Explanations (CAM)"),
    ("data", "Data"),
    ("training", "Training"),
    ("config", "Model and config"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1150px;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}.figs{display:flex;flex-wrap:wrap;gap:.8rem}
.figs figure{margin:0;border:1px solid #e3e3e3;padding:.4rem}
.figs img{max-width:360px;height:auto;display:block}.wide img{max-width:100%}
figcaption{font-size:.8rem;color:#555;text-align:center}
pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.8rem;max-height:420px}
nav a{margin-right:.8rem}
.warn{background:#fdecea;border:1px solid #e0a39c;border-radius:6px;padding:.5rem .9rem}
.warn-inline{color:#a1271b}.ok{color:#1e6b35}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def png_data_uri(path: str | Path) -> str:
    data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(path: Path, caption: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return (
        f'<figure{cls}><img src="{png_data_uri(path)}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _figs(items: list[tuple[Path, str]]) -> str:
    items = [(p, c) for p, c in items if p.is_file()]
    if not items:
        return ""
    return '<div class="figs">' + "".join(_figure(p, c) for p, c in items) + "</div>"


def _na(what: str) -> str:
    return f'<p class="muted">{_e(what)}</p>'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _kv_table(items: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v) if not isinstance(v, dict | list) else json.dumps(v))}</td></tr>"
        for k, v in items.items()
    )
    return f"<table>{rows}</table>"


def _df_table(df: pd.DataFrame, digits: int = 3) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cls = ' class="num"' if num else ""
            cells.append(f"<td{cls}>{_e(_fmt(v, digits))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _read_json_safe(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:
        log.warning("%s: not valid JSON; left out of the report", path)
        return None


# ---------------------------------------------------------------- sections


def _section_config(run: RunDir, model: dict[str, Any]) -> str:
    keys = ("architecture", "image_size", "pretrained", "class_names", "mean", "std", "created")
    parts = [_kv_table({k: model[k] for k in keys if k in model})]
    if isinstance(model.get("versions"), dict):
        parts.append("<h3>Versions</h3>" + _kv_table(model["versions"]))
    cfg = run.config_path
    if cfg.is_file():
        text = _e(cfg.read_text(encoding="utf-8"))
        parts.append(f"<h3>{_e(cfg.name)}</h3><pre>{text}</pre>")
    else:
        parts.append(_na(f"{cfg.name} not found"))
    return "".join(parts)


def _section_data(run: RunDir, model: dict[str, Any]) -> str:
    rows = []
    subgroup_counts: list[pd.DataFrame] = []
    for name in run.available_predictions():
        try:
            df = run.predictions(name)
        except Exception as exc:  # noqa: BLE001 - a broken file must not break the report
            rows.append({"predictions": name, "n": f"unreadable: {exc}"})
            continue
        n, n_pos = len(df), int(df[LABEL].sum())
        rows.append(
            {
                "predictions": name,
                "n": n,
                "fractured": n_pos,
                "not_fractured": n - n_pos,
                "prevalence": n_pos / n if n else None,
            }
        )
        for col in ("region", "view", "source", "hardware"):
            if col in df.columns:
                c = df[col].astype("string").fillna("unknown").value_counts().rename("n")
                frame = c.reset_index().rename(columns={col: "value", "index": "value"})
                frame.insert(0, "column", col)
                frame.insert(0, "predictions", name)
                subgroup_counts.append(frame)
    parts = []
    if "manifest_sha1" in model:
        parts.append(f"<p>Manifest SHA-1: <code>{_e(model['manifest_sha1'])}</code></p>")
    parts.append(
        _df_table(pd.DataFrame(rows))
        if rows
        else _na(f"no prediction CSVs in {run.predictions_dir}")
    )
    if subgroup_counts:
        parts.append("<h3>Images per subgroup</h3>")
        parts.append(_df_table(pd.concat(subgroup_counts, ignore_index=True)))
    return "".join(parts)


def _section_training(run: RunDir) -> str:
    parts = []
    png = run.plot_path("training_curves")
    if png.is_file():
        parts.append('<div class="figs">' + _figure(png, "training curves", wide=True) + "</div>")
    hist = run.history_path
    if hist.is_file():
        try:
            h = pd.read_csv(hist)
        except Exception:  # noqa: BLE001
            h = None
        if h is not None and len(h):
            parts.append(f"<p>{len(h)} epoch(s) logged.</p>")
            if "val_roc_auc" in h.columns and h["val_roc_auc"].notna().any():
                best = h.loc[h["val_roc_auc"].idxmax()]
                parts.append("<h3>Best epoch by val ROC-AUC</h3>")
                parts.append(_df_table(best.to_frame().T))
            parts.append("<h3>Last epoch</h3>" + _df_table(h.tail(1)))
    return "".join(parts) or _na("no training history or curves in this run")


def _section_metrics(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return _na("no metrics yet: run 'bonefrac evaluate RUN'")
    splits = [k for k, v in metrics.items() if isinstance(v, dict)]
    head = "<tr><th>metric</th>" + "".join(f"<th>{_e(s)}</th>" for s in splits) + "</tr>"
    body = ""
    names = list(METRIC_NAMES) + sorted(
        {k for s in splits for k, v in metrics[s].items() if is_metric_entry(v)} - set(METRIC_NAMES)
    )
    for name in names:
        cells = "".join(
            f'<td class="num">{_e(format_ci(metrics[s].get(name)))}</td>' for s in splits
        )
        body += f"<tr><th>{_e(name)}</th>{cells}</tr>"
    extra = ""
    for label, key in (("confusion matrix", "confusion_matrix"), ("support", "support")):
        row = "".join(f"<td>{_e(json.dumps(metrics[s].get(key, {})))}</td>" for s in splits)
        extra += f"<tr><th>{label}</th>{row}</tr>"
    settings = ""
    for s in splits:
        st = metrics[s].get("settings")
        if isinstance(st, dict):
            settings += (
                f"<li><b>{_e(s)}</b>: "
                + _e(", ".join(f"{k}={_fmt(v)}" for k, v in st.items()))
                + "</li>"
            )
        notes = metrics[s].get("notes")
        if isinstance(notes, dict) and notes:
            settings += (
                f"<li><b>{_e(s)} notes</b>: "
                + _e("; ".join(f"{k}: {v}" for k, v in notes.items()))
                + "</li>"
            )
    return (
        "<p>Value [95% CI] (stratified bootstrap). Positive class = fractured.</p>"
        f"<table>{head}{body}{extra}</table>" + (f"<ul>{settings}</ul>" if settings else "")
    )


def _section_plots(run: RunDir, metrics: dict[str, Any] | None) -> str:
    pdir = run.plots_dir
    keys = [k for k in (metrics or {}) if isinstance((metrics or {})[k], dict)]
    if pdir.is_dir():
        keys += sorted({p.name[: -len("_roc.png")] for p in pdir.glob("*_roc.png")} - set(keys))
    parts = []
    for key in keys:
        figs = _figs([(pdir / f"{key}_{kind}.png", f"{key}: {kind}") for kind in PLOT_KINDS])
        if figs:
            parts.append(f"<h3>{_e(key)}</h3>{figs}")
    return "".join(parts) or _na("no evaluation plots yet: run 'bonefrac evaluate RUN'")


def _section_threshold(run: RunDir, model: dict[str, Any]) -> str:
    info = {
        "threshold": model.get("threshold", 0.5),
        "criterion": model.get("threshold_criterion", "default"),
        "tuned on": model.get("threshold_tuned_on", "-"),
        "temperature": model.get("temperature", 1.0),
    }
    parts = [
        "<p>Decision: fractured when sigmoid(logit / temperature) &ge; threshold.</p>",
        _kv_table(info),
    ]
    cal = model.get("calibration")
    if isinstance(cal, dict):
        rows = []
        for split in ("val", "test"):
            if isinstance(cal.get(split), dict):
                rows.append({"split": split, **cal[split]})
        parts.append(
            f"<h3>Calibration</h3><p>Temperature scaling fitted on {_e(cal.get('fitted_on'))}: "
            f"T = {_fmt(cal.get('temperature'))}. ECE uses {_e(cal.get('n_bins', 15))} bins.</p>"
        )
        if rows:
            parts.append(_df_table(pd.DataFrame(rows), digits=4))
        pngs = sorted(run.plots_dir.glob("calibration_*.png"))
        parts.append(_figs([(p, p.stem.replace("_", " ")) for p in pngs]))
    else:
        parts.append(_na("not calibrated ('bonefrac calibrate RUN' fits a temperature)"))
    return "".join(parts)


def _section_selective(model: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """The refer rule and out-of-scope detector, and each split's AUGRC and accepted-image
    sensitivity / specificity."""
    parts = [
        "<p>Decisions: <b>out_of_scope</b> when the input is unlike the training radiographs, "
        "else <b>refer</b> when the uncertainty is above the refer rule's cut-off, else "
        "<b>fracture</b> / <b>no_fracture</b> at the threshold. AUGRC: area under the "
        "generalized risk-coverage curve (share of undetected errors averaged over coverage; "
        "lower is better).</p>"
    ]
    for label, key in (("Refer rule", "refer"), ("Out-of-scope detector", "ood")):
        rec = model.get(key)
        if isinstance(rec, dict):
            shown = {k: v for k, v in rec.items() if not str(k).endswith("sha256")}
            parts.append(f"<h3>{label}</h3>" + _kv_table(shown))
        else:
            how = "threshold RUN --refer-coverage 0.9" if key == "refer" else "ood RUN"
            parts.append(f"<h3>{label}</h3>" + _na(f"none ('bonefrac {how}' fits one)"))
    rows = []
    for split, m in (metrics or {}).items():
        sel = m.get("selective") if isinstance(m, dict) else None
        if not isinstance(sel, dict):
            continue
        ref = sel.get("refer") or {}
        rows.append(
            {
                "split": split,
                "score": sel.get("score"),
                "AUGRC": format_ci(m.get("augrc")),
                "random / optimal": f"{_fmt(sel.get('augrc_random'))} / "
                f"{_fmt(sel.get('augrc_optimal'))}",
                "error ROC-AUC": _fmt(sel.get("error_auroc")),
                "coverage": _fmt(ref.get("coverage")) if ref else "-",
                "sensitivity (accepted)": format_ci(ref.get("sensitivity")) if ref else "-",
                "specificity (accepted)": format_ci(ref.get("specificity")) if ref else "-",
            }
        )
    if rows:
        parts.append("<h3>Per split</h3>" + _df_table(pd.DataFrame(rows)))
    else:
        parts.append(_na("no selective metrics yet: run 'bonefrac evaluate RUN'"))
    return "".join(parts)


def _section_subgroups(run: RunDir) -> str:
    parts = []
    for csv in sorted(run.subgroups_dir.glob("*.csv")):
        try:
            df = pd.read_csv(csv, keep_default_na=False, na_values=[""])
        except Exception:  # noqa: BLE001
            continue
        view = df[list(SUBGROUP_KEYS)].copy()
        for m in ("accuracy", "sensitivity", "specificity", "roc_auc"):
            if m in df.columns:
                view[m] = [
                    format_ci({"value": v, "ci_low": lo, "ci_high": hi}) if pd.notna(v) else "n/a"
                    for v, lo, hi in zip(
                        df[m], df.get(f"{m}_low", df[m]), df.get(f"{m}_high", df[m]), strict=True
                    )
                ]
        parts.append(f"<h3>{_e(csv.stem)}</h3>" + _df_table(view))
    return "".join(parts) or _na("no subgroup columns (region, view, source, hardware) found")


def _section_explain(run: RunDir, gallery_shown: bool) -> str | None:
    """The localisation score of the maps; the overlays themselves are in the first section's
    gallery (one per duplicate group). Only when no overlay is of a test image (``explain
    --images``) are they shown here, with the grid."""
    edir = run.explain_dir
    if not edir.is_dir():
        return None
    parts = []
    loc = _read_json_safe(edir / "localization.json")
    if isinstance(loc, dict):
        flat = {k: v for k, v in loc.items() if not isinstance(v, dict | list)}
        parts.append("<h3>Localisation against fracture boxes</h3>" + _kv_table(flat))
    overlays = run.explain_overlays()
    if gallery_shown:
        parts.append(
            f"<p>{len(overlays)} overlay(s) in {_e(edir)}; the first section shows up to "
            f"{report_gallery.MAX_GALLERY} of them, one image per duplicate group.</p>"
        )
        return "".join(parts)
    grid = edir / "grid.png"
    if grid.is_file():
        parts.append('<div class="figs">' + _figure(grid, "CAM gallery", wide=True) + "</div>")
    if overlays:
        shown = list(overlays.values())[:MAX_CAM_IMAGES]
        parts.append(
            "<h3>Per-image overlays</h3>"
            + '<div class="figs">'
            + "".join(report_gallery.image_figure(p, p.stem) for p in shown)
            + "</div>"
        )
        if len(overlays) > len(shown):
            parts.append(_na(f"{len(overlays) - len(shown)} more in {edir}"))
    return "".join(parts) or _na("explain/ exists but holds no outputs")


def render_report(run_dir: str | Path) -> str:
    """The report's HTML text."""
    run = RunDir.open(run_dir, writable=True)
    model = run.raw_meta()
    metrics = _read_json_safe(run.metrics_path)
    found = report_gallery.overlay_gallery(run, report_summary.SPLIT)
    overlays_shown = found is not None
    boxes_in_summary = not overlays_shown and report_summary.SPLIT in (
        report_localization.localization_splits(metrics)
    )
    bodies = {
        "summary": report_summary.section(run, model, metrics, found),
        "metrics": _section_metrics(metrics),
        "plots": _section_plots(run, metrics),
        # without overlays, the first section shows the localisation gallery instead
        "localization": report_localization.section(
            run, metrics, with_gallery=not boxes_in_summary
        ),
        "threshold": _section_threshold(run, model),
        "selective": _section_selective(model, metrics),
        "subgroups": _section_subgroups(run),
        "explain": _section_explain(run, overlays_shown),
        "data": _section_data(run, model),
        "training": _section_training(run),
        "config": _section_config(run, model),
    }
    title = f"bonefrac report: {run.name}"
    nav = " ".join(
        f'<a href="#{sid}">{_e(label)}</a>' for sid, label in SECTIONS if bodies[sid] is not None
    )
    sections = "".join(
        f'<section><h2 id="{sid}">{_e(label)}</h2>{bodies[sid]}</section>'
        for sid, label in SECTIONS
        if bodies[sid] is not None
    )
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="muted">{_e(model.get("architecture", ""))} &middot; '
        f"generated {_e(now)}</p><nav>{nav}</nav>{sections}</body></html>\n"
    )


def build_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.html`` atomically and return its path."""
    text = render_report(run_dir)
    out = RunDir(Path(run_dir)).report_path
    with atomic_open(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    return out
