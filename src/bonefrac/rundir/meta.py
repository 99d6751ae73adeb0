"""``model.json`` as a validated record: what a run's model needs to turn pixels into a decision.

Every consumer (evaluate, threshold, calibrate, explain, predict, serve, export) reads the
metadata through :class:`ModelMeta`, so a threshold, temperature or normalisation that cannot
be trusted is refused once, at load, with the same message everywhere.

Probability convention: ``sigmoid(logit / temperature)`` (temperature 1 until ``bonefrac
calibrate`` fits one); the fracture call is ``probability >= threshold``. :meth:`ModelMeta.probability`
is the only place the temperature is applied.

Decisions a clinician sees (:meth:`ModelMeta.decisions`): ``out_of_scope`` when the optional
``ood`` record flags the input as unlike the training radiographs, or a scope rule does (the
Predictor's, :mod:`bonefrac.inference.scope`); else, with the two-cut rule (the default,
``rule_out`` set): ``fracture`` (a firm finding) at or above ``threshold`` (the rule-in cut,
fitted on val for high specificity), ``no_fracture`` below ``rule_out`` (the rule-out cut,
fitted on val for high sensitivity) and ``refer`` ("doubt: look here") between; with the
one-cut rule (``rule_out`` unset): ``refer`` when the optional ``refer`` rule's uncertainty is
above its cut-off, else ``fracture`` / ``no_fracture`` at ``threshold``.

Format (:data:`FORMAT_VERSION`): model.json records the version of its layout; a run of
another version is refused at load with one line that says to retrain, never read through a
compatibility branch (bonefrac has no released runs to keep).

Safeguards (:func:`missing_safeguards`): a run loads without a tuned threshold, a fitted
temperature, an out-of-scope detector or a refer rule, but every output that serves it (predict,
serve, the report) names what is missing and the command that adds it, from this one list.
"""

from __future__ import annotations

import logging
import math
import platform
import shlex
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from bonefrac.config import DEFAULT_LOC_LEVELS, LocLevel
from bonefrac.errors import ModelOutputError, RunDirError
from bonefrac.metrics import apply_temperature

log = logging.getLogger(__name__)

#: The layout of model.json and of the weights it describes. Bump it when either changes
#: meaning (a key, a default, a head's output channels): runs of another version are refused.
FORMAT_VERSION = 3

CLASS_NAMES = ["not_fractured", "fractured"]

FRACTURE = "fracture"
NO_FRACTURE = "no_fracture"
REFER = "refer"
OUT_OF_SCOPE = "out_of_scope"
#: The decision vocabulary of every output (CSV, API, page).
DECISIONS = (FRACTURE, NO_FRACTURE, REFER, OUT_OF_SCOPE)
#: How sure a flagged image's finding is, as fracture AI shows it: a ``fracture`` call is a firm
#: finding (drawn solid), a ``refer`` one a doubt (drawn dashed: "look here").
FINDING_LEVELS = {FRACTURE: "firm", REFER: "doubt"}
#: The words beside a finding of each level (page, API, DICOM SC and SR).
FINDING_TEXT = {
    FRACTURE: "fracture (firm finding)",
    REFER: "doubt: look here, refer to a radiologist",
}
#: Uncertainty scores a refer rule can use (see :mod:`bonefrac.evaluation.refer`).
UNCERTAINTY_SCORES = ("p_error", "margin", "tta_std")


def margin_uncertainty(prob: Any, threshold: float) -> np.ndarray:
    """``1 - |p - threshold| / max(threshold, 1 - threshold)``: 1 at the threshold, 0 at the
    far end of the probability scale."""
    p = np.asarray(prob, dtype=float)
    return 1.0 - np.abs(p - threshold) / max(threshold, 1.0 - threshold)


def error_probability(prob: Any, threshold: float) -> np.ndarray:
    """The chance that the call at ``threshold`` is wrong, read off the calibrated probability:
    ``p`` for a ``no_fracture`` call (a missed fracture), ``1 - p`` for a ``fracture`` call (a
    false alarm). Unlike :func:`margin_uncertainty` it does not stretch the shorter side of the
    scale: at a threshold of 0.2 every ``no_fracture`` call had a margin uncertainty of at
    least 0.75, so a margin rule referred sure negatives before unsure positives."""
    p = np.asarray(prob, dtype=float)
    return np.where(p >= threshold, 1.0 - p, p)


class ReferRule(BaseModel):
    """Refer an image to a radiologist when its uncertainty is above ``cutoff`` (chosen on val
    so that a share ``coverage`` of val images is answered)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    score: Literal["p_error", "margin", "tta_std"]
    coverage: float = Field(gt=0.0, le=1.0)
    cutoff: FiniteFloat
    threshold: FiniteFloat  # the run's threshold and temperature when the rule was fitted
    temperature: FiniteFloat = 1.0
    tuned_on: Literal["val"] = "val"


class OodRule(BaseModel):
    """Out-of-scope detector: ``score > cutoff`` means unlike the training radiographs."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: Literal["mahalanobis", "energy"]
    cutoff: FiniteFloat
    stats_sha256: str | None = None  # of the statistics file (mahalanobis)
    weights_sha256: str | None = None  # the weights whose features the statistics describe


class AppearanceRule(BaseModel):
    """The appearance gate: ``score > cutoff`` means the input does not look like a radiograph
    (:mod:`bonefrac.inference.appearance`; statistics in ``RUN/appearance.safetensors``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    cutoff: FiniteFloat
    stats_sha256: str | None = None  # of the statistics file


class ScoreFusion(BaseModel):
    """A localising model's image logit: ``logit_weight * class logit + map_weight * the map's
    highest logit + bias``, fitted by logistic regression on val (see
    :class:`bonefrac.models.classifier.FractureClassifier`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    logit_weight: FiniteFloat
    map_weight: FiniteFloat
    bias: FiniteFloat
    fitted_on: Literal["val"] = "val"

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.logit_weight, self.map_weight, self.bias)


class EnsembleMember(BaseModel):
    """One member of an ensemble run: its weights file inside the run and their SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(pattern=r"^members/[A-Za-z0-9_.-]+\.safetensors$")
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    from_run: str = ""
    """The run the member was trained as (its name, for the record)."""
    score_fusion: ScoreFusion | None = None
    """The member's own score fusion (fitted on val when it was trained)."""


class EnsembleRecord(BaseModel):
    """An ensemble run (``bonefrac ensemble``): its logit is the mean of its members' logits
    and a localising run's map the mean of their detector outputs
    (:class:`bonefrac.models.ensemble.EnsembleModel`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    combine: Literal["mean_logit"] = "mean_logit"
    members: list[EnsembleMember] = Field(min_length=2)

    def digest(self) -> str:
        """The ensemble's ``weights_sha256``: SHA-256 of its members' hashes, in order."""
        import hashlib

        joined = "\n".join(m.weights_sha256 for m in self.members)
        return hashlib.sha256(joined.encode("ascii")).hexdigest()


class ModelMeta(BaseModel):
    """The fields of model.json that predictions depend on; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format_version: int = FORMAT_VERSION
    """The layout this model.json was written in (:meth:`parse` refuses any other)."""
    architecture: str = Field(min_length=1)
    image_size: int = Field(gt=0, le=4096)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float = 0.5
    temperature: float = 1.0
    preprocess: dict[str, Any] = Field(default_factory=dict)
    dropout: float = 0.0
    class_names: list[str] = Field(default_factory=lambda: list(CLASS_NAMES))
    weights_sha256: str | None = None
    refer: ReferRule | None = None
    ood: OodRule | None = None
    rule_out: float | None = None
    """The rule-out cut of the two-cut rule (``no_fracture`` only below it; ``threshold`` is
    then the rule-in cut); None: the one-cut rule at ``threshold`` (with an optional refer
    band)."""

    @model_validator(mode="after")
    def _rule_out_fits(self) -> ModelMeta:
        cut = self.rule_out
        if cut is None:
            return self
        if not (math.isfinite(cut) and 0.0 < cut <= self.threshold):
            raise ValueError(
                f"rule_out {cut} must be a probability above 0 and at most the rule-in cut "
                f"(threshold {self.threshold:g}); refit with 'bonefrac threshold RUN'"
            )
        if self.refer is not None:
            raise ValueError(
                "a run has either the two-cut rule (rule_out) or a refer band (refer), not both;"
                " refit with 'bonefrac threshold RUN'"
            )
        return self

    @model_validator(mode="after")
    def _refer_matches(self) -> ModelMeta:
        rule = self.refer
        if rule is not None and (
            not math.isclose(rule.threshold, self.threshold, rel_tol=1e-9, abs_tol=1e-12)
            or not math.isclose(rule.temperature, self.temperature, rel_tol=1e-9)
        ):
            raise ValueError(
                f"the refer rule was fitted at threshold {rule.threshold:g} / temperature "
                f"{rule.temperature:g} but the model now uses {self.threshold:g} / "
                f"{self.temperature:g}; re-run 'bonefrac threshold RUN --refer-coverage "
                f"{rule.coverage:g}'"
            )
        return self

    localize: bool = False
    """The model has a localisation head (a map and each cell's box; its weights include it)."""
    loc_levels: list[LocLevel] = Field(default_factory=lambda: list(DEFAULT_LOC_LEVELS))
    """Feature strides its detector reads (``model.loc_levels``), finest first."""
    score_fusion: ScoreFusion | None = None
    """How the image logit fuses the class logit with the map's peak (None: the class logit)."""
    box_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Map probability a decoded box must reach to be reported (chosen on val at training)."""
    appearance: AppearanceRule | None = None
    """The appearance gate fitted on the train radiographs (None: not fitted)."""
    ensemble: EnsembleRecord | None = None
    """An ensemble run's members (None: one model in ``model.safetensors``)."""

    @model_validator(mode="after")
    def _ensemble_identity(self) -> ModelMeta:
        if self.ensemble is not None and self.weights_sha256 != self.ensemble.digest():
            raise ValueError(
                "weights_sha256 is not the digest of the ensemble members' hashes; rebuild it "
                "with 'bonefrac ensemble'"
            )
        if self.ensemble is not None and self.score_fusion is not None:
            raise ValueError("an ensemble's score fusion belongs to its members, not the run")
        return self

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not (math.isfinite(v) and 0.0 < v < 1.0):
            raise ValueError(f"threshold {v} is not a probability strictly between 0 and 1")
        return v

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, v: Any) -> Any:
        if v is None:
            return 1.0
        if isinstance(v, (int, float)) and not (math.isfinite(v) and v > 0):
            raise ValueError(f"temperature {v} must be a finite number > 0")
        return v

    @field_validator("mean")
    @classmethod
    def _mean(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"mean {list(v)} must be finite")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(x) and x > 0 for x in v):
            raise ValueError(f"std {list(v)} must be finite and > 0")
        return v

    @classmethod
    def parse(cls, data: Any, source: object = "model.json") -> ModelMeta:
        """Validate a model.json mapping; a bad value is a :class:`RunDirError` naming it, and
        another :data:`FORMAT_VERSION` is one line that says to retrain."""
        if not isinstance(data, dict):
            raise RunDirError(f"{source}: expected a JSON object")
        _check_format_version(data, source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
            )
            raise RunDirError(
                f"{source}: invalid model metadata ({problems}); fix the value or retrain"
            ) from None

    @property
    def clahe(self) -> bool:
        return bool(self.preprocess.get("clahe", False))

    def get(self, key: str, default: Any = None) -> Any:
        """Any model.json key (declared or extra), like ``dict.get``."""
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.model_extra or {}).get(key, default)

    def probability(self, logits: Any) -> np.ndarray:
        """Calibrated probability ``sigmoid(logit / temperature)``."""
        return apply_temperature(logits, self.temperature)

    def decide(self, prob: Any) -> np.ndarray:
        """``prob >= threshold`` (a ``fracture`` call)."""
        return np.asarray(prob, dtype=float) >= self.threshold

    @property
    def two_cuts(self) -> bool:
        """True with the two-cut rule (a rule-out cut below the rule-in ``threshold``)."""
        return self.rule_out is not None

    def flags(self, prob: Any) -> np.ndarray:
        """True where the image is flagged (``fracture`` or, under the two-cut rule, ``refer``
        by probability): the cut a sensitivity of "not sent home" is measured at."""
        cut = self.rule_out if self.rule_out is not None else self.threshold
        return np.asarray(prob, dtype=float) >= cut

    def refers(self, uncertainty: Any) -> np.ndarray:
        """True where the refer rule sends the image to a radiologist (all False without one)."""
        u = np.asarray(uncertainty, dtype=float)
        if self.refer is None:
            return np.zeros(u.shape, dtype=bool)
        return ~(u <= self.refer.cutoff)  # a NaN uncertainty is referred, never answered

    def out_of_scope(self, ood_score: Any) -> np.ndarray:
        """True where the out-of-scope score is above the cut-off (all False without one)."""
        s = np.asarray(ood_score, dtype=float)
        if self.ood is None:
            return np.zeros(s.shape, dtype=bool)
        return ~(s <= self.ood.cutoff)  # NaN: out of scope

    def decisions(
        self, prob: Any, uncertainty: Any = None, ood_score: Any = None, flagged: Any = None
    ) -> list[str]:
        """The decision vocabulary (:data:`DECISIONS`) for each image: out of scope first,
        then refer (the band between the two cuts, or the refer rule's uncertainty), then the
        fracture call at the threshold.

        ``flagged``: True where the input is out of scope whatever its score (the Predictor's
        scope rules: another modality, a colour image, a blank frame; with or without an
        ``ood`` record). ``uncertainty`` is read by the one-cut rule's refer band only.
        """
        p = np.atleast_1d(np.asarray(prob, dtype=float))
        if self.rule_out is not None:
            ref = (p >= self.rule_out) & (p < self.threshold)
        elif uncertainty is not None:
            ref = self.refers(uncertainty)
        else:
            ref = np.zeros(p.shape, bool)
        oos = self.out_of_scope(ood_score) if ood_score is not None else np.zeros(p.shape, bool)
        if flagged is not None:
            oos = np.atleast_1d(oos) | np.atleast_1d(np.asarray(flagged, dtype=bool))
        out = np.where(p >= self.threshold, FRACTURE, NO_FRACTURE).astype(object)
        out[np.atleast_1d(ref)] = REFER
        out[np.atleast_1d(oos)] = OUT_OF_SCOPE
        return [str(d) for d in out]


def _check_format_version(data: dict[str, Any], source: object = "model.json") -> None:
    """Refuse a model.json whose ``format_version`` is missing or not :data:`FORMAT_VERSION`."""
    found = data.get("format_version")
    if type(found) is int and found == FORMAT_VERSION:
        return
    shown = "missing" if "format_version" not in data else repr(found)
    if type(found) is int and found > FORMAT_VERSION:
        raise RunDirError(
            f"{source}: written by a newer bonefrac (model.json format_version {shown}, this "
            f"version reads {FORMAT_VERSION}); upgrade bonefrac or retrain it with 'bonefrac train'"
        )
    raise RunDirError(
        f"{source}: trained with an older bonefrac (model.json format_version {shown}, this "
        f"version reads {FORMAT_VERSION}); retrain it with 'bonefrac train'"
    )


@dataclass(frozen=True)
class MissingSafeguard:
    """A safeguard the run lacks: its ``name``, what that means for the answers (``detail``)
    and the ``command`` that adds it."""

    name: str
    detail: str
    command: str

    def as_dict(self) -> dict[str, str]:
        """``{"name", "detail", "command"}`` (the ``/v1/model`` shape)."""
        return asdict(self)


#: How a run gets all four safeguards at once.
RETRAIN_HINT = "retraining with 'bonefrac train' (without --no-deploy) fits all four"


def missing_safeguards(meta: ModelMeta, run: str = "RUN") -> list[MissingSafeguard]:
    """The safeguards ``meta`` lacks, in the order their commands should run (the refer rule
    last: a new threshold or temperature refits or removes it); empty when the run is ready.

    ``run`` fills the commands' run argument (quoted for a shell); the default ``RUN`` keeps
    paths out of what a server shows.
    """
    where = run if run == "RUN" else shlex.quote(run)
    out = []
    if meta.get("threshold_criterion", "default") in (None, "default"):
        out.append(
            MissingSafeguard(
                "threshold",
                f"no tuned threshold: decisions use the default {meta.threshold:g}, not a "
                "threshold chosen on val",
                f"bonefrac threshold {where} --criterion specificity:0.95",
            )
        )
    if not isinstance(meta.get("calibration"), dict):
        out.append(
            MissingSafeguard(
                "calibration",
                "no fitted temperature: probabilities are the raw model's, not calibrated on val",
                f"bonefrac calibrate {where}",
            )
        )
    if meta.ood is None and meta.appearance is None:
        out.append(
            MissingSafeguard(
                "ood",
                "no out-of-scope detector: an image unlike the training radiographs still gets "
                "a fracture call",
                f"bonefrac ood {where}",
            )
        )
    if meta.refer is None and meta.rule_out is None:
        out.append(
            MissingSafeguard(
                "refer",
                "no rule-out cut: a doubtful image gets 'no_fracture' instead of 'refer'",
                f"bonefrac threshold {where} --rule-out-sensitivity 0.95",
            )
        )
    return out


def warn_missing_safeguards(meta: ModelMeta, run: str = "RUN") -> list[MissingSafeguard]:
    """Log one warning per safeguard ``meta`` lacks (with its command), then one line on
    retraining; return them (once per job or server start, never per image)."""
    missing = missing_safeguards(meta, run)
    shown = shlex.quote(run) if run != "RUN" else run
    for item in missing:
        log.warning("%s: %s; add it with '%s'", shown, item.detail, item.command)
    if missing:
        names = ", ".join(item.name for item in missing)
        log.warning("%s: missing safeguard(s): %s; %s", shown, names, RETRAIN_HINT)
    return missing


def usable_threshold(threshold: float) -> float:
    """``threshold`` moved inside the open interval (0, 1) that model.json accepts.

    A criterion or a temperature rescale can land on 0 (everything positive) or 1 (nothing
    positive) when probabilities saturate; the nearest representable value inside keeps the
    same decisions for every probability strictly between 0 and 1.
    """
    return float(np.clip(threshold, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0)))


def check_finite(logits: Any, what: str = "model output") -> np.ndarray:
    """``logits`` as float array; a non-finite value is a :class:`ModelOutputError`."""
    arr = np.asarray(logits, dtype=float)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ModelOutputError(
            f"{what}: {int(bad.sum())} of {arr.size} values are not finite (NaN or inf), so the "
            "output cannot be trusted; the weights or model.json are broken: restore or retrain"
        )
    return arr


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a trained model (recorded in model.json)."""
    import lightning
    import timm
    import torch
    import torchvision

    from bonefrac.version import __version__

    return {
        "bonefrac": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }
