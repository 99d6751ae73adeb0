"""Heatmaps for the fracture logit: thin adapters over pytorch-grad-cam plus gradient saliency.

One entry point, :func:`explainer`, returns a context manager that turns a batch of model inputs
``(B, 3, H, W)`` into :class:`Explanation` (heatmaps ``(B, H, W)`` in ``[0, 1]`` at input
resolution, and the fracture logits). Methods:

``gradcam`` / ``gradcam++`` / ``eigencam``
    pytorch-grad-cam's ``GradCAM``, ``GradCAMPlusPlus`` and ``EigenCAM`` on one target layer
    (``cam_target_layer(model)`` unless ``layer`` names another, as a dotted module path such as
    ``backbone.stages.2``). EigenCAM uses no gradients and no target: it is the first principal
    component of the layer's activations, so it shows what the layer attends to, not which way
    the decision goes; the component's sign is arbitrary (SVD), so on some models it lights up
    the complement of the object.
``saliency`` / ``smoothgrad``
    see :mod:`bonefrac.maps.saliency`.
``model``
    the learned localisation map of a model trained with ``model.localize: true`` (no
    gradients: the detector's score per location, upsampled to the input by
    :func:`bonefrac.maps.learned.detector_maps`, as the Predictor does).

The target. The models have ONE output, the fracture logit (shape ``(B, 1)``). The map must show
evidence *for* fracture, i.e. the gradient of ``+logit``: that is ``ClassifierOutputTarget(0)``
(:func:`fracture_target`). pytorch-grad-cam's ``BinaryClassifierOutputTarget(c)`` multiplies the
logit by ``-1`` whenever ``c != 1``; callers who pass the *predicted* class (0 for every image
the model calls negative) silently get evidence *against* fracture for those images. We never
use it; ``tests/explain/test_cam.py`` shows the difference on a trained model.

Hooks. The library registers forward hooks on the target layer and removes them only on
``release()`` / leaving its context manager (its issue tracker documents memory growth when
CAM objects are created per image). :func:`explainer` therefore opens ONE library object and
feeds it every batch; leaving the ``with`` block removes the hooks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from bonefrac.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

CAM_METHODS = ("gradcam", "gradcam++", "eigencam")
GRADIENT_METHODS = ("saliency", "smoothgrad")
MODEL_METHOD = "model"
METHODS = (MODEL_METHOD, *CAM_METHODS, *GRADIENT_METHODS)


def check_method(method: str) -> str:
    """Normalise a method name (``GradCAM++`` -> ``gradcam++``) or raise ConfigError."""
    key = method.strip().lower().replace("_", "").replace("-", "")
    aliases = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "vanilla": "saliency"}
    key = aliases.get(key, key)
    if key not in METHODS:
        raise ConfigError(f"unknown explain method {method!r}; choose one of {', '.join(METHODS)}")
    return key


def fracture_target():
    """The pytorch-grad-cam target whose gradient is d(+fracture logit): evidence FOR fracture."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return ClassifierOutputTarget(0)


def resolve_layer(model: nn.Module, name: str | None = None) -> tuple[nn.Module, str]:
    """The CAM target layer and its dotted name inside ``model``.

    ``name=None``: ``cam_target_layer(model)``. Otherwise a dotted path from the model
    (``backbone.stages.3``); a path relative to ``model.backbone`` is accepted too.
    """
    if name is None:
        from bonefrac.models import cam_target_layer

        layer = cam_target_layer(model)
        return layer, module_name(model, layer)
    for prefix in ("", "backbone."):
        try:
            layer = model.get_submodule(prefix + name)
        except AttributeError:
            continue
        return layer, prefix + name
    stages = [n for n, _ in model.named_modules() if n and n.count(".") <= 2][:12]
    raise ModelError(
        f"--layer {name!r}: no such module in {type(model).__name__}; use a dotted path from the "
        f"model, e.g. {', '.join(stages)} (list all with model.named_modules())"
    )


def module_name(model: nn.Module, layer: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is layer:
            return n
    return type(layer).__name__


@dataclass
class Explanation:
    """Heatmaps ``(B, H, W)`` float32 in ``[0, 1]`` (input resolution) and logits ``(B,)``."""

    heat: np.ndarray
    logits: np.ndarray


class _Explainer:
    """Common part: model in eval mode for the duration, restored afterwards."""

    def __init__(self, model: nn.Module, method: str) -> None:
        self.model = model
        self.method = method
        self.layer_name: str | None = None
        self._was_training = model.training

    def __enter__(self) -> _Explainer:
        self.model.eval()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.model.train(self._was_training)

    def close(self) -> None:  # pragma: no cover - overridden where there is something to free
        pass

    def __call__(self, x: Tensor) -> Explanation:
        raise NotImplementedError


class _CamExplainer(_Explainer):
    """One pytorch-grad-cam object for every batch; hooks removed on exit."""

    def __init__(self, model: nn.Module, method: str, layer: str | None) -> None:
        from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus

        super().__init__(model, method)
        self.layer, self.layer_name = resolve_layer(model, layer)
        cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}[method]
        # The clone keeps the stored activation safe from an in-place op after the target
        # layer (e.g. a ReLU(inplace=True) when --layer names a BatchNorm): on CPU ``.cpu()``
        # returns the very tensor the next layer may overwrite.
        self._cam = cls(model=model, target_layers=[self.layer], reshape_transform=_clone)
        self._target = fracture_target()

    def __call__(self, x: Tensor) -> Explanation:
        device = next(self.model.parameters()).device
        # Gradients must reach the target layer even when the backbone is frozen
        # (requires_grad=False): make the input itself require grad. Contiguous memory so the
        # library's numpy views see plain (B, C, h, w) activations whatever the model's format.
        x = x.detach().to(device).contiguous().requires_grad_(True)
        with torch.enable_grad():
            heat = self._cam(input_tensor=x, targets=[self._target] * len(x))
        logits = self._cam.outputs.detach().float().reshape(len(x), -1)[:, 0].cpu().numpy()
        self._cam.outputs = None  # drop the graph now, not at the next batch
        self._cam.activations_and_grads.clear()
        self.model.zero_grad(set_to_none=True)
        return Explanation(np.ascontiguousarray(heat, dtype=np.float32), logits)

    def close(self) -> None:
        self._cam.activations_and_grads.release()

    @property
    def hook_count(self) -> int:
        """Hooks this explainer still holds on the target layer (0 after ``close``)."""
        return len(self._cam.activations_and_grads.handles)


def _clone(t: Tensor) -> Tensor:
    return t.clone()


class _MapExplainer(_Explainer):
    """The model's own map: its detector's score per location, bilinear to the input."""

    def __init__(self, model: nn.Module) -> None:
        if getattr(model, "loc_head", None) is None:
            others = ", ".join(m for m in METHODS if m != MODEL_METHOD)
            raise ConfigError(
                "--method model needs a run trained with model.localize: true (this model has no "
                f"localisation head); use one of {others}"
            )
        super().__init__(model, MODEL_METHOD)

    def __call__(self, x: Tensor) -> Explanation:
        from bonefrac.maps.learned import detector_maps

        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits, packed = self.model.forward_with_map(x.to(device))  # type: ignore[operator]
        strides = self.model.loc_head.strides  # type: ignore[union-attr]
        heat = detector_maps(packed.float().cpu().numpy(), x.shape[-1], strides)
        flat = logits.float().reshape(len(x), -1)[:, 0].cpu().numpy()
        return Explanation(np.ascontiguousarray(heat, dtype=np.float32), flat)


class _GradientExplainer(_Explainer):
    def __init__(self, model: nn.Module, method: str, **kwargs: object) -> None:
        super().__init__(model, method)
        self.kwargs = kwargs

    def __call__(self, x: Tensor) -> Explanation:
        from bonefrac.maps.saliency import smoothgrad, vanilla_gradient

        fn = smoothgrad if self.method == "smoothgrad" else vanilla_gradient
        heat, logits = fn(self.model, x, **self.kwargs)  # type: ignore[arg-type]
        return Explanation(heat, logits)


def explainer(
    model: nn.Module, method: str = "gradcam", layer: str | None = None, **kwargs: object
) -> _Explainer:
    """A context manager: ``with explainer(model, "gradcam") as ex: exp = ex(x)``.

    ``kwargs`` go to SmoothGrad (``n_samples``, ``noise``, ``seed``). ``layer`` is ignored by
    the gradient methods (they explain the input pixels).
    """
    method = check_method(method)
    if method == MODEL_METHOD:
        return _MapExplainer(model)
    if method in CAM_METHODS:
        return _CamExplainer(model, method, layer)
    if method == "saliency":
        return _GradientExplainer(model, method)
    return _GradientExplainer(model, method, **kwargs)


def compute_heatmaps(
    model: nn.Module,
    x: Tensor,
    method: str = "gradcam",
    layer: str | None = None,
    **kwargs: object,
) -> Explanation:
    """One batch, one call: convenience for notebooks and tests."""
    with explainer(model, method, layer, **kwargs) as ex:
        return ex(x)
