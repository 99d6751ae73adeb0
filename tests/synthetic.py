"""Synthetic radiograph-like data for tests: noise images; 'fractures' are thin bright lines.

Each positive image carries the normalised box of its line in ``boxes``, so localisation
can be checked against ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bonefrac.data.schema import MANIFEST_COLUMNS


def make_image(rng: np.random.Generator, size: int, fractured: bool) -> tuple[np.ndarray, list]:
    """A dim noisy 'bone' blob; positives get a short bright line. Returns (uint8 HxW, boxes)."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    blob = np.exp(-(((yy - cy) / (0.35 * size)) ** 2 + ((xx - cx) / (0.2 * size)) ** 2))
    img = 40 + 60 * blob + rng.normal(0, 12, (size, size))
    boxes: list = []
    if fractured:
        length = int(size * rng.uniform(0.15, 0.25))
        x0 = int(rng.uniform(0.15, 0.85 - 0.25) * size)
        y0 = int(rng.uniform(0.15, 0.85) * size)
        img[y0 : y0 + 2, x0 : x0 + length] = 250
        boxes = [[(x0 + length / 2) / size, (y0 + 1) / size, length / size, 2 / size]]
    return np.clip(img, 0, 255).astype(np.uint8), boxes


def make_manifest(
    root: Path,
    n_per_split: dict[str, int] | None = None,
    size: int = 64,
    pos_rate: float = 0.4,
    seed: int = 0,
) -> Path:
    """Write PNGs + ``manifest.csv`` (full schema, splits assigned) under ``root``."""
    n_per_split = n_per_split or {"train": 80, "val": 30, "test": 30}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in n_per_split.items():
        n_pos = max(1, round(n * pos_rate))
        for i in range(n):
            fractured = i < n_pos
            arr, boxes = make_image(rng, size, fractured)
            image_id = f"{split}_{i:04d}.png"
            path = root / "images" / image_id
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            rows.append(
                {
                    "image_id": image_id,
                    "path": str(path),
                    "label": int(fractured),
                    "source": "synthetic",
                    "region": "hand" if i % 2 else "leg",
                    "view": "frontal",
                    "split": split,
                    "group": image_id,
                    "width": size,
                    "height": size,
                    "sha1": "",
                    "phash": "",
                    "boxes": json.dumps(boxes),
                }
            )
    manifest = root / "manifest.csv"
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(manifest, index=False)
    return manifest


#: Overrides that make any config train in seconds on the synthetic set.
FAST_OVERRIDES = [
    "model.name=simple_cnn",
    "model.pretrained=none",
    "data.image_size=64",
    "data.batch_size=8",
    "data.augment=none",
    "train.epochs=4",
    "train.lr=0.001",
    "train.warmup_epochs=0",
    "train.monitor=val_loss",
    "train.progress_bar=false",
    "train.accelerator=cpu",
]
