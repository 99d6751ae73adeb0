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
#: Weight of the box branch's GIoU loss beside the map's pixel BCE.
BOX_LOSS_WEIGHT = 1.0


def localization_loss(
    map_logits: Tensor, target: Tensor, valid: Tensor, pos_weight: float = LOC_POS_WEIGHT
) -> Tensor:
    """Pixel BCE between the map's logits (channel 0 of ``(B, C, h, w)``) and box-interior
    targets, averaged over the images with ``valid`` = 1 only (0 when none is valid in the
    batch). A head with box channels (``C = 5``) and targets with box corners (channels 1-4 of
    :func:`bonefrac.data.transforms.render_box_targets`) adds torchvision's generalized-IoU loss
    of each marked cell's box, averaged over the marked cells of valid images, each weighted by
    its map target (1 inside a box; the centre-ness of a Gaussian target)."""
    from torchvision.ops import generalized_box_iou_loss

    from bonefrac.models.lochead import cell_boxes

    if target.shape[-2:] != map_logits.shape[-2:]:
        target = F.interpolate(target.float(), size=map_logits.shape[-2:], mode="nearest")
    target = target.to(map_logits.dtype)
    pw = torch.tensor(pos_weight, dtype=map_logits.dtype, device=map_logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(
        map_logits[:, :1], target[:, :1], pos_weight=pw, reduction="none"
    )
    per_image = per_pixel.flatten(1).mean(1)
    weights = valid.to(per_image.dtype)
    loss = (per_image * weights).sum() / weights.sum().clamp_min(1.0)
    if map_logits.shape[1] < 5 or target.shape[1] < 5:
        return loss
    marked = (target[:, 0] > 0) & (weights.view(-1, 1, 1) > 0)
    if not bool(marked.any()):
        return loss + 0.0 * map_logits[:, 1:5].sum()  # keeps the box branch in the graph
    pred = cell_boxes(map_logits).permute(0, 2, 3, 1)[marked]
    true = target[:, 1:5].permute(0, 2, 3, 1)[marked]
    cell_weight = target[:, 0][marked]  # 1 on box targets; centre-ness on Gaussian ones
    per_cell = generalized_box_iou_loss(pred, true, reduction="none")
    box = (per_cell * cell_weight).sum() / cell_weight.sum().clamp_min(1e-6)
    return loss + BOX_LOSS_WEIGHT * box


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
