"""``FractureClassifier``: a backbone producing pooled features plus a one-logit head."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bonefrac.models.detector import map_peak_logit

#: ``(backbone, x) -> (pooled features (B, F), feature maps finest first)``: one backbone pass.
Intermediates = Callable[[nn.Module, Tensor], tuple[Tensor, list[Tensor]]]


class FractureClassifier(nn.Module):
    """Backbone -> dropout -> Linear(num_features, 1). Output shape ``(B, 1)``: the fracture logit.

    ``stages`` lists the backbone's stages in depth order (for partial freezing) and
    ``cam_layer`` is the layer Grad-CAM hooks. Frozen parts keep BatchNorm in eval mode.
    With a ``loc_head`` (a :class:`~bonefrac.models.detector.FractureDetector`, and the
    ``intermediates`` function that feeds it) the model also detects fractures:
    :meth:`forward_with_map` returns the logit and the detector's packed output from one
    backbone pass; :meth:`forward` still returns the logit alone.

    ``score_fusion`` ``(a, b, c)``, set after training (fitted on val, stored in model.json):
    the image's logit becomes ``a * class logit + b * the detector's highest score logit + c`` in
    :meth:`forward` and :meth:`forward_with_map` alike, so every consumer (predict, serve,
    Grad-CAM, ONNX export) scores with it. None (the default, and while training): the class
    logit alone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        stages: list[nn.Module],
        cam_layer: nn.Module,
        dropout: float = 0.2,
        loc_head: nn.Module | None = None,
        intermediates: Intermediates | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, 1)
        self.loc_head = loc_head
        object.__setattr__(self, "_intermediates", intermediates)
        # Plain attributes (not sub-modules) so the state dict has no duplicate keys.
        object.__setattr__(self, "_stages", list(stages))
        object.__setattr__(self, "_cam_layer", cam_layer)
        self._frozen: list[nn.Module] = []
        self.score_fusion: tuple[float, float, float] | None = None

    @property
    def stages(self) -> list[nn.Module]:
        return self._stages  # type: ignore[attr-defined]

    @property
    def cam_layer(self) -> nn.Module:
        return self._cam_layer  # type: ignore[attr-defined]

    @property
    def localizes(self) -> bool:
        """True when the model has a localisation head."""
        return self.loc_head is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.score_fusion is not None and self.loc_head is not None:
            return self.forward_with_map(x)[0]
        return self.head(self.dropout(self.backbone(x)))

    def forward_with_map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logit (B, 1), detector output (B, A, 6))`` from one backbone pass (see
        :mod:`bonefrac.models.detector`)."""
        if self.loc_head is None or self._intermediates is None:  # type: ignore[attr-defined]
            raise RuntimeError("this model has no localisation head (model.localize: false)")
        pooled, features = self._intermediates(self.backbone, x)  # type: ignore[attr-defined]
        logit, packed = self.head(self.dropout(pooled)), self.loc_head(features)
        if self.score_fusion is not None:
            a, b, c = self.score_fusion
            logit = a * logit + b * map_peak_logit(packed) + c
        return logit, packed

    def detector_loss(self, x: Tensor, boxes: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(logit (B, 1), FCOS losses)`` from one backbone pass; ``boxes``: each image's
        true boxes (XYXY input pixels), or None for an image the detector must not learn from
        (a fractured image without boxes): it trains the fracture logit only."""
        if self.loc_head is None or self._intermediates is None:  # type: ignore[attr-defined]
            raise RuntimeError("this model has no localisation head (model.localize: false)")
        pooled, features = self._intermediates(self.backbone, x)  # type: ignore[attr-defined]
        logit = self.head(self.dropout(pooled))
        keep = [i for i, b in enumerate(boxes) if b is not None]
        if not keep:
            zero = 0.0 * sum(p.sum() for p in self.loc_head.parameters())
            return logit, {"classification": zero, "bbox_regression": zero, "bbox_ctrness": zero}
        index = torch.tensor(keep, device=x.device)
        feats = [f.index_select(0, index) for f in features]
        losses = self.loc_head.loss(feats, [boxes[i] for i in keep], x.shape[-1])
        return logit, losses

    # --- freezing -----------------------------------------------------------------------
    def set_freeze(self, mode: str) -> None:
        """``none`` | ``backbone`` | ``partial:<n>``: unfreeze only the last n stages (+ head)."""
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen = []
        if mode == "none":
            return
        if mode == "backbone":
            trainable: list[nn.Module] = []
        elif mode.startswith("partial:"):
            n = int(mode.split(":", 1)[1])
            trainable = self.stages[len(self.stages) - n :] if n > 0 else []
        else:
            raise ValueError(f"unknown freeze mode {mode!r}")
        trainable_ids = {id(p) for m in trainable for p in m.parameters()}
        frozen_modules = []
        for module in self.backbone.modules():
            own = list(module.parameters(recurse=False))
            if own and all(id(p) not in trainable_ids for p in own):
                frozen_modules.append(module)
                for p in own:
                    p.requires_grad_(False)
        self._frozen = frozen_modules
        self.train(self.training)

    def train(self, mode: bool = True) -> FractureClassifier:
        super().train(mode)
        for module in self._frozen:
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """The new layers (class head and localisation head): trained at the full LR."""
        params = list(self.head.parameters())
        if self.loc_head is not None:
            params += list(self.loc_head.parameters())
        return params
