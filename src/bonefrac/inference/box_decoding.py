"""A localising model's detector output -> scored boxes, the map's peak and its energy in the
true boxes.

Everything is returned normalised to the ORIGINAL image (the manifest's convention):

* boxes, from the detector's packed output ``(A, 6)`` (:mod:`bonefrac.models.detector`)
  through torchvision's FCOS post-processing
  (:meth:`torchvision.models.detection.FCOS.postprocess_detections`: score
  ``sqrt(fracture * centre-ness)`` above the run's ``box_threshold``, top-k per level, NMS),
  then kept when their centre lies in the image area (not the letterbox padding) and clipped to
  it; the best :data:`MAX_BOXES` are reported as ``[cx, cy, w, h, score]``. ``cand_boxes``: the
  same down to :data:`CANDIDATE_FLOOR` (at most :data:`MAX_CANDIDATES`), the ranked list AP50
  and FROC are computed from.
* the map (:func:`bonefrac.maps.learned.detector_maps`): the detection score per location,
  cropped to the image area through :func:`bonefrac.data.transforms.heatmap_to_original`; its
  peak ``[x, y]`` and ``map_max`` (the best location's score, a second image-level score).
* energy in box: the map's mass inside the true boxes, by
  :func:`bonefrac.maps.pointing_game.score_image`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from bonefrac.data.transforms import letterbox_geometry
from bonefrac.models.detector import box_coder, level_anchors, level_sizes
from bonefrac.rundir.predictions import ENERGY, loc_cells

#: At most this many boxes per image.
MAX_BOXES = 5
#: Candidate boxes (the ranked list AP and FROC are computed from) go down to this score ...
CANDIDATE_FLOOR = 0.05
#: ... at most this many per image.
MAX_CANDIDATES = 10
#: Boxes overlapping a better one by more than this IoU are dropped.
NMS_IOU = 0.5
#: Locations per level ranked before NMS (FCOS's ``topk_candidates``).
TOPK_CANDIDATES = 100
#: Share of val negatives allowed to show a box: the box threshold is their map peaks' quantile.
NEGATIVE_BOX_RATE = 0.05
DECIMALS = 4


def crop_map(prob_map: np.ndarray, decoded_size: tuple[int, int]) -> np.ndarray:
    """The letterboxed ``(S, S)`` map cut to the image area: ``(nh, nw)`` at letterbox scale."""
    from bonefrac.data.transforms import heatmap_to_original

    size = prob_map.shape[-1]
    _, _, _, nw, nh = letterbox_geometry(*decoded_size, size)
    return heatmap_to_original(prob_map, (nw, nh), decoded_size)


def decode_boxes(
    head: np.ndarray,
    decoded_size: tuple[int, int],
    size: int,
    strides: Sequence[int],
    threshold: float,
    max_boxes: int = MAX_BOXES,
) -> list[list[float]]:
    """Scored boxes ``[cx, cy, w, h, score]`` (normalised to the original image, best first)
    from one image's packed detector output ``(A, 6)`` for its ``size x size`` letterbox."""
    return decode_box_sets(head, decoded_size, size, strides, [(threshold, max_boxes)])[0]


def decode_box_sets(
    head: np.ndarray,
    decoded_size: tuple[int, int],
    size: int,
    strides: Sequence[int],
    cuts: Sequence[tuple[float, int]],
) -> list[list[list[float]]]:
    """:func:`decode_boxes` for each ``(threshold, max_boxes)`` in ``cuts``, from ONE
    post-processing run at the lowest threshold and the largest cap.

    Each cut equals its own :func:`decode_boxes` call: greedy NMS suppresses a box only by a
    better one, so the boxes above a threshold are the same whether or not lower ones took part
    (top-k keeps :data:`TOPK_CANDIDATES` per level, far more than a cut reports). The one
    difference: the run keeps ``4 x`` the largest cap after NMS, so when more than three in four
    of a smaller cut's boxes sit on the letterbox padding (and are dropped), that cut can still
    be filled where its own call would come up short."""
    found = _decoded(
        head, decoded_size, size, strides, min(t for t, _ in cuts), max(n for _, n in cuts)
    )
    return [
        [[round(v, DECIMALS) for v in (*box, score)] for box, score in found if score > t][:n]
        for t, n in cuts
    ]


def _decoded(
    head: np.ndarray,
    decoded_size: tuple[int, int],
    size: int,
    strides: Sequence[int],
    threshold: float,
    max_boxes: int,
) -> list[tuple[list[float], float]]:
    """FCOS post-processing of one image: ``([cx, cy, w, h], score)`` normalised to the
    original image, unrounded, best first; empty for a malformed or non-finite output."""
    from torchvision.models.detection.fcos import FCOS

    packed = torch.as_tensor(np.asarray(head, dtype=np.float32))
    counts = [n * n for n in level_sizes(size, strides)]
    if packed.shape[0] != sum(counts) or not bool(torch.isfinite(packed).all()):
        return []
    levels = packed[None].split(counts, dim=1)
    outputs = {
        "cls_logits": [t[..., 0:1] for t in levels],
        "bbox_ctrness": [t[..., 1:2] for t in levels],
        "bbox_regression": [t[..., 2:6] for t in levels],
    }
    anchors = list(level_anchors(size, strides).split(counts))
    # the attributes FCOS.postprocess_detections reads from its model
    post = SimpleNamespace(
        box_coder=box_coder(),
        score_thresh=float(threshold),
        nms_thresh=NMS_IOU,
        topk_candidates=TOPK_CANDIDATES,
        detections_per_img=4 * max_boxes,
    )
    found = FCOS.postprocess_detections(post, outputs, [anchors], [(size, size)])[0]  # type: ignore[arg-type]
    _, left, top, nw, nh = letterbox_geometry(*decoded_size, size)
    boxes: list[tuple[list[float], float]] = []
    xyxy, scores = found["boxes"], found["scores"]  # not a column: torchvision's detections
    for (x0, y0, x1, y1), score in zip(xyxy.tolist(), scores.tolist(), strict=True):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if not (left <= cx <= left + nw and top <= cy <= top + nh):
            continue  # a box centred on the letterbox padding
        x0, x1 = max(x0, left), min(x1, left + nw)
        y0, y1 = max(y0, top), min(y1, top + nh)
        if x1 <= x0 or y1 <= y0:
            continue
        box = [
            ((x0 + x1) / 2 - left) / nw,
            ((y0 + y1) / 2 - top) / nh,
            (x1 - x0) / nw,
            (y1 - y0) / nh,
        ]
        boxes.append((box, float(score)))
        if len(boxes) == max_boxes:
            break
    return boxes


def map_peak(crop: np.ndarray) -> list[float]:
    """``[x, y]`` (normalised) of the cropped map's maximum."""
    height, width = crop.shape
    y, x = np.unravel_index(int(np.argmax(crop)), crop.shape)
    return [round((x + 0.5) / width, DECIMALS), round((y + 0.5) / height, DECIMALS)]


def energy_in_box(crop: np.ndarray, boxes: Sequence[Sequence[float]]) -> float:
    """Share of the map's mass inside the true boxes (NaN without boxes)."""
    from bonefrac.maps.pointing_game import score_image

    if not boxes:
        return math.nan
    return float(score_image(crop, boxes)[ENERGY])


def loc_row(
    prob_map: np.ndarray,
    decoded_size: tuple[int, int],
    true_boxes: Sequence[Sequence[float]],
    threshold: float,
    head: np.ndarray,
    strides: Sequence[int],
) -> dict[str, Any]:
    """One image's localisation cells of the predictions CSV
    (:data:`bonefrac.rundir.predictions.LOC_COLUMNS`): ``prob_map`` its ``(S, S)`` map,
    ``head`` its packed detector output ``(A, 6)``."""
    crop = crop_map(prob_map, decoded_size)
    size = prob_map.shape[-1]
    cuts = [(threshold, MAX_BOXES), (min(threshold, CANDIDATE_FLOOR), MAX_CANDIDATES)]
    pred_boxes, cand_boxes = decode_box_sets(head, decoded_size, size, strides, cuts)
    return loc_cells(
        true_boxes,
        pred_boxes,
        cand_boxes,
        map_peak(crop),
        round(float(crop.max()), 6) if crop.size else math.nan,
        energy_in_box(crop, true_boxes),
    )


def map_peaks(prob_maps: np.ndarray, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Peak probability of each map over its image area."""
    return np.array([float(crop_map(m, s).max()) for m, s in zip(prob_maps, sizes, strict=True)])


def choose_box_threshold(neg_peaks: np.ndarray) -> float:
    """The box threshold from val negatives' map peaks: their ``1 - NEGATIVE_BOX_RATE`` quantile
    (so about 5 % of negatives show a box), kept inside (0.01, 0.99); 0.5 without negatives."""
    peaks = np.asarray(neg_peaks, dtype=float)
    peaks = peaks[np.isfinite(peaks)]
    if len(peaks) == 0:
        return 0.5
    return float(np.clip(np.quantile(peaks, 1 - NEGATIVE_BOX_RATE), 0.01, 0.99))
