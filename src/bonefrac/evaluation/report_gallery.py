"""The report's gallery of heatmap overlays: one image per duplicate group, hits and misses.

``bonefrac explain`` writes one overlay per image (``RUN/explain/<method>/<stem>.png``, found by
:meth:`RunDir.explain_overlays`). Near-duplicates (Roboflow's augmentation siblings of one
radiograph share the manifest's ``group``) would show the same bone several times, so the
gallery keeps at most one image per group, and takes turns between four kinds of image at the
run's threshold: fractures found, fractures missed, normals cleared, false alarms (within each,
the most telling first: the most confident hits and the most confident errors).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bonefrac.data.schema import GROUP
from bonefrac.rundir import RunDir, overlay_stem, run_probabilities
from bonefrac.rundir.predictions import IMAGE_ID, LABEL

log = logging.getLogger(__name__)

MAX_GALLERY = 12
THUMB = 360
#: The four kinds of image the gallery takes turns between: (label, hit) -> caption.
KINDS = (
    ((1, True), "fracture found"),
    ((1, False), "fracture missed"),
    ((0, True), "normal cleared"),
    ((0, False), "false alarm"),
)


@dataclass(frozen=True)
class Groups:
    """Each row's duplicate group, and why it is only the image itself when it is."""

    of_row: list[str]
    note: str | None = None


def image_groups(run: RunDir, image_ids: Sequence[str]) -> Groups:
    """The manifest's ``group`` of each image id; an image the manifest does not know (or
    with an empty group) is its own group. Without the manifest every image is its own group
    and ``note`` says that near-duplicates may repeat."""
    from bonefrac.data.schema import read_manifest

    ids = [str(i) for i in image_ids]
    path = run.raw_meta().get("manifest")
    try:
        manifest = read_manifest(path) if path else None
    except Exception as exc:  # noqa: BLE001 - a missing or broken manifest must not break it
        log.debug("gallery groups: manifest %s unreadable (%s)", path, exc)
        manifest = None
    if manifest is None or GROUP not in manifest.columns:
        why = "not there" if manifest is None else "without a 'group' column"
        return Groups(
            [f"image:{i}" for i in ids],
            f"the run's manifest is {why}, so near-duplicate images may repeat",
        )
    by_id = dict(zip(manifest[IMAGE_ID].astype(str), manifest[GROUP].astype(str), strict=False))
    return Groups([f"group:{by_id[i]}" if by_id.get(i) else f"image:{i}" for i in ids])


def pick_distinct(
    labels: Sequence[int], hits: Sequence[bool], probs: Sequence[float], groups: Sequence[str],
    k: int = MAX_GALLERY,
) -> list[int]:  # fmt: skip
    """Up to ``k`` row indices, at most one per group, taking turns over :data:`KINDS`
    (within a kind: hits by confidence, errors by how confident the wrong call was)."""
    queues: list[list[int]] = []
    for (label, hit), _ in KINDS:
        rows = [i for i in range(len(labels)) if labels[i] == label and bool(hits[i]) == hit]
        sign = -1.0 if (label == 1) == hit else 1.0  # fractures found, false alarms: highest p
        queues.append(sorted(rows, key=_by_probability(probs, sign)))
    chosen: list[int] = []
    used: set[str] = set()
    while len(chosen) < k and any(queues):
        for queue in queues:
            while queue and groups[queue[0]] in used:
                queue.pop(0)
            if queue and len(chosen) < k:
                i = queue.pop(0)
                chosen.append(i)
                used.add(groups[i])
    return chosen


def _by_probability(probs: Sequence[float], sign: float) -> Any:
    return lambda i: (sign * probs[i], i)


@dataclass
class Gallery:
    """The overlays chosen for the report, and what the page says about them."""

    figures: list[str]
    n_overlays: int  # overlays of this split's images (before de-duplication)
    n_groups: int  # distinct groups among them
    note: str | None = None


def overlay_gallery(run: RunDir, split: str, k: int = MAX_GALLERY) -> Gallery | None:
    """The distinct-image gallery of ``split``'s overlays, or ``None`` when no overlay is of
    an image of that split's predictions."""
    overlays = run.explain_overlays()
    if not overlays:
        return None
    try:
        df = run.predictions(split).reset_index(drop=True)
        meta = run.meta()
    except Exception as exc:  # noqa: BLE001 - a broken file must not break the report
        log.debug("gallery: %s predictions unreadable (%s)", split, exc)
        return None
    stems = [overlay_stem(str(i)) for i in df[IMAGE_ID]]
    rows = [i for i, s in enumerate(stems) if s in overlays]
    if not rows:
        return None
    sub = df.iloc[rows].reset_index(drop=True)
    prob = run_probabilities(sub, meta)
    labels = sub[LABEL].astype(int).tolist()
    hits = (meta.decide(prob) == (np.asarray(labels) == 1)).tolist()
    groups = image_groups(run, sub[IMAGE_ID].tolist())
    picked = pick_distinct(labels, hits, prob.tolist(), groups.of_row, k)
    kinds = dict(KINDS)
    figures = []
    for i in picked:
        kind = kinds[(labels[i], bool(hits[i]))]
        caption = (
            f"{sub[IMAGE_ID].iloc[i]} · {'fractured' if labels[i] else 'not fractured'} · "
            f"p={prob[i]:.2f} · {kind}"
        )
        try:
            figures.append(image_figure(overlays[stems[rows[i]]], caption))
        except Exception as exc:  # noqa: BLE001 - an unreadable overlay is left out
            log.debug("gallery: %s left out (%s)", overlays[stems[rows[i]]], exc)
    return Gallery(figures, len(rows), len(set(groups.of_row)), groups.note)


def image_figure(image: Path | Image.Image, caption: str, size: int = THUMB) -> str:
    """A ``<figure>`` with a PNG thumbnail (at most ``size`` px) embedded as a data URI."""
    img = Image.open(image) if isinstance(image, Path) else image
    img = img.convert("RGB")
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    text = html.escape(caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{text}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def gallery_html(gallery: Gallery, threshold: float) -> str:
    """The gallery's figures with a line on how they were chosen."""
    parts = [
        f"<p>Heatmap overlays from 'bonefrac explain', at most one per duplicate group "
        f"({len(gallery.figures)} shown of {gallery.n_overlays} overlaid images in "
        f"{gallery.n_groups} groups); hits and misses at threshold {threshold:.3f}. Red marks "
        "the regions that raised the fracture score most, not an outline of a fracture.</p>"
    ]
    if gallery.note:
        parts.append(f'<p class="muted">{html.escape(gallery.note)}</p>')
    if gallery.figures:
        parts.append('<div class="figs">' + "".join(gallery.figures) + "</div>")
    return "".join(parts)
