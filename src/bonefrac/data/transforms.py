"""Image preparation shared by training, evaluation, prediction and explanation.

One path from file to model input, so every stage sees the same pixels:
``decode (JPEG draft) -> optional CLAHE -> letterbox to a square (uint8) -> [train augment]
-> to_input (float, 3 channels, the model's own mean/std)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from bonefrac.data.imageio import load_grayscale


def apply_clahe(arr: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a uint8 greyscale array."""
    import cv2

    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(arr)


def letterbox(img: Image.Image, size: int) -> np.ndarray:
    """Resize so the long side is ``size`` (aspect kept), pad with black to ``size x size``."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(resized, dtype=np.uint8)
    return out


def letterbox_geometry(width: int, height: int, size: int) -> tuple[float, int, int, int, int]:
    """(scale, left, top, new_w, new_h) of :func:`letterbox` for an image of this size."""
    scale = size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, (size - nw) // 2, (size - nh) // 2, nw, nh


def heatmap_to_original(
    heat: np.ndarray,
    original_size: tuple[int, int],
    letterboxed_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Square letterboxed heatmap ``(S, S)`` -> ``(H, W)`` of the original ``(W, H)`` image.

    ``letterboxed_size``: the ``(W, H)`` that was letterboxed (e.g. a JPEG-draft decode),
    when it differs from ``original_size``; it sets where the padding is cut off.
    """
    import cv2

    width, height = original_size
    size = heat.shape[-1]
    if heat.shape != (size, size):
        raise ValueError(f"expected a square heatmap, got shape {heat.shape}")
    _, left, top, nw, nh = letterbox_geometry(*(letterboxed_size or original_size), size)
    crop = np.ascontiguousarray(heat[top : top + nh, left : left + nw], dtype=np.float32)
    return cv2.resize(crop, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def prepare_image(img: Image.Image, size: int, *, clahe: bool = False) -> np.ndarray:
    """Greyscale PIL image -> letterboxed uint8 ``(size, size)`` array."""
    if clahe:
        img = Image.fromarray(apply_clahe(np.asarray(img, dtype=np.uint8)))
    return letterbox(img, size)


def load_prepared(
    source: str | Path | bytes, size: int, *, clahe: bool = False, name: str | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``source`` (JPEG draft at ``size``) and prepare it; also return the original size."""
    img = load_grayscale(source, draft_size=size, name=name)
    original = _original_size(source, img)
    return prepare_image(img, size, clahe=clahe), original


def _original_size(source: str | Path | bytes, decoded: Image.Image) -> tuple[int, int]:
    """Width/height before JPEG draft reduction."""
    if isinstance(source, bytes):
        import io

        try:
            with Image.open(io.BytesIO(source)) as im:
                return im.size
        except Exception:  # noqa: BLE001 - DICOM etc.
            return decoded.size
    try:
        with Image.open(source) as im:
            return im.size
    except Exception:  # noqa: BLE001
        return decoded.size


AUGMENT_LEVELS = ("none", "light", "medium", "strong")


class RandomGamma(v2.Transform):
    """Gamma curve with exponent drawn uniformly from ``gamma`` (exposure/detector variety).

    A v2 transform, so boxes passed along with the image go through untouched.
    """

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), p: float = 0.5) -> None:
        super().__init__()
        self.gamma = gamma
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"gamma": None}
        lo, hi = self.gamma
        return {"gamma": float(lo + (hi - lo) * torch.rand(()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["gamma"] is None or isinstance(inpt, tv_tensors.BoundingBoxes):
            return inpt
        return v2.functional.adjust_gamma(inpt, params["gamma"])


def acquisition_variety() -> list[v2.Transform]:
    """What differs between hospitals and exports: polarity, gamma, blur, quarter turns and
    burned-in markers (small saturated patches standing in for L/R letters and rulers)."""
    quarter_turns = v2.RandomChoice(
        [v2.RandomRotation((90, 90)), v2.RandomRotation((-90, -90)), v2.RandomRotation((180, 180))]
    )
    return [
        v2.RandomApply([quarter_turns], p=0.2),
        v2.RandomInvert(p=0.15),
        v2.RandomAutocontrast(p=0.2),
        RandomGamma((0.6, 1.6), p=0.5),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        v2.RandomErasing(p=0.3, scale=(0.002, 0.015), ratio=(0.3, 3.3), value=255),
    ]


class BoxKeepingResizedCrop(v2.RandomResizedCrop):
    """``RandomResizedCrop`` whose window keeps every box passed with the image whole.

    The window's size is drawn as ``RandomResizedCrop`` draws it (the scale jitter); its place
    is drawn uniformly among the places where it holds the union of the boxes (each box travels
    as its outline points, :func:`box_outlines`). A crop that cut a thin fracture box would
    train the detector on a truncated box, or on none. When no drawn size can hold the union
    (boxes spread over the image), the whole image is kept. Without boxes (negatives, images
    whose boxes are unknown, classification-only runs) it is ``RandomResizedCrop``."""

    #: window sizes drawn before the whole image is kept
    TRIES = 10

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = [
            b.as_subclass(Tensor).reshape(-1, 4)
            for b in flat_inputs
            if isinstance(b, tv_tensors.BoundingBoxes)
        ]
        union = torch.cat(boxes) if boxes else torch.zeros(0, 4)
        if len(union) == 0:
            return super().make_params(flat_inputs)
        height, width = v2.query_size(flat_inputs)
        x0, y0 = union[:, :2].amin(0).floor().clamp(min=0).tolist()
        x1, y1 = union[:, 2:].amax(0).ceil().tolist()
        x1, y1 = min(x1, width), min(y1, height)
        for _ in range(self.TRIES):
            p = super().make_params(flat_inputs)
            h, w = p["height"], p["width"]
            top_lo, top_hi = max(0, int(y1) - h), min(int(y0), height - h)
            left_lo, left_hi = max(0, int(x1) - w), min(int(x0), width - w)
            if top_lo <= top_hi and left_lo <= left_hi:
                top = int(torch.randint(top_lo, top_hi + 1, ()).item())
                left = int(torch.randint(left_lo, left_hi + 1, ()).item())
                return {"top": top, "left": left, "height": h, "width": w}
        return {"top": 0, "left": 0, "height": height, "width": width}


def train_augment(size: int, level: str = "medium") -> v2.Transform:
    """Augmentations on a uint8 ``(1, C, C)`` tensor, ending at ``(1, size, size)``; boxes
    passed with it move with it, and the crop keeps them whole (:class:`BoxKeepingResizedCrop`)."""
    if level not in AUGMENT_LEVELS:
        raise ValueError(f"augment must be one of {AUGMENT_LEVELS}, got {level!r}")
    if level == "none":
        return v2.Resize((size, size), antialias=True)
    scale, degrees, jitter = {
        "light": ((0.85, 1.0), 5, 0.1),
        "medium": ((0.7, 1.0), 10, 0.2),
        "strong": ((0.6, 1.0), 15, 0.3),
    }[level]
    steps: list[v2.Transform] = [
        BoxKeepingResizedCrop((size, size), scale=scale, ratio=(0.85, 1.18), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(degrees),
        v2.ColorJitter(brightness=jitter, contrast=jitter),
    ]
    if level == "strong":
        steps += acquisition_variety()
    return v2.Compose(steps)


def boxes_to_letterbox(
    boxes: Sequence[Sequence[float]], original_size: tuple[int, int], size: int
) -> tv_tensors.BoundingBoxes:
    """Normalised ``[cx, cy, w, h]`` boxes of a ``(W, H)`` image -> pixel XYXY boxes in its
    ``size x size`` letterbox, as ``BoundingBoxes`` that v2 transforms move with the image."""
    scale, left, top, nw, nh = letterbox_geometry(*original_size, size)
    rows = [
        [
            left + (cx - w / 2) * nw,
            top + (cy - h / 2) * nh,
            left + (cx + w / 2) * nw,
            top + (cy + h / 2) * nh,
        ]
        for cx, cy, w, h in (b[:4] for b in boxes)
    ]
    data = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    return tv_tensors.BoundingBoxes(data, format="XYXY", canvas_size=(size, size))


#: Points on each box's inscribed ellipse that carry it through the augmentations (a multiple
#: of 4, so the ellipse's extremes, hence the untransformed box, are among them).
OUTLINE_POINTS = 32


def box_outlines(boxes: tv_tensors.BoundingBoxes) -> tv_tensors.BoundingBoxes:
    """XYXY boxes -> :data:`OUTLINE_POINTS` points per box on the ellipse inscribed in it, each
    a zero-size box (so v2 transforms move them exactly as they move box corners; torchvision's
    ``KeyPoints`` flip one pixel off from its boxes).

    A rotation moves a box's corners outside the fracture it marked, so the rotated corners'
    enclosing box (what v2 does to ``BoundingBoxes``) is ``h cos a + w sin a`` high: 10 degrees
    make a 2:1 box 1.33 times as high. Trained on such targets the head learned boxes 5-20 %
    too large (BENCHMARKS.md). The rotated ellipse's enclosing box, ``sqrt(w^2 cos^2 a + h^2
    sin^2 a)`` wide, is the usual tighter estimate; crops, flips and resizes (no rotation) give
    back the exact box (:func:`outline_boxes`)."""
    xyxy = boxes.as_subclass(Tensor).reshape(-1, 4).float()
    angles = torch.arange(OUTLINE_POINTS, dtype=torch.float32) * (2 * torch.pi / OUTLINE_POINTS)
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    half = (xyxy[:, 2:] - xyxy[:, :2]) / 2
    unit = torch.stack([angles.cos(), angles.sin()], dim=1)
    points = (centre[:, None, :] + half[:, None, :] * unit[None]).reshape(-1, 2)
    return tv_tensors.BoundingBoxes(
        torch.cat([points, points], dim=1), format="XYXY", canvas_size=tuple(boxes.canvas_size)
    )


def outline_boxes(points: Tensor, size: int) -> Tensor:
    """Transformed outline points (:func:`box_outlines`) -> their boxes' XYXY ``(N, 4)``
    (each the enclosing box of its points), clipped to the ``size x size`` frame."""
    pts = points.as_subclass(Tensor).reshape(-1, OUTLINE_POINTS, 4)[..., :2]
    xyxy = torch.cat([pts.amin(dim=1), pts.amax(dim=1)], dim=1)
    return xyxy.clamp(0, size)


#: True boxes kept per training image (FracAtlas has up to 6); the largest are kept beyond it.
MAX_TARGET_BOXES = 32
#: A box thinner than this (input pixels) after letterbox and augmentation grows to it about its
#: centre, so a sliver at the image's edge stays a valid target (FCOS needs x1 > x0). A
#: localising run passes its finest stride plus a margin instead (:func:`min_box_px`).
MIN_BOX_PX = 2.0


def min_box_px(finest_stride: int) -> float:
    """The thinnest target box for a detector whose finest level has ``finest_stride``.

    FCOS makes a location positive only when its point lies inside the box, and points sit one
    stride apart: a box thinner than the stride may hold none and would never be learned (a
    2-px-high line at stride 8 holds one in 4 times). So thinner boxes grow to just over one
    stride about their centre; boxes that size are rare on radiographs (FracAtlas boxes are
    about 6 % of the image, 23 px at 384 px), and their centre, hence the map's peak, stays put.
    """
    return float(finest_stride) + 0.5


def box_targets(boxes: Tensor, size: int, min_px: float = MIN_BOX_PX) -> tuple[Tensor, int]:
    """Pixel XYXY boxes in a ``size x size`` frame -> ``(MAX_TARGET_BOXES, 4)`` padded with zero
    rows (what the detector's loss reads, see :func:`target_boxes`) and how many are real.
    Boxes are clipped to the frame; one with no area left inside it is dropped; one thinner
    than ``min_px`` grows to that, staying inside the frame."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    b = b[torch.isfinite(b).all(1)].clamp(0, size)
    b = b[((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)]
    if len(b) > MAX_TARGET_BOXES:
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        b = b[area.argsort(descending=True)[:MAX_TARGET_BOXES]]
    for lo, hi in ((0, 2), (1, 3)):
        centre = ((b[:, lo] + b[:, hi]) / 2).clamp(min_px / 2, size - min_px / 2)
        thin = (b[:, hi] - b[:, lo]) < min_px
        b[thin, lo] = centre[thin] - min_px / 2
        b[thin, hi] = centre[thin] + min_px / 2
    out = torch.zeros(MAX_TARGET_BOXES, 4)
    out[: len(b)] = b
    return out, len(b)


def target_boxes(padded: Tensor) -> list[Tensor]:
    """A batch of :func:`box_targets` ``(B, K, 4)`` -> each image's real boxes ``(n, 4)``."""
    return [p[(p[:, 2] > p[:, 0]) & (p[:, 3] > p[:, 1])] for p in padded]


def to_input(
    batch: Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
) -> Tensor:
    """uint8 ``(B, 1, H, W)`` -> float ``(B, 3, H, W)`` normalised with the model's mean/std."""
    x = batch.float().div_(255.0)
    x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
