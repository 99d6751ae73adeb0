"""Study-level metrics for ``bonefrac evaluate --study-column COL``.

A study is positive when any of its images is (label = max of the image labels); its
probability aggregates the image probabilities (:mod:`bonefrac.inference.studies`, ``max`` by
default) and is scored at the run's threshold with the same bootstrap CIs as the images (the
bootstrap resamples studies, so the CIs respect that views of one study are not independent).

The study ids come from the predictions CSV's ``COL`` column when it has one, else from the
manifest (``--manifest``, or the run's own training manifest), joined on the image path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.data.schema import read_manifest
from bonefrac.errors import DataError
from bonefrac.inference.studies import DEFAULT_AGGREGATION, aggregate_frame
from bonefrac.rundir import ModelMeta, RunDir, metrics_entry
from bonefrac.rundir.predictions import LABEL, PATH, PROB


def study_ids(
    df: pd.DataFrame, run: RunDir, study_column: str, manifest: str | Path | None
) -> pd.Series:
    """The study id of every prediction row (text); a row without one is a :class:`DataError`."""
    if study_column in df.columns:
        ids, source = df[study_column], "the predictions"
    else:
        source = str(manifest) if manifest is not None else run.config().data.manifest
        if not source:
            raise DataError(
                f"{run.path}: the predictions have no '{study_column}' column and the run "
                "records no manifest; pass --manifest with that column"
            )
        frame = read_manifest(source)
        if study_column not in frame.columns:
            raise DataError(
                f"{source}: no '{study_column}' column; add the study id of every image "
                "(the shared datasets have none)"
            )
        by_path = dict(zip(frame[PATH].astype(str), frame[study_column], strict=True))
        ids = df[PATH].astype(str).map(by_path)
    ids = ids.astype("string").str.strip()
    missing = ids.isna() | (ids == "")
    if missing.any():
        first = df.loc[missing.to_numpy(), PATH].iloc[0] if PATH in df else "?"
        raise DataError(
            f"{source}: {int(missing.sum())} image(s) without a '{study_column}' value "
            f"(first: {first}); give every image its study id"
        )
    return ids.astype(str)


def study_metrics(
    df: pd.DataFrame,
    prob: np.ndarray,
    studies: pd.Series,
    meta: ModelMeta,
    how: str = DEFAULT_AGGREGATION,
    n_boot: int = 1000,
    seed: int = 0,
    study_column: str = "",
) -> dict[str, Any]:
    """A metrics.json entry for the studies (same shape as the image entry)."""
    frame = pd.DataFrame({"study": studies.to_numpy(), PROB: prob, LABEL: df[LABEL].to_numpy()})
    agg = aggregate_frame(frame, "study", "prob", how)
    entry = metrics_entry(
        agg[LABEL].to_numpy(), agg[PROB].to_numpy(), meta, n_boot=n_boot, seed=seed
    )
    entry["settings"]["aggregation"] = how
    entry["settings"]["study_column"] = study_column
    entry["support"]["n_images"] = int(len(frame))
    return entry
