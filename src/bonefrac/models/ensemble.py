"""``EnsembleModel``: several trained :class:`FractureClassifier` members as one model.

The logit is the mean of the members' logits (each with its own score fusion) and a localising
ensemble's detector output the mean of theirs, so its map is the mean of their maps in logit
space and its boxes come from that mean map. It is an ``nn.Module`` with the classifier's
surface (``forward``, ``forward_with_map``, ``backbone``/``head`` for the out-of-scope
features, ``loc_head`` for the map's strides), so the Predictor, the learned-map explainer and
the ONNX export take it as they take one model. The features are the members' pooled features
side by side and the head averages each member's head on its own part: ``head(backbone(x))``
is the ensemble's class logit.

Grad-CAM is refused: hooked on one member it would explain that member, not the ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bonefrac.errors import ModelError
from bonefrac.models.classifier import FractureClassifier


class _JoinedBackbone(nn.Module):
    """Each member's pooled features ``(B, F_k)``, concatenated ``(B, sum F_k)``."""

    def __init__(self, members: Sequence[FractureClassifier]) -> None:
        super().__init__()
        object.__setattr__(self, "_members", list(members))  # not sub-modules: no duplicate keys

    def forward(self, x: Tensor) -> Tensor:
        members: list[FractureClassifier] = self._members  # type: ignore[attr-defined]
        return torch.cat([m.backbone(x).flatten(1) for m in members], dim=1)


class _MeanHead(nn.Module):
    """The mean of each member's head on its own slice of the joined features."""

    def __init__(self, members: Sequence[FractureClassifier]) -> None:
        super().__init__()
        object.__setattr__(self, "_members", list(members))

    def forward(self, feats: Tensor) -> Tensor:
        members: list[FractureClassifier] = self._members  # type: ignore[attr-defined]
        sizes = [m.head.in_features for m in members]
        parts = torch.split(feats, sizes, dim=1)
        return torch.stack([m.head(p) for m, p in zip(members, parts, strict=True)]).mean(0)


class EnsembleModel(nn.Module):
    """The members' mean (see the module). Members must share the architecture."""

    def __init__(self, members: Sequence[FractureClassifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ModelError(f"an ensemble needs at least 2 members, got {len(members)}")
        if len({m.localizes for m in members}) != 1:
            raise ModelError("ensemble members must all localise or all not")
        self.members = nn.ModuleList(members)
        object.__setattr__(self, "backbone", _JoinedBackbone(members))
        object.__setattr__(self, "head", _MeanHead(members))

    def _list(self) -> list[FractureClassifier]:
        return list(self.members)  # type: ignore[arg-type]

    @property
    def localizes(self) -> bool:
        return self._list()[0].localizes

    @property
    def loc_head(self) -> nn.Module | None:
        """The first member's detector head: what the map's strides are read from."""
        return self._list()[0].loc_head

    @property
    def cam_layer(self) -> nn.Module:
        raise ModelError(
            "Grad-CAM of an ensemble would explain one member only; an ensemble's heatmap is "
            "its members' mean learned map (ensemble localising runs), or use --method "
            "gradients / smoothgrad"
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self._list()]).mean(0)

    def forward_with_map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean logit (B, 1), mean detector output (B, A, 6))``."""
        if not self.localizes:
            raise RuntimeError("this ensemble has no localisation head (model.localize: false)")
        outs = [m.forward_with_map(x) for m in self._list()]
        logits = torch.stack([o[0] for o in outs]).mean(0)
        packed = torch.stack([o[1] for o in outs]).mean(0)
        return logits, packed
