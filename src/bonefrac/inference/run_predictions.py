"""Manifest rows (``path, label``) -> the run predictions CSV, through the one batch loop.

:func:`predictions_table` builds the table for training's val/test and for ``bonefrac evaluate
--manifest`` (external validation) alike: the logits, a localising run's columns from its head
output, the original image sizes. :func:`predict_frame` is ``evaluate --manifest``'s half: it
decodes the rows' images (:class:`~bonefrac.inference.loop.FileInputs`); an image that cannot be
decoded is skipped and listed, so one bad file in a hospital's CSV does not stop the evaluation
of the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bonefrac.data.schema import SUBGROUP_COLUMNS, path_image_ids
from bonefrac.errors import DataError
from bonefrac.inference.loop import FileInputs, Outputs, collect
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import ModelMeta, RunDir, predictions_frame
from bonefrac.rundir.predictions import IMAGE_ID, LABEL, PATH, TRUE_BOXES, parse_boxes

log = logging.getLogger(__name__)


@dataclass
class FramePrediction:
    """The predictions CSV for the rows that decoded, and the rows that did not."""

    predictions: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def predictions_table(frame: pd.DataFrame, out: Outputs, meta: ModelMeta) -> pd.DataFrame:
    """The run predictions CSV of ``frame``'s rows that decoded (``out.indices``): the one
    place its localisation columns are built (from ``out.head``, at ``meta``'s box threshold)."""
    from bonefrac.inference.box_decoding import loc_row
    from bonefrac.maps.learned import detector_maps

    rows = frame.iloc[out.indices].reset_index(drop=True)
    loc = None
    if out.head is not None:
        truth = rows[TRUE_BOXES] if TRUE_BOXES in rows.columns else [None] * len(rows)
        loc = [
            loc_row(
                detector_maps(out.head[i : i + 1], meta.image_size, meta.loc_levels)[0],
                out.decoded_sizes[i],
                parse_boxes(truth[i], source=rows[PATH].iloc[i]),
                meta.box_threshold,
                out.head[i],
                meta.loc_levels,
            )
            for i in range(len(rows))
        ]
    return predictions_frame(rows, out.logits, out.sizes, loc, _class_logits(out, meta))


def _class_logits(out: Outputs, meta: ModelMeta) -> np.ndarray | None:
    """The class logit alone behind each fused image logit (the fusion undone with the same
    map peak the model's forward fused in); None when the run fuses no map score."""
    if out.head is None or meta.score_fusion is None:
        return None
    from bonefrac.models.detector import map_peak_logits

    a, b, c = meta.score_fusion.as_tuple()
    if a == 0.0:  # the fused score ignores the class logit: there is nothing to recover
        return None
    peaks = map_peak_logits(out.head).astype(np.float64)
    fused = np.asarray(out.logits, dtype=np.float64).ravel()
    return (fused - b * peaks - c) / a


def predict_frame(
    predictor: Predictor,
    df: pd.DataFrame,
    *,
    batch_size: int = 32,
    progress: bool = True,
    tta: bool = False,
) -> FramePrediction:
    """Predictions (predictions CSV layout) for the rows of ``df`` whose image decodes."""
    frame = df.reset_index(drop=True).copy()
    if IMAGE_ID not in frame.columns:
        frame[IMAGE_ID] = path_image_ids(frame[PATH].astype(str).tolist())
    paths = frame[PATH].astype(str).tolist()
    inputs = FileInputs(paths, predictor.image_size, predictor.clahe, original_size=True)
    out = collect(predictor, inputs, batch_size=batch_size, tta=tta, progress=progress)
    skipped = [(paths[i], reason) for i, reason in out.skipped]
    if not out.indices:
        raise DataError(
            f"none of the {len(frame)} images could be decoded (first: {skipped[0][0]}: "
            f"{skipped[0][1]})"
            if skipped
            else "no rows to predict"
        )
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return FramePrediction(predictions_table(frame, out, predictor.meta), skipped)


def predict_run_frame(
    run_dir: str | Path,
    df: pd.DataFrame,
    *,
    batch_size: int = 32,
    progress: bool = True,
    tta: bool = False,
) -> FramePrediction:
    """:func:`predict_frame` with the model of ``run_dir`` (PyTorch, CPU)."""
    return predict_frame(
        Predictor.from_run(run_dir), df, batch_size=batch_size, progress=progress, tta=tta
    )


def split_rows(run: RunDir, split: str) -> pd.DataFrame:
    """A run's ``split`` rows as :func:`predict_frame` takes them (the manifest's columns),
    read from its stored predictions: what another model of the same split is predicted on."""
    raw = run.read_predictions_raw(split)
    keep = [c for c in (IMAGE_ID, PATH, LABEL, TRUE_BOXES, *SUBGROUP_COLUMNS) if c in raw.columns]
    return raw[keep].copy()
