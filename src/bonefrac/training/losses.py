"""Binary losses on a single fracture logit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BinaryLoss(nn.Module):
    """BCE-with-logits (optional ``pos_weight``, label smoothing) or focal loss."""

    def __init__(
        self,
        kind: str = "bce",
        pos_weight: float | None = None,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        pw = torch.tensor(float(pos_weight)) if pos_weight is not None else None
        self.register_buffer("pos_weight", pw, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.to(logits.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        bce = F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=self.pos_weight, reduction="none"
        )
        if self.kind == "focal":
            p = torch.sigmoid(logits)
            p_t = p * target + (1 - p) * (1 - target)
            bce = bce * (1 - p_t).pow(self.focal_gamma)
        return bce.mean()


#: Pixel BCE weight of a box-interior cell (boxes cover a few % of the map; the probe's value).
LOC_POS_WEIGHT = 20.0


def localization_loss(
    map_logits: Tensor, target: Tensor, valid: Tensor, pos_weight: float = LOC_POS_WEIGHT
) -> Tensor:
    """Pixel BCE between the map's logits ``(B, 1, h, w)`` and box-interior targets, averaged
    over the images with ``valid`` = 1 only (0 when none is valid in the batch)."""
    if target.shape[-2:] != map_logits.shape[-2:]:
        target = F.interpolate(target.float(), size=map_logits.shape[-2:], mode="nearest")
    target = target.to(map_logits.dtype)
    pw = torch.tensor(pos_weight, dtype=map_logits.dtype, device=map_logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(
        map_logits, target, pos_weight=pw, reduction="none"
    )
    per_image = per_pixel.flatten(1).mean(1)
    weights = valid.to(per_image.dtype)
    return (per_image * weights).sum() / weights.sum().clamp_min(1.0)


def resolve_pos_weight(setting: str | float, labels) -> float | None:  # noqa: ANN001
    """``auto`` -> negatives / positives in the training labels; ``none`` -> None."""
    if setting == "none":
        return None
    if setting == "auto":
        labels = torch.as_tensor(labels)
        pos = int(labels.sum())
        neg = int(len(labels) - pos)
        if pos == 0:
            return None
        return neg / pos
    return float(setting)
