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
returns ``ood_score`` and ``out_of_scope`` for each input. An input without contrast (a blank
frame: :func:`blank_frames`) is out of scope whatever its score.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.errors import ConfigError, DataError, ImageDecodeError, RunDirError
from bonefrac.fileio import atomic_path, file_sha256
from bonefrac.rundir import RunDir

log = logging.getLogger(__name__)

METHODS = ("mahalanobis", "energy")
#: A letterboxed input whose grey levels span less than this is a blank frame: out of scope
#: whatever its score (measured: a black frame's features sit close to the train mean, so the
#: Mahalanobis distance alone lets it through).
MIN_CONTRAST = 8


def blank_frames(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """True for inputs with (almost) no contrast: max - min grey level below MIN_CONTRAST."""
    return np.array([int(a.max()) - int(a.min()) < MIN_CONTRAST for a in arrays], dtype=bool)


def energy_score(logits: Any) -> np.ndarray:
    """``-logsumexp([0, logit])``: the energy of the two-class logits ``(0, logit)``."""
    return -np.logaddexp(0.0, np.asarray(logits, dtype=float))


class MahalanobisStats:
    """Train-feature mean and shrunk precision matrix; :meth:`score` is the distance."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)

    @classmethod
    def fit(cls, features: np.ndarray) -> MahalanobisStats:
        from sklearn.covariance import LedoitWolf

        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise DataError("the out-of-scope statistics need features of 2 or more images")
        lw = LedoitWolf().fit(feats)
        return cls(lw.location_, lw.precision_)

    def score(self, features: np.ndarray) -> np.ndarray:
        d = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        with atomic_path(path) as tmp:
            save_file({"mean": self.mean, "precision": self.precision}, str(tmp))

    @classmethod
    def load(cls, path: Path) -> MahalanobisStats:
        from safetensors.numpy import load_file

        try:
            data = load_file(str(path))
            return cls(data["mean"], data["precision"])
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
            raise RunDirError(
                f"{path}: cannot read the out-of-scope statistics ({exc}); re-run 'bonefrac ood'"
            ) from None


def load_stats(run: RunDir, record: Any) -> MahalanobisStats:
    """The run's statistics, refused when the file or weights differ from the record's."""
    path = run.ood_stats_path
    if not path.is_file():
        raise RunDirError(f"{path}: not found but model.json has an 'ood' record; re-run "
                          f"'bonefrac ood {run.path} --force'")  # fmt: skip
    if record.stats_sha256 and file_sha256(path) != record.stats_sha256:
        raise RunDirError(f"{path}: differs from the file 'bonefrac ood' wrote (SHA-256); "
                          f"re-run 'bonefrac ood {run.path} --force'")  # fmt: skip
    weights = run.meta().weights_sha256
    if record.weights_sha256 and weights and weights != record.weights_sha256:
        raise RunDirError(f"{path}: fitted on other weights than the run's; re-run "
                          f"'bonefrac ood {run.path} --force'")  # fmt: skip
    return MahalanobisStats.load(path)


def scores_for(
    method: str, features: np.ndarray, logits: np.ndarray, stats: MahalanobisStats | None
) -> np.ndarray:
    if method == "energy":
        return energy_score(logits)
    if stats is None:
        raise RunDirError("mahalanobis out-of-scope score without statistics")
    return stats.score(features)


def image_features(
    predictor: Any, sources: Sequence[Any], batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Penultimate features and logits of the inputs that decode (and their indices)."""
    feats: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    kept: list[int] = []
    arrays: list[np.ndarray] = []

    def flush() -> None:
        if arrays:
            f, z = predictor.features(arrays)
            feats.append(f)
            logits.append(z)
            arrays.clear()

    for i, src in enumerate(sources):
        try:
            arrays.append(predictor.prepare(src, name=str(src) if isinstance(src, (str, Path))
                                            else None).array)  # fmt: skip
            kept.append(i)
        except ImageDecodeError as exc:
            log.warning("skipped %s", exc)
        if len(arrays) >= batch_size:
            flush()
    flush()
    if not kept:
        raise DataError("none of the images could be decoded")
    return np.concatenate(feats), np.concatenate(logits), kept


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
    df = df[df["split"].astype(str) == "train"]
    if cfg.data.sources and "source" in df.columns:
        df = df[df["source"].astype(str).isin(cfg.data.sources)]
    if df.empty:
        raise DataError(f"{manifest}: no train rows to fit the out-of-scope statistics on")
    if len(df) > max_images:
        df = df.sample(n=max_images, random_state=seed)
    return df["path"].astype(str).tolist()


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
    from bonefrac.inference.predictor import Predictor

    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if not 50 <= percentile < 100:
        raise ConfigError(f"--percentile {percentile}: must be in [50, 100), e.g. 99")
    run = RunDir.open(run_dir)
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
    val_paths = run.predictions("val")["path"].astype(str).tolist()
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
