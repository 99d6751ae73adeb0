"""bonefrac.models: ``build_model`` and the registry of supported architectures."""

from bonefrac.models.classifier import FractureClassifier
from bonefrac.models.registry import (
    REGISTRY,
    ModelSpec,
    available_models,
    build_model,
    cam_target_layer,
    register,
    resolve_spec,
)

__all__ = [
    "REGISTRY",
    "FractureClassifier",
    "ModelSpec",
    "available_models",
    "build_model",
    "cam_target_layer",
    "register",
    "resolve_spec",
]
