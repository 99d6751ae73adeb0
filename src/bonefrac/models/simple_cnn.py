"""The baseline: a few conv-BN-ReLU-pool blocks and a global pool. The performance floor."""

from __future__ import annotations

from torch import Tensor, nn


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """Feature extractor: ``len(widths)`` blocks, each halving resolution; outputs pooled features."""

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        chans = (in_chans, *widths)
        self.stages = nn.ModuleList(
            _block(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.pool(x).flatten(1)

    def forward_intermediates(self, x: Tensor, indices: list[int]) -> tuple[Tensor, list[Tensor]]:
        """Pooled features and the outputs of the stages in ``indices`` (stage i: stride 2^(i+1))."""
        kept: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in indices:
                kept.append(x)
        return self.pool(x).flatten(1), kept
