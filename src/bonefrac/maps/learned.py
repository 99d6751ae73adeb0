"""A localising model's learned map: its head's map logits -> probabilities over the letterbox.

One upsampling for every user of the map (the Predictor's heatmap, box decoding, the box
threshold fitted at training, the ``model`` explainer), so all show the same map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def upsample_maps(map_logits: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Map logits ``(B, h, w)`` (or a head's whole output ``(B, C, h, w)``, whose channel 0 is
    the map) -> probabilities ``(B, size, size)`` (bilinear, then sigmoid)."""
    arr = np.asarray(map_logits, dtype=np.float32)
    t = torch.as_tensor(arr[:, :1] if arr.ndim == 4 else arr[:, None])
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return torch.sigmoid(up)[:, 0].numpy()
