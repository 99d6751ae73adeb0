"""The predictions formats: one owner, as :mod:`bonefrac.data.schema` is the manifest's.

Two tables and one answer:

- the run's predictions CSVs (``predictions/<name>.csv``: ``val``/``test`` from training, others
  from ``evaluate --manifest``), one row per image that decoded: :data:`RUN_COLUMNS`, a
  fused run's :data:`CLASS_LOGIT`, a localising run's :data:`LOC_COLUMNS`, the manifest's
  subgroup columns, then the original image's :data:`SIZE_COLUMNS` (so localisation metrics
  need no image file); every later analysis (thresholds, calibration, compare, localisation
  metrics) reads these;
- the predict CSV (``bonefrac predict --out``): :data:`PREDICT_COLUMNS`, fingerprinted in its
  ``.meta.json`` sidecar, so a resume never mixes layouts;
- one image's answer (:func:`answer`): the API's JSON fields, and what a predict-CSV row formats.

Every column and field name is spelled here only; other modules import the constants. The
rundir package sits below inference, so a prediction is duck-typed (:class:`PredictionLike`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from bonefrac.data.schema import (
    BOXES,
    HEIGHT,
    IMAGE_ID,
    LABEL,
    PATH,
    SUBGROUP_COLUMNS,
    WIDTH,
    binary_labels,
)
from bonefrac.data.schema import SOURCE as SOURCE  # re-exported: a carried-over column
from bonefrac.data.schema import parse_boxes as parse_boxes  # the one box-cell parser
from bonefrac.errors import RunDirError
from bonefrac.fileio import write_csv
from bonefrac.metrics import sigmoid

# --- column names ---------------------------------------------------------------------------
# The columns carried over from the manifest (IMAGE_ID, PATH, LABEL, SOURCE, WIDTH, HEIGHT and
# the true boxes) take its names from bonefrac.data.schema, their one owner below this layer;
# the rest are spelled here. Import every one of them from this module, and parse a boxes cell
# with its parse_boxes (the manifest's parser: one format).
LOGIT = "logit"
PROB = "prob"
#: a fused run's class logit alone (before the map's score was fused in): the score a
#: classification-only reading of the same model gives, for the fused-vs-logit comparison
CLASS_LOGIT = "class_logit"
#: the true fracture boxes ``[[cx, cy, w, h], ...]`` (the manifest's column, carried over)
TRUE_BOXES = BOXES
#: the model's boxes ``[[cx, cy, w, h, score], ...]`` at or above the run's box threshold
PRED_BOXES = "pred_boxes"
#: every decoded box down to a low score floor: the ranked list AP and FROC use
CAND_BOXES = "cand_boxes"
MAP_PEAK = "map_peak"  # [x, y] of the map's maximum
MAP_MAX = "map_max"  # the map's highest probability
ENERGY = "energy_in_box"  # share of the map's mass inside the true boxes (NaN without boxes)
#: optional: the logit's spread over test-time augmentations (cached by the refer fit)
TTA_STD_COLUMN = "tta_std"
#: the API's name for the calibrated probability (the CSVs' ``prob``)
PROBABILITY = "probability"
# the predict CSV's own columns
DECISION = "decision"  # fracture | no_fracture | refer | out_of_scope
UNCERTAINTY = "uncertainty"
REFER = "refer"  # 1 / 0
OUT_OF_SCOPE = "out_of_scope"  # 1 / 0
OOD_SCORE = "ood_score"  # empty when the run has no out-of-scope detector
THRESHOLD = "threshold"
TEMPERATURE = "temperature"
ERROR = "error"
CAM_PATH = "cam_path"
#: why an ``out_of_scope`` row is out of scope: ``modality`` / ``colour`` / ``blank`` /
#: ``features`` (:mod:`bonefrac.inference.scope`); empty when in scope
OOD_REASON = "ood_reason"

#: The subgroups table (``subgroups/<split>.csv``, written by evaluate): per subgroup column
#: and value, its counts, then each metric with its CI (``<m>``, ``<m>_low``, ``<m>_high``).
SUBGROUP_VALUE = "group"
SUBGROUP_KEYS = ("column", SUBGROUP_VALUE, "n", "n_pos")

#: Columns every run predictions CSV starts with.
RUN_COLUMNS = (IMAGE_ID, PATH, LABEL, LOGIT, PROB)
#: The predictions-CSV columns of a localising run (after :data:`RUN_COLUMNS`).
LOC_COLUMNS = (TRUE_BOXES, PRED_BOXES, CAND_BOXES, MAP_PEAK, MAP_MAX, ENERGY)
#: The last columns of a run predictions CSV.
SIZE_COLUMNS = (WIDTH, HEIGHT)

#: The predict CSV, in order. ``pred_boxes``: a localising run's boxes as JSON (empty for a
#: model without a localisation head). Changing it changes the sidecar's fingerprint.
PREDICT_COLUMNS = [
    PATH,
    PROB,
    DECISION,
    UNCERTAINTY,
    REFER,
    OUT_OF_SCOPE,
    OOD_SCORE,
    LOGIT,
    THRESHOLD,
    TEMPERATURE,
    ERROR,
    CAM_PATH,
    PRED_BOXES,
    OOD_REASON,
]
#: Columns without which a CSV is not a predict CSV at all.
PREDICT_REQUIRED = (PATH, PROB, DECISION, ERROR)

Size = tuple[int, int]


# --- cells --------------------------------------------------------------------------------
def boxes_cell(boxes: Sequence[Sequence[float]]) -> str:
    """Boxes as a JSON cell (the same text in every CSV and, parsed, in the API)."""
    return json.dumps(boxes)


def loc_cells(
    true_boxes: Sequence[Sequence[float]],
    pred_boxes: Sequence[Sequence[float]],
    cand_boxes: Sequence[Sequence[float]],
    peak: Sequence[float],
    map_max: float,
    energy: float,
) -> dict[str, Any]:
    """One image's :data:`LOC_COLUMNS` cells from its localisation values."""
    return {
        TRUE_BOXES: boxes_cell([list(b[:4]) for b in true_boxes]),
        PRED_BOXES: boxes_cell(pred_boxes),
        CAND_BOXES: boxes_cell(cand_boxes),
        MAP_PEAK: json.dumps(peak),
        MAP_MAX: map_max,
        ENERGY: energy,
    }


# --- the run's predictions CSVs -----------------------------------------------------------
def predictions_frame(
    frame: pd.DataFrame,
    logits: np.ndarray,
    sizes: Sequence[Size],
    loc: Sequence[dict[str, Any]] | None = None,
    class_logits: np.ndarray | None = None,
) -> pd.DataFrame:
    """The run predictions CSV of ``frame``'s rows: :data:`RUN_COLUMNS` (prob at T = 1), a
    fused run's :data:`CLASS_LOGIT` (``class_logits``), a localising run's :data:`LOC_COLUMNS`
    (``loc``: :func:`loc_cells` per row), the subgroup columns ``frame`` has, and each image's
    original ``(width, height)``."""
    logits = np.asarray(logits, dtype=float)
    out = pd.DataFrame(
        {
            IMAGE_ID: frame[IMAGE_ID].astype(str).to_numpy(),
            PATH: frame[PATH].astype(str).to_numpy(),
            LABEL: frame[LABEL].astype(int).to_numpy(),
            LOGIT: logits,
            PROB: sigmoid(logits),
        }
    )
    if class_logits is not None:
        out[CLASS_LOGIT] = np.asarray(class_logits, dtype=float)
    if loc is not None:
        for col in LOC_COLUMNS:
            out[col] = [cells[col] for cells in loc]
    for col in SUBGROUP_COLUMNS:
        if col in frame.columns:
            out[col] = frame[col].to_numpy()
    out[WIDTH] = [int(w) for w, _ in sizes]
    out[HEIGHT] = [int(h) for _, h in sizes]
    return out


def _check_columns(columns: Sequence[str], source: object) -> None:
    """The columns every run predictions table has (:data:`RUN_COLUMNS`); a table without one
    of them is another format, refused with one line."""
    missing = [c for c in RUN_COLUMNS if c not in columns]
    if missing:
        raise RunDirError(
            f"{source}: no {', '.join(repr(c) for c in missing)} column: not a run predictions "
            f"CSV of this version ({', '.join(RUN_COLUMNS)}); rewrite it with 'bonefrac "
            "evaluate --manifest' or retrain"
        )
    if (WIDTH in columns) != (HEIGHT in columns):
        raise RunDirError(f"{source}: has only one of '{WIDTH}' and '{HEIGHT}'; rewrite it")


def write_predictions(path: Path, frame: pd.DataFrame) -> Path:
    """Write a run predictions table atomically (its columns checked first)."""
    _check_columns(list(frame.columns), path)
    write_csv(path, frame)
    return path


def read_predictions_raw(path: Path) -> pd.DataFrame:
    """A run predictions CSV as text cells (for rewriting it), not validated."""
    return pd.read_csv(path, dtype={IMAGE_ID: str}, keep_default_na=False)


def read_predictions(path: Path) -> pd.DataFrame:
    """A run predictions CSV, validated (:func:`validate_predictions`); empty cells are NaN."""
    df = pd.read_csv(path, dtype={IMAGE_ID: str}, keep_default_na=False, na_values=[""])
    return validate_predictions(df, path)


def validate_predictions(df: pd.DataFrame, source: object) -> pd.DataFrame:
    """Check a predictions table: :data:`RUN_COLUMNS` present, label 0/1, prob and logit
    numeric, sizes positive where given."""
    _check_columns(list(df.columns), source)
    df = df.copy()
    df[IMAGE_ID] = df[IMAGE_ID].astype(str)
    df[LABEL] = binary_labels(df[LABEL], source, RunDirError)
    for col in (PROB, LOGIT, CLASS_LOGIT):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
            if df[col].isna().any():
                raise RunDirError(f"{source}: column '{col}' has missing or non-numeric values")
    for col in SIZE_COLUMNS:
        if col in df.columns:
            values = pd.to_numeric(df[col], errors="coerce")
            if (values.isna() & df[col].notna()).any() or (values <= 0).any():
                raise RunDirError(
                    f"{source}: column '{col}' must hold the image's size in pixels (a positive "
                    "number); rewrite the predictions with 'bonefrac train' or 'bonefrac "
                    "evaluate --manifest'"
                )
            df[col] = values
    if len(df) == 0:
        raise RunDirError(f"{source}: no rows")
    return df


def image_sizes(df: pd.DataFrame) -> list[Size | None]:
    """``(width, height)`` per row from :data:`SIZE_COLUMNS`; ``None`` where unknown (no such
    columns: predictions written before they carried the size)."""
    if WIDTH not in df.columns or HEIGHT not in df.columns:
        return [None] * len(df)
    widths = pd.to_numeric(df[WIDTH], errors="coerce")
    heights = pd.to_numeric(df[HEIGHT], errors="coerce")
    return [
        (int(w), int(h)) if pd.notna(w) and pd.notna(h) and w > 0 and h > 0 else None
        for w, h in zip(widths, heights, strict=True)
    ]


def raw_logits(df: pd.DataFrame) -> np.ndarray:
    """The model's logits (the ``logit`` column)."""
    return df[LOGIT].to_numpy(dtype=float)


def run_probabilities(df: pd.DataFrame, meta: Any) -> np.ndarray:
    """Probabilities the run's threshold applies to: ``sigmoid(logit / T)``.

    With ``T == 1`` the CSV's ``prob`` column is used as is.
    """
    if meta.temperature == 1.0:
        return df[PROB].to_numpy(dtype=float)
    return meta.probability(raw_logits(df))


def run_decisions(df: pd.DataFrame, meta: Any) -> list[str]:
    """The run's decision for every row of a predictions table (no scope rules: a run's
    evaluation sets are radiographs by construction): the two cuts, or the threshold with the
    refer band on its score (``tta_std`` read from its cached column; none cached, no band).
    """
    from bonefrac.rundir.meta import error_probability, margin_uncertainty

    prob = run_probabilities(df, meta)
    rule = meta.refer
    if meta.rule_out is not None or rule is None:
        return meta.decisions(prob)
    if rule.score == "p_error":
        uncertainty = error_probability(prob, meta.threshold)
    elif rule.score == "margin":
        uncertainty = margin_uncertainty(prob, meta.threshold)
    elif TTA_STD_COLUMN in df.columns and (df[TTA_STD_COLUMN].astype(str) != "").all():
        uncertainty = df[TTA_STD_COLUMN].astype(float).to_numpy()
    else:
        return meta.decisions(prob)
    return meta.decisions(prob, uncertainty)


# --- one image's answer: the API and the predict CSV --------------------------------------
class PredictionLike(Protocol):
    """What :func:`answer` reads (:class:`bonefrac.inference.predictor.Prediction`)."""

    probability: float
    logit: float
    decision: str
    threshold: float
    uncertainty: float | None
    refer: bool
    out_of_scope: bool
    ood_score: float | None
    ood_reason: str | None
    pred_boxes: list[list[float]] | None
    best_box: list[float] | None


#: The API answer's best box at any score (a localising run), and the kind of its map.
BEST_BOX = "best_box"
MAP_KIND = "map"

#: The API answer's finding level: ``firm`` for a ``fracture`` call (a box drawn solid),
#: ``doubt`` for ``refer`` ("look here", a box drawn dashed), null otherwise; and its words.
FINDING = "finding"
FINDING_WORDS = "finding_text"

#: The API answer's fields in order (``POST /v1/predict``): the prediction's (:func:`answer`)
#: and the model's (given to :func:`api_answer`).
API_FIELDS = (
    PROBABILITY,
    DECISION,
    FINDING,
    FINDING_WORDS,
    UNCERTAINTY,
    REFER,
    OUT_OF_SCOPE,
    OOD_SCORE,
    OOD_REASON,  # why out of scope; null when in scope
    THRESHOLD,
    "model",
    LOGIT,
    TEMPERATURE,
    "architecture",
    "backend",
    "caveat",
    PRED_BOXES,  # null for a model without a localisation head
    BEST_BOX,  # the detector's best box at any score; null without one or out of scope
    MAP_KIND,  # "detector": the map trained on radiologists' boxes; "gradcam" otherwise
)


def answer(pred: PredictionLike) -> dict[str, Any]:
    """One prediction as JSON values: the one serialisation the API, the predict CSV (through
    :func:`predict_row`) and the Python API's callers share."""
    from bonefrac.rundir.meta import FINDING_LEVELS, FINDING_TEXT

    return {
        PROBABILITY: pred.probability,
        LOGIT: pred.logit,
        DECISION: pred.decision,
        FINDING: FINDING_LEVELS.get(pred.decision),
        FINDING_WORDS: FINDING_TEXT.get(pred.decision),
        THRESHOLD: pred.threshold,
        UNCERTAINTY: pred.uncertainty,
        REFER: pred.refer,
        OUT_OF_SCOPE: pred.out_of_scope,
        OOD_SCORE: pred.ood_score,
        OOD_REASON: pred.ood_reason,
        PRED_BOXES: pred.pred_boxes,
        BEST_BOX: pred.best_box,
    }


def api_answer(pred: PredictionLike, **model: Any) -> dict[str, Any]:
    """The API's JSON body for one prediction; ``model``: the :data:`API_FIELDS` that are the
    model's (model, temperature, architecture, backend, caveat, map)."""
    values = {**answer(pred), **model}
    return {key: values[key] for key in API_FIELDS}


def _g6(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def predict_row(
    path: str,
    threshold: float,
    temperature: float,
    pred: PredictionLike | None = None,
    *,
    error: str = "",
    cam_path: str = "",
) -> dict[str, Any]:
    """One predict-CSV row: the prediction's answer, or ``error`` (``pred`` None); ``path`` is
    already encoded (:mod:`bonefrac.csvpaths`)."""
    row: dict[str, Any] = dict.fromkeys(PREDICT_COLUMNS, "")
    row[PATH] = path
    row[THRESHOLD] = f"{threshold:.6g}"
    row[TEMPERATURE] = f"{temperature:.6g}"
    if pred is None:
        row[ERROR] = error
        return row
    values = answer(pred)
    row[PROB] = f"{values[PROBABILITY]:.6f}"
    row[LOGIT] = f"{values[LOGIT]:.6f}"
    row[DECISION] = values[DECISION]
    row[UNCERTAINTY] = _g6(values[UNCERTAINTY])
    row[REFER] = int(values[REFER])
    row[OUT_OF_SCOPE] = int(values[OUT_OF_SCOPE])
    row[OOD_SCORE] = _g6(values[OOD_SCORE])
    row[OOD_REASON] = values[OOD_REASON] or ""
    if values[PRED_BOXES] is not None:
        row[PRED_BOXES] = boxes_cell(values[PRED_BOXES])
    row[CAM_PATH] = cam_path
    return row
