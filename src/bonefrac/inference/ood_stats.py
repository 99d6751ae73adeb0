"""Out-of-scope scores of a run's model: the statistics and score functions the Predictor uses.

Fitting them (``bonefrac ood``) lives in :mod:`bonefrac.evaluation.ood`; the rules that put an
input out of scope whatever its score (modality, colour, blank frame) in
:mod:`bonefrac.inference.scope`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.errors import DataError, RunDirError
from bonefrac.fileio import atomic_path, file_sha256
from bonefrac.rundir import RunDir


def energy_score(logits: Any) -> np.ndarray:
    """``-logsumexp([0, logit])``: the energy of the two-class logits ``(0, logit)``."""
    return -np.logaddexp(0.0, np.asarray(logits, dtype=float))


#: The statistics file's layout (its safetensors metadata ``format``); another is refused.
STATS_FORMAT = "mahalanobis-triu-f32/1"
TRIU_KEY = "precision_triu"


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
        """The mean (float64) and the precision matrix's upper triangle in float32
        (:data:`STATS_FORMAT`): a quarter of the full float64 matrix, so a Lite0's 1280-d
        statistics take 3.3 MB, not 13 MB (the distance moves by under 1e-4 relative)."""
        from safetensors.numpy import save_file

        rows, cols = np.triu_indices(len(self.mean))
        tensors = {"mean": self.mean, TRIU_KEY: self.precision[rows, cols].astype(np.float32)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": STATS_FORMAT})

    @classmethod
    def load(cls, path: Path) -> MahalanobisStats:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                found = (fh.metadata() or {}).get("format")
                data = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
            raise RunDirError(
                f"{path}: cannot read the out-of-scope statistics ({exc}); re-run 'bonefrac ood'"
            ) from None
        if found != STATS_FORMAT or TRIU_KEY not in data or "mean" not in data:
            raise RunDirError(
                f"{path}: out-of-scope statistics of another format ({found or 'unversioned'}, "
                f"this bonefrac reads {STATS_FORMAT}); re-run 'bonefrac ood RUN --force'"
            )
        mean = np.asarray(data["mean"], dtype=np.float64)
        dim = len(mean)
        triu = np.asarray(data[TRIU_KEY], dtype=np.float64)
        if triu.shape != (dim * (dim + 1) // 2,):
            raise RunDirError(f"{path}: precision triangle of {triu.shape} values does not fit "
                              f"a {dim}-d mean; re-run 'bonefrac ood RUN --force'")  # fmt: skip
        precision = np.zeros((dim, dim))
        rows, cols = np.triu_indices(dim)
        precision[rows, cols] = triu
        precision[cols, rows] = triu
        return cls(mean, precision)


def load_stats(run: RunDir, record: Any) -> MahalanobisStats:
    """The run's statistics, refused when the file or weights differ from the record's."""
    path = run.ood_stats_path
    if not path.is_file():
        raise RunDirError(f"{path}: not found but the run's metadata has an 'ood' record; re-run "
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
