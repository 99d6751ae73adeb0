"""Experiment configuration: pydantic models over the YAML files in ``configs/``.

A config has ``seed``, ``data``, ``model``, ``train``, ``tune`` (used by ``bonefrac tune``) and
``deploy`` (the fits on val that end ``bonefrac train``). Flags override
fields with dotted ``key=value`` strings (``train.epochs=3``); a typo or a bad value
is a :class:`ConfigError` naming the field.

The options of one job (``bonefrac predict``, ``serve``, ``data build``) are models here too
(:class:`PredictConfig`, :class:`ServeConfig`, :class:`DataBuildConfig`): the CLI fills one and
the library takes it whole, so an option is declared once, with its default, and a bad value is
a :class:`ConfigError` naming the command-line option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from bonefrac.errors import ConfigError

#: Strides the fracture detector may read (those the backbones have).
LocLevel = Literal[4, 8, 16, 32]
#: The detector's default levels (``model.loc_levels``), finest first: stride 8 finest.
#: Stride 4 quadruples the head's cost for FracAtlas boxes that are already 3 cells wide at
#: 384 px (see BENCHMARKS.md).
DEFAULT_LOC_LEVELS: tuple[int, ...] = (8, 16, 32)

#: ``train.precision`` values: ``auto`` plus Lightning's own (``bf16`` etc. are its aliases).
PRECISIONS = (
    "auto",
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "16",
    "bf16",
    "64",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    manifest: str | None = None
    image_size: int = Field(224, ge=16, le=2048)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)
    sampler: Literal["none", "weighted", "oversample", "source_balanced"] = "none"
    """``weighted``: inverse class frequency; ``source_balanced``: each manifest source weighs
    the same per epoch, its classes balanced within it (inverse (source, label) frequency)."""
    augment: Literal["none", "light", "medium", "strong"] = "medium"
    randomise: list[Literal["acquisition", "geometry", "markers"]] = Field(default_factory=list)
    """Extra training randomisation for an unseen site (docs/training.md): ``acquisition``
    (intensity window, gamma, contrast, inversion, resolution, JPEG, blur/sharpen, noise),
    ``geometry`` (rotations to 30 degrees, quarter turns, vertical flips), ``markers`` (burned-in
    letters pasted and corners erased on both classes)."""
    cache: bool = True
    """Decode each image once, keep a resized uint8 copy in memory (RAM: ~2x image_size^2 B)."""
    cache_scale: float = Field(1.15, ge=1.0, le=4.0)
    """Cached short side = image_size * cache_scale (room for random crops)."""
    clahe: bool = False
    """Per-image contrast-limited adaptive histogram equalisation before the transforms."""
    sources: list[str] | None = None
    """Train and validate on these manifest sources only (e.g. ``[fracatlas]``); the test split
    keeps every source, so the run's predictions show in-domain and cross-source results."""
    limit_per_split: int | None = Field(None, ge=1)
    """Use at most this many images per split (stratified sample; for smoke tests)."""

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [str(v).strip() for v in value if str(v).strip()]
        if not names:
            raise ValueError("must name at least one source (e.g. [fracatlas]) or be null")
        return names


class ModelConfig(_Strict):
    name: str = "efficientnet_lite0"
    pretrained: Literal["imagenet", "none"] = "imagenet"
    weights_path: str | None = None
    freeze: str = "none"
    """``none`` | ``backbone`` | ``partial:<n>`` (unfreeze the last n stages)."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    localize: bool = False
    """Add a localisation head trained on the manifest's fracture boxes: the run then outputs
    a map and boxes (``pred_boxes``) beside the fracture probability."""
    loc_levels: list[LocLevel] = Field(default_factory=lambda: list(DEFAULT_LOC_LEVELS))
    """Feature strides the fracture detector (FPN + FCOS head) reads, finest first; the map is
    drawn at the finest. Stride 4 adds detail for thin boxes at about 4x the head's compute."""
    fuse_map_score: bool = True
    """A localising model's image score fuses its class logit with its map's peak, weights
    fitted on val after training (logistic regression), kept only when the fused score ranks
    val no worse than the logit; false: the class logit alone."""

    @field_validator("loc_levels")
    @classmethod
    def _check_levels(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value):
            raise ValueError("must list one or more distinct strides, e.g. [8, 16, 32]")
        return sorted(value)

    @field_validator("freeze")
    @classmethod
    def _check_freeze(cls, value: str) -> str:
        if value in ("none", "backbone"):
            return value
        if value.startswith("partial:") and value.split(":", 1)[1].isdigit():
            return value
        raise ValueError("must be 'none', 'backbone' or 'partial:<n>' (e.g. partial:2)")


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_mult: float = Field(1.0, gt=0, le=1.0)
    """Backbone learning rate = lr * backbone_lr_mult (lower it for gentle fine-tuning)."""
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    warmup_frozen_epochs: int = Field(0, ge=0)
    """Train only the head for this many epochs, then unfreeze per ``model.freeze``."""
    unfreeze_warmup_epochs: float = Field(0.5, ge=0)
    """After the frozen warm-up, ramp the backbone's LR up from ~0 over this many epochs (its
    fresh AdamW state otherwise moves every backbone weight by ~lr at once); 0 = no ramp."""
    freeze_bn: bool = False
    """Keep every BatchNorm layer on its running statistics (eval mode) throughout training."""
    grad_clip: float | None = Field(None, gt=0)
    """Clip the gradient's global L2 norm to this value (Lightning ``gradient_clip_val``)."""
    collapse_patience: int = Field(2, ge=1)
    """Stop as collapsed after this many consecutive epochs with val ROC-AUC <= 0.55 and train
    loss >= ln 2 (a non-finite loss stops at once); ``bonefrac train`` then exits with status 3."""
    pos_weight: str | float = "none"
    """``auto`` (negatives/positives in train), a number, or ``none``."""
    loss: Literal["bce", "focal"] = "bce"
    loc_loss_weight: float = Field(1.0, ge=0)
    """Weight of the detector's loss (FCOS: focal + GIoU + centre-ness) beside the fracture
    logit's (model.localize)."""
    focal_gamma: float = Field(2.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    monitor: Literal["val_roc_auc", "val_loss", "val_f1", "val_pr_auc"] = "val_roc_auc"
    early_stopping_patience: int | None = Field(None, ge=1)
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: str = "auto"
    """``auto`` (``null`` means the same): ``bf16-mixed`` on CUDA GPUs with bf16, ``16-mixed`` on
    other CUDA GPUs, ``32-true`` on CPUs (bf16 measured not reliably faster there; see
    ``bonefrac.precision``). Or any Lightning value: ``32-true``, ``bf16-mixed``, ..."""
    channels_last: bool = True
    deterministic: bool = False
    max_steps_per_epoch: int | None = Field(None, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    progress_bar: bool = True

    @field_validator("precision", mode="before")
    @classmethod
    def _check_precision(cls, value: object) -> str:
        text = "auto" if value is None else str(value)
        if text not in PRECISIONS:
            raise ValueError(f"must be one of {', '.join(PRECISIONS)}")
        return text

    @field_validator("pos_weight")
    @classmethod
    def _check_pos_weight(cls, value: str | float) -> str | float:
        if isinstance(value, (int, float)):
            if value <= 0:
                raise ValueError("must be positive")
            return float(value)
        if value in ("auto", "none"):
            return value
        try:
            return cls._check_pos_weight(float(value))
        except ValueError as exc:
            raise ValueError("must be 'auto', 'none' or a positive number") from exc


class TuneConfig(_Strict):
    """Used by ``bonefrac tune`` only (ignored by ``train``)."""

    objective: str = "val_roc_auc"
    """Validation metric a study maximises: ``val_roc_auc`` | ``val_f1`` | ``val_pr_auc`` |
    ``sens_at_spec:<X>`` (sensitivity at specificity >= X, e.g. ``sens_at_spec:0.9``)."""
    pruning: bool = True
    """Stop unpromising trials early (median pruner on the per-epoch validation metric)."""
    prune_startup_trials: int = Field(5, ge=0)
    """Trials that always run to the end before the pruner starts comparing."""
    prune_warmup_epochs: int = Field(1, ge=0)
    """Epochs of every trial that are never pruned."""
    heartbeat_seconds: int = Field(60, ge=1)
    """How often a worker marks its running trial alive in the study storage."""
    grace_seconds: int = Field(180, ge=2)
    """A running trial silent this long belongs to a dead worker: the next worker to start a
    trial marks it failed and runs it again (once)."""

    @field_validator("objective")
    @classmethod
    def _check_objective(cls, value: str) -> str:
        text = value.strip().lower()
        if text in ("val_roc_auc", "val_f1", "val_pr_auc"):
            return text
        name, _, arg = text.partition(":")
        if name == "sens_at_spec":
            try:
                target = float(arg)
            except ValueError:
                target = -1.0
            if 0 < target < 1:
                return f"sens_at_spec:{target:g}"
        raise ValueError(
            "must be val_roc_auc, val_f1, val_pr_auc or sens_at_spec:X with 0 < X < 1 "
            "(e.g. sens_at_spec:0.9)"
        )


CRITERIA_HELP = "f1 | youden | sensitivity:X | specificity:X  (X in (0, 1], e.g. sensitivity:0.90)"


class Criterion(NamedTuple):
    """A threshold criterion, parsed once where it enters (the CLI, the YAML config):
    ``f1``, ``youden``, or ``sensitivity`` / ``specificity`` with its target."""

    name: str
    target: float | None = None

    def __str__(self) -> str:
        """The canonical text (model.json's ``threshold_criterion``)."""
        return self.name if self.target is None else f"{self.name}:{self.target:g}"


def parse_criterion(criterion: str) -> Criterion:
    """``"sensitivity:0.9"`` -> ``("sensitivity", 0.9)``; ``"f1"`` -> ``("f1", None)``."""
    text = (criterion or "").strip().lower()
    name, _, arg = text.partition(":")
    if name in ("f1", "youden"):
        if arg:
            raise ConfigError(f"criterion {criterion!r}: '{name}' takes no value; use {name}")
        return Criterion(name)
    if name in ("sensitivity", "specificity", "sens", "spec"):
        name = {"sens": "sensitivity", "spec": "specificity"}.get(name, name)
        try:
            target = float(arg)
        except ValueError:
            raise ConfigError(
                f"criterion {criterion!r}: expected {name}:X with X a number, e.g. {name}:0.90"
            ) from None
        if target > 1 and target <= 100:
            target /= 100.0  # sensitivity:90 means 90 %
        if not 0 < target <= 1:
            raise ConfigError(f"criterion {criterion!r}: X must be in (0, 1], e.g. {name}:0.90")
        return Criterion(name, target)
    raise ConfigError(f"unknown threshold criterion {criterion!r}; choose {CRITERIA_HELP}")


def _criterion_or_none(value: Any) -> Criterion | None:
    if value is None or isinstance(value, Criterion):
        return value
    if isinstance(value, list | tuple):  # a dumped config in Python mode
        return Criterion(*value)
    text = str(value).strip().lower()
    if text == "none":
        return None
    try:
        return parse_criterion(text)
    except ConfigError as exc:
        raise ValueError(f"{exc}, or none") from None


#: ``deploy.threshold``: written as text (``f1``, ``sensitivity:0.9``, ``none``), held parsed.
_CriterionText = Annotated[
    Criterion | None,
    BeforeValidator(_criterion_or_none),
    PlainSerializer(lambda c: "none" if c is None else str(c), return_type=str),
]


class DeployConfig(_Strict):
    """What ``bonefrac train`` fits on val after training, so the run it leaves is deployable
    (``bonefrac train --no-deploy`` skips every step; the separate commands refit them).

    The decision rule, by default, has two cuts (docs/evaluation.md): ``no_fracture`` only
    below a rule-out cut fitted for ``rule_out_sensitivity``, ``fracture`` at or above a
    rule-in cut fitted for ``rule_in_specificity``, ``refer`` between. ``threshold`` and
    ``refer_coverage`` are the one-cut rule (a threshold with a refer band on uncertainty),
    used only when the corresponding two-cut key is ``null``.
    """

    rule_out_sensitivity: float | None = Field(0.95, gt=0.0, lt=1.0)
    """The share of val fractures flagged (``fracture`` or ``refer``): ``no_fracture`` only
    below the cut that reaches it; ``null``: no rule-out cut (then ``refer_coverage`` may
    set a refer band)."""
    rule_in_specificity: float | None = Field(0.95, gt=0.0, lt=1.0)
    """The share of val normals kept from a ``fracture`` call: the rule-in cut; ``null``: the
    rule-in cut is chosen by ``threshold``."""
    threshold: _CriterionText = Criterion("f1")
    """With ``rule_in_specificity: null``: ``f1`` | ``youden`` | ``sensitivity:<x>`` |
    ``specificity:<x>`` | ``none`` (keep 0.5); parsed once, when the config is read."""
    calibrate: bool = True
    """Fit the temperature on val logits (``bonefrac calibrate``)."""
    refer_coverage: float | None = Field(None, gt=0.0, le=1.0)
    """The one-cut rule's refer band, answering this share of val images (``bonefrac threshold
    --refer-coverage``); only with ``rule_out_sensitivity: null``."""
    refer_tta: bool = False
    """Also try the test-time augmentation spread as the refer band's score (8 model calls per
    val image to fit; kept only when it ranks val errors clearly better than the free scores).
    Off by default: measured, it ranked errors far worse than ``p_error`` (BENCHMARKS.md) and
    makes every prediction 8 model calls."""
    ood: Literal["mahalanobis", "energy", "none"] = "mahalanobis"
    """Out-of-scope detector (``bonefrac ood --method``); ``none``: no detector."""
    ood_max_images: int = Field(2000, ge=10)
    """At most this many train images for the Mahalanobis statistics."""

    @model_validator(mode="after")
    def _one_refer_rule(self) -> DeployConfig:
        if self.rule_out_sensitivity is not None and self.refer_coverage is not None:
            raise ValueError(
                "deploy.refer_coverage needs deploy.rule_out_sensitivity: null (a run has the "
                "two-cut rule or a refer band, not both)"
            )
        return self

    @property
    def rule_in_criterion(self) -> Criterion | None:
        """The threshold criterion of the rule-in cut (``None``: keep the threshold)."""
        if self.rule_in_specificity is not None:
            return Criterion("specificity", self.rule_in_specificity)
        return self.threshold


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    @model_validator(mode="after")
    def _check_detector_size(self) -> ExperimentConfig:
        coarsest = max(self.model.loc_levels)
        if self.model.localize and self.data.image_size % coarsest:
            raise ValueError(
                f"data.image_size {self.data.image_size} must be a multiple of the detector's "
                f"coarsest stride {coarsest} (model.loc_levels {self.model.loc_levels})"
            )
        return self


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.epochs=3", "model.name=simple_cnn"]`` into a nested dict (YAML-typed values)."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a raw dict; errors name the offending field."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def read_yaml_mapping(path: Path, missing: str, expected: str) -> dict[str, Any]:
    """Load a YAML file that must hold a mapping; every failure is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: {missing}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected {expected}")
    return loaded


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (or defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        raw = read_yaml_mapping(path, "config file not found", "a mapping at the top level")
    raw = deep_merge(raw, parse_overrides(overrides))
    if overrides:
        source += " + --set " + " ".join(overrides)
    return build_config(raw, source)


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- job options

MIB = 1024 * 1024


def _option(name: str) -> dict[str, str]:
    """``Field`` metadata: the command-line option a field comes from, when its name differs."""
    return {"option": name}


class _JobOptions(_Strict):
    """Options of one command: a bad value is a :class:`ConfigError` naming its option (the CLI
    prints it in one line; a library caller gets the same sentence)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError("; ".join(self._describe(e) for e in exc.errors())) from None

    @classmethod
    def _describe(cls, err: ErrorDetails) -> str:
        field_name = str(err["loc"][0]) if err["loc"] else ""
        info = cls.model_fields.get(field_name)
        extra = info.json_schema_extra if info is not None else None
        option = (extra or {}).get("option") if isinstance(extra, dict) else None
        option = str(option or "--" + field_name.replace("_", "-"))
        where = "".join(f"[{p}]" for p in err["loc"][1:])
        if err["type"] == "value_error":  # our own validators write whole sentences
            return f"{option}{where} {(err.get('ctx') or {}).get('error', err['msg'])}"
        return f"{option}{where}: {err['msg']} (got {err.get('input')!r})"

    def with_changes(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` applied."""
        return type(self)(**{**self.model_dump(), **changes})


class PredictConfig(_JobOptions):
    """``bonefrac predict``'s options (:func:`bonefrac.batch_predict.job.predict_to_csv`)."""

    backend: str = "torch"
    """``torch`` | ``onnx`` (RUN/model.onnx)."""
    batch_size: int = 16
    cam_dir: Path | None = None
    """Also save heatmap overlays here."""
    dicom_frame: int | None = None
    """Frame of multi-frame DICOMs (``None``: refuse them)."""
    workers: int | None = 0
    """Decode processes per prediction process; ``None``: its share of the CPUs - 1, at most 4
    (what ``bonefrac predict`` uses when ``--workers`` is not given)."""
    force: bool = False
    """Start the CSV afresh (also when another run or setting wrote it)."""
    retry_errors: bool = False
    """Predict again the files whose row in the CSV has an error."""
    progress: bool = Field(True, json_schema_extra=_option("--no-progress"))
    devices: int = 1
    """Processes (one per device) sharing the files; their parts are merged."""
    accelerator: str = "cpu"
    strategy: str = "ddp"
    """Lightning launcher with ``devices > 1``: ``ddp`` | ``ddp_spawn``."""
    dicom_out: Path | None = None
    """Write a DICOM Secondary Capture + SR per DICOM input here."""
    study_column: str | None = None
    """The inputs are one CSV list (path + this column): also one row per study."""
    study_by: str | None = None
    """``folder``: the images of one folder form a study."""
    study_agg: str = "max"
    """Study probability from its images: ``max`` | ``mean`` | ``noisy_or``."""

    @property
    def studies(self) -> bool:
        """The job also writes ``<out>.studies.csv``."""
        return bool(self.study_column or self.study_by)

    @field_validator("batch_size", "devices")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value


#: Defaults of ``bonefrac serve``: a 4300 x 3500 16-bit CR/DX DICOM is 30 MB, a 2880 x 2304
#: RGB JPEG (FracAtlas full resolution) 20 MB, so both fit with room to spare.
DEFAULT_MAX_PIXELS = 36_000_000
DEFAULT_MAX_IMAGE_BYTES = 64 * MIB


class ServeConfig(_JobOptions):
    """``bonefrac serve``'s options: :func:`bonefrac.serving.app.create_app` reads the service's
    (limits, guards, docs), :func:`bonefrac.serving.app.serve` the server's (address,
    connections). The limits are described in :mod:`bonefrac.serving.app`."""

    backend: str = "torch"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = Field("info", json_schema_extra=_option("log_level"))
    max_body_bytes: int = Field(32 * MIB, json_schema_extra=_option("--max-body-mb"))
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES, json_schema_extra=_option("--max-image-mb")
    )
    max_concurrency: int = 2
    """Requests decoding + predicting at once."""
    queue: int = 16
    """Requests that may wait for a slot; beyond them 503."""
    body_timeout_s: float = 30.0
    """408 when an upload stalls this long."""
    keep_alive_s: int = 5
    """Idle connections close after this long."""
    max_connections: int = 64
    """Open connections (idle keep-alive ones included) before uvicorn answers 503."""
    allowed_hosts: list[str] | None = Field(None, json_schema_extra=_option("--allowed-host"))
    """``Host`` header names :func:`create_app` accepts (``None``: no check); :func:`serve`
    always adds the loopback names and the bound host."""
    token: str | None = Field(None, repr=False)
    """Require ``Authorization: Bearer <token>`` on ``/v1/``; wins over ``token_file``."""
    token_file: Path | None = None
    """Read the token from this file (at least 16 characters)."""
    allow_open: bool = Field(False, json_schema_extra=_option("--allow-open"))
    """Serve a non-loopback address without a token. Off: :func:`bonefrac.serving.app.serve`
    refuses, since anyone who can reach the port could upload radiographs and read the
    predictions."""
    docs: bool = Field(True, json_schema_extra=_option("--docs/--no-docs"))


class DataBuildConfig(_JobOptions):
    """``bonefrac data build``'s options (:func:`bonefrac.data.manifest.build_manifest`)."""

    out: Path
    """Folder for manifest.csv, quarantine.csv, summary.json."""
    sources: dict[str, list[Path]] = Field(
        default_factory=dict, json_schema_extra=_option("sources")
    )
    """Source roots by kind of :data:`bonefrac.data.sources.SOURCE_KINDS` (``fracatlas``,
    ``yolo``, ``folder``, ``dicom_dir``), read in the registry's order; one root may be given
    without a list, ``None`` for none."""
    seed: int = 0
    """Seed of the train/val/test split."""
    ratios: tuple[float, ...] | None = Field(None, json_schema_extra=_option("ratios"))
    """Train/val/test shares; ``None``: :data:`bonefrac.data.split.DEFAULT_RATIOS`."""
    stratify_region: bool = Field(True, json_schema_extra=_option("stratify_region"))
    unlabelled_negative: bool = False
    """YOLO images without a label file count as label 0."""
    fracture_classes: list[str] | None = None
    """YOLO class names that count as fracture (a ``"a,b"`` string is split at the commas)."""
    class_map: str | dict[str, int] | None = None
    """Extra folder class -> label pairs, e.g. ``"broken=1,intact=0"``."""
    freeze_split: Path | None = None
    """Older manifest.csv whose split assignments are kept."""
    force: bool = False
    workers: int | None = None
    """Decode processes (``None``: the CPUs)."""
    progress: bool = Field(True, json_schema_extra=_option("progress"))

    @field_validator("sources", mode="before")
    @classmethod
    def _check_sources(cls, value: Any) -> Any:
        # kinds are checked against the registry where it lives (data.sources.scan_sources):
        # config sits below data and never imports it
        if not isinstance(value, dict):
            return value
        single = (str, Path)
        return {
            k: [] if v is None else [v] if isinstance(v, single) else v for k, v in value.items()
        }

    @field_validator("fracture_classes", mode="before")
    @classmethod
    def _split_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [c for c in value.split(",") if c.strip()]
        return value or None


def _ae_title(value: str, what: str) -> str:
    """A DICOM AE title: 1-16 characters of printable ASCII, no backslash, not all spaces."""
    text = str(value).strip()
    if not 1 <= len(text) <= 16 or not text.isascii() or not text.isprintable() or "\\" in text:
        raise ValueError(f"{what} {value!r}: an AE title is 1-16 printable ASCII characters")
    return text


def parse_dicom_destination(value: str) -> tuple[str, str, int]:
    """``"PACS@10.0.0.5:104"`` -> ``("PACS", "10.0.0.5", 104)`` (a bad one: ValueError)."""
    text = str(value).strip()
    ae, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
    return _ae_title(ae, "--send-to"), host.strip("[]"), int(port)


class NodeConfig(_JobOptions):
    """``bonefrac node``'s options (:mod:`bonefrac.node`): a DICOM Storage SCP that predicts
    every radiograph it receives and sends an SR and an SC back to the destinations. From a
    YAML file of these keys (``--config``), ``--set key=value`` and the command's options."""

    run: str = "default"
    """Run directory or shipped model name."""
    ae_title: str = "BONEFRAC"
    """The node's AE title (called AE of incoming associations, calling AE of its own)."""
    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0``: every interface)."""
    port: int = Field(11112, ge=1, le=65535)
    allow: list[str] = Field(default_factory=list)
    """Calling AE titles accepted; any other is rejected at association."""
    send_to: list[str] = Field(default_factory=list)
    """C-STORE destinations ``AE@HOST:PORT``."""
    stow_to: list[str] = Field(default_factory=list)
    """DICOMweb STOW-RS base URLs (e.g. ``http://pacs:8042/dicom-web``)."""
    spool: Path | None = None
    """Folder of received instances, results waiting to be sent, dead letters, audit log."""
    backend: str = "torch"
    dicom_frame: int | None = None
    """Frame of multi-frame images (``None``: refuse them)."""
    out_of_scope: Literal["report", "none"] = "report"
    """An input out of scope (CT, MR, US, colour, blank...): ``report``, an SR saying so (no
    capture, no fracture call); ``none``: nothing is sent."""
    study_quiet_s: float | None = Field(30.0, ge=0)
    """A study with no new image for this long gets one study-level SR too; ``null``: none."""
    study_agg: Literal["max", "mean", "noisy_or"] = "max"
    """Study probability from its images (as ``predict --study-agg``)."""
    retry_attempts: int = Field(20, ge=1)
    """Sends of one result before it goes to the dead-letter folder with the reason."""
    retry_backoff_s: float = Field(1.0, gt=0)
    """Wait after a failed send, doubled after each further failure."""
    retry_max_backoff_s: float = Field(60.0, gt=0)
    send_timeout_s: float = Field(30.0, gt=0)
    """Network timeout of one association or HTTP request to a destination."""
    max_spool: int = Field(10000, ge=1)
    """Instances waiting for prediction before C-STORE answers 'out of resources' (A700)."""
    max_associations: int = Field(8, ge=1)
    tls_cert: Path | None = None
    """PEM certificate (and ``tls_key``) of the node: incoming associations use TLS."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """PEM CA bundle: with it, a calling node must show a certificate it signed."""

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _ae_title(value, "--ae-title")

    @field_validator("allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        return [_ae_title(v, "--allow") for v in value]

    @field_validator("send_to")
    @classmethod
    def _check_send_to(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_dicom_destination(item)
        return [str(v).strip() for v in value]

    @field_validator("stow_to")
    @classmethod
    def _check_stow_to(cls, value: list[str]) -> list[str]:
        for url in value:
            if not str(url).startswith(("http://", "https://")):
                raise ValueError(f"{url!r}: expected an http:// or https:// DICOMweb base URL")
        return [str(v).rstrip("/") for v in value]

    @model_validator(mode="after")
    def _check_complete(self) -> NodeConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (--set tls_cert=... tls_key=...)")
        return self

    def check_ready(self) -> None:
        """What starting the node needs beyond valid values (a ConfigError naming it)."""
        missing = []
        if self.spool is None:
            missing.append("--spool DIR")
        if not self.allow:
            missing.append("--allow CALLING_AE (the modalities and PACS that may send)")
        if not (self.send_to or self.stow_to):
            missing.append("--send-to AE@HOST:PORT or --stow-to URL (where results go)")
        if missing:
            raise ConfigError("bonefrac node needs " + "; ".join(missing))


def load_node_config(
    path: str | Path | None, overrides: list[str] | None = None, **options: Any
) -> NodeConfig:
    """``bonefrac node``'s options: the YAML file ``path`` (NodeConfig keys), then the
    ``key=value`` overrides, then ``options`` (the command line's, ``None``: not given)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(Path(path), "node config file not found", "a mapping of keys")
    raw = deep_merge(raw, parse_overrides(overrides))
    raw.update({k: v for k, v in options.items() if v is not None and v != []})
    unknown = sorted(set(raw) - set(NodeConfig.model_fields))
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(NodeConfig.model_fields), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{path or '--set'}: unknown node option {', '.join(hints)}")
    return NodeConfig(**raw)
