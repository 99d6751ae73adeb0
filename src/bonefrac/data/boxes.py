"""Fracture boxes ``[cx, cy, w, h]`` normalised to the image: checks and clipping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: decimals kept for a clipped coordinate (the sources round to the same)
BOX_DECIMALS = 6
#: how far an edge may poke outside [0, 1] (rounding of the source's numbers) and stay as is
TOLERANCE = 1e-6


def clean_boxes(boxes: Sequence[Any]) -> tuple[list[list[float]], list[str]]:
    """Boxes clipped to the image ``[0, 1]``; boxes left with no area are dropped.

    Returns the kept boxes and one note per change (empty when nothing changed; a box already
    inside the image is returned unchanged). A box that is not four finite numbers, has zero or
    negative width or height, or lies wholly outside the image is dropped.
    """
    kept: list[list[float]] = []
    notes: list[str] = []
    for k, box in enumerate(boxes, 1):
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            notes.append(f"box {k} {box!r} is not a list of numbers: dropped")
            continue
        if len(values) < 4 or not all(math.isfinite(v) for v in values[:4]):
            notes.append(f"box {k} {box!r} is not four finite numbers [cx, cy, w, h]: dropped")
            continue
        cx, cy, w, h = values[:4]
        if w <= 0 or h <= 0:
            notes.append(f"box {k} {_fmt(values)} has zero area: dropped")
            continue
        edges = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if min(edges[:2]) >= -TOLERANCE and max(edges[2:]) <= 1 + TOLERANCE:
            kept.append(values)
            continue
        x0, y0 = max(0.0, edges[0]), max(0.0, edges[1])
        x1, y1 = min(1.0, edges[2]), min(1.0, edges[3])
        if x1 <= x0 or y1 <= y0:
            notes.append(f"box {k} {_fmt(values)} lies outside the image: dropped")
            continue
        clipped = [round(v, BOX_DECIMALS) for v in ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)]
        notes.append(f"box {k} {_fmt(values)} reaches outside [0, 1]: clipped to {clipped}")
        kept.append(clipped + values[4:])
    return kept, notes


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
