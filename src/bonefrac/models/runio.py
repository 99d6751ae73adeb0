"""Reading and writing a run directory's model: ``model.safetensors`` + ``model.json``."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bonefrac.errors import RunDirError
from bonefrac.fileio import atomic_path, read_json, write_json
from bonefrac.models.classifier import FractureClassifier

MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"


def library_versions() -> dict[str, str]:
    import lightning
    import timm
    import torchvision

    import bonefrac

    return {
        "bonefrac": bonefrac.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


def save_weights(model: FractureClassifier, run_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(run_dir) / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return path


def read_model_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MODEL_JSON
    if not path.is_file():
        raise RunDirError(
            f"{path}: not found; is {run_dir} a run directory made by 'bonefrac train'?"
        )
    return read_json(path)


def update_model_json(run_dir: str | Path, **changes: Any) -> dict[str, Any]:
    """Read-modify-write ``model.json`` atomically, keeping unknown keys."""
    meta = read_model_json(run_dir)
    meta.update(changes)
    write_json(Path(run_dir) / MODEL_JSON, meta)
    return meta


class RunMetaView:
    """Read-only accessors for the ``model.json`` settings every consumer needs (``self.meta``)."""

    meta: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta["std"])

    @property
    def clahe(self) -> bool:
        return bool(self.meta.get("preprocess", {}).get("clahe", False))

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0) or 1.0)


@dataclass
class LoadedRun(RunMetaView):
    """A run's model in eval mode on CPU, plus its ``model.json``."""

    run_dir: Path
    model: FractureClassifier
    meta: dict[str, Any]


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild the architecture from model.json and load ``model.safetensors`` (no pickle)."""
    from safetensors.torch import load_file

    from bonefrac.models.registry import build_model

    run_dir = Path(run_dir)
    meta = read_model_json(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise RunDirError(f"{weights}: not found; training did not finish for {run_dir}")
    model = build_model(meta["architecture"], pretrained="none", dropout=meta.get("dropout", 0.0))
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunDirError(
            f"{weights}: does not match architecture {meta['architecture']!r}"
            f" (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.eval()
    return LoadedRun(run_dir, model, meta)
