"""LightningModule: one-logit fracture classifier with epoch-level validation metrics."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor

from bonefrac.config import ExperimentConfig
from bonefrac.data.transforms import target_boxes, to_input
from bonefrac.metrics import point_metrics
from bonefrac.models.classifier import FractureClassifier
from bonefrac.training.distributed import gather_uneven
from bonefrac.training.losses import BinaryLoss

#: Validation metrics logged every epoch (``val_<name>``); the progress bar shows two.
EPOCH_METRICS = ("roc_auc", "pr_auc", "f1", "sensitivity", "specificity")


def warmup_cosine(total_steps: int, warmup_steps: int):  # noqa: ANN201
    """LR multiplier: linear warm-up then cosine decay to 1% of the peak."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def rewarm_after(start_step: int, rewarm_steps: int, base):  # noqa: ANN001, ANN201
    """``base`` scaled by a linear ramp 0 -> 1 over ``rewarm_steps`` from ``start_step`` on.

    Used for the backbone group when it is unfrozen mid-run: without it the backbone joins at
    near-peak LR with an empty AdamW state, and AdamW's first updates are about lr * sign(grad)
    for every weight at once (the bias-corrected m / sqrt(v) is ~±1), whatever the gradient's
    size. Measured on Lite0 (docs/experiments/quality/unfreeze_shock.py): in the first 12
    unfrozen steps the backbone weights moved 15x more than with this ramp, and with BatchNorm
    on running statistics that jolt alone collapsed the model to a constant output (val
    ROC-AUC 0.69 -> 0.49, train loss stuck at ln 2), the failure seen on GPU runs at the
    unfreeze epoch.
    """

    def factor(step: int) -> float:
        if rewarm_steps <= 0 or step >= start_step + rewarm_steps:
            return base(step)
        if step < start_step:
            return base(step)  # frozen: no gradients, so the value is irrelevant
        return base(step) * (step - start_step + 1) / (rewarm_steps + 1)

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
        self.bn_eval = t.freeze_bn
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
        self.train(self.training)

    def train(self, mode: bool = True) -> FractureModule:
        """Lightning's train(); with ``train.freeze_bn`` every BatchNorm keeps running stats."""
        super().train(mode)
        if mode and self.bn_eval:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        if len(batch) == 4:  # a localising model: (image, label, true boxes, boxes valid)
            inputs = to_input(x, self.mean, self.std, self.channels_last)
            boxes = [
                b if v > 0 else None
                for b, v in zip(target_boxes(batch[2]), batch[3].tolist(), strict=True)
            ]
            logits, parts = self.model.detector_loss(inputs, boxes)
            for name, value in parts.items():
                self.log(
                    f"train_det_{name}", value, on_epoch=True, batch_size=len(y), sync_dist=True
                )
            map_loss = sum(parts.values())
            self.log("train_map_loss", map_loss, on_epoch=True, batch_size=len(y), sync_dist=True)
            cls_loss = self.loss_fn(logits.squeeze(1).float(), y)
            # the collapse guard judges the fracture logit's loss alone (ln 2 = constant guess)
            self.log("train_cls_loss", cls_loss, on_epoch=True, batch_size=len(y), sync_dist=True)
            loss = cls_loss + self.cfg.train.loc_loss_weight * map_loss
        else:
            loss = self.loss_fn(self(x).float(), y)
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
        metrics = point_metrics(labels.numpy(force=True).astype(int), probs)
        for name in EPOCH_METRICS:
            shown = name in ("roc_auc", "f1")
            self.log(f"val_{name}", float(metrics[name]), prog_bar=shown, sync_dist=True)

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
        base = warmup_cosine(total, warmup)
        lambdas = [base, base]
        if t.warmup_frozen_epochs and t.unfreeze_warmup_epochs:
            start = t.warmup_frozen_epochs * steps
            rewarm = int(round(t.unfreeze_warmup_epochs * steps))
            lambdas[0] = rewarm_after(start, rewarm, base)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
