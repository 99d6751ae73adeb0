"""The run directory: its layout, and the one place that reads and writes its files.

::

    runs/<name>/
      config.yaml          resolved experiment config
      model.safetensors    weights
      members/<k>.safetensors   an ensemble run's member weights, instead of model.safetensors
      model.json           model metadata (:class:`~bonefrac.rundir.meta.ModelMeta`)
      model.onnx           ONNX export (optional)
      ood.safetensors      out-of-scope detector statistics (optional, 'bonefrac ood')
      appearance.safetensors   appearance gate statistics (optional, 'bonefrac ood')
      checkpoints/         Lightning checkpoints (last.ckpt, best.ckpt)
      history.csv          per-epoch training metrics
      metrics.json         per-split metrics with confidence intervals
      predictions/<name>.csv   the predictions format: :mod:`bonefrac.rundir.predictions`
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

from bonefrac.errors import RunDirError
from bonefrac.fileio import atomic_open, read_json, write_json
from bonefrac.metrics import compute_metrics, decision_metrics
from bonefrac.rundir import predictions as predictions_csv
from bonefrac.rundir.meta import FORMAT_VERSION, ModelMeta
from bonefrac.rundir.shipped import MODEL_CARD, names_line, refuse_write, resolve_run, shipped_name

if TYPE_CHECKING:
    from bonefrac.config import ExperimentConfig

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
MEMBERS = "members"
MODEL_JSON = "model.json"
ONNX = "model.onnx"
OOD_STATS = "ood.safetensors"
APPEARANCE_STATS = "appearance.safetensors"
#: model.json keys that the fits on val after training write (:meth:`RunDir.reset_fits`).
_FIT_KEYS = (
    "ood",
    "refer",
    "rule_out",
    "rule_out_fit",
    "calibration",
    "deploy",
    "onnx",
    "threshold_tuned_on",
    "threshold_updated",
)
METRICS = "metrics.json"
HISTORY = "history.csv"
REPORT = "report.html"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PREDICTIONS = "predictions"
PLOTS = "plots"
SUBGROUPS = "subgroups"
EXPLAIN = "explain"
#: A predictions CSV may be stored gzip-compressed under this suffix (read transparently).
GZIP_SUFFIX = ".gz"

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # RunDir("runs/x") works too

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, writable: bool = False) -> RunDir:
        """A run written by ``bonefrac train``, or a shipped model by name (``default``: see
        :mod:`.shipped`); refuses anything without model.json. ``writable``: the caller will
        write into the run, which a shipped model refuses (work on a copy)."""
        run = cls(resolve_run(path))
        if not run.path.is_dir():
            raise RunDirError(
                f"{run.path}: run directory not found (train one with 'bonefrac train'), and "
                f"not the name of a shipped model ({names_line()}; 'bonefrac models')"
            )
        if writable:
            refuse_write(run.path)
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
    def shipped(self) -> str | None:
        """The shipped model's name when this is one (read-only), else None."""
        return shipped_name(self.path)

    def require_writable(self) -> None:
        """Raise when this is a shipped model (:func:`.shipped.refuse_write`)."""
        refuse_write(self.path)

    @property
    def card_path(self) -> Path:
        return self.path / MODEL_CARD

    def model_card(self) -> str | None:
        """MODEL_CARD.md's text (shipped models and their copies), else None."""
        path = self.card_path
        return path.read_text(encoding="utf-8") if path.is_file() else None

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def members_dir(self) -> Path:
        """Where an ensemble run keeps its members' weights."""
        return self.path / MEMBERS

    def weight_files(self, meta: ModelMeta) -> list[Path]:
        """The weights files ``meta`` describes: ``model.safetensors``, or each ensemble
        member's file."""
        if meta.ensemble is None:
            return [self.weights_path]
        return [self.path / m.file for m in meta.ensemble.members]

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
    def appearance_stats_path(self) -> Path:
        return self.path / APPEARANCE_STATS

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

    def _csv_path(self, name: str) -> Path:
        return self.predictions_dir / f"{check_name(name)}.csv"

    def prediction_path(self, name: str) -> Path:
        """``predictions/<name>.csv``, or its gzip ``<name>.csv.gz`` (a shipped model keeps its
        predictions compressed) when only that exists."""
        csv = self._csv_path(name)
        packed = csv.with_name(csv.name + GZIP_SUFFIX)
        return packed if not csv.is_file() and packed.is_file() else csv

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
        self.require_writable()
        checked = ModelMeta.parse(meta, self.meta_path)
        write_json(self.meta_path, meta)
        return checked

    def update_meta(self, **changes: Any) -> ModelMeta:
        """Read-modify-write model.json, keeping unknown keys; validated before writing.

        A change to ``None`` removes the key. A refer rule fitted at another threshold or
        temperature than the new ones is removed (with a warning), unless ``changes`` sets
        ``refer`` itself.
        """
        meta = self.raw_meta()
        meta.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            meta.pop(key, None)
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

        self.require_writable()
        with atomic_open(self.config_path, "w", encoding="utf-8") as fh:
            fh.write(config_to_yaml(cfg))

    # --- predictions ----------------------------------------------------------------------
    def available_predictions(self) -> list[str]:
        folder = self.predictions_dir
        if not folder.is_dir():
            return []
        names = {p.name.removesuffix(GZIP_SUFFIX).removesuffix(".csv") for p in folder.iterdir()
                 if p.name.endswith((".csv", ".csv" + GZIP_SUFFIX))}  # fmt: skip
        return sorted(names)

    def _existing_prediction(self, name: str) -> Path:
        path = self.prediction_path(name)
        if not path.is_file():
            have = ", ".join(self.available_predictions()) or "none"
            raise RunDirError(
                f"{path}: not found (available predictions: {have}); training writes val/test, "
                "'bonefrac evaluate RUN --manifest CSV --name NAME' writes others"
            )
        return path

    def read_predictions_raw(self, name: str) -> pd.DataFrame:
        """``predictions/<name>.csv`` as text columns (for rewriting), not validated."""
        return predictions_csv.read_predictions_raw(self._existing_prediction(name))

    def predictions(self, name: str) -> pd.DataFrame:
        """``predictions/<name>.csv`` checked (:func:`.predictions.validate_predictions`)."""
        return predictions_csv.read_predictions(self._existing_prediction(name))

    def write_predictions(self, name: str, frame: pd.DataFrame) -> Path:
        """Write ``predictions/<name>.csv`` (:func:`.predictions.write_predictions`); a gzip
        copy of it (``.csv.gz``) is removed, so the new table is the one read."""
        self.require_writable()
        path = self._csv_path(name)
        out = predictions_csv.write_predictions(path, frame)
        path.with_name(path.name + GZIP_SUFFIX).unlink(missing_ok=True)
        return out

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
        self.require_writable()
        data = self.metrics()
        data[key] = metrics
        write_json(self.metrics_path, data)
        return self.metrics_path

    def reset_fits(self) -> ModelMeta:
        """Remove every fit made on val after training (temperature, threshold and rule-out
        cut, refer band, out-of-scope detector, deploy record, ONNX export) and write
        model.json in this version's format: what the trained weights alone describe, ready
        for the deploy fits again (packaging does this to the weights it ships)."""
        raw = self.raw_meta()
        for key in _FIT_KEYS:
            raw.pop(key, None)
        raw.update(
            format_version=FORMAT_VERSION,
            threshold=0.5,
            threshold_criterion="default",
            temperature=1.0,
        )
        return self.write_meta(raw)

    def relocate(self, manifest: str | Path) -> dict[str, Any]:
        """Point the run at ``manifest``'s copy of its images (see :mod:`.relocate`)."""
        from bonefrac.rundir.relocate import relocate_run

        self.require_writable()
        return relocate_run(self, manifest)


def metrics_entry(
    y_true: np.ndarray,
    prob: np.ndarray,
    meta: ModelMeta,
    n_boot: int = 1000,
    seed: int = 0,
    decisions: Any = None,
) -> dict[str, Any]:
    """A metrics.json entry: the decision metrics first (miss rate, normals cleared, referred,
    fracture-call PPV under the run's rule, from ``decisions`` or the probabilities), then the
    metrics with CIs at the run's threshold, and the run's settings."""
    if decisions is None:
        decisions = meta.decisions(prob)
    metrics: dict[str, Any] = dict(decision_metrics(y_true, decisions, n_boot=n_boot, seed=seed))
    metrics["decision_counts"] = metrics.pop("counts")
    metrics.update(compute_metrics(y_true, prob, meta.threshold, n_boot=n_boot, seed=seed))
    metrics["settings"]["temperature"] = meta.temperature
    metrics["settings"]["threshold_criterion"] = meta.get("threshold_criterion", "default")
    metrics["settings"]["rule"] = "two_cuts" if meta.rule_out is not None else "one_cut"
    metrics["settings"]["rule_out"] = meta.rule_out
    return metrics
