"""Collapse guard: stop a run whose model has fallen to a constant (or non-finite) output.

A run has collapsed when its training loss is non-finite, or when for ``patience`` consecutive
epochs val ROC-AUC stays at chance (<= 0.55) while the epoch's train loss is no better than a
constant guess (>= ln 2, the BCE of predicting 0.5 for every image). Both conditions are needed:
a low ROC-AUC with a falling loss is a model still learning, and a high loss with a good
ROC-AUC is a model that ranks well but is miscalibrated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L

from bonefrac.errors import BonefracError

log = logging.getLogger(__name__)

CHANCE_ROC_AUC = 0.55
CONSTANT_GUESS_LOSS = math.log(2.0)


class TrainingCollapsedError(BonefracError):
    """Training collapsed and the run's outputs could not be written."""

    exit_code = 3


@dataclass
class CollapseVerdict:
    """What the guard concluded: ``epoch`` (0-based) and a sentence saying why."""

    epoch: int
    reason: str


def epoch_collapsed(train_loss: float, val_roc_auc: float) -> bool:
    """One epoch's evidence of collapse: chance ranking and a loss no better than a constant."""
    if not math.isfinite(train_loss):
        return True
    at_chance = not math.isfinite(val_roc_auc) or val_roc_auc <= CHANCE_ROC_AUC
    return at_chance and train_loss >= CONSTANT_GUESS_LOSS


class CollapseGuard(L.Callback):
    """Stops training on collapse (see module docstring); ``verdict`` holds why, else None.

    The checkpoint callback keeps the best epoch so far, so stopping loses nothing. The guard
    also follows ``monitor`` per epoch to tell which epoch was best and whether it lies inside
    the first ``frozen_epochs`` (head-only) epochs.
    """

    def __init__(
        self, patience: int = 2, monitor: str = "val_roc_auc", frozen_epochs: int = 0
    ) -> None:
        self.patience = max(1, int(patience))
        self.monitor = monitor
        self.frozen_epochs = int(frozen_epochs)
        self.streak = 0
        self.scores: dict[int, float] = {}
        self.verdict: CollapseVerdict | None = None
        self._nonfinite: str | None = None
        self.advice = "lower train.lr; try another seed"

    @classmethod
    def from_config(cls, cfg_train: Any) -> CollapseGuard:
        """A guard set up from the ``train`` section (patience, monitor, frozen epochs)."""
        guard = cls(cfg_train.collapse_patience, cfg_train.monitor, cfg_train.warmup_frozen_epochs)
        guard.advice = collapse_advice(cfg_train)
        return guard

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or self.verdict is not None or self._nonfinite is not None:
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            self._nonfinite = (
                f"train loss became {value} at epoch {trainer.current_epoch + 1}, "
                f"step {batch_idx + 1}"
            )
            if trainer.world_size == 1:  # alone: stop now; with peers, decide together below
                self._stop(trainer, self._nonfinite)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs validation before this hook, so both numbers are this epoch's.
        if trainer.sanity_checking or self.verdict is not None:
            return
        metrics = trainer.callback_metrics
        score = _as_float(metrics.get(self.monitor))
        if math.isfinite(score):
            self.scores[int(trainer.current_epoch)] = score
        # a localising model's train loss includes its map's: judge the class logit's alone
        logged = metrics.get("train_cls_loss_epoch", metrics.get("train_loss_epoch"))
        loss = _as_float(logged)
        reason = self._nonfinite
        if reason is None and logged is not None and not math.isfinite(loss):
            reason = f"train loss was {loss} in epoch {trainer.current_epoch + 1}"
        # val_roc_auc is logged on rank 0 only: other ranks judge the loss alone.
        if reason is None and "val_roc_auc" in metrics and logged is not None:
            auc = _as_float(metrics.get("val_roc_auc"))
            self.streak = self.streak + 1 if epoch_collapsed(loss, auc) else 0
            if self.streak >= self.patience:
                reason = (
                    f"for {self.streak} epochs in a row (to epoch {trainer.current_epoch + 1}) "
                    f"val ROC-AUC stayed at chance (last {auc:.3f} <= {CHANCE_ROC_AUC}) while "
                    f"the train loss was no better than a constant guess (last {loss:.4g} >= ln 2)"
                )
        # Every process must take the same decision, or a distributed run would hang.
        if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            self._stop(trainer, reason or "another process saw the collapse")

    def _stop(self, trainer: L.Trainer, reason: str) -> None:
        self.verdict = CollapseVerdict(epoch=int(trainer.current_epoch), reason=reason)
        log.warning("training collapsed: %s; stopping", reason)
        trainer.should_stop = True

    def best_epoch(self) -> int | None:
        """0-based epoch with the best ``monitor`` value (first one on ties), None if none."""
        if not self.scores:
            return None
        sign = -1.0 if self.monitor == "val_loss" else 1.0
        return max(sorted(self.scores), key=lambda e: sign * self.scores[e])

    def meta(self) -> dict[str, Any]:
        """The keys model.json records about how training went."""
        best = self.best_epoch()
        return {
            "training_status": "collapsed" if self.verdict is not None else "ok",
            "collapse_reason": self.verdict.reason if self.verdict is not None else None,
            "collapse_advice": self.advice if self.verdict is not None else None,
            "best_epoch": best,
            "best_in_frozen_warmup": best is not None and best < self.frozen_epochs,
        }

    def state_dict(self) -> dict:
        return {"streak": self.streak, "scores": dict(self.scores)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.streak = int(state_dict.get("streak", 0))
        self.scores = {int(k): float(v) for k, v in state_dict.get("scores", {}).items()}


def _as_float(value: object) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def collapse_advice(cfg_train: Any) -> str:
    """What to try after a collapse, given the train config that collapsed."""
    tips = [f"lower train.lr (it was {cfg_train.lr:g})"]
    if cfg_train.warmup_frozen_epochs:
        bn = "" if cfg_train.freeze_bn else ", set train.freeze_bn=true"
        tips.append(f"lengthen train.unfreeze_warmup_epochs{bn} or lower train.backbone_lr_mult")
    tips.append("try another seed")
    return "; ".join(tips)


@contextmanager
def outputs_of(guard: CollapseGuard, run_dir: object) -> Iterator[None]:
    """Wrap the writing of a run's outputs: if a collapsed model's outputs cannot be written
    (e.g. non-finite weights), raise :class:`TrainingCollapsedError` saying why.

    A collapse whose outputs were written raises nothing: model.json records it, and
    ``bonefrac train`` turns it into exit status 3 (so a tuning study just scores the trial).
    """
    try:
        yield
    except BonefracError as exc:
        if guard.verdict is None:
            raise
        raise TrainingCollapsedError(
            f"{run_dir}: training collapsed ({guard.verdict.reason}) and its outputs could not "
            f"be written ({exc}). Try: {guard.advice}."
        ) from exc
