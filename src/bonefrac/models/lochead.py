"""The localisation head: multi-scale backbone features merged (FPN) into a dense fracture map
and, per cell, the fracture box that cell belongs to.

The head takes the backbone's feature maps at the map's stride (8 by default, or 4) and the
coarser ones up to 32, merges them top-down with torchvision's
:class:`~torchvision.ops.FeaturePyramidNetwork` and reads the finest level with two small
branches, as FCOS does:

* channel 0, the map: one logit per cell, "this cell lies inside a fracture box";
* channels 1-4, the box: ``log`` of the distances from the cell's centre to
  the left, top, right and bottom edges of its box, in cells. A box is read off wherever the map
  peaks, so its size comes from the image rather than from the map's blob (whose thresholded
  outline never matched the radiologists' boxes: AP50 stayed near 0).

Output ``(B, 1 + 4, S / stride, S / stride)`` for an ``S x S`` input.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

#: Pixels of input per cell of the localisation map, by default (``model.loc_stride``: 8 or 4).
MAP_STRIDE = 8
#: Feature strides the head may merge (those at or above the map's stride that the backbone has).
HEAD_STRIDES = (4, 8, 16, 32)
#: Box channels after the map channel: log distances (in cells) to the left, top, right, bottom.
BOX_CHANNELS = 4
#: Initial half-size of a regressed box, in cells (about a fracture box at 384 px).
INITIAL_HALF_SIZE = 3.0


def _branch(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, out, 1)
    )


class LocalizationHead(nn.Module):
    """FPN over ``in_channels`` (finest first) -> a map branch and a box branch."""

    def __init__(self, in_channels: list[int], width: int = 64) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.fpn = FeaturePyramidNetwork(list(in_channels), width)
        self.out = _branch(width, 1)
        # start near "no fracture anywhere" (about 1% per cell) so the first steps are calm
        nn.init.constant_(self.out[-1].bias, -4.6)
        self.box = _branch(width, BOX_CHANNELS)
        nn.init.normal_(self.box[-1].weight, std=0.01)
        nn.init.constant_(self.box[-1].bias, math.log(INITIAL_HALF_SIZE))

    def forward(self, features: list[Tensor]) -> Tensor:
        merged = next(
            iter(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
        )
        heat = self.out(merged)
        # log distances clamped so exp() stays finite in half precision
        return torch.cat([heat, self.box(merged).clamp(-4.0, 6.0)], dim=1)


def cell_boxes(map_out: Tensor) -> Tensor:
    """The boxes ``(B, 4, h, w)`` (XYXY, in cells) that a head's box channels 1-4 (log distances
    from each cell's centre to the left, top, right and bottom edges) describe."""
    h, w = map_out.shape[-2:]
    ys = torch.arange(h, device=map_out.device, dtype=map_out.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=map_out.device, dtype=map_out.dtype).view(1, 1, w) + 0.5
    dist = map_out[:, 1:5].exp()
    return torch.stack([xs - dist[:, 0], ys - dist[:, 1], xs + dist[:, 2], ys + dist[:, 3]], dim=1)
