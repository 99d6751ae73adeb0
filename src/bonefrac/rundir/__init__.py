"""The run directory: layout, validated model metadata, the predictions formats, metrics.

Everything downstream of training takes a run directory; this package is its only owner.
"""

from bonefrac.rundir.layout import (
    RUN_SPLITS,
    RunDir,
    check_name,
    metrics_entry,
    overlay_stem,
)
from bonefrac.rundir.meta import (
    CLASS_NAMES,
    DECISIONS,
    FORMAT_VERSION,
    FRACTURE,
    NO_FRACTURE,
    OUT_OF_SCOPE,
    REFER,
    RETRAIN_HINT,
    UNCERTAINTY_SCORES,
    MissingSafeguard,
    ModelMeta,
    OodRule,
    ReferRule,
    check_finite,
    error_probability,
    library_versions,
    margin_uncertainty,
    missing_safeguards,
    usable_threshold,
    warn_missing_safeguards,
)
from bonefrac.rundir.predictions import (
    TTA_STD_COLUMN,
    predictions_frame,
    raw_logits,
    run_probabilities,
    validate_predictions,
)
from bonefrac.rundir.shipped import (
    DEFAULT_NAME,
    copy_run,
    resolve_run,
    shipped_models,
)

__all__ = [
    "DEFAULT_NAME",
    "copy_run",
    "resolve_run",
    "shipped_models",
    "CLASS_NAMES",
    "DECISIONS",
    "FORMAT_VERSION",
    "FRACTURE",
    "NO_FRACTURE",
    "OUT_OF_SCOPE",
    "REFER",
    "RETRAIN_HINT",
    "UNCERTAINTY_SCORES",
    "MissingSafeguard",
    "OodRule",
    "ReferRule",
    "error_probability",
    "margin_uncertainty",
    "missing_safeguards",
    "RUN_SPLITS",
    "TTA_STD_COLUMN",
    "ModelMeta",
    "RunDir",
    "check_finite",
    "check_name",
    "library_versions",
    "metrics_entry",
    "overlay_stem",
    "predictions_frame",
    "raw_logits",
    "run_probabilities",
    "usable_threshold",
    "validate_predictions",
    "warn_missing_safeguards",
]
