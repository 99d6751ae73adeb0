"""The localisation head: multi-scale backbone features merged (FPN) into a one-channel map.

The head takes the backbone's feature maps at strides 8, 16 (and 32 where there is one), merges
them top-down with torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` and turns the
finest level (stride :data:`MAP_STRIDE`) into one logit per cell: "this cell lies inside a
fracture box". The map's logits are ``(B, 1, S / 8, S / 8)`` for an ``S x S`` input.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

#: Pixels of input per cell of the localisation map.
MAP_STRIDE = 8
#: Feature strides the head merges (those the backbone has).
HEAD_STRIDES = (8, 16, 32)


class LocalizationHead(nn.Module):
    """FPN over ``in_channels`` (finest first) -> 3x3 conv -> 1x1 conv to one map channel."""

    def __init__(self, in_channels: list[int], width: int = 64) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.fpn = FeaturePyramidNetwork(list(in_channels), width)
        self.out = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )
        # start near "no fracture anywhere" (about 1% per cell) so the first steps are calm
        nn.init.constant_(self.out[-1].bias, -4.6)

    def forward(self, features: list[Tensor]) -> Tensor:
        merged = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
        return self.out(next(iter(merged.values())))
