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

The same command fits the **appearance rule** (:mod:`bonefrac.inference.appearance`): a
Gaussian of a fixed ImageNet encoder's multi-level features of the same train images (one
decoding serves both fits), its cut-off at val's :data:`APPEARANCE_PERCENTILE` th
percentile, stored as ``RUN/appearance.safetensors`` and model.json's ``appearance`` record.
It refuses greyscale photographs, documents, screenshots, synthetic images and CT / MR / US
pixels whatever the run's model learnt.
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
from bonefrac.inference import appearance
from bonefrac.inference.loop import FileInputs, batches
from bonefrac.inference.ood_stats import MahalanobisStats, energy_score, scores_for
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir

log = logging.getLogger(__name__)

METHODS = ("mahalanobis", "energy")
#: The appearance rule's cut-off: this percentile of val's appearance scores. Measured with
#: ``bench/nonradiograph_probes.py`` (see docs/scope.md): at 99.5 the rule flags 0.5 % of val
#: by construction and about as much of test, while every probe lies above it.
APPEARANCE_PERCENTILE = 99.5


def _pass(
    predictor: Any, sources: Sequence[Any], kind: str, batch_size: int
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """One decoding of ``sources``: the model's features (``kind`` ``features``; else None),
    its logits (as the Predictor answers with them for ``logits``) and the appearance
    features, of the inputs that decode."""
    inputs = FileInputs(sources, predictor.image_size, predictor.clahe)
    feats, logits, looks = [], [], []
    for batch in batches(predictor, inputs, kind, batch_size=batch_size):
        for i, reason in batch.skipped:
            log.warning("skipped %s: %s", sources[i], reason)
        if not batch.inputs:
            continue
        if batch.features is not None:
            feats.append(batch.features)
        logits.append(batch.logits)
        looks.append(appearance.appearance_features(batch.inputs))
    if not logits:
        raise DataError("none of the images could be decoded")
    return (np.concatenate(feats) if feats else None, np.concatenate(logits),
            np.concatenate(looks))  # fmt: skip


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
    train_kind = "features" if method == "mahalanobis" else "logits"
    train_feats, _, train_looks = _pass(
        predictor, _train_paths(run, max_images, seed), train_kind, batch_size
    )
    n_train = len(train_looks)
    if method == "mahalanobis":
        stats = MahalanobisStats.fit(train_feats)
    val_paths = run.predictions("val")[PATH].astype(str).tolist()
    # energy: the logits the Predictor scores at prediction time (a localising run's are fused
    # with its map's peak, which the class head's logits on the features are not)
    vf, vz, val_looks = _pass(predictor, val_paths, "features" if stats else "logits", batch_size)
    val_scores = energy_score(vz) if method == "energy" else scores_for(method, vf, vz, stats)
    cutoff = float(np.percentile(val_scores, percentile))
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record: dict[str, Any] = {
        "method": method,
        "cutoff": cutoff,
        "percentile": float(percentile),
        "fitted_on": "train",
        "n_train": n_train if stats is not None else 0,
        "val_n": len(val_scores),
        "val_flagged": float(np.mean(val_scores > cutoff)),
        "weights_sha256": meta.weights_sha256,
        "updated": now,
    }
    if stats is not None:
        stats.save(run.ood_stats_path)
        record["stats_sha256"] = file_sha256(run.ood_stats_path)
        record["feature_dim"] = int(stats.mean.shape[0])
    looks = fit_appearance(run, train_looks, val_looks)
    record["appearance_cutoff"] = looks["cutoff"]
    run.update_meta(ood=record, appearance=looks)
    return record


def _looks(run: RunDir, sources: Sequence[Any], batch_size: int) -> np.ndarray:
    """The appearance features of the inputs that decode (no model pass)."""
    meta = run.meta()
    inputs = FileInputs(sources, meta.image_size, meta.clahe)
    out, chunk = [], []
    for i in range(len(inputs)):
        item = inputs[i]
        if item.prepared is None:
            log.warning("skipped %s: %s", sources[i], item.reason)
            continue
        chunk.append(item.prepared)
        if len(chunk) >= batch_size:
            out.append(appearance.appearance_features(chunk))
            chunk = []
    if chunk:
        out.append(appearance.appearance_features(chunk))
    if not out:
        raise DataError("none of the images could be decoded")
    return np.concatenate(out)


def refit_appearance(
    run_dir: str | Path, *, max_images: int = 2000, batch_size: int = 32, seed: int = 0
) -> dict[str, Any]:
    """Fit the appearance rule alone (train images of the run's manifest, val cut-off) and
    store it, leaving the feature detector as it is: what ``bonefrac ood`` fits beside it,
    without the model's pass (the rule does not depend on the model)."""
    run = RunDir.open(run_dir, writable=True)
    train = _looks(run, _train_paths(run, max_images, seed), batch_size)
    val = _looks(run, run.predictions("val")[PATH].astype(str).tolist(), batch_size)
    record = fit_appearance(run, train, val)
    run.update_meta(appearance=record)
    return record


def fit_appearance(
    run: RunDir,
    train_features: np.ndarray,
    val_features: np.ndarray,
    percentile: float = APPEARANCE_PERCENTILE,
) -> dict[str, Any]:
    """The appearance rule from train and val appearance features: the statistics written to
    ``RUN/appearance.safetensors``, the record for model.json returned."""
    stats = appearance.fit_stats(train_features)
    val_scores = stats.score(val_features)
    cutoff = float(np.percentile(val_scores, percentile))
    stats.save(run.appearance_stats_path)
    return {
        "cutoff": cutoff,
        "percentile": float(percentile),
        "features": appearance.spec(),
        "feature_dim": int(stats.mean.shape[0]),
        "fitted_on": "train",
        "n_train": len(train_features),
        "val_n": len(val_scores),
        "val_flagged": float(np.mean(val_scores > cutoff)),
        "stats_sha256": file_sha256(run.appearance_stats_path),
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
