"""Reading a run directory for evaluation: model.json, predictions, probabilities.

Probability convention: the run's decision is ``sigmoid(logit / temperature) >= threshold``.
``temperature`` is 1.0 until ``bonefrac calibrate`` fits one, so the threshold stored in
model.json always applies to the *calibrated* probability.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.data.schema import binary_labels
from bonefrac.errors import RunDirError
from bonefrac.evaluation.metrics import apply_temperature, logit_from_prob
from bonefrac.models.runio import read_model_json, update_model_json  # noqa: F401 (re-export)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: run directory not found (train one with 'bonefrac train')")
    if not (run_dir / "model.json").is_file():
        raise RunDirError(
            f"{run_dir / 'model.json'}: missing; is {run_dir} a run directory written by "
            "'bonefrac train'?"
        )
    return run_dir


def load_model_json(run_dir: str | Path) -> dict[str, Any]:
    return read_model_json(check_run_dir(run_dir))


def run_threshold(model: dict[str, Any]) -> float:
    t = float(model.get("threshold", 0.5))
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise RunDirError(f"model.json: threshold {t} is not a probability in [0, 1]")
    return t


def run_temperature(model: dict[str, Any]) -> float:
    t = model.get("temperature", 1.0)
    t = 1.0 if t is None else float(t)
    if not t > 0 or not math.isfinite(t):
        raise RunDirError(f"model.json: temperature {t} must be a positive number")
    return t


def prediction_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / "predictions" / f"{name}.csv"


def available_predictions(run_dir: str | Path) -> list[str]:
    folder = Path(run_dir) / "predictions"
    return sorted(p.stem for p in folder.glob("*.csv")) if folder.is_dir() else []


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise RunDirError(
            f"{name!r}: not a usable prediction name; use letters, digits, '-', '_' or '.'"
        )
    return name


def load_predictions(run_dir: str | Path, name: str) -> pd.DataFrame:
    """Read ``RUN/predictions/<name>.csv`` and check it has image_id, label and prob/logit."""
    check_name(name)
    path = prediction_path(run_dir, name)
    if not path.is_file():
        have = ", ".join(available_predictions(run_dir)) or "none"
        raise RunDirError(
            f"{path}: not found (available predictions: {have}); training writes val/test, "
            "'bonefrac evaluate RUN --manifest CSV --name NAME' writes others"
        )
    df = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False, na_values=[""])
    return validate_predictions(df, path)


def validate_predictions(df: pd.DataFrame, source: object) -> pd.DataFrame:
    if "label" not in df.columns:
        raise RunDirError(f"{source}: missing column 'label'")
    if "prob" not in df.columns and "logit" not in df.columns:
        raise RunDirError(f"{source}: needs a 'prob' or 'logit' column")
    df = df.copy()
    if "image_id" not in df.columns:
        if "path" not in df.columns:
            raise RunDirError(f"{source}: needs an 'image_id' or 'path' column")
        df["image_id"] = [Path(str(p)).name for p in df["path"]]
    df["image_id"] = df["image_id"].astype(str)
    df["label"] = binary_labels(df["label"], source, RunDirError)
    for col in ("prob", "logit"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
            if df[col].isna().any():
                raise RunDirError(f"{source}: column '{col}' has missing or non-numeric values")
    if len(df) == 0:
        raise RunDirError(f"{source}: no rows")
    return df


def raw_logits(df: pd.DataFrame) -> np.ndarray:
    """The model's logits; recovered from ``prob`` when the CSV has no ``logit`` column."""
    if "logit" in df.columns:
        return df["logit"].to_numpy(dtype=float)
    return logit_from_prob(df["prob"].to_numpy(dtype=float))


def run_probabilities(df: pd.DataFrame, temperature: float = 1.0) -> np.ndarray:
    """Probabilities the run's threshold applies to: ``sigmoid(logit / T)``.

    With ``T == 1`` the CSV's ``prob`` column is used as is (when present).
    """
    if temperature == 1.0 and "prob" in df.columns:
        return df["prob"].to_numpy(dtype=float)
    return apply_temperature(raw_logits(df), temperature)
