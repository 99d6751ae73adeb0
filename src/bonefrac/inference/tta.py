"""Test-time augmentations of a letterboxed batch and the spread of a model's logits over them.

The views are small flips, shifts and scales of what the model sees; the standard deviation of
the logit over them is one per-image uncertainty (:mod:`bonefrac.evaluation.refer` decides
on val whether it ranks errors better than the plain margin).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.functional as TF


def _shift(dx: float, dy: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        return TF.affine(x, angle=0.0, translate=[round(dx * s), round(dy * s)], scale=1.0,
                         shear=[0.0], fill=0.0)  # fmt: skip

    return view


def _scale(f: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(x: torch.Tensor) -> torch.Tensor:
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=f, shear=[0.0], fill=0.0)

    return view


#: Test-time augmentations of a letterboxed uint8 ``(B, 1, S, S)`` batch (name, function).
TTA_VIEWS: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("identity", lambda x: x),
    ("hflip", lambda x: torch.flip(x, dims=[3])),
    ("shift_right", _shift(0.06, 0.0)),
    ("shift_left", _shift(-0.06, 0.0)),
    ("shift_down", _shift(0.0, 0.06)),
    ("shift_up", _shift(0.0, -0.06)),
    ("zoom_in", _scale(1.1)),
    ("zoom_out", _scale(0.9)),
)


def tta_batches(batch: torch.Tensor) -> list[torch.Tensor]:
    """Every view of :data:`TTA_VIEWS` of a uint8 ``(B, 1, S, S)`` batch."""
    return [fn(batch) for _, fn in TTA_VIEWS]


def tta_std(logits: np.ndarray) -> np.ndarray:
    """Spread of ``(B, V)`` TTA logits: population std over the views."""
    return np.asarray(logits, dtype=float).std(axis=1)
