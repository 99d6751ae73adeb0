"""LightningModule: one-logit fracture classifier with epoch-level validation metrics."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch import Tensor

from bonefrac.config import ExperimentConfig
from bonefrac.data.transforms import to_input
from bonefrac.models.classifier import FractureClassifier
from bonefrac.training.distributed import gather_uneven
from bonefrac.training.losses import BinaryLoss


def binary_epoch_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """Val metrics logged each epoch (positive class = fractured)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = labels.astype(int)
    pred = probs >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    both = len(np.unique(labels)) == 2
    return {
        "roc_auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "pr_auc": float(average_precision_score(labels, probs)) if both else float("nan"),
        "f1": f1,
        "sensitivity": sens,
        "specificity": spec,
    }


def warmup_cosine(total_steps: int, warmup_steps: int):  # noqa: ANN201
    """LR multiplier: linear warm-up then cosine decay to 1% of the peak."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class FractureModule(L.LightningModule):
    """Wraps a :class:`FractureClassifier`; inputs arrive as uint8 and are normalised here."""

    def __init__(
        self,
        model: FractureClassifier,
        cfg: ExperimentConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        pos_weight: float | None,
        steps_per_epoch: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.steps_per_epoch = max(1, steps_per_epoch)
        t = cfg.train
        self.loss_fn = BinaryLoss(t.loss, pos_weight, t.focal_gamma, t.label_smoothing)
        self.channels_last = t.channels_last
        self._val_logits: list[Tensor] = []
        self._val_labels: list[Tensor] = []

    def forward(self, x_uint8: Tensor) -> Tensor:
        x = to_input(x_uint8, self.mean, self.std, self.channels_last)
        return self.model(x).squeeze(1)

    def on_train_epoch_start(self) -> None:
        # Re-seed per epoch so augmentation and dropout depend only on (seed, epoch):
        # a resumed run then replays exactly what an uninterrupted run would.
        # Each rank of a multi-process run gets its own stream (rank 0 keeps the 1-process one).
        rank_offset = 1_000_003 * self.global_rank
        L.seed_everything(
            self.cfg.seed + 1000 * (self.current_epoch + 1) + rank_offset, verbose=False
        )
        if self.cfg.train.warmup_frozen_epochs:
            frozen = self.current_epoch < self.cfg.train.warmup_frozen_epochs
            self.model.set_freeze("backbone" if frozen else self.cfg.model.freeze)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits.float(), y)
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y),
            sync_dist=True,
        )  # fmt: skip
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x).float()
        self._val_logits.append(logits.detach())
        self._val_labels.append(y.detach().float())

    def on_validation_epoch_end(self) -> None:
        # Every rank gathers every rank's val outputs (each image once: the val sampler does
        # not pad), so loss and metrics cover the whole split and are identical on all ranks,
        # which keeps checkpointing and early stopping in step without rank-0-only logging.
        local_logits = torch.cat(self._val_logits) if self._val_logits else torch.zeros(0)
        local_labels = torch.cat(self._val_labels) if self._val_labels else torch.zeros(0)
        self._val_logits.clear()
        self._val_labels.clear()
        logits = gather_uneven(self, local_logits.to(self.device)).float()
        labels = gather_uneven(self, local_labels.to(self.device)).float()
        if len(logits) == 0:
            return
        # identical on every rank: sync_dist only averages equal values (and keeps Lightning quiet)
        loss = self.loss_fn(logits, labels)
        self.log("val_loss", loss, prog_bar=True, batch_size=len(labels), sync_dist=True)
        probs = torch.sigmoid(logits).numpy(force=True)
        metrics = binary_epoch_metrics(labels.numpy(force=True), probs)
        for name, value in metrics.items():
            shown = name in ("roc_auc", "f1")
            self.log(f"val_{name}", float(value), prog_bar=shown, sync_dist=True)

    def configure_optimizers(self):  # noqa: ANN201
        t = self.cfg.train
        head = self.model.head_parameters()
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.model.parameters() if id(p) not in head_ids]
        groups = [
            {"params": backbone, "lr": t.lr * t.backbone_lr_mult},
            {"params": head, "lr": t.lr},
        ]
        optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        steps = self.steps_per_epoch
        if self.trainer.world_size > 1:  # each rank steps through its share of the batches
            steps = max(1, int(self.trainer.estimated_stepping_batches) // max(1, t.epochs))
        total = t.epochs * steps
        warmup = int(round(t.warmup_epochs * steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
