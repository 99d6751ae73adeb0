"""CPU speed of EfficientNet-Lite0/1/2 at their native sizes (224 / 240 / 260 px), in one run.

For each model (ImageNet weights from the offline packages): training img/s (AdamW step, BCE on
the logit, channels_last, random uint8 greyscale batches through ``to_input``; batch / median
step time) and batch-1 inference latency (eval, ``torch.inference_mode``, ``to_input`` +
forward + sigmoid; median). Both phases interleave the three models step by step, rotating the
order, so the machine's noise hits all alike; ratios are against Lite0 from the same run.
Threads: ``bonefrac.system.usable_cpus()``.

Run: ``PYTHONPATH=src:bench .venv/bin/python bench/lite_family.py [--steps 15] [--iters 40]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from benchinfo import git_commit, machine
from inference import percentiles
from train_step import make_batches

from bonefrac.data.transforms import to_input
from bonefrac.models import build_model, resolve_spec
from bonefrac.system import usable_cpus

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def rotated(i: int) -> tuple[str, ...]:
    """The models in round-robin order, starting one further along each step."""
    k = i % len(MODELS)
    return MODELS[k:] + MODELS[:k]


def build(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(name, pretrained="imagenet").to(memory_format=torch.channels_last)
    return model.train(), torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_rates(
    setups: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]], args: argparse.Namespace
) -> dict[str, float]:
    """img/s of each model: batch / median step time over round-robin steps."""
    n = args.warmup + args.steps
    specs = {name: resolve_spec(name) for name in MODELS}
    data = {name: make_batches(n, args.batch, specs[name].input_size) for name in MODELS}
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    for i in range(n):
        for name in rotated(i):
            (model, opt), spec, (x, y) = setups[name], specs[name], data[name]
            rows = slice(i * args.batch, (i + 1) * args.batch)
            start = time.perf_counter()
            xb = to_input(x[rows], spec.mean, spec.std, channels_last=True)
            loss = loss_fn(model(xb).squeeze(1), y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: args.batch / statistics.median(t) for name, t in times.items()}


def latencies(models: dict[str, torch.nn.Module], args: argparse.Namespace) -> dict[str, float]:
    """Median batch-1 latency (ms) of each model, round-robin."""
    gen = torch.Generator().manual_seed(1)
    specs = {name: resolve_spec(name) for name in MODELS}
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    for model in models.values():
        model.eval()
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            for name in rotated(i):
                side = specs[name].input_size
                img = torch.randint(0, 256, (1, 1, side, side), dtype=torch.uint8, generator=gen)
                start = time.perf_counter()
                x = to_input(img, specs[name].mean, specs[name].std, channels_last=True)
                torch.sigmoid(models[name](x).float()).item()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: percentiles(t)[0] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(usable_cpus())
    setups = {name: build(name) for name in MODELS}
    rates = train_rates(setups, args)
    ms = latencies({name: model for name, (model, _) in setups.items()}, args)
    print(f"commit: {git_commit()}")
    print(f"machine: {machine()}")
    print(
        f"train: batch {args.batch}, {args.steps} timed steps per model (after {args.warmup}),"
        f" fp32; inference: batch 1, median of {args.iters} (after {args.warmup}); models"
        " interleaved round-robin; ratios vs Lite0 in this run\n"
    )
    print(
        "| model | native px | params (M) | train img/s | ratio to Lite0 | latency ms"
        " | ratio to Lite0 (Lite0 ms / model ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    base = MODELS[0]
    for name in MODELS:
        params = sum(p.numel() for p in setups[name][0].parameters()) / 1e6
        print(
            f"| {name} | {resolve_spec(name).input_size} | {params:.2f} | {rates[name]:.1f} |"
            f" {rates[name] / rates[base]:.3f} | {ms[name]:.1f} | {ms[base] / ms[name]:.3f} |"
        )


if __name__ == "__main__":
    main()
