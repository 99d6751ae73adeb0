"""Predict every row of a manifest-like table (``path, label``) with a run's model.

Used by ``bonefrac evaluate --manifest`` (external validation) and the benchmarks. Images go
through :class:`~bonefrac.inference.predictor.Predictor`, the same door as ``predict`` and
``serve``. An image that cannot be decoded is skipped and listed, so one bad file in a
hospital's CSV does not stop the evaluation of the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bonefrac.data.schema import path_image_ids
from bonefrac.errors import DataError, ImageDecodeError
from bonefrac.inference.predictor import Predictor, PreparedInput, decoded_batches
from bonefrac.rundir import check_finite, predictions_frame

log = logging.getLogger(__name__)


@dataclass
class FramePrediction:
    """The predictions CSV for the rows that decoded, and the rows that did not."""

    predictions: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def predict_frame(
    predictor: Predictor,
    df: pd.DataFrame,
    *,
    batch_size: int = 32,
    progress: bool = True,
    tta: bool = False,
) -> FramePrediction:
    """Predictions (predictions CSV layout) for the rows of ``df`` whose image decodes."""
    from rich.progress import Progress

    frame = df.reset_index(drop=True).copy()
    if "image_id" not in frame.columns:
        frame["image_id"] = path_image_ids(frame["path"].astype(str).tolist())
    kept: list[int] = []
    failed: list[tuple[int, ImageDecodeError]] = []
    logits: list[np.ndarray] = []
    loc_rows: list[dict] = []
    truth = frame["boxes"] if "boxes" in frame.columns else [None] * len(frame)
    paths = frame["path"].astype(str).tolist()

    def run_batch(indices: list[int], batch: list[PreparedInput]) -> None:
        arrays = [p.array for p in batch]
        if not predictor.localizes:
            logits.append(predictor.logits(arrays, tta=tta))
            return
        from bonefrac.inference.localize import loc_row, row_boxes, upsample_maps

        batch_logits, map_logits = predictor.logits_and_map_logits(arrays)
        if tta:  # the map stays the plain image's
            batch_logits = predictor.logits(arrays, tta=True)
        logits.append(batch_logits)
        probs = upsample_maps(map_logits, predictor.image_size)
        for prob, raw, prepared, i in zip(probs, map_logits, batch, indices, strict=True):
            truth_i = row_boxes(truth[i])
            row = loc_row(prob, prepared.decoded_size, truth_i, predictor.box_threshold, raw=raw)
            loc_rows.append(row)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("predicting", total=len(frame))
        for indices, batch in decoded_batches(predictor, paths, batch_size, failed):
            run_batch(indices, batch)
            kept += indices
            bar.update(task, completed=indices[-1] + 1)
    skipped = [
        (paths[i], f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason) for i, exc in failed
    ]
    if not kept:
        raise DataError(
            f"none of the {len(frame)} images could be decoded (first: {skipped[0][0]}: "
            f"{skipped[0][1]})"
            if skipped
            else "no rows to predict"
        )
    all_logits = check_finite(np.concatenate(logits), predictor.name or "model")
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    extra = None
    if predictor.localizes:
        from bonefrac.inference.localize import loc_columns

        extra = loc_columns(loc_rows)
    preds = predictions_frame(frame.iloc[kept].reset_index(drop=True), all_logits, extra)
    return FramePrediction(preds, skipped)


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
