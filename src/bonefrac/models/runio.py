"""A run's model on disk: ``model.safetensors`` written at training (an ensemble run: one file
per member under ``members/``), loaded and checked later.

Loading fails closed: the weights must match the SHA-256 recorded in model.json, the file must
be a readable safetensors of the recorded architecture, and the metadata must validate. Any of
these problems is a :class:`RunDirError` naming the file, never a model that answers anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from bonefrac.errors import BonefracError, RunDirError
from bonefrac.fileio import atomic_path, file_sha256
from bonefrac.models.classifier import FractureClassifier
from bonefrac.rundir import ModelMeta, RunDir
from bonefrac.rundir.meta import ScoreFusion


def save_weights(model: FractureClassifier, run: RunDir) -> str:
    """Write ``model.safetensors`` atomically; return its SHA-256 (recorded in model.json)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run.weights_path) as tmp:
        save_file(state, str(tmp))
    return file_sha256(run.weights_path)


def verify_weights(run: RunDir, meta: ModelMeta) -> None:
    """Refuse weights whose SHA-256 differs from model.json's (``weights_sha256``, or each
    ensemble member's)."""
    if meta.ensemble is not None:
        for k, member in enumerate(meta.ensemble.members):
            _check_file(run, run.path / member.file, member.weights_sha256,
                        f"ensemble member {k} ({member.from_run or member.file})")  # fmt: skip
        return
    if meta.weights_sha256 is None:
        raise RunDirError(
            f"{run.meta_path}: records no weights_sha256, so {run.weights_path.name} cannot be "
            "checked for corruption; retrain it with 'bonefrac train'"
        )
    _check_file(run, run.weights_path, meta.weights_sha256, "the weights")


def weights_digest(run: RunDir, meta: ModelMeta) -> str | None:
    """The SHA-256 identity of the weights on disk, as ``weights_sha256`` records it (one
    model: its file's hash; an ensemble: :meth:`EnsembleRecord.digest` of its members' file
    hashes); None when a weights file is missing."""
    import hashlib

    files = run.weight_files(meta)
    if not all(f.is_file() for f in files):
        return None
    if meta.ensemble is None:
        return file_sha256(files[0])
    joined = "\n".join(file_sha256(f) for f in files)
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


def _check_file(run: RunDir, path: Path, sha256: str, what: str) -> None:
    if not path.is_file():
        raise RunDirError(f"{path}: not found; training did not finish for {run.path}")
    if file_sha256(path) != sha256:
        raise RunDirError(
            f"{path}: SHA-256 differs from the one {run.meta_path.name} records for {what}: "
            "the weights are corrupted or were replaced; restore the file or retrain"
        )


@dataclass
class LoadedRun:
    """A run's model in eval mode on CPU, plus its validated ``model.json``."""

    run: RunDir
    model: nn.Module
    meta: ModelMeta


def load_model(run: RunDir, meta: ModelMeta) -> nn.Module:
    """Rebuild the architecture named in model.json and load the checked weights (no pickle):
    a :class:`FractureClassifier`, or an
    :class:`~bonefrac.models.ensemble.EnsembleModel` of them for an ensemble run."""
    verify_weights(run, meta)
    if meta.ensemble is None:
        return _load_one(run, meta, run.weights_path, meta.score_fusion)
    from bonefrac.models.ensemble import EnsembleModel

    members = [
        _load_one(run, meta, run.path / m.file, m.score_fusion) for m in meta.ensemble.members
    ]
    return EnsembleModel(members).eval()


def _load_one(
    run: RunDir, meta: ModelMeta, path: Path, fusion: ScoreFusion | None
) -> FractureClassifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from bonefrac.models.registry import build_model

    try:
        model = build_model(
            meta.architecture,
            pretrained="none",
            dropout=meta.dropout,
            localize=meta.localize,
            loc_levels=meta.loc_levels,
        )
    except BonefracError as exc:
        raise RunDirError(f"{run.meta_path}: architecture {meta.architecture!r}: {exc}") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(
            f"{path}: not a readable safetensors file ({exc}); restore it or retrain"
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise RunDirError(
            f"{path}: does not match architecture {meta.architecture!r} ({str(exc)[:200]})"
        ) from None
    if missing or unexpected:
        raise RunDirError(
            f"{path}: does not match architecture {meta.architecture!r}"
            f" (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if fusion is not None and model.localizes:
        model.score_fusion = fusion.as_tuple()
    return model.eval()


def load_run(run_dir: str | Path | RunDir) -> LoadedRun:
    """Open a finished run: validated model.json and its checked weights, on CPU."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    meta = run.meta()
    return LoadedRun(run, load_model(run, meta), meta)
