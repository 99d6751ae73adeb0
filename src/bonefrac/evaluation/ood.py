"""Out-of-scope detection: is this input like the training radiographs at all?

Two scores (higher = less like the training data):

- ``mahalanobis``: distance of the model's penultimate (pooled backbone) features from the
  train split's mean, with a Ledoit-Wolf shrunk covariance (stable when images are fewer than
  feature dimensions); mean and precision matrix are stored in ``RUN/ood.safetensors``;
- ``energy``: ``-logsumexp(0, logit)`` of the single fracture logit (no statistics).

``bonefrac ood RUN`` fits the statistics on the TRAIN split of the run's manifest (images the
model was trained on; at most ``max_images``), scores val, and sets the cut-off at a high
percentile of val (in-scope by construction): with the default 99, about 1 % of in-scope
images are flagged. The record goes to model.json (``ood``); the :class:`Predictor` then
returns ``ood_score`` and ``out_of_scope`` for each input (``ood_reason`` ``features`` when
the score put it there). A DICOM file of another modality, a colour image and a blank frame are
out of scope whatever their score, with or without a fitted detector
(:mod:`bonefrac.inference.scope`).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.data.schema import PATH, SOURCE, SPLIT
from bonefrac.errors import ConfigError, DataError, RunDirError
from bonefrac.fileio import file_sha256
from bonefrac.inference.loop import FileInputs, collect
from bonefrac.inference.ood_stats import (
    MahalanobisStats,
    energy_score,
    scores_for,
)
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir

log = logging.getLogger(__name__)

METHODS = ("mahalanobis", "energy")


def image_features(
    predictor: Any, sources: Sequence[Any], batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Penultimate features and logits of the inputs that decode (and their indices)."""
    inputs = FileInputs(sources, predictor.image_size, predictor.clahe)
    out = collect(predictor, inputs, "features", batch_size=batch_size, progress=False)
    for i, reason in out.skipped:
        log.warning("skipped %s: %s", sources[i], reason)
    if not out.indices:
        raise DataError("none of the images could be decoded")
    return out.features, out.logits, out.indices


def image_logits(predictor: Any, sources: Sequence[Any], batch_size: int = 32) -> np.ndarray:
    """The model's logits (as the Predictor answers with them) of the inputs that decode."""
    inputs = FileInputs(sources, predictor.image_size, predictor.clahe)
    out = collect(predictor, inputs, "logits", batch_size=batch_size, progress=False)
    if not out.indices:
        raise DataError("none of the images could be decoded")
    return out.logits


def _train_paths(run: RunDir, max_images: int, seed: int) -> list[str]:
    from bonefrac.data.schema import read_manifest

    cfg = run.config()
    manifest = run.meta().get("manifest") or cfg.data.manifest
    if not manifest or not Path(manifest).is_file():
        raise DataError(
            f"{run.meta_path}: the run's manifest {manifest!r} is not here; point the run at "
            f"this machine's copy with 'bonefrac relocate {run.path} --manifest CSV'"
        )
    df = read_manifest(Path(manifest), require_split=True)
    df = df[df[SPLIT].astype(str) == "train"]
    if cfg.data.sources and SOURCE in df.columns:
        df = df[df[SOURCE].astype(str).isin(cfg.data.sources)]
    if df.empty:
        raise DataError(f"{manifest}: no train rows to fit the out-of-scope statistics on")
    if len(df) > max_images:
        df = df.sample(n=max_images, random_state=seed)
    return df[PATH].astype(str).tolist()


def fit_ood(
    run_dir: str | Path,
    method: str = "mahalanobis",
    *,
    percentile: float = 99.0,
    max_images: int = 2000,
    batch_size: int = 32,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Fit the out-of-scope detector (train features, val cut-off); write it into the run."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if not 50 <= percentile < 100:
        raise ConfigError(f"--percentile {percentile}: must be in [50, 100), e.g. 99")
    run = RunDir.open(run_dir, writable=True)
    meta = run.meta()
    if meta.ood is not None and not force:
        raise RunDirError(f"{run.meta_path}: already has an out-of-scope detector; pass --force "
                          "to fit it again")  # fmt: skip
    predictor = Predictor.from_run(run)
    stats = None
    n_train = 0
    if method == "mahalanobis":
        feats, _, kept = image_features(predictor, _train_paths(run, max_images, seed),
                                        batch_size)  # fmt: skip
        stats = MahalanobisStats.fit(feats)
        n_train = len(kept)
    val_paths = run.predictions("val")[PATH].astype(str).tolist()
    if method == "energy":
        # the logits the Predictor scores at prediction time: a localising run's are fused
        # with its map's peak, which the class head's logits on the features are not
        val_scores = energy_score(image_logits(predictor, val_paths, batch_size))
    else:
        vf, vz, _ = image_features(predictor, val_paths, batch_size)
        val_scores = scores_for(method, vf, vz, stats)
    cutoff = float(np.percentile(val_scores, percentile))
    record: dict[str, Any] = {
        "method": method,
        "cutoff": cutoff,
        "percentile": float(percentile),
        "fitted_on": "train",
        "n_train": n_train,
        "val_n": len(val_scores),
        "val_flagged": float(np.mean(val_scores > cutoff)),
        "weights_sha256": meta.weights_sha256,
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if stats is not None:
        stats.save(run.ood_stats_path)
        record["stats_sha256"] = file_sha256(run.ood_stats_path)
        record["feature_dim"] = int(stats.mean.shape[0])
    run.update_meta(ood=record)
    return record
