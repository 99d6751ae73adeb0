"""Batch prediction over a manifest frame with a run's model (used by train and evaluate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from torch.utils.data import DataLoader

from bonefrac.data.dataset import PreparedImageCache, RadiographDataset
from bonefrac.data.schema import SUBGROUP_COLUMNS
from bonefrac.data.transforms import to_input
from bonefrac.models.classifier import FractureClassifier

PREDICTION_COLUMNS = ["image_id", "path", "label", "logit", "prob"]


@torch.no_grad()
def predict_logits(
    model: FractureClassifier,
    dataset: RadiographDataset,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    description: str = "predicting",
    tta: bool = False,
) -> np.ndarray:
    """Logits for every item of ``dataset`` in order.

    ``tta``: test-time augmentation, the mean logit of the image and its mirror image.
    """
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out: list[np.ndarray] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(dataset))
        for x, _ in loader:
            x = to_input(x.to(device), mean, std, channels_last=True)
            logit = model(x).float().squeeze(1)
            if tta:
                logit = 0.5 * (logit + model(torch.flip(x, dims=[3])).float().squeeze(1))
            out.append(logit.cpu().numpy())
            bar.advance(task, len(x))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def predictions_frame(frame: pd.DataFrame, logits: np.ndarray) -> pd.DataFrame:
    """The predictions CSV layout: id, path, label, logit, prob, then subgroup columns."""
    out = pd.DataFrame(
        {
            "image_id": frame["image_id"].astype(str).to_numpy(),
            "path": frame["path"].astype(str).to_numpy(),
            "label": frame["label"].astype(int).to_numpy(),
            "logit": logits.astype(float),
            "prob": 1.0 / (1.0 + np.exp(-logits.astype(float))),
        }
    )
    for col in SUBGROUP_COLUMNS:
        if col in frame.columns:
            out[col] = frame[col].to_numpy()
    return out


def predict_manifest_frame(
    run_dir: str | Path,
    df: pd.DataFrame,
    batch_size: int = 32,
    progress: bool = True,
    tta: bool = False,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Predict every row of a manifest-like frame (``path, label``) with the run's model."""
    from bonefrac.models.runio import load_run

    run = load_run(run_dir)
    frame = df.reset_index(drop=True).copy()
    if "image_id" not in frame.columns:
        frame["image_id"] = [Path(p).name for p in frame["path"]]
    cache = PreparedImageCache(run.image_size, clahe=run.clahe, keep=False)
    dataset = RadiographDataset(frame, cache)
    logits = predict_logits(
        run.model,
        dataset,
        run.mean,
        run.std,
        batch_size=batch_size,
        progress=progress,
        tta=tta,
        device=device,
    )
    return predictions_frame(frame, logits)
