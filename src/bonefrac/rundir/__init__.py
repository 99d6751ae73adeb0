"""The run directory: layout, validated model metadata, predictions and metrics files.

Everything downstream of training takes a run directory; this package is its only owner.
"""

from bonefrac.rundir.layout import (
    RUN_SPLITS,
    TTA_STD_COLUMN,
    RunDir,
    check_name,
    metrics_entry,
    predictions_frame,
    raw_logits,
    run_probabilities,
    validate_predictions,
)
from bonefrac.rundir.meta import (
    CLASS_NAMES,
    DECISIONS,
    FRACTURE,
    NO_FRACTURE,
    OUT_OF_SCOPE,
    REFER,
    UNCERTAINTY_SCORES,
    ModelMeta,
    OodRule,
    ReferRule,
    check_finite,
    error_probability,
    library_versions,
    margin_uncertainty,
    usable_threshold,
)

__all__ = [
    "CLASS_NAMES",
    "DECISIONS",
    "FRACTURE",
    "NO_FRACTURE",
    "OUT_OF_SCOPE",
    "REFER",
    "UNCERTAINTY_SCORES",
    "OodRule",
    "ReferRule",
    "error_probability",
    "margin_uncertainty",
    "RUN_SPLITS",
    "TTA_STD_COLUMN",
    "ModelMeta",
    "RunDir",
    "check_finite",
    "check_name",
    "library_versions",
    "metrics_entry",
    "predictions_frame",
    "raw_logits",
    "run_probabilities",
    "usable_threshold",
    "validate_predictions",
]
