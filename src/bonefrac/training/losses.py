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
