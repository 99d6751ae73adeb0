"""Startup self-check: run the model on fixed inputs and refuse non-finite output."""

from __future__ import annotations

from typing import Any

import numpy as np

from bonefrac.errors import ModelOutputError


def self_check_inputs(size: int) -> list[np.ndarray]:
    """Three fixed letterboxed inputs: black, a diagonal gradient, a bright disc on grey."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    gradient = ((xx + yy) * (255.0 / max(1, 2 * size - 2))).astype(np.uint8)
    disc = np.full((size, size), 96, np.uint8)
    disc[(xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 4) ** 2] = 230
    return [np.zeros((size, size), np.uint8), gradient, disc]


def self_check(predictor: Any) -> np.ndarray:
    """The logits of :func:`self_check_inputs`; raises ``ModelOutputError`` if any is not finite.

    Uses only ``predictor.image_size`` and ``predictor.logits(arrays)``.
    """
    name = getattr(predictor, "name", "the model")
    logits = np.asarray(predictor.logits(self_check_inputs(int(predictor.image_size))))
    if logits.shape[:1] != (3,) or not np.all(np.isfinite(logits.astype(np.float64))):
        raise ModelOutputError(
            f"{name}: self-check failed: the model's logits on fixed test images are "
            f"{logits.tolist()}, not finite numbers; the weights or the model metadata are damaged - "
            "restore the run directory from a good copy or retrain"
        )
    return logits
