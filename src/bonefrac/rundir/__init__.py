"""The run directory: layout, validated model metadata, predictions and metrics files.

Everything downstream of training takes a run directory; this package is its only owner.
"""

from bonefrac.rundir.layout import (
    RUN_SPLITS,
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
    ModelMeta,
    check_finite,
    library_versions,
    usable_threshold,
)

__all__ = [
    "CLASS_NAMES",
    "RUN_SPLITS",
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
