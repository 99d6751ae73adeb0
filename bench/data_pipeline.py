"""Data pipeline rate vs the rate the default model consumes images in training.

Measures, on real radiographs from ../shared/data (or $BONEFRAC_DATA):
  * decode + letterbox rate with and without JPEG draft mode (FracAtlas images, and the
    full-size originals in fracatlas_fullres/),
  * the cached training path (RadiographDataset over the in-memory cache + augmentation),
  * the default model's training step (efficientnet_lite0, 224 px, batch 16) in images/s.
Goal: pipeline >= 2x model. Run: ``.venv/bin/python bench/data_pipeline.py [--n 300]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch

from bonefrac.data.dataset import PreparedImageCache, RadiographDataset
from bonefrac.data.imageio import load_grayscale
from bonefrac.data.transforms import letterbox, to_input, train_augment
from bonefrac.models.registry import build_model, resolve_spec

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    root = Path(os.environ.get("BONEFRAC_DATA", REPO.parent / "shared" / "data"))
    if not (root / "fracatlas" / "images").is_dir():
        raise SystemExit(f"no FracAtlas under {root}; set BONEFRAC_DATA")
    return root


def decode_rate(paths: list[Path], size: int, draft: bool) -> float:
    start = time.perf_counter()
    for p in paths:
        letterbox(load_grayscale(p, draft_size=size if draft else None), size)
    return len(paths) / (time.perf_counter() - start)


def cached_rate(paths: list[Path], size: int, epochs: int = 2) -> float:
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": 0, "image_id": "x"})
    cache = PreparedImageCache(round(size * 1.15))
    cache.fill(frame["path"].tolist(), progress=False)
    ds = RadiographDataset(frame, cache, train_augment(size, "medium"))
    start = time.perf_counter()
    for _ in range(epochs):
        for i in range(len(ds)):
            ds[i]
    return epochs * len(ds) / (time.perf_counter() - start)


def fill_rate(paths: list[Path], size: int, threads: int) -> float:
    """Images/s of the once-per-run cache fill (decode + letterbox) on ``threads`` threads."""
    cache = PreparedImageCache(round(size * 1.15))
    start = time.perf_counter()
    cache.fill([str(p) for p in paths], progress=False, threads=threads)
    return len(paths) / (time.perf_counter() - start)


def model_rate(size: int, batch: int = 16, steps: int = 12, warmup: int = 3) -> float:
    spec = resolve_spec("efficientnet_lite0")
    model = build_model("efficientnet_lite0", pretrained="imagenet")
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)
    y = torch.zeros(batch)
    for i in range(steps):
        if i == warmup:
            start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(to_input(x, spec.mean, spec.std, True)).squeeze(1), y
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (steps - warmup) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="FracAtlas images to decode")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    root = data_root()
    small = sorted((root / "fracatlas" / "images" / "Fractured").glob("*.jpg"))[: args.n]
    full = sorted((root / "fracatlas_fullres").rglob("*.jpg"))
    rates = {
        "fracatlas decode, no draft": decode_rate(small, args.size, draft=False),
        "fracatlas decode, draft": decode_rate(small, args.size, draft=True),
    }
    if full:
        full_rep = full * max(1, 30 // len(full))
        rates["full-size decode, no draft"] = decode_rate(full_rep, args.size, draft=False)
        rates["full-size decode, draft"] = decode_rate(full_rep, args.size, draft=True)
    rates["cached dataset + augmentation"] = cached_rate(small, args.size)
    cores = os.cpu_count() or 1
    one, many = fill_rate(small, args.size, 1), fill_rate(small, args.size, cores)
    rates["cache fill, 1 thread"] = one
    rates[f"cache fill, {cores} threads"] = many
    model = model_rate(args.size)
    print(f"torch threads={torch.get_num_threads()}  size={args.size}")
    print(f"model consumes (lite0 train step, batch 16): {model:8.1f} img/s")
    for name, rate in rates.items():
        print(f"{name:32s} {rate:8.1f} img/s   ratio vs model {rate / model:6.2f}x")
    print(f"cache fill speed-up from threads: {many / one:.2f}x ({cores} cores)")
    print(
        "goal: the path used each epoch (cached dataset + augmentation) >= 2x model; "
        "decoding happens once per run"
    )


if __name__ == "__main__":
    main()
