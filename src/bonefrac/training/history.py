"""Per-epoch history (CSV) and the training-curve plot."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import pandas as pd

from bonefrac.fileio import atomic_path, write_csv

HISTORY_KEYS = (
    "train_loss_epoch",
    "val_loss",
    "val_roc_auc",
    "val_pr_auc",
    "val_f1",
    "val_sensitivity",
    "val_specificity",
)


class HistoryCallback(L.Callback):
    """Appends one row per epoch to ``history.csv`` (kept across resume).

    ``elapsed_s`` is the training wall time from the first epoch's start to this epoch's end
    (validation included); a resumed run continues from the last kept row's value.
    ``finished_at`` is the epoch's end as a Unix timestamp.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._start = time.perf_counter()
        self._offset = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._offset = 0.0
        if self.path.is_file():
            previous = pd.read_csv(self.path)
            previous = previous[previous["epoch"] < trainer.current_epoch]
            if "elapsed_s" in previous and not previous.empty:
                self._offset = float(previous["elapsed_s"].max())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row: dict[str, float] = {"epoch": trainer.current_epoch}
        for key in HISTORY_KEYS:
            value = metrics.get(key)
            name = "train_loss" if key == "train_loss_epoch" else key
            row[name] = float(value) if value is not None else math.nan
        row["lr"] = float(trainer.optimizers[0].param_groups[-1]["lr"])
        row["elapsed_s"] = round(self._offset + time.perf_counter() - self._start, 2)
        row["finished_at"] = round(time.time(), 2)
        previous = pd.read_csv(self.path) if self.path.is_file() else pd.DataFrame()
        if not previous.empty:
            previous = previous[previous["epoch"] < row["epoch"]]
        write_csv(self.path, pd.concat([previous, pd.DataFrame([row])], ignore_index=True))


def plot_training_curves(history_csv: Path, out_png: Path) -> Path | None:
    """Loss (train/val) and val ROC-AUC/F1 per epoch, side by side."""
    if not Path(history_csv).is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = pd.read_csv(history_csv)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = hist["epoch"] + 1
    ax1.plot(epochs, hist["train_loss"], "o-", label="train loss")
    ax1.plot(epochs, hist["val_loss"], "s-", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for col, label in (("val_roc_auc", "val ROC-AUC"), ("val_f1", "val F1 @0.5")):
        ax2.plot(epochs, hist[col], "o-", label=label)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle("Training curves")
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
