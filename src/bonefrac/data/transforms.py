"""Image preparation shared by training, evaluation, prediction and explanation.

One path from file to model input, so every stage sees the same pixels:
``decode (JPEG draft) -> optional CLAHE -> letterbox to a square (uint8) -> [train augment]
-> to_input (float, 3 channels, the model's own mean/std)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def train_augment(size: int, level: str = "medium", randomise: Sequence[str] = ()) -> v2.Transform:
    """Augmentations on a uint8 ``(1, C, C)`` tensor, ending at ``(1, size, size)``; boxes
    passed with it move with it, and the crop keeps them whole (:class:`BoxKeepingResizedCrop`).
    ``randomise``: extra randomisation for an unseen site (:data:`RANDOMISE`)."""
    if level not in AUGMENT_LEVELS:
        raise ValueError(f"augment must be one of {AUGMENT_LEVELS}, got {level!r}")
    unknown = sorted(set(randomise) - set(RANDOMISE))
    if unknown:
        raise ValueError(f"randomise: unknown {unknown}; use any of {RANDOMISE}")
    if level == "none" and not randomise:
        return v2.Resize((size, size), antialias=True)
    scale, degrees, jitter = {
        "none": ((1.0, 1.0), 0, 0.0),
        "light": ((0.85, 1.0), 5, 0.1),
        "medium": ((0.7, 1.0), 10, 0.2),
        "strong": ((0.6, 1.0), 15, 0.3),
    }[level]
    if "geometry" in randomise:
        degrees = max(degrees, GEOMETRY_DEGREES)
    steps: list[v2.Transform] = (
        [v2.Resize((size, size), antialias=True)]
        if level == "none"
        else [
            BoxKeepingResizedCrop((size, size), scale=scale, ratio=(0.85, 1.18), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )
    if degrees:
        steps.append(v2.RandomRotation(degrees))
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter))
    if level == "strong":
        steps += acquisition_variety()
    if "geometry" in randomise:
        steps += geometry_randomisation()
    if "markers" in randomise:
        steps += marker_randomisation()
    if "acquisition" in randomise:
        steps += acquisition_randomisation()
    return v2.Compose(steps)


# --- randomisation for an unseen site (issue 37) ---------------------------------------------

#: ``data.randomise`` choices: ``acquisition`` (intensity window, gamma, contrast, inversion,
#: resolution, JPEG, blur/sharpen, noise), ``geometry`` (larger rotations, quarter turns,
#: vertical flips), ``markers`` (burned-in letters pasted and corners erased, both classes).
RANDOMISE = ("acquisition", "geometry", "markers")
#: rotation range (degrees) with ``geometry``; the recipe's own is 10
GEOMETRY_DEGREES = 30


class _ImageOnly(v2.Transform):
    """A pixel-value transform drawn once per call; boxes pass through untouched."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"skip": True}
        return {"skip": False, **self.draw(flat_inputs)}

    def draw(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _on_image(inpt, lambda img: img if params["skip"] else self.apply(img, params))

    def apply(self, img: Tensor, params: dict[str, Any]) -> Tensor:
        raise NotImplementedError


def _on_image(inpt: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` on an image (plain tensor or ``tv_tensors.Image``); boxes and masks untouched."""
    if isinstance(inpt, (tv_tensors.BoundingBoxes, tv_tensors.Mask)) or not isinstance(
        inpt, Tensor
    ):
        return inpt
    out = fn(inpt.as_subclass(Tensor))
    return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def _uniform(lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand(()))


class RandomPercentileWindow(_ImageOnly):
    """Clip to a random low/high percentile window of the image's own (non-padding) pixels
    and stretch it to 0-255: a site's exposure and look-up table, drawn at random."""

    def __init__(
        self, low: tuple[float, float] = (0.0, 5.0), high: tuple[float, float] = (95.0, 100.0),
        p: float = 0.5,
    ) -> None:  # fmt: skip
        super().__init__(p)
        self.low, self.high = low, high

    def draw(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"low": _uniform(*self.low), "high": _uniform(*self.high)}

    def apply(self, img: Tensor, params: dict[str, Any]) -> Tensor:
        counts = torch.bincount(img.reshape(-1).long(), minlength=256)[1:]  # padding left out
        total = int(counts.sum())
        if total < 16:
            return img
        cum = counts.cumsum(0)
        lo, hi = (
            int(torch.searchsorted(cum, total * q / 100.0)) + 1
            for q in (params["low"], params["high"])
        )
        if hi - lo < 1:
            return img
        out = (img.float() - lo) * (255.0 / (hi - lo))
        return out.clamp(0, 255).round().to(torch.uint8)


class RandomResolution(_ImageOnly):
    """Down-sample by a random factor, then up again: a coarser detector or export."""

    def __init__(self, factor: tuple[float, float] = (1.5, 4.0), p: float = 0.3) -> None:
        super().__init__(p)
        self.factor = factor

    def draw(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"factor": _uniform(*self.factor)}

    def apply(self, img: Tensor, params: dict[str, Any]) -> Tensor:
        h, w = img.shape[-2:]
        small = [max(8, round(h / params["factor"])), max(8, round(w / params["factor"]))]
        down = v2.functional.resize(img, small, antialias=True)
        return v2.functional.resize(down, [h, w], antialias=True)


class RandomNoise(_ImageOnly):
    """Additive Gaussian noise on uint8 pixels (sigma in grey levels), a quantum-noise stand-in."""

    def __init__(self, sigma: tuple[float, float] = (2.0, 10.0), p: float = 0.3) -> None:
        super().__init__(p)
        self.sigma = sigma

    def draw(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"sigma": _uniform(*self.sigma)}

    def apply(self, img: Tensor, params: dict[str, Any]) -> Tensor:
        noisy = img.float() + torch.randn(img.shape) * params["sigma"]
        return noisy.clamp(0, 255).round().to(torch.uint8)


def acquisition_randomisation() -> list[v2.Transform]:
    """What differs between sites' detectors and exports, drawn per image: intensity window,
    gamma, contrast, polarity (MONOCHROME1), resolution, JPEG re-compression, blur or sharpen,
    noise. Pixel values only: the boxes stay where they are."""
    return [
        RandomPercentileWindow(p=0.5),
        RandomGamma((0.5, 2.0), p=0.5),
        v2.RandomAutocontrast(p=0.2),
        v2.RandomEqualize(p=0.1),
        v2.RandomInvert(p=0.2),
        RandomResolution(p=0.3),
        v2.RandomApply([v2.JPEG((20, 90))], p=0.3),
        v2.RandomChoice(
            [v2.GaussianBlur(5, sigma=(0.3, 1.5)), v2.RandomAdjustSharpness(3.0, p=1.0)]
        ),
        RandomNoise(p=0.3),
    ]


def geometry_randomisation() -> list[v2.Transform]:
    """Orientations other sites export: quarter turns and vertical flips (with the recipe's
    rotation widened to :data:`GEOMETRY_DEGREES`); boxes move with the image."""
    quarter_turns = v2.RandomChoice(
        [v2.RandomRotation((90, 90)), v2.RandomRotation((-90, -90)), v2.RandomRotation((180, 180))]
    )
    return [v2.RandomApply([quarter_turns], p=0.3), v2.RandomVerticalFlip(p=0.2)]


#: what burned-in text looks like: laterality letters, view codes, a technician's initials
MARKER_TEXTS = ("L", "R", "LT", "RT", "AP", "PA", "LAT", "OBL", "DX", "SIN", "AB", "12")


class RandomMarkers(v2.Transform):
    """Shortcut removal: burned-in markers put on both classes at random, so neither their
    presence nor their absence tells the classes apart. With probability ``p_paste`` 1-3
    letters (:data:`MARKER_TEXTS`, white or black, 6-16 % of the side, some boxed) are pasted
    and with ``p_erase`` a corner is blacked out (hiding a site's own markers). Nothing is
    drawn over a fracture box passed with the image (tried elsewhere, else left out)."""

    TRIES = 10

    def __init__(self, p_paste: float = 0.5, p_erase: float = 0.3) -> None:
        super().__init__()
        self.p_paste = p_paste
        self.p_erase = p_erase

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        taken = occupied_boxes(flat_inputs)
        side = min(height, width)
        marks: list[dict[str, Any]] = []
        if torch.rand(()) < self.p_paste:
            for _ in range(int(torch.randint(1, 4, ()))):
                size = max(6, round(side * _uniform(0.06, 0.16)))
                text = MARKER_TEXTS[int(torch.randint(len(MARKER_TEXTS), ()))]
                w, h = size * len(text) * 0.7 + 4, size + 4
                place = self._place(taken, width, height, w, h, corner=False)
                if place is not None:
                    marks.append({
                        "kind": "text", "text": text, "size": size, "xy": place,
                        "value": 255 if torch.rand(()) < 0.8 else 0,
                        "framed": bool(torch.rand(()) < 0.3),
                    })  # fmt: skip
        if torch.rand(()) < self.p_erase:
            w, h = round(width * _uniform(0.08, 0.25)), round(height * _uniform(0.08, 0.25))
            place = self._place(taken, width, height, w, h, corner=True)
            if place is not None:
                marks.append({"kind": "erase", "xy": place, "wh": (w, h)})
        return {"marks": marks}

    def _place(
        self, taken: Tensor, width: int, height: int, w: float, h: float, corner: bool
    ) -> tuple[int, int] | None:
        """Top-left of a ``w x h`` patch near the border (or in a corner) clear of ``taken``."""
        if w >= width or h >= height:
            return None
        for _ in range(self.TRIES):
            if corner:
                x = 0 if torch.rand(()) < 0.5 else width - w
                y = 0 if torch.rand(()) < 0.5 else height - h
            else:  # within the outer quarter of the frame, where sites burn their text
                x = _uniform(0, width - w)
                y = _uniform(0, height - h)
                if 0.25 * width < x + w / 2 < 0.75 * width and 0.25 * height < y + h / 2 < (
                    0.75 * height
                ):
                    continue
            patch = torch.tensor([x, y, x + w, y + h])
            clear = (
                (taken[:, 0] >= patch[2])
                | (taken[:, 2] <= patch[0])
                | (taken[:, 1] >= patch[3])
                | (taken[:, 3] <= patch[1])
            )
            if bool(clear.all()):
                return round(x), round(y)
        return None

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        marks = params["marks"]
        return _on_image(inpt, lambda img: draw_marks(img, marks) if marks else img)


def occupied_boxes(flat_inputs: list[Any], margin: float = 2.0) -> Tensor:
    """XYXY ``(N, 4)`` of every box passed with the image, grown by ``margin`` px. Box outlines
    (:func:`box_outlines`: groups of :data:`OUTLINE_POINTS` zero-size boxes) stand for the box
    they enclose."""
    found = []
    for b in flat_inputs:
        if not isinstance(b, tv_tensors.BoundingBoxes):
            continue
        xyxy = (
            v2.functional.convert_bounding_box_format(
                b, new_format=tv_tensors.BoundingBoxFormat.XYXY
            )
            .as_subclass(Tensor)
            .reshape(-1, 4)
            .float()
        )
        points = (xyxy[:, :2] == xyxy[:, 2:]).all()
        if len(xyxy) and points and len(xyxy) % OUTLINE_POINTS == 0:
            xyxy = outline_boxes(xyxy, 1 << 30)
        found.append(xyxy)
    boxes = torch.cat(found) if found else torch.zeros(0, 4)
    return boxes + torch.tensor([-margin, -margin, margin, margin])


def draw_marks(img: Tensor, marks: list[dict[str, Any]]) -> Tensor:
    """uint8 ``(1, H, W)`` with :class:`RandomMarkers`' marks drawn in (a new tensor)."""
    from PIL import ImageDraw, ImageFont

    canvas = Image.fromarray(img[0].numpy().copy())
    draw = ImageDraw.Draw(canvas)
    for mark in marks:
        x, y = mark["xy"]
        if mark["kind"] == "erase":
            w, h = mark["wh"]
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=0)
            continue
        font = ImageFont.load_default(size=mark["size"])
        draw.text((x + 2, y + 2), mark["text"], fill=mark["value"], font=font)
        if mark["framed"]:
            left, top, right, bottom = draw.textbbox((x + 2, y + 2), mark["text"], font=font)
            draw.rectangle([left - 2, top - 2, right + 2, bottom + 2], outline=mark["value"])
    return torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()).unsqueeze(0)


def marker_randomisation() -> list[v2.Transform]:
    return [RandomMarkers()]


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
