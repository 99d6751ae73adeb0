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
from bonefrac.training.losses import BinaryLoss


def binary_epoch_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """Val metrics logged each epoch (positive class = fractured)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = labels.astype(int)
    finite = bool(np.all(np.isfinite(probs)))
    pred = probs >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    # Non-finite outputs (a diverged model) have no ranking: report NaN, let the guard judge.
    both = len(np.unique(labels)) == 2 and finite
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


def rewarm_after(start_step: int, rewarm_steps: int, base):  # noqa: ANN001, ANN201
    """``base`` scaled by a linear ramp 0 -> 1 over ``rewarm_steps`` from ``start_step`` on.

    Used for the backbone group when it is unfrozen mid-run: without it the backbone joins at
    near-peak LR with an empty AdamW state, and AdamW's first updates are about lr * sign(grad)
    for every weight at once (the bias-corrected m / sqrt(v) is ~±1), whatever the gradient's
    size. Measured on Lite0 (bench/unfreeze_shock.py): in the first 12 unfrozen steps the
    backbone weights moved 15x more than with this ramp, and with BatchNorm on running
    statistics that jolt alone collapsed the model to a constant output (val ROC-AUC 0.69 ->
    0.49, train loss stuck at ln 2), the failure seen on GPU runs at the unfreeze epoch.
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
        L.seed_everything(self.cfg.seed + 1000 * (self.current_epoch + 1), verbose=False)
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

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits.float(), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x).float()
        loss = self.loss_fn(logits, y)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self._val_logits.append(logits.detach().cpu())
        self._val_labels.append(y.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_logits:
            return
        logits = self.all_gather(torch.cat(self._val_logits)).reshape(-1)
        labels = self.all_gather(torch.cat(self._val_labels)).reshape(-1)
        self._val_logits.clear()
        self._val_labels.clear()
        probs = torch.sigmoid(logits).numpy(force=True)
        metrics = binary_epoch_metrics(labels.numpy(force=True), probs)
        for name, value in metrics.items():
            shown = name in ("roc_auc", "f1")
            self.log(f"val_{name}", float(value), prog_bar=shown, rank_zero_only=True)

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
        total = t.epochs * self.steps_per_epoch
        warmup = int(round(t.warmup_epochs * self.steps_per_epoch))
        base = warmup_cosine(total, warmup)
        lambdas = [base, base]
        if t.warmup_frozen_epochs and t.unfreeze_warmup_epochs:
            start = t.warmup_frozen_epochs * self.steps_per_epoch
            rewarm = int(round(t.unfreeze_warmup_epochs * self.steps_per_epoch))
            lambdas[0] = rewarm_after(start, rewarm, base)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
