"""The report's localisation section: metrics with CIs and baselines per split, and a gallery
of test images with true boxes (white), predicted boxes with scores (amber) and the map's peak.

Only a localising run's metrics (``hit_rate``, ``ap50``, ... in ``metrics.json[split]``) make the
section appear. Gallery images are read from the predictions CSV's ``path`` column; files that
are missing or cannot be decoded are left out with a count. The gallery shows at most one image
per duplicate group (the manifest's ``group``: Roboflow augmentation siblings share one).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw

from bonefrac.evaluation.localization_metrics import (
    LOC_METRIC_NAMES,
    LocInputs,
    has_localization,
    read_inputs,
)
from bonefrac.evaluation.report_gallery import image_groups
from bonefrac.metrics import format_ci
from bonefrac.rundir import RunDir
from bonefrac.rundir.predictions import IMAGE_ID, LABEL, PATH

log = logging.getLogger(__name__)

MAX_GALLERY = 12
GALLERY_THUMB = 320
PEAK_COLOR = (0, 229, 255)
LABELS = {
    "hit_rate": "hit rate (map peak in a box)",
    "energy_in_box": "energy in box",
    "ap50": "AP50 (COCO, all images)",
    "ap50_boxed": "AP50 (COCO, images with boxes only)",
    "froc_0.5": "FROC sensitivity @ 0.5 FP/image",
    "froc_1": "FROC sensitivity @ 1 FP/image",
    "froc_2": "FROC sensitivity @ 2 FP/image",
    "centre_hit_rate": "baseline: always the image centre",
    "chance_hit_rate": "baseline: random point (area share)",
}


def _e(value: Any) -> str:
    return html.escape(str(value))


def section(run: RunDir, metrics: dict[str, Any] | None, with_gallery: bool = True) -> str | None:
    """The section's HTML, or ``None`` when no split has localisation metrics.
    ``with_gallery=False`` leaves the gallery out (the report's first section shows it)."""
    splits = localization_splits(metrics)
    if not splits:
        return None
    assert metrics is not None
    head = "<tr><th>metric</th>" + "".join(f"<th>{_e(s)}</th>" for s in splits) + "</tr>"
    body = ""
    for name in LOC_METRIC_NAMES:
        if not any(name in metrics[s] for s in splits):
            continue
        cells = "".join(
            f'<td class="num">{_e(format_ci(metrics[s].get(name)))}</td>' for s in splits
        )
        body += f"<tr><th>{_e(LABELS.get(name, name))} <code>{_e(name)}</code></th>{cells}</tr>"
    for what in ("support",):
        row = "".join(
            f"<td>{_e(json.dumps(metrics[s].get('localization', {}).get(what, {})))}</td>"
            for s in splits
        )
        body += f"<tr><th>{what}</th>{row}</tr>"
    info = metrics[splits[0]].get("localization", {}).get("settings", {})
    notes = "".join(
        f"<li><b>{_e(s)}</b>: {_e(n)}</li>"
        for s in splits
        for n in metrics[s].get("localization", {}).get("notes", {}).values()
    )
    parts = [
        "<p>Value [95% CI], percentile bootstrap over images stratified by whether an image has "
        f"true boxes ({_e(info.get('n_boot', '?'))} resamples; AP50: "
        f"{_e(info.get('ap_n_boot', '?'))}). Hit rate: the map's peak inside a true box or within "
        f"{_e(info.get('tolerance', 0.05))} x the image's longer side, over images with boxes; "
        "compare it with the two baselines below it. AP50: COCO AP at IoU 0.5 over all images, "
        "negatives included; ap50_boxed: over the images with true boxes only (how detection "
        "benchmarks, FracAtlas's included, are scored). FROC: a true box is found when a "
        "predicted box's centre lies in it; other predicted boxes are false positives.</p>",
        f"<table>{head}{body}</table>",
    ]
    if notes:
        parts.append(f"<ul>{notes}</ul>")
    if with_gallery:
        parts.append(gallery(run, "test" if "test" in splits else splits[0]))
    return "".join(parts)


def localization_splits(metrics: dict[str, Any] | None) -> list[str]:
    """The metrics.json keys with localisation metrics."""
    return [
        k
        for k, v in (metrics or {}).items()
        if isinstance(v, dict) and any(n in v for n in LOC_METRIC_NAMES)
    ]


def pick_gallery(
    inputs: LocInputs, k: int = MAX_GALLERY, groups: Sequence[str] | None = None
) -> list[int]:
    """Up to ``k`` rows, at most one per group of ``groups`` (``None``: each row its own):
    images with true boxes spread evenly over the split (two thirds of the places), then
    images without boxes whose top predicted box scores highest (false alarms), then more
    boxed images if places are left."""
    groups = groups if groups is not None else [str(i) for i in range(inputs.n)]
    boxed = _first_per_group([i for i in range(inputs.n) if inputs.true_boxes[i]], groups)
    preds = inputs.pred_boxes or [[] for _ in range(inputs.n)]
    alarms = sorted(
        (i for i in range(inputs.n) if not inputs.true_boxes[i] and preds[i]),
        key=lambda i: -max(b[4] for b in preds[i]),
    )
    alarms = _first_per_group(alarms, groups, {groups[i] for i in boxed})
    n_boxed = min(len(boxed), max(k - len(alarms), (2 * k) // 3))
    step = len(boxed) / n_boxed if n_boxed else 1
    chosen = [boxed[int(j * step)] for j in range(n_boxed)]
    chosen += alarms[: k - len(chosen)]
    return chosen


def _first_per_group(
    rows: list[int], groups: Sequence[str], taken: set[str] | None = None
) -> list[int]:
    """``rows`` in order, keeping the first of each group not in ``taken``."""
    seen = set(taken or ())
    out = []
    for i in rows:
        if groups[i] not in seen:
            seen.add(groups[i])
            out.append(i)
    return out


def render_tile(path: str, true_boxes: list, pred_boxes: list, peak: Any) -> Image.Image:
    """A thumbnail of the image with its true and predicted boxes and the map's peak."""
    from bonefrac.data.imageio import load_grayscale
    from bonefrac.maps.overlay import draw_boxes, draw_scored_boxes

    img = load_grayscale(path, draft_size=GALLERY_THUMB).convert("RGB")
    img.thumbnail((GALLERY_THUMB, GALLERY_THUMB), Image.Resampling.LANCZOS)
    if pred_boxes:
        draw_scored_boxes(img, pred_boxes)
    if true_boxes:  # drawn around the predicted ones, so a perfect box hides neither
        draw_boxes(img, true_boxes, gap=2 * max(1, round(min(img.size) / 250)))
    if peak is not None:
        x, y = peak[0] * img.width, peak[1] * img.height
        r = max(3, round(min(img.size) * 0.025))
        draw = ImageDraw.Draw(img)
        draw.line([(x - r, y), (x + r, y)], fill=PEAK_COLOR, width=2)
        draw.line([(x, y - r), (x, y + r)], fill=PEAK_COLOR, width=2)
    return img


def gallery(run: RunDir, split: str) -> str:
    """``<h3>`` + the split's gallery (or a line saying why there is none)."""
    head = f"<h3>Gallery ({_e(split)})</h3>"
    try:
        df = run.predictions(split)
    except Exception as exc:  # noqa: BLE001 - a broken file must not break the report
        return head + f'<p class="muted">predictions unreadable: {_e(exc)}</p>'
    if not has_localization(df) or "path" not in df.columns:
        return head + '<p class="muted">no localisation columns or image paths</p>'
    df = df.reset_index(drop=True)
    try:
        inputs = read_inputs(df, run.prediction_path(split), sizes=[None] * len(df))
    except Exception as exc:  # noqa: BLE001
        return head + f'<p class="muted">{_e(exc)}</p>'
    groups = image_groups(run, df[IMAGE_ID].astype(str).tolist())
    figures, missing = [], 0
    for i in pick_gallery(inputs, groups=groups.of_row):
        path = str(df[PATH].iloc[i])
        try:
            tile = render_tile(
                path,
                inputs.true_boxes[i],
                inputs.pred_boxes[i] if inputs.pred_boxes else [],
                inputs.peaks[i] if inputs.peaks else None,
            )
        except Exception as exc:  # noqa: BLE001 - a moved or broken image is left out
            log.debug("gallery: %s left out (%s)", path, exc)
            missing += 1
            continue
        figures.append(_tile_figure(tile, _caption(df.iloc[i], inputs, i)))
    parts = [
        head,
        "<p>White: true boxes. Amber: predicted boxes with their scores. Cyan cross: where "
        "the map peaks. At most one image per duplicate group.</p>",
    ]
    if groups.note:
        parts.append(f'<p class="muted">{_e(groups.note)}</p>')
    if figures:
        parts.append('<div class="figs">' + "".join(figures) + "</div>")
    if missing:
        parts.append(
            f'<p class="muted">{missing} image(s) left out: not found or not decodable '
            "(moved data? 'bonefrac relocate RUN --manifest CSV')</p>"
        )
    if not figures and not missing:
        parts.append('<p class="muted">no images with true or predicted boxes</p>')
    return "".join(parts)


def _caption(row: pd.Series, inputs: LocInputs, i: int) -> str:
    prob = row.get("prob")
    p = f"p={float(prob):.2f}" if prob is not None and pd.notna(prob) else "p=n/a"
    n_pred = len(inputs.pred_boxes[i]) if inputs.pred_boxes else 0
    return f"{row[IMAGE_ID]} · {p} · label {int(row[LABEL])} · {n_pred} predicted box(es)"


def _tile_figure(img: Image.Image, caption: str) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )
