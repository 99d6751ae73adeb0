"""Image preparation shared by training, evaluation, prediction and explanation.

One path from file to model input, so every stage sees the same pixels:
``decode (JPEG draft) -> optional CLAHE -> letterbox to a square (uint8) -> [train augment]
-> to_input (float, 3 channels, the model's own mean/std)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
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


class RandomGamma(torch.nn.Module):
    """Gamma curve with exponent drawn uniformly from ``gamma`` (exposure/detector variety)."""

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), p: float = 0.5) -> None:
        super().__init__()
        self.gamma = gamma
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if torch.rand(()) >= self.p:
            return x
        lo, hi = self.gamma
        g = float(lo + (hi - lo) * torch.rand(()))
        return v2.functional.adjust_gamma(x, g)


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
