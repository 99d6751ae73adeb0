"""Does the heatmap point at the fracture? Scores against the manifest's fracture boxes.

Everything is computed in ORIGINAL-image pixel coordinates: the model's square letterboxed
heatmap is cropped to the image area and resized to the original size
(:func:`bonefrac.data.transforms.heatmap_to_original`), and boxes (normalised ``[cx, cy, w, h]`` of the original image)
are scaled to pixels.

Pointing game (Zhang et al., 2016): a hit when the heatmap's maximum lies inside any box, or
within ``tolerance`` x (the image's longer side) of one. The default 5 % plays the role of the
original paper's 15 px at 224 px (6.7 %): a CAM from a stride-32 layer is only 7 x 7 cells at
224 px, so its peak cannot be placed more finely than about half a cell.

Energy in box: the share of the (non-negative) heatmap's total mass that falls inside the union
of the boxes. A heatmap spread uniformly over the image scores the boxes' area share, reported
alongside as ``chance_energy_in_box``; ``chance_hit_rate`` is the hit rate of a peak placed
uniformly at random (the area share of the boxes grown by the tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_TOLERANCE = 0.05

Box = Sequence[float]


def boxes_to_pixels(boxes: Sequence[Box], width: int, height: int) -> list[tuple[float, ...]]:
    """Normalised ``[cx, cy, w, h]`` -> pixel ``(x0, y0, x1, y1)`` (continuous coordinates)."""
    out = []
    for cx, cy, bw, bh in (b[:4] for b in boxes):
        out.append(
            (
                (cx - bw / 2) * width,
                (cy - bh / 2) * height,
                (cx + bw / 2) * width,
                (cy + bh / 2) * height,
            )
        )
    return out


def box_mask(boxes: Sequence[Box], width: int, height: int, margin_px: float = 0.0) -> np.ndarray:
    """Boolean ``(H, W)``: pixels whose centre lies in any box grown by ``margin_px``.

    A box thinner than a pixel still marks the pixel holding its centre.
    """
    mask = np.zeros((height, width), dtype=bool)
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    for x0, y0, x1, y1 in boxes_to_pixels(boxes, width, height):
        cols = (xs >= x0 - margin_px) & (xs <= x1 + margin_px)
        rows = (ys >= y0 - margin_px) & (ys <= y1 + margin_px)
        if not cols.any():
            cols[min(width - 1, max(0, int((x0 + x1) / 2)))] = True
        if not rows.any():
            rows[min(height - 1, max(0, int((y0 + y1) / 2)))] = True
        mask |= rows[:, None] & cols[None, :]
    return mask


def peak(heat: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` pixel of the heatmap's maximum (first one on ties)."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(x), int(y)


def distance_to_boxes(x: float, y: float, boxes_px: Sequence[tuple[float, ...]]) -> float:
    """Euclidean distance from the point to the nearest box (0 inside one)."""
    best = math.inf
    for x0, y0, x1, y1 in boxes_px:
        dx = max(x0 - x, 0.0, x - x1)
        dy = max(y0 - y, 0.0, y - y1)
        best = min(best, math.hypot(dx, dy))
    return best


def score_image(
    heat: np.ndarray, boxes: Sequence[Box], tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, Any]:
    """Pointing-game hit and energy-in-box for one heatmap already at original size ``(H, W)``."""
    if not boxes:
        raise ValueError("score_image needs at least one box")
    height, width = heat.shape
    heat = np.clip(np.nan_to_num(heat.astype(np.float64)), 0.0, None)
    tol_px = tolerance * max(width, height)
    boxes_px = boxes_to_pixels(boxes, width, height)
    inside = box_mask(boxes, width, height)
    total = float(heat.sum())
    empty = total <= 0.0
    px, py = peak(heat)
    dist = distance_to_boxes(px + 0.5, py + 0.5, boxes_px)
    return {
        "hit": bool(not empty and dist <= tol_px),
        "energy_in_box": 0.0 if empty else float(heat[inside].sum() / total),
        "peak_x": px,
        "peak_y": py,
        "peak_distance_px": round(dist, 2),
        "tolerance_px": round(tol_px, 2),
        "box_area_share": float(inside.mean()),
        "chance_hit": float(box_mask(boxes, width, height, tol_px).mean()),
        "empty_map": empty,
    }


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(
    per_image: list[dict[str, Any]],
    *,
    method: str,
    layer: str | None,
    tolerance: float = DEFAULT_TOLERANCE,
    **extra: Any,
) -> dict[str, Any]:
    """The ``localization.json`` document: headline numbers first, then the per-image list."""
    n = len(per_image)
    hits = sum(1 for r in per_image if r["hit"])
    low, high = wilson_interval(hits, n)

    def mean(key: str) -> float | None:
        return float(np.mean([r[key] for r in per_image])) if n else None

    return {
        "n_scored": n,
        "hit_rate": hits / n if n else None,
        "hit_rate_low": None if n == 0 else low,
        "hit_rate_high": None if n == 0 else high,
        "energy_in_box": mean("energy_in_box"),
        "chance_hit_rate": mean("chance_hit"),
        "chance_energy_in_box": mean("box_area_share"),
        "n_empty_maps": sum(1 for r in per_image if r.get("empty_map")),
        "method": method,
        "layer": layer,
        "tolerance": tolerance,
        **extra,
        "per_image": per_image,
    }
