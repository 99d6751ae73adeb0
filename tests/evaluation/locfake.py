"""Fake localisation columns for predictions tables (no model): true boxes on the fractured
rows, predicted boxes / map peaks / energy of a chosen quality, optional tiny PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def random_boxes(rng: np.random.Generator, k: int) -> list[list[float]]:
    """``k`` small boxes well inside the image, ``[cx, cy, w, h]``."""
    out = []
    for _ in range(k):
        w, h = rng.uniform(0.04, 0.12, 2)
        cx, cy = rng.uniform(0.15, 0.85, 2)
        out.append([round(float(v), 5) for v in (cx, cy, w, h)])
    return out


def add_localization(
    df: pd.DataFrame,
    seed: int = 0,
    quality: str = "perfect",
    n_false: int = 0,
    images_dir: Path | None = None,
    size: tuple[int, int] = (48, 32),
) -> pd.DataFrame:
    """A copy of ``df`` with ``boxes``, ``pred_boxes``, ``map_peak``, ``energy_in_box``.

    ``quality``: ``perfect`` (boxes and peaks on the truth), ``shuffled`` (each fractured
    image gets another fractured image's boxes and peak), ``centre`` (peak at the centre, no
    boxes). ``n_false``: low-scoring extra boxes per image at random places. ``images_dir``:
    also write a PNG per row and point ``path`` at it; ``size`` = (width, height).
    """
    rng = np.random.default_rng(seed)
    out = df.copy()
    truth = [random_boxes(rng, int(rng.integers(1, 3))) if y else [] for y in out["label"]]
    pos = [i for i, b in enumerate(truth) if b]
    source = {i: i for i in pos}
    if quality == "shuffled":
        perm = list(rng.permutation(pos))
        while len(pos) > 1 and any(a == b for a, b in zip(pos, perm, strict=True)):
            perm = list(rng.permutation(pos))
        source = dict(zip(pos, perm, strict=True))
    preds, peaks, energy = [], [], []
    for i, boxes in enumerate(truth):
        p: list[list[float]] = []
        if boxes and quality in ("perfect", "shuffled"):
            src = truth[source[i]]
            p = [[*b, round(float(rng.uniform(0.6, 1.0)), 4)] for b in src]
            peaks.append(json.dumps(src[0][:2]))
        elif quality == "centre" or boxes:
            peaks.append(json.dumps([0.5, 0.5]))
        else:
            peaks.append(json.dumps([round(float(v), 4) for v in rng.uniform(0, 1, 2)]))
        for b in random_boxes(rng, n_false):
            p.append([*b, round(float(rng.uniform(0.05, 0.5)), 4)])
        preds.append(json.dumps(p))
        energy.append(float(rng.uniform(0.5, 0.9)) if boxes and quality == "perfect" else None)
        if boxes and quality != "perfect":
            energy[-1] = float(rng.uniform(0.0, 0.2))
    out["boxes"] = [json.dumps(b) if b else "[]" for b in truth]
    out["pred_boxes"] = preds
    out["map_peak"] = peaks
    out["energy_in_box"] = energy
    if images_dir is not None:
        from PIL import Image

        images_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for image_id in out["image_id"]:
            path = images_dir / f"{image_id}.png"
            arr = rng.integers(20, 200, (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(arr).save(path)
            paths.append(str(path))
        out["path"] = paths
    return out
