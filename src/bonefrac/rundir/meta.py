"""``model.json`` as a validated record: what a run's model needs to turn pixels into a decision.

Every consumer (evaluate, threshold, calibrate, explain, predict, serve, export) reads the
metadata through :class:`ModelMeta`, so a threshold, temperature or normalisation that cannot
be trusted is refused once, at load, with the same message everywhere.

Probability convention: ``sigmoid(logit / temperature)`` (temperature 1 until ``bonefrac
calibrate`` fits one); the decision is ``probability >= threshold``. :meth:`ModelMeta.probability`
is the only place the temperature is applied.
"""

from __future__ import annotations

import math
import platform
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bonefrac.errors import ModelOutputError, RunDirError
from bonefrac.metrics import apply_temperature

CLASS_NAMES = ["not_fractured", "fractured"]


class ModelMeta(BaseModel):
    """The fields of model.json that predictions depend on; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    architecture: str = Field(min_length=1)
    image_size: int = Field(gt=0, le=4096)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float = 0.5
    temperature: float = 1.0
    preprocess: dict[str, Any] = Field(default_factory=dict)
    dropout: float = 0.0
    class_names: list[str] = Field(default_factory=lambda: list(CLASS_NAMES))
    weights_sha256: str | None = None
    localize: bool = False
    """The model has a localisation head (its weights include it)."""
    box_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Map probability a decoded box must reach to be reported (chosen on val at training)."""

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not (math.isfinite(v) and 0.0 < v < 1.0):
            raise ValueError(f"threshold {v} is not a probability strictly between 0 and 1")
        return v

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, v: Any) -> Any:
        if v is None:
            return 1.0
        if isinstance(v, (int, float)) and not (math.isfinite(v) and v > 0):
            raise ValueError(f"temperature {v} must be a finite number > 0")
        return v

    @field_validator("mean")
    @classmethod
    def _mean(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"mean {list(v)} must be finite")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(x) and x > 0 for x in v):
            raise ValueError(f"std {list(v)} must be finite and > 0")
        return v

    @classmethod
    def parse(cls, data: Any, source: object = "model.json") -> ModelMeta:
        """Validate a model.json mapping; a bad value is a :class:`RunDirError` naming it."""
        if not isinstance(data, dict):
            raise RunDirError(f"{source}: expected a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
            )
            raise RunDirError(
                f"{source}: invalid model metadata ({problems}); fix the value or retrain"
            ) from None

    @property
    def clahe(self) -> bool:
        return bool(self.preprocess.get("clahe", False))

    def get(self, key: str, default: Any = None) -> Any:
        """Any model.json key (declared or extra), like ``dict.get``."""
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.model_extra or {}).get(key, default)

    def probability(self, logits: Any) -> np.ndarray:
        """Calibrated probability ``sigmoid(logit / temperature)``."""
        return apply_temperature(logits, self.temperature)

    def decide(self, prob: Any) -> np.ndarray:
        """``prob >= threshold`` (fractured)."""
        return np.asarray(prob, dtype=float) >= self.threshold


def usable_threshold(threshold: float) -> float:
    """``threshold`` moved inside the open interval (0, 1) that model.json accepts.

    A criterion or a temperature rescale can land on 0 (everything positive) or 1 (nothing
    positive) when probabilities saturate; the nearest representable value inside keeps the
    same decisions for every probability strictly between 0 and 1.
    """
    return float(np.clip(threshold, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0)))


def check_finite(logits: Any, what: str = "model output") -> np.ndarray:
    """``logits`` as float array; a non-finite value is a :class:`ModelOutputError`."""
    arr = np.asarray(logits, dtype=float)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ModelOutputError(
            f"{what}: {int(bad.sum())} of {arr.size} values are not finite (NaN or inf), so the "
            "output cannot be trusted; the weights or model.json are broken: restore or retrain"
        )
    return arr


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a trained model (recorded in model.json)."""
    import lightning
    import timm
    import torch
    import torchvision

    import bonefrac

    return {
        "bonefrac": bonefrac.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }
