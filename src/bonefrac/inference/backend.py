"""One forward pass of a run's model: what it returns (:class:`Forward`) and the PyTorch backend.

The :class:`~bonefrac.inference.predictor.Predictor` holds one backend and sends every forward
pass through it, so logits, maps, features, Grad-CAM and test-time views all see the same
input conversion and the same numerics. A backend is asked for one :data:`Output`:

``logits``   the fracture logit ``(B,)``;
``head``     the logit and a localising head's whole output ``(B, C, h, w)`` (channel 0: the
             map's logits; 1-4 where present: box regression), from one pass;
``features`` the pooled backbone features ``(B, D)`` and the class head's logit on them (what
             the out-of-scope statistics are fitted on);
``cam``      the logit and Grad-CAM of the fracture logit ``(B, S, S)`` in ``[0, 1]``.

The ONNX backend (:class:`bonefrac.inference.onnx.OnnxBackend`) answers ``logits`` and
``head``; for ``features`` and ``cam`` the Predictor borrows a :class:`TorchBackend` over the
run's PyTorch model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from bonefrac.data.transforms import to_input
from bonefrac.errors import RunDirError
from bonefrac.precision import inference_autocast

Output = Literal["logits", "head", "features", "cam"]


@dataclass(frozen=True)
class Forward:
    """What one forward pass returns (numpy, float32, on the CPU)."""

    logits: np.ndarray  # (B,)
    head: np.ndarray | None = None  # (B, C, h, w): a localising head's output
    features: np.ndarray | None = None  # (B, D): pooled backbone features
    cam: np.ndarray | None = None  # (B, S, S): Grad-CAM of the fracture logit, in [0, 1]


class Backend(Protocol):
    """A model runtime: converts a letterboxed uint8 batch and runs the model on it."""

    kind: str
    outputs: frozenset[str]
    device: torch.device

    def input(self, batch: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor: ...

    def run(self, x: Tensor, output: Output = "logits") -> Forward: ...


def first_logit(out: Tensor | np.ndarray, n: int) -> np.ndarray:
    """The fracture logit ``(B,)`` of a model output ``(B, 1)`` (or ``(B,)``)."""
    if isinstance(out, Tensor):
        return out.float().reshape(n, -1)[:, 0].cpu().numpy()
    return np.asarray(out, dtype=np.float32).reshape(n, -1)[:, 0]


class TorchBackend:
    """A PyTorch model on ``device``: channels-last input, autocast where it is measured to pay
    (:mod:`bonefrac.precision`), ``torch.inference_mode`` (Grad-CAM: gradients on)."""

    kind = "torch"
    outputs = frozenset({"logits", "head", "features", "cam"})

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)

    def input(self, batch: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
        return to_input(batch.to(self.device), mean, std, channels_last=True)

    def run(self, x: Tensor, output: Output = "logits") -> Forward:
        n = x.shape[0]
        if output == "cam":
            return self._cam(x)
        with torch.inference_mode(), inference_autocast(x.device):
            if output == "logits":
                return Forward(first_logit(self.model(x), n))
            if output == "head":
                logit, head = self.model.forward_with_map(x)  # type: ignore[operator]
                return Forward(first_logit(logit, n), head=head.float().cpu().numpy())
            return self._features(x)

    def _features(self, x: Tensor) -> Forward:
        model = self.model
        if not hasattr(model, "backbone") or not hasattr(model, "head"):
            raise RunDirError(f"{type(model).__name__}: the model exposes no penultimate features")
        # NCHW, not channels-last: the out-of-scope statistics (RUN/ood.safetensors) were
        # fitted on features of NCHW input, and channels-last moves them by ~1e-6 (relative),
        # which shows in the ood_score of predict CSVs and API answers.
        feats = model.backbone(x.contiguous()).float().reshape(x.shape[0], -1)
        logits = model.head(feats).float()
        return Forward(first_logit(logits, x.shape[0]), features=feats.cpu().numpy())

    def _cam(self, x: Tensor) -> Forward:
        from bonefrac.maps.cam import explainer

        with explainer(self.model, "gradcam") as ex:
            exp = ex(x)
        return Forward(exp.logits, cam=exp.heat)
