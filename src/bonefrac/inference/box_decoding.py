"""A localising model's map -> scored boxes, the map's peak and its energy in the true boxes.

Everything is returned normalised to the ORIGINAL image (the manifest's convention): the
square letterboxed probability map ``(S, S)`` is cropped to the image area through
:func:`bonefrac.data.transforms.heatmap_to_original` (at the letterbox's own resolution),
then:

* boxes, from the head's box channels (:mod:`bonefrac.models.lochead`): every local maximum
  of the map (3 x 3 cells) inside the image area whose probability reaches the run's
  ``box_threshold`` gives the box its cell regressed, scored by that probability; overlapping
  ones are dropped by ``torchvision.ops.nms``; the best :data:`MAX_BOXES` are reported as
  ``[cx, cy, w, h, score]``. ``cand_boxes``: the same decoding down to
  :data:`CANDIDATE_FLOOR` (at most :data:`MAX_CANDIDATES`), the ranked list AP50 and FROC are
  computed from.
* the peak: ``[x, y]`` of the map's maximum (the pixel centre), and ``map_max``, its
  probability (a second image-level score beside the fracture logit).
* energy in box: the map's mass inside the true boxes, by
  :func:`bonefrac.maps.pointing_game.score_image`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bonefrac.data.transforms import letterbox_geometry
from bonefrac.rundir.predictions import loc_cells

#: At most this many boxes per image.
MAX_BOXES = 5
#: Candidate boxes (the ranked list AP and FROC are computed from) go down to this score ...
CANDIDATE_FLOOR = 0.05
#: ... at most this many per image.
MAX_CANDIDATES = 10
#: Boxes overlapping a better one by more than this IoU are dropped.
NMS_IOU = 0.5
#: Share of val negatives allowed to show a box: the box threshold is their map peaks' quantile.
NEGATIVE_BOX_RATE = 0.05
DECIMALS = 4


def crop_map(prob_map: np.ndarray, decoded_size: tuple[int, int]) -> np.ndarray:
    """The letterboxed ``(S, S)`` map cut to the image area: ``(nh, nw)`` at letterbox scale."""
    from bonefrac.data.transforms import heatmap_to_original

    size = prob_map.shape[-1]
    _, _, _, nw, nh = letterbox_geometry(*decoded_size, size)
    return heatmap_to_original(prob_map, (nw, nh), decoded_size)


def decode_regressed_boxes(
    raw: np.ndarray,
    decoded_size: tuple[int, int],
    size: int,
    threshold: float,
    max_boxes: int = MAX_BOXES,
) -> list[list[float]]:
    """Scored boxes ``[cx, cy, w, h, score]`` (normalised to the original image) from one
    image's head output ``(5, h, w)``: map logits and per-cell box log distances (in cells)
    of its ``size x size`` letterbox."""
    from torchvision.ops import nms

    from bonefrac.models.lochead import cell_boxes

    out = torch.as_tensor(np.asarray(raw, dtype=np.float32))[None]
    prob = torch.sigmoid(out[0, 0])
    cells_h, cells_w = prob.shape
    step = size / cells_w
    _, left, top, nw, nh = letterbox_geometry(*decoded_size, size)
    xs = (torch.arange(cells_w) + 0.5) * step
    ys = (torch.arange(cells_h) + 0.5) * step
    inside = ((ys >= top) & (ys <= top + nh))[:, None] & ((xs >= left) & (xs <= left + nw))[None]
    peaks = F.max_pool2d(prob[None, None], 3, stride=1, padding=1)[0, 0] == prob
    keep = peaks & inside & (prob >= threshold) & torch.isfinite(prob)
    if not bool(keep.any()):
        return []
    scores = prob[keep]
    xyxy = cell_boxes(out)[0].permute(1, 2, 0)[keep] * step  # letterbox pixels
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(left, left + nw)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(top, top + nh)
    finite = torch.isfinite(xyxy).all(1) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy, scores = xyxy[finite], scores[finite]
    boxes = []
    for i in nms(xyxy, scores, NMS_IOU)[:max_boxes].tolist():
        x0, y0, x1, y1 = xyxy[i].tolist()
        box = [
            ((x0 + x1) / 2 - left) / nw,
            ((y0 + y1) / 2 - top) / nh,
            (x1 - x0) / nw,
            (y1 - y0) / nh,
        ]
        boxes.append([round(v, DECIMALS) for v in (*box, float(scores[i]))])
    return boxes


def predicted_boxes(
    prob_map: np.ndarray,
    decoded_size: tuple[int, int],
    threshold: float,
    raw: np.ndarray,
    max_boxes: int = MAX_BOXES,
) -> list[list[float]]:
    """One image's scored boxes from the head's box channels (``raw``: its ``(5, h, w)``
    output; ``prob_map``: its upsampled map, whose side is the letterbox's)."""
    return decode_regressed_boxes(raw, decoded_size, prob_map.shape[-1], threshold, max_boxes)


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
    return float(score_image(crop, boxes)["energy_in_box"])


def loc_row(
    prob_map: np.ndarray,
    decoded_size: tuple[int, int],
    true_boxes: Sequence[Sequence[float]],
    threshold: float,
    raw: np.ndarray,
) -> dict[str, Any]:
    """One image's localisation cells of the predictions CSV
    (:data:`bonefrac.rundir.predictions.LOC_COLUMNS`); ``raw``: the head's ``(5, h, w)``
    output, whose box channels give the boxes."""
    crop = crop_map(prob_map, decoded_size)
    return loc_cells(
        true_boxes,
        predicted_boxes(prob_map, decoded_size, threshold, raw),
        predicted_boxes(
            prob_map, decoded_size, min(threshold, CANDIDATE_FLOOR), raw, MAX_CANDIDATES
        ),
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


def row_boxes(value: Any) -> list[list[float]]:
    """A manifest ``boxes`` cell -> clean ``[cx, cy, w, h]`` boxes (bad ones dropped)."""
    from bonefrac.data.boxes import clean_boxes
    from bonefrac.data.schema import parse_boxes

    try:
        kept, _ = clean_boxes(parse_boxes(value))
    except (ValueError, TypeError):
        return []
    return [b[:4] for b in kept]
