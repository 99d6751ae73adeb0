"""The run directory: its layout, and the one place that reads and writes its files.

::

    runs/<name>/
      config.yaml          resolved experiment config
      model.safetensors    weights
      model.json           model metadata (:class:`~bonefrac.rundir.meta.ModelMeta`)
      model.onnx           ONNX export (optional)
      ood.safetensors      out-of-scope detector statistics (optional, 'bonefrac ood')
      checkpoints/         Lightning checkpoints (last.ckpt, best.ckpt)
      history.csv          per-epoch training metrics
      metrics.json         per-split metrics with confidence intervals
      predictions/<name>.csv
      plots/*.png, subgroups/<name>.csv, report.html
      explain/<method>/<image>.png   per-image overlays ('bonefrac explain'; :func:`overlay_stem`)
      explain/grid.png, explain/localization.json

No other module spells these names: they ask a :class:`RunDir` for the path.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bonefrac.data.schema import SUBGROUP_COLUMNS, binary_labels, path_image_ids
from bonefrac.errors import RunDirError
from bonefrac.fileio import atomic_open, read_json, write_csv, write_json
from bonefrac.metrics import compute_metrics, logit_from_prob, sigmoid
from bonefrac.rundir.meta import ModelMeta

if TYPE_CHECKING:
    from bonefrac.config import ExperimentConfig

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
ONNX = "model.onnx"
OOD_STATS = "ood.safetensors"
METRICS = "metrics.json"
HISTORY = "history.csv"
REPORT = "report.html"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PREDICTIONS = "predictions"
PLOTS = "plots"
SUBGROUPS = "subgroups"
EXPLAIN = "explain"

#: Optional predictions-CSV column: the logit's spread over test-time augmentations (cached).
TTA_STD_COLUMN = "tta_std"
#: Splits written by training; other prediction names come from ``evaluate --manifest``.
RUN_SPLITS = ("val", "test")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Files of ``explain/`` (and of each method folder) that are not one image's overlay.
EXPLAIN_GRID = "grid.png"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIX = re.compile(r"\.(jpe?g|png|bmp|tiff?|webp|dcm|dicom)$", re.IGNORECASE)
log = logging.getLogger(__name__)


def overlay_stem(image_id: str) -> str:
    """The file stem of an image's overlay in ``explain/<method>/`` (``a/b c.jpg`` -> ``a_b_c``)."""
    stem = _IMAGE_SUFFIX.sub("", image_id.strip())
    return _UNSAFE.sub("_", stem).strip("._") or "image"


def check_name(name: str) -> str:
    """A prediction / metrics key usable as a file name."""
    if not _NAME_RE.match(name or ""):
        raise RunDirError(
            f"{name!r}: not a usable prediction name; use letters, digits, '-', '_' or '.'"
        )
    return name


@dataclass(frozen=True)
class RunDir:
    """A run directory on disk. Build with :meth:`open` (a finished run), :meth:`create`
    (a new run) or :meth:`for_resume` (a run whose training may not have finished)."""

    path: Path

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """A run written by ``bonefrac train``; refuses anything without model.json."""
        run = cls(Path(path))
        if not run.path.is_dir():
            raise RunDirError(
                f"{run.path}: run directory not found (train one with 'bonefrac train')"
            )
        if not run.meta_path.is_file():
            raise RunDirError(
                f"{run.meta_path}: missing; is {run.path} a run directory written by "
                "'bonefrac train' (and did its training finish)?"
            )
        return run

    @classmethod
    def create(cls, path: str | Path, force: bool = False) -> RunDir:
        """An empty run directory at ``path``; a non-empty one is replaced only with ``force``."""
        run = cls(Path(path))
        if run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
            if not force:
                raise RunDirError(
                    f"{run.path}: already exists and is not empty; pass --force to overwrite"
                )
            if run.path.is_dir():
                shutil.rmtree(run.path)
            else:
                run.path.unlink()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{run.path}: cannot create the run directory ({exc})") from None
        return run

    @classmethod
    def for_resume(cls, path: str | Path) -> RunDir:
        """A run with a config and a last checkpoint to continue from."""
        run = cls(Path(path))
        if not run.config_path.is_file():
            raise RunDirError(f"{run.path}: no {CONFIG}; not a bonefrac run directory")
        if not run.last_checkpoint.is_file():
            raise RunDirError(
                f"{run.last_checkpoint}: not found; nothing to resume (train again instead)"
            )
        return run

    # --- paths ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def meta_path(self) -> Path:
        return self.path / MODEL_JSON

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX

    @property
    def ood_stats_path(self) -> Path:
        return self.path / OOD_STATS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / LAST_CHECKPOINT

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS

    @property
    def subgroups_dir(self) -> Path:
        return self.path / SUBGROUPS

    @property
    def explain_dir(self) -> Path:
        return self.path / EXPLAIN

    def explain_overlays(self) -> dict[str, Path]:
        """Per-image overlays in ``explain/`` and its method folders, by :func:`overlay_stem`;
        where several methods drew the same image, the newest file wins."""
        folder = self.explain_dir
        if not folder.is_dir():
            return {}
        found = [p for p in (*folder.glob("*.png"), *folder.glob("*/*.png")) if p.is_file()]
        found = [p for p in found if p.name != EXPLAIN_GRID]
        found.sort(key=lambda p: (p.stat().st_mtime, str(p)))
        return {p.stem: p for p in found}

    @property
    def predictions_dir(self) -> Path:
        return self.path / PREDICTIONS

    def prediction_path(self, name: str) -> Path:
        return self.predictions_dir / f"{check_name(name)}.csv"

    def subgroup_path(self, name: str) -> Path:
        return self.subgroups_dir / f"{check_name(name)}.csv"

    def plot_path(self, stem: str) -> Path:
        return self.plots_dir / f"{stem}.png"

    # --- model.json -----------------------------------------------------------------------
    def raw_meta(self) -> dict[str, Any]:
        """model.json as written (key order kept), not validated."""
        path = self.meta_path
        if not path.is_file():
            raise RunDirError(
                f"{path}: not found; is {self.path} a run directory made by 'bonefrac train'?"
            )
        try:
            data = read_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{path}: not valid JSON ({exc}); restore it or retrain") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path}: expected a JSON object; restore it or retrain")
        return data

    def meta(self) -> ModelMeta:
        """model.json, validated (threshold, temperature, normalisation, input size)."""
        return ModelMeta.parse(self.raw_meta(), self.meta_path)

    def write_meta(self, meta: dict[str, Any]) -> ModelMeta:
        """Validate and write model.json atomically (keys keep their order)."""
        checked = ModelMeta.parse(meta, self.meta_path)
        write_json(self.meta_path, meta)
        return checked

    def update_meta(self, **changes: Any) -> ModelMeta:
        """Read-modify-write model.json, keeping unknown keys; validated before writing.

        A refer rule fitted at another threshold or temperature than the new ones is removed
        (with a warning), unless ``changes`` sets ``refer`` itself.
        """
        meta = self.raw_meta()
        meta.update(changes)
        rule = meta.get("refer")
        if "refer" not in changes and isinstance(rule, dict):
            same = rule.get("threshold") == meta.get("threshold", 0.5) and rule.get(
                "temperature", 1.0
            ) == (meta.get("temperature") or 1.0)
            if not same:
                log.warning(
                    "%s: removed the refer rule (fitted at another threshold or temperature); "
                    "re-run 'bonefrac threshold %s --refer-coverage %s' to restore it",
                    self.meta_path, self.path, rule.get("coverage"),
                )  # fmt: skip
                meta.pop("refer")
        return self.write_meta(meta)

    # --- config.yaml ----------------------------------------------------------------------
    def config(self) -> ExperimentConfig:
        from bonefrac.config import load_config

        return load_config(self.config_path)

    def write_config(self, cfg: ExperimentConfig) -> None:
        from bonefrac.config import config_to_yaml

        with atomic_open(self.config_path, "w", encoding="utf-8") as fh:
            fh.write(config_to_yaml(cfg))

    # --- predictions ----------------------------------------------------------------------
    def available_predictions(self) -> list[str]:
        folder = self.predictions_dir
        return sorted(p.stem for p in folder.glob("*.csv")) if folder.is_dir() else []

    def read_predictions_raw(self, name: str) -> pd.DataFrame:
        """``predictions/<name>.csv`` as text columns (for rewriting), not validated."""
        path = self.prediction_path(name)
        if not path.is_file():
            have = ", ".join(self.available_predictions()) or "none"
            raise RunDirError(
                f"{path}: not found (available predictions: {have}); training writes val/test, "
                "'bonefrac evaluate RUN --manifest CSV --name NAME' writes others"
            )
        return pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)

    def predictions(self, name: str) -> pd.DataFrame:
        """``predictions/<name>.csv`` checked: image_id, 0/1 labels, numeric prob/logit."""
        path = self.prediction_path(name)
        self.read_predictions_raw(name)  # the not-found message
        df = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False, na_values=[""])
        return validate_predictions(df, path)

    def write_predictions(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.prediction_path(name)
        write_csv(path, frame)
        return path

    # --- metrics.json ---------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """metrics.json (``{}`` when absent)."""
        path = self.metrics_path
        if not path.is_file():
            return {}
        try:
            data = read_json(path)
        except ValueError as exc:
            raise RunDirError(
                f"{path}: not valid JSON ({exc}); delete it and re-evaluate"
            ) from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path}: expected a JSON object; delete it and re-evaluate")
        return data

    def merge_metrics(self, key: str, metrics: dict[str, Any]) -> Path:
        """Set ``metrics.json[key]`` (read-modify-write, atomic)."""
        data = self.metrics()
        data[key] = metrics
        write_json(self.metrics_path, data)
        return self.metrics_path

    def relocate(self, manifest: str | Path) -> dict[str, Any]:
        """Point the run at ``manifest``'s copy of its images (see :mod:`.relocate`)."""
        from bonefrac.rundir.relocate import relocate_run

        return relocate_run(self, manifest)


# --- the predictions CSV ------------------------------------------------------------------


def predictions_frame(
    frame: pd.DataFrame, logits: np.ndarray, extra: dict[str, list[Any]] | None = None
) -> pd.DataFrame:
    """The predictions CSV layout: id, path, label, logit, prob (T = 1), ``extra`` columns (a
    localising run's ``boxes``, ``pred_boxes``, ``map_peak``, ``energy_in_box``), subgroups."""
    logits = np.asarray(logits, dtype=float)
    out = pd.DataFrame(
        {
            "image_id": frame["image_id"].astype(str).to_numpy(),
            "path": frame["path"].astype(str).to_numpy(),
            "label": frame["label"].astype(int).to_numpy(),
            "logit": logits,
            "prob": sigmoid(logits),
        }
    )
    for col, values in (extra or {}).items():
        out[col] = values
    for col in SUBGROUP_COLUMNS:
        if col in frame.columns:
            out[col] = frame[col].to_numpy()
    return out


def validate_predictions(df: pd.DataFrame, source: object) -> pd.DataFrame:
    """Check a predictions table: label 0/1, prob or logit numeric, an id per row."""
    if "label" not in df.columns:
        raise RunDirError(f"{source}: missing column 'label'")
    if "prob" not in df.columns and "logit" not in df.columns:
        raise RunDirError(f"{source}: needs a 'prob' or 'logit' column")
    df = df.copy()
    if "image_id" not in df.columns:
        if "path" not in df.columns:
            raise RunDirError(f"{source}: needs an 'image_id' or 'path' column")
        df["image_id"] = path_image_ids(df["path"].astype(str).tolist())
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


def metrics_entry(
    y_true: np.ndarray, prob: np.ndarray, meta: ModelMeta, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """A metrics.json entry: metrics with CIs at the run's threshold, and the run's settings."""
    metrics = compute_metrics(y_true, prob, meta.threshold, n_boot=n_boot, seed=seed)
    metrics["settings"]["temperature"] = meta.temperature
    metrics["settings"]["threshold_criterion"] = meta.get("threshold_criterion", "default")
    return metrics


def raw_logits(df: pd.DataFrame) -> np.ndarray:
    """The model's logits; recovered from ``prob`` when the CSV has no ``logit`` column."""
    if "logit" in df.columns:
        return df["logit"].to_numpy(dtype=float)
    return logit_from_prob(df["prob"].to_numpy(dtype=float))


def run_probabilities(df: pd.DataFrame, meta: ModelMeta) -> np.ndarray:
    """Probabilities the run's threshold applies to: ``sigmoid(logit / T)``.

    With ``T == 1`` the CSV's ``prob`` column is used as is (when present).
    """
    if meta.temperature == 1.0 and "prob" in df.columns:
        return df["prob"].to_numpy(dtype=float)
    return meta.probability(raw_logits(df))
