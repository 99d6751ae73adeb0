"""Localisation metrics of one split, computed from its predictions CSV alone.

A localising run's predictions CSV carries, per image (all normalised to the ORIGINAL image):

- ``boxes``: the true fracture boxes ``[[cx, cy, w, h], ...]`` (``[]`` or empty when none);
- ``pred_boxes``: the model's boxes ``[[cx, cy, w, h, score], ...]`` (possibly ``[]``), those
  shown (at or above the run's box threshold);
- ``cand_boxes`` (optional): every decoded box down to a low score floor, the ranked list AP and
  FROC are computed from (as detectors are scored); without it they use ``pred_boxes``;
- ``map_peak``: ``[x, y]``, where the shown map peaks;
- ``energy_in_box``: the share of the map's energy inside the true boxes (empty without boxes);
- ``width``, ``height``: the original image's size, in which the tolerance below is measured
  (the columns are :mod:`bonefrac.rundir.predictions`'s; no image file is opened).

Metrics (each ``{"value", "ci_low", "ci_high"}``, merged into ``metrics.json[split]``):

- ``hit_rate``: share of images with true boxes whose map peak lies inside a true box or within
  the pointing game's tolerance (5 % of the image's longer side, in pixels;
  :mod:`bonefrac.maps.pointing_game`). An image with boxes but no peak is a miss.
- ``energy_in_box``: mean over images with true boxes.
- ``ap50``: COCO average precision at IoU 0.5 over ALL images of the split, negatives included
  (pycocotools' ``COCOeval``: bbox, one class, up to 100 boxes per image, 101 recall points).
- ``ap50_boxed``: the same AP over the images with true boxes only, the convention of detection
  benchmarks (published FracAtlas detectors are tested on fractured images only): boxes on
  negatives cost it nothing, so it is at least ``ap50`` and the figure to set beside theirs.
- ``froc_0.5``, ``froc_1``, ``froc_2``: FROC sensitivity at 0.5, 1 and 2 false-positive boxes
  per image. A true box is found when the CENTRE of a predicted box (at or above the score
  threshold) lies inside it; a predicted box whose centre lies in no true box of its image is a
  false positive; further boxes on an already found true box are neither. Sensitivity at a
  budget is the highest one reached at a threshold whose false positives per image stay within
  the budget.
- ``centre_hit_rate``: the hit rate of always pointing at the image centre (same tolerance);
  ``chance_hit_rate``: of a peak placed uniformly at random (the area share of the boxes grown
  by the tolerance). Both are baselines for ``hit_rate``.

Confidence intervals: 95 % percentile bootstrap over images, stratified by whether an image has
true boxes (so every resample keeps the split's share of boxed images), seeded. AP is
re-accumulated by pycocotools for every resample from the per-image matches computed once
(about 1 ms per resample at 600 images, so AP gets as many resamples as the other metrics).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.errors import DataError
from bonefrac.maps.pointing_game import (
    DEFAULT_TOLERANCE,
    box_mask,
    boxes_to_pixels,
    distance_to_boxes,
)
from bonefrac.rundir.predictions import (
    CAND_BOXES,
    ENERGY,
    IMAGE_ID,
    MAP_PEAK,
    PRED_BOXES,
    TRUE_BOXES,
    image_sizes,
    parse_boxes,
)

AP_IOU = 0.5
AP_MAX_DETS = 100
#: FROC false-positive budgets per image and their metrics.json keys
FROC_BUDGETS: dict[str, float] = {"froc_0.5": 0.5, "froc_1": 1.0, "froc_2": 2.0}
#: every localisation metric, in display order (baselines last)
LOC_METRIC_NAMES = (
    "hit_rate",
    "energy_in_box",
    "ap50",
    "ap50_boxed",
    *FROC_BUDGETS,
    "centre_hit_rate",
    "chance_hit_rate",
)
#: the chance rate is measured on a pixel grid whose longer side is at most this
CHANCE_GRID = 1024

Size = tuple[int, int]


def has_localization(df: pd.DataFrame) -> bool:
    """True when the predictions carry true boxes and at least one localisation output."""
    return TRUE_BOXES in df.columns and any(c in df.columns for c in (PRED_BOXES, MAP_PEAK, ENERGY))


# --- reading the CSV ----------------------------------------------------------------------


@dataclass
class LocInputs:
    """One split's localisation columns, parsed; ``None`` where the column is absent."""

    image_ids: list[str]
    true_boxes: list[list[list[float]]]
    sizes: list[Size | None]
    pred_boxes: list[list[list[float]]] | None = None
    cand_boxes: list[list[list[float]]] | None = None
    peaks: list[tuple[float, float] | None] | None = None
    energy: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.image_ids)

    @property
    def ranked_boxes(self) -> list[list[list[float]]] | None:
        """The boxes AP and FROC rank: the candidates when present, else the shown boxes."""
        return self.cand_boxes if self.cand_boxes is not None else self.pred_boxes

    @property
    def boxed(self) -> np.ndarray:
        return np.array([bool(b) for b in self.true_boxes], dtype=bool)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LocInputs:
        """The images at ``indices`` (e.g. one source of the split)."""
        idx = [int(i) for i in indices]

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in idx]

        return LocInputs(
            image_ids=[self.image_ids[i] for i in idx],
            true_boxes=[self.true_boxes[i] for i in idx],
            sizes=[self.sizes[i] for i in idx],
            pred_boxes=pick(self.pred_boxes),
            cand_boxes=pick(self.cand_boxes),
            peaks=pick(self.peaks),
            energy=None if self.energy is None else self.energy[idx],
        )


def _cell_json(value: Any, source: object, image_id: str, column: str) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise DataError(
            f"{source}: column '{column}' of {image_id} is not valid JSON ({text[:60]!r}); "
            "rewrite the predictions with 'bonefrac train' or 'bonefrac evaluate --manifest'"
        ) from None


def _peak(value: Any, source: object, image_id: str) -> tuple[float, float] | None:
    data = _cell_json(value, source, image_id, MAP_PEAK)
    if data is None:
        return None
    if not (
        isinstance(data, list)
        and len(data) == 2
        and all(isinstance(v, int | float) and math.isfinite(v) for v in data)
    ):
        raise DataError(
            f"{source}: column '{MAP_PEAK}' of {image_id} must be a JSON [x, y] of finite "
            f"numbers, got {str(value)[:60]!r}; fix or rewrite the predictions CSV"
        )
    return float(data[0]), float(data[1])


def read_inputs(
    df: pd.DataFrame, source: object = "predictions", sizes: list[Size | None] | None = None
) -> LocInputs:
    """Parse the localisation columns of a predictions table (``DataError`` naming the file,
    the image and the column on a malformed cell)."""
    if TRUE_BOXES not in df.columns:
        raise DataError(f"{source}: no '{TRUE_BOXES}' column; not a localising run's predictions")
    ids = df[IMAGE_ID].astype(str).tolist() if IMAGE_ID in df.columns else []
    ids = ids or [str(i) for i in range(len(df))]
    col = df[TRUE_BOXES].tolist()
    inputs = LocInputs(
        image_ids=ids,
        true_boxes=[
            parse_boxes(v, 4, source=source, image_id=i, column=TRUE_BOXES)
            for v, i in zip(col, ids, strict=True)
        ],
        sizes=sizes if sizes is not None else image_sizes(df),
    )
    if PRED_BOXES in df.columns:
        col = df[PRED_BOXES].tolist()
        inputs.pred_boxes = [
            parse_boxes(v, 5, source=source, image_id=i, column=PRED_BOXES)
            for v, i in zip(col, ids, strict=True)
        ]
    if CAND_BOXES in df.columns:
        col = df[CAND_BOXES].tolist()
        inputs.cand_boxes = [
            parse_boxes(v, 5, source=source, image_id=i, column=CAND_BOXES)
            for v, i in zip(col, ids, strict=True)
        ]
    if MAP_PEAK in df.columns:
        inputs.peaks = [
            _peak(v, source, i) for v, i in zip(df[MAP_PEAK].tolist(), ids, strict=True)
        ]
    if ENERGY in df.columns:
        energy = pd.to_numeric(df[ENERGY], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(inputs.boxed & ~((energy >= 0) & (energy <= 1)))
        if len(bad):
            raise DataError(
                f"{source}: column '{ENERGY}' of {ids[bad[0]]} must be a number in [0, 1] for an "
                f"image with boxes, got {df[ENERGY].iloc[bad[0]]!r}; rewrite the predictions CSV"
            )
        inputs.energy = energy
    return inputs


# --- per-image scores ---------------------------------------------------------------------


def point_hits(
    points: Sequence[tuple[float, float] | None],
    true_boxes: Sequence[Sequence[Sequence[float]]],
    sizes: Sequence[Size | None],
    tolerance: float = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """Pointing-game hit (1.0 / 0.0) of a normalised point per image; NaN for images without
    boxes. Distances are in pixels of the original image (unit square when its size is
    unknown); a missing point is a miss."""
    out = np.full(len(true_boxes), np.nan)
    for i, (pt, boxes, size) in enumerate(zip(points, true_boxes, sizes, strict=True)):
        if not boxes:
            continue
        if pt is None:
            out[i] = 0.0
            continue
        w, h = size or (1, 1)
        dist = distance_to_boxes(pt[0] * w, pt[1] * h, boxes_to_pixels(boxes, w, h))
        out[i] = float(dist <= tolerance * max(w, h))
    return out


def chance_hits(
    true_boxes: Sequence[Sequence[Sequence[float]]],
    sizes: Sequence[Size | None],
    tolerance: float = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """Hit rate of a uniformly random peak per image (area share of the boxes grown by the
    tolerance); NaN for images without boxes."""
    out = np.full(len(true_boxes), np.nan)
    for i, (boxes, size) in enumerate(zip(true_boxes, sizes, strict=True)):
        if not boxes:
            continue
        w, h = size or (CHANCE_GRID, CHANCE_GRID)
        scale = min(1.0, CHANCE_GRID / max(w, h))
        gw, gh = max(1, round(w * scale)), max(1, round(h * scale))
        out[i] = float(box_mask(boxes, gw, gh, tolerance * max(gw, gh)).mean())
    return out


def centre_inside(point: tuple[float, float], boxes: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the (normalised) boxes that contain the point."""
    return [
        j
        for j, px in enumerate(boxes_to_pixels(boxes, 1, 1))
        if distance_to_boxes(point[0], point[1], [px]) == 0.0
    ]


@dataclass
class FrocItems:
    """FROC's units: per true box the best score of a box centred in it (-inf when none), per
    false-positive box its score, each with its image index."""

    found_score: np.ndarray
    found_image: np.ndarray
    fp_score: np.ndarray
    fp_image: np.ndarray
    n_images: int


def froc_items(
    true_boxes: Sequence[Sequence[Sequence[float]]], pred_boxes: Sequence[Sequence[Sequence[float]]]
) -> FrocItems:
    found_s, found_i, fp_s, fp_i = [], [], [], []
    for i, (truth, preds) in enumerate(zip(true_boxes, pred_boxes, strict=True)):
        best = [-math.inf] * len(truth)
        for box in preds:
            inside = centre_inside((box[0], box[1]), truth) if truth else []
            if not inside:
                fp_s.append(box[4])
                fp_i.append(i)
            for j in inside:
                best[j] = max(best[j], box[4])
        found_s += best
        found_i += [i] * len(truth)
    return FrocItems(
        np.asarray(found_s, dtype=float),
        np.asarray(found_i, dtype=int),
        np.asarray(fp_s, dtype=float),
        np.asarray(fp_i, dtype=int),
        len(true_boxes),
    )


def _weighted_at_least(
    values: np.ndarray, weights: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """For each threshold (any order): the summed weight of ``values >= threshold``."""
    order = np.argsort(-values, kind="mergesort")
    desc = -values[order]  # ascending
    cum = np.concatenate([[0.0], np.cumsum(weights[order])])
    return cum[np.searchsorted(desc, -thresholds, side="right")]


def froc_sensitivities(
    items: FrocItems, budgets: Sequence[float], image_weights: np.ndarray | None = None
) -> np.ndarray:
    """Sensitivity at each false-positives-per-image budget; NaN when there is no true box.

    ``image_weights``: how often each image counts (a bootstrap resample); default once each.
    """
    w = np.ones(items.n_images) if image_weights is None else np.asarray(image_weights, float)
    wt = w[items.found_image]
    total = wt.sum()
    if total <= 0:
        return np.full(len(budgets), np.nan)
    scores = np.unique(np.concatenate([items.found_score, items.fp_score]))
    thresholds = np.concatenate([[math.inf], scores[np.isfinite(scores)][::-1]])
    sens = _weighted_at_least(items.found_score, wt, thresholds) / total
    fppi = _weighted_at_least(items.fp_score, w[items.fp_image], thresholds) / w.sum()
    out = []
    for budget in budgets:
        ok = fppi <= budget + 1e-12
        out.append(float(sens[ok].max()) if ok.any() else 0.0)
    return np.asarray(out)


# --- AP50 with pycocotools ----------------------------------------------------------------


def _xywh(box: Sequence[float]) -> list[float]:
    cx, cy, w, h = box[:4]
    return [cx - w / 2, cy - h / 2, w, h]


class CocoAP:
    """COCO AP at IoU 0.5 (one class, normalised boxes; IoU is the same in pixels).

    Per-image matching runs once (``COCOeval.evaluate``); :meth:`ap` re-accumulates any
    multiset of images (a bootstrap resample) with ``COCOeval.accumulate``.
    """

    def __init__(
        self,
        true_boxes: Sequence[Sequence[Sequence[float]]],
        pred_boxes: Sequence[Sequence[Sequence[float]]],
    ) -> None:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        n = len(true_boxes)
        images = [{"id": i + 1} for i in range(n)]
        cats = [{"id": 1, "name": "fracture"}]
        gts, dts = [], []
        for i, (truth, preds) in enumerate(zip(true_boxes, pred_boxes, strict=True)):
            for b in truth:  # annotation ids start at 1: COCOeval reads id 0 as "unmatched"
                gts.append(
                    {"id": len(gts) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "bbox": _xywh(b), "area": b[2] * b[3]}
                )  # fmt: skip
            for b in preds:
                dts.append(
                    {"id": len(dts) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "bbox": _xywh(b), "area": b[2] * b[3], "score": b[4]}
                )  # fmt: skip
        self.n_true = len(gts)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            gt, dt = COCO(), COCO()
            gt.dataset = {"images": images, "annotations": gts, "categories": cats}
            dt.dataset = {"images": images, "annotations": dts, "categories": cats}
            gt.createIndex()
            dt.createIndex()
            ev = COCOeval(gt, dt, iouType="bbox")
            p = ev.params
            p.imgIds = [im["id"] for im in images]
            p.catIds = [1]
            p.iouThrs = np.array([AP_IOU])
            p.areaRng = [[0.0, 1e10]]
            p.areaRngLbl = ["all"]
            p.maxDets = [AP_MAX_DETS]
            ev.evaluate()
        self._eval = ev
        self._per_image = list(ev.evalImgs)  # one entry per image, in image order

    def ap(self, indices: Sequence[int] | np.ndarray | None = None) -> float:
        """AP50 over the images at ``indices`` (repeats allowed); NaN without true boxes."""
        ev = self._eval
        idx = range(len(self._per_image)) if indices is None else indices
        ev.evalImgs = [self._per_image[i] for i in idx]
        ids = list(range(len(ev.evalImgs)))
        ev.params.imgIds = ids
        ev._paramsEval.imgIds = ids
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
        prec = ev.eval["precision"][0, :, 0, 0, 0]
        valid = prec[prec > -1]
        return float(valid.mean()) if len(valid) else math.nan


def ap50(
    true_boxes: Sequence[Sequence[Sequence[float]]], pred_boxes: Sequence[Sequence[Sequence[float]]]
) -> float:
    """COCO AP at IoU 0.5 over all images (NaN when there is no true box)."""
    return CocoAP(true_boxes, pred_boxes).ap()


# --- the split's metrics ------------------------------------------------------------------


def _entry(value: float, dist: np.ndarray | None, ci: float) -> dict[str, float | None]:
    v = float(value)
    if not math.isfinite(v):
        return {"value": None, "ci_low": None, "ci_high": None}
    low = high = None
    if dist is not None:
        d = dist[np.isfinite(dist)]
        if len(d):
            a = 100 * (1 - ci) / 2
            low, high = float(np.percentile(d, a)), float(np.percentile(d, 100 - a))
    return {"value": v, "ci_low": low, "ci_high": high}


def _resamples(boxed: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` image indices, stratified by has-boxes."""
    parts = []
    for mask in (boxed, ~boxed):
        idx = np.flatnonzero(mask)
        if len(idx):
            parts.append(idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))])
    return np.concatenate(parts, axis=1) if parts else np.zeros((n_boot, 0), dtype=int)


def _weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of the finite ``values`` under each row of ``weights`` ``(n_boot, n)``."""
    ok = np.isfinite(values)
    w = weights[:, ok]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (w @ values[ok]) / w.sum(axis=1)


def localization_metrics(
    inputs: LocInputs,
    tolerance: float = DEFAULT_TOLERANCE,
    n_boot: int = 1000,
    ap_n_boot: int | None = None,
    seed: int = 0,
    ci: float = 0.95,
    draws: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Localisation metrics of a split with bootstrap CIs (see the module docstring).

    Returns ``{metric: {"value", "ci_low", "ci_high"}}`` for the metrics the columns allow,
    plus ``"localization": {"support", "settings", "notes"}``. ``ap_n_boot`` (default
    ``n_boot``; about 1 ms per resample) resamples for AP's CI; ``n_boot=0`` skips the
    bootstrap. ``draws``, when given, receives each metric's bootstrap values. The resamples
    depend only on ``seed`` and which images have boxes, so two models' predictions of the same
    images get the same resamples, and the difference of their draws is a paired bootstrap.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    n_boot = int(n_boot)
    ap_n_boot = n_boot if ap_n_boot is None else min(int(ap_n_boot), n_boot)
    boxed = inputs.boxed
    n_boxed = int(boxed.sum())
    notes: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    samples = _resamples(boxed, n_boot, rng) if n_boot > 0 else np.zeros((0, inputs.n), int)
    weights = np.zeros((len(samples), inputs.n))
    for b, row in enumerate(samples):
        weights[b] = np.bincount(row, minlength=inputs.n)

    per_image: dict[str, np.ndarray] = {}
    if inputs.peaks is not None:
        per_image["hit_rate"] = point_hits(inputs.peaks, inputs.true_boxes, inputs.sizes, tolerance)
    if inputs.energy is not None:
        per_image[ENERGY] = np.where(boxed, inputs.energy, np.nan)
    centre = [(0.5, 0.5)] * inputs.n
    per_image["centre_hit_rate"] = point_hits(centre, inputs.true_boxes, inputs.sizes, tolerance)
    per_image["chance_hit_rate"] = chance_hits(inputs.true_boxes, inputs.sizes, tolerance)

    out: dict[str, Any] = {}

    def put(name: str, value: float, dist: np.ndarray | None) -> None:
        out[name] = _entry(value, dist, ci)
        if draws is not None and dist is not None:
            draws[name] = dist

    for name, values in per_image.items():
        if n_boxed == 0:
            put(name, math.nan, None)
            continue
        put(name, float(np.nanmean(values)), _weighted_means(values, weights) if n_boot else None)
    if n_boxed == 0:
        notes["hit_rate"] = "undefined: no image of this split has a true box"

    n_pred = 0
    ranked = inputs.ranked_boxes
    if ranked is not None:
        n_pred = sum(len(b) for b in inputs.pred_boxes or [])
        coco = CocoAP(inputs.true_boxes, ranked)
        dist = np.array([coco.ap(row) for row in samples[:ap_n_boot]]) if ap_n_boot else None
        put("ap50", coco.ap(), dist)
        boxed_dist = (
            np.array([coco.ap(row[boxed[row]]) for row in samples[:ap_n_boot]])
            if ap_n_boot
            else None
        )
        put("ap50_boxed", coco.ap(np.flatnonzero(boxed)), boxed_dist)
        items = froc_items(inputs.true_boxes, ranked)
        budgets = list(FROC_BUDGETS.values())
        point = froc_sensitivities(items, budgets)
        boot = np.array([froc_sensitivities(items, budgets, w) for w in weights])
        for k, name in enumerate(FROC_BUDGETS):
            put(name, point[k], boot[:, k] if n_boot else None)
        if n_boxed == 0:
            notes["ap50"] = "undefined: no true boxes"
    n_unknown = sum(1 for s, b in zip(inputs.sizes, boxed, strict=True) if b and s is None)
    if n_unknown:
        notes["sizes"] = (
            f"{n_unknown} image(s) with boxes have no size (predictions written without the "
            "width/height columns): their tolerance is taken on the unit square; rewrite them "
            "with 'bonefrac train' or 'bonefrac evaluate --manifest'"
        )
    out = {name: out[name] for name in LOC_METRIC_NAMES if name in out}
    out["localization"] = {
        "support": {
            "n_images": inputs.n,
            "n_with_boxes": n_boxed,
            "n_true_boxes": sum(len(b) for b in inputs.true_boxes),
            "n_pred_boxes": n_pred,
        },
        "settings": {
            "tolerance": tolerance,
            "ap_iou": AP_IOU,
            "ap_max_dets": AP_MAX_DETS,
            "ap_backend": "pycocotools COCOeval (bbox, 101 recall points)",
            "froc_budgets": budgets_text(),
            "froc_match": "centre of a predicted box inside a true box",
            "ranked_boxes": CAND_BOXES if inputs.cand_boxes is not None else PRED_BOXES,
            "n_boot": n_boot,
            "ap_n_boot": ap_n_boot if ranked is not None else 0,
            "seed": int(seed),
            "ci": float(ci),
            "method": "percentile bootstrap over images, stratified by has-boxes",
        },
        "notes": notes,
    }
    return out


def budgets_text() -> str:
    return ", ".join(f"{k}: {v:g} FP/image" for k, v in FROC_BUDGETS.items())


def split_localization(
    df: pd.DataFrame, source: object = "predictions", **kwargs: Any
) -> dict[str, Any] | None:
    """:func:`localization_metrics` of a predictions table; ``None`` for a classification-only
    run (no localisation columns)."""
    if not has_localization(df):
        return None
    return localization_metrics(read_inputs(df, source), **kwargs)
