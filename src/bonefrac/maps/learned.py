"""A localising model's learned map: its detector's output -> probabilities over the letterbox.

One upsampling for every user of the map (the Predictor's heatmap, box decoding, the box
threshold fitted at training, the ``model`` explainer), so all show the same map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def detector_maps(head: np.ndarray | torch.Tensor, size: int, strides: Sequence[int]) -> np.ndarray:
    """A detector's packed output ``(B, A, 6)`` (:mod:`bonefrac.models.detector`) -> its map
    of detection scores, ``(B, size, size)`` probabilities: the map every consumer shows."""
    from bonefrac.models.detector import score_map

    packed = torch.as_tensor(np.asarray(head, dtype=np.float32))
    return upsample_maps(score_map(packed, size, strides)[:, 0].numpy(), size)


def upsample_maps(map_logits: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Map logits ``(B, h, w)`` (or ``(B, 1, h, w)``) -> probabilities ``(B, size, size)``
    (bilinear, then sigmoid)."""
    arr = np.asarray(map_logits, dtype=np.float32)
    t = torch.as_tensor(arr[:, :1] if arr.ndim == 4 else arr[:, None])
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return torch.sigmoid(up)[:, 0].numpy()
