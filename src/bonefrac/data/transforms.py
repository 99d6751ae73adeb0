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


def train_augment(size: int, level: str = "medium") -> v2.Transform:
    """Augmentations on a uint8 ``(1, C, C)`` tensor, ending at ``(1, size, size)``."""
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
        v2.RandomResizedCrop((size, size), scale=scale, ratio=(0.85, 1.18), antialias=True),
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


#: Map target kinds (``train.loc_target``).
LOC_TARGETS = ("box", "gaussian")
#: A Gaussian target's sigma per axis, as a share of the box's half-size there (the box's edge
#: then gets exp(-2), about 0.14).
GAUSSIAN_SIGMA = 0.5


def render_box_targets(
    boxes: Tensor, size: int, stride: int, regression: bool = False, kind: str = "box"
) -> tuple[Tensor, bool]:
    """Box-interior target map ``(1, size // stride, size // stride)`` for pixel XYXY boxes in
    a ``size x size`` frame: 1 on cells whose centre lies in a box (at least the cell holding the
    box's centre), else 0. Boxes are clipped to the frame; those left under a pixel wide or high
    are dropped. Returns the map and whether any box was drawn.

    With ``regression`` the target has 4 more channels: the XYXY corners, in cells, of the box
    each marked cell belongs to (the smallest one where boxes overlap, as FCOS assigns), 0 on
    unmarked cells.

    ``kind="gaussian"``: the marked cells get ``exp(-d^2 / 2)`` instead of 1, ``d`` the distance
    to the box's centre in units of :data:`GAUSSIAN_SIGMA` times its half-size per axis (1 on
    the centre cell), so the map learns to peak at the box's centre; the box loss weights each
    cell by that value (FCOS weights its box loss by centre-ness the same way)."""
    if kind not in LOC_TARGETS:
        raise ValueError(f"loc target must be one of {LOC_TARGETS}, got {kind!r}")
    cells = max(1, size // stride)
    target = torch.zeros(5 if regression else 1, cells, cells)
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).clamp(0, size)
    b = b[((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)]
    if len(b) == 0:
        return target, False
    step = size / cells
    centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * step
    area = torch.full((cells, cells), float("inf"))
    for x0, y0, x1, y1 in b.tolist():
        cols = (centres >= x0) & (centres <= x1)
        rows = (centres >= y0) & (centres <= y1)
        centre_col = min(cells - 1, int((x0 + x1) / 2 / step))
        centre_row = min(cells - 1, int((y0 + y1) / 2 / step))
        cols[centre_col] = True
        rows[centre_row] = True
        inside = rows[:, None] & cols[None, :]
        value = inside.float()
        if kind == "gaussian":
            sx = max(GAUSSIAN_SIGMA * (x1 - x0) / 2, 1e-3)
            sy = max(GAUSSIAN_SIGMA * (y1 - y0) / 2, 1e-3)
            dx = (centres - (x0 + x1) / 2) / sx
            dy = (centres - (y0 + y1) / 2) / sy
            value = torch.exp(-0.5 * (dy[:, None] ** 2 + dx[None, :] ** 2)) * value
            value[centre_row, centre_col] = 1.0
        target[0] = torch.maximum(target[0], value)
        if regression:
            own = inside & ((x1 - x0) * (y1 - y0) < area)
            area[own] = (x1 - x0) * (y1 - y0)
            for c, v in enumerate((x0, y0, x1, y1), start=1):
                target[c][own] = v / step
    return target, True


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
