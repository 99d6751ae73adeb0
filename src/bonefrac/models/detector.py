"""The fracture detector: an FCOS head (torchvision's detection parts) over an FPN of the
backbone's multi-scale features.

* :class:`~torchvision.ops.FeaturePyramidNetwork` merges the backbone's feature maps at the
  strides ``model.loc_levels`` (finest first, e.g. 8, 16, 32);
* :class:`~torchvision.models.detection.fcos.FCOSHead` reads every level: per location a
  fracture logit (focal loss), four box distances (GIoU loss) and a centre-ness logit;
* training targets come from :meth:`torchvision.models.detection.FCOS.compute_loss` (centre
  sampling, one scale range per level, the smallest box wins), called on this module, which
  carries the attributes that method reads (``head``, ``center_sampling_radius``).

The packed output ``(B, A, 6)``: for each of the ``A`` locations (levels finest first, rows
then columns) ``[fracture logit, centre-ness logit, l, t, r, b]``, the distances in units of
the level's stride (FCOS's :class:`BoxLinearCoder` with ``normalize_by_size``). The map
(:func:`score_map`), the boxes (:mod:`bonefrac.inference.box_decoding`) and the score fusion all
read this one output.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: FPN and head width; GroupNorm in FCOS's head uses 32 groups, so a multiple of 32.
WIDTH = 64
#: Convolutions per branch (FCOS uses 4 at width 256; 2 at 64 keeps the CPU path cheap).
NUM_CONVS = 2
#: FCOS's centre-sampling radius, in strides.
CENTER_SAMPLING_RADIUS = 1.5


def level_sizes(size: int, strides: Sequence[int]) -> list[int]:
    """Side of each level's square feature map for a ``size x size`` input."""
    return [math.ceil(size / s) for s in strides]


def level_anchors(size: int, strides: Sequence[int], device: torch.device | None = None) -> Tensor:
    """FCOS's anchors (cached per size, strides and device; do not modify the result)."""
    with torch.inference_mode(False):  # a normal tensor: training may reuse the cached one
        return _level_anchors(int(size), tuple(int(s) for s in strides), str(device or "cpu"))


@functools.lru_cache(maxsize=16)
def _level_anchors(size: int, strides: tuple[int, ...], device_name: str) -> Tensor:
    """FCOS's anchors ``(A, 4)`` XYXY in input pixels, levels finest first: one square anchor
    of the level's stride per location, from torchvision's :class:`AnchorGenerator`.

    Adapted: torchvision puts a location's anchor centre at ``j * stride`` (the cell's corner);
    here it is moved to the cell's centre ``(j + 0.5) * stride``, where the map draws that
    location, so a map peak and the box regressed from it describe the same point."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    device = torch.device(device_name)
    generator = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    image = torch.zeros(1, 1, size, size, device=device)
    feats = [torch.zeros(1, 1, n, n, device=device) for n in level_sizes(size, strides)]
    anchors = generator(ImageList(image, [(size, size)]), feats)[0]
    shift = torch.cat(
        [
            torch.full((n * n,), s / 2, device=device)
            for s, n in zip(strides, level_sizes(size, strides), strict=True)
        ]
    )
    return anchors + shift[:, None]


def box_coder():  # noqa: ANN201
    """FCOS's box coder: distances in units of the anchor's size (its stride)."""
    from torchvision.models.detection._utils import BoxLinearCoder

    return BoxLinearCoder(normalize_by_size=True)


class FractureDetector(nn.Module):
    """FPN over ``in_channels`` (finest first, at ``strides``) -> FCOS head -> packed output.

    ``in_channels`` may stop one level short of ``strides``: the coarsest level is then the
    FPN's own extra level (torchvision's ``LastLevelMaxPool``, a stride-2 max pool of the
    coarsest merged map), for backbones whose features end a stride early (simple_cnn: 16)."""

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        from torchvision.models.detection.fcos import FCOSHead
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        extra = len(strides) - len(in_channels)
        if len(in_channels) < 1 or extra not in (0, 1):
            raise ValueError("one input channel count per stride (or per stride but the last)")
        self.strides = tuple(int(s) for s in strides)
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), WIDTH, extra_blocks=LastLevelMaxPool() if extra else None
        )
        self.head = FCOSHead(WIDTH, num_anchors=1, num_classes=1, num_convs=NUM_CONVS)
        # read by torchvision's FCOS.compute_loss, which runs on this module (see module doc)
        self.center_sampling_radius = CENTER_SAMPLING_RADIUS

    def head_outputs(self, features: list[Tensor]) -> dict[str, Tensor]:
        """FCOS's head outputs (``cls_logits``, ``bbox_regression``, ``bbox_ctrness``)."""
        merged = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
        return self.head(merged)

    def forward(self, features: list[Tensor]) -> Tensor:
        out = self.head_outputs(features)
        return pack(out)

    def loss(self, features: list[Tensor], boxes: list[Tensor], size: int) -> dict[str, Tensor]:
        """FCOS's three losses for images whose true boxes (XYXY input pixels, possibly none:
        a negative teaches "no box") are ``boxes``."""
        from torchvision.models.detection.fcos import FCOS

        out = {k: v.float() for k, v in self.head_outputs(features).items()}
        anchors = level_anchors(size, self.strides, out["cls_logits"].device)
        n_per_level = [n * n for n in level_sizes(size, self.strides)]
        targets = [
            {"boxes": b.float(), "labels": torch.zeros(len(b), dtype=torch.int64, device=b.device)}
            for b in boxes
        ]
        return FCOS.compute_loss(self, targets, out, [anchors] * len(boxes), n_per_level)  # type: ignore[arg-type]


def pack(out: dict[str, Tensor]) -> Tensor:
    """FCOS head outputs -> ``(B, A, 6)``: fracture logit, centre-ness logit, 4 distances."""
    return torch.cat([out["cls_logits"], out["bbox_ctrness"], out["bbox_regression"]], dim=2)


def location_scores(packed: Tensor) -> Tensor:
    """FCOS's detection score per location, ``sqrt(sigmoid(cls) * sigmoid(centre-ness))``,
    ``(B, A)`` (the score its post-processing ranks boxes by)."""
    p = packed.float()
    return torch.sqrt(torch.sigmoid(p[..., 0]) * torch.sigmoid(p[..., 1]))


def score_map(packed: Tensor, size: int, strides: Sequence[int]) -> Tensor:
    """The map ``(B, 1, h, w)`` at the finest stride: the logit of each location's detection
    score, highest over the levels (a coarse location covers its finer cells)."""
    scores = location_scores(packed)
    sizes = level_sizes(size, strides)
    finest = sizes[0]
    merged = None
    start = 0
    for n in sizes:
        level = scores[:, start : start + n * n].reshape(-1, 1, n, n)
        start += n * n
        if n != finest:
            level = torch.repeat_interleave(
                torch.repeat_interleave(level, finest // n, 2), finest // n, 3
            )
            level = level[..., :finest, :finest]
        merged = level if merged is None else torch.maximum(merged, level)
    assert merged is not None
    p = merged.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def map_peak_logit(packed: Tensor) -> Tensor:
    """The highest detection-score logit of each image, ``(B, 1)``: its most fracture-like
    location (equal to the peak of :func:`score_map`)."""
    p = location_scores(packed).amax(dim=1, keepdim=True).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def map_peak_logits(head: Any) -> np.ndarray:
    """:func:`map_peak_logit` of a split's head outputs as an array (``(B,)``, float32): the
    values the model's forward fuses into its image logit."""
    return map_peak_logit(torch.as_tensor(np.asarray(head, dtype=np.float32)))[:, 0].numpy()
