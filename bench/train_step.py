"""Training-step throughput: bonefrac (LightningModule + Trainer) vs a bare PyTorch loop.

Same model (default efficientnet_lite0, ImageNet weights), same uint8 batches, same
optimiser and channels_last setting; the ratio bonefrac / bare is the framework's cost.
Goal: ratio >= 0.95. Run: ``.venv/bin/python bench/train_step.py [--steps 30]``.

``--precision``: instead, a training step in bf16 autocast (Lightning's CPU ``bf16-mixed``)
vs fp32, alternating step by step, the bf16 / fp32 img/s ratio, the CPU's bf16 flags and what
``train.precision: auto`` resolves to here. bf16 earns the CPU default only at >= 1.3x (and
matching val ROC-AUC); see ``bonefrac.precision``.
"""

from __future__ import annotations

import argparse
import platform
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from bonefrac.config import load_config
from bonefrac.data.transforms import to_input
from bonefrac.models import build_model, resolve_spec
from bonefrac.precision import BF16_CPU_FLAGS, auto_precision, cpu_bf16_flags
from bonefrac.training.module import FractureModule


def make_batches(steps: int, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (steps * batch, 1, size, size), dtype=torch.uint8, generator=gen)
    y = (torch.rand(steps * batch, generator=gen) < 0.3).float()
    return x, y


def bare_loop(model_name: str, x: torch.Tensor, y: torch.Tensor, batch: int, warmup: int) -> float:
    spec = resolve_spec(model_name)
    model = build_model(model_name, pretrained=spec.default_pretrained)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = len(x) // batch
    start = None
    for i in range(n):
        if i == warmup:
            start = time.perf_counter()
        xb = to_input(x[i * batch : (i + 1) * batch], spec.mean, spec.std, channels_last=True)
        loss = loss_fn(model(xb).squeeze(1), y[i * batch : (i + 1) * batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (n - warmup) * batch / (time.perf_counter() - start)


class _Timer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.end = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:  # noqa: ANN001
        if batch_idx == self.warmup:
            self.start = time.perf_counter()
        if batch_idx >= self.warmup:
            self.images += len(batch[1])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        self.end = time.perf_counter()


def bonefrac_loop(
    model_name: str, x: torch.Tensor, y: torch.Tensor, batch: int, warmup: int
) -> float:
    cfg = load_config(None, [f"model.name={model_name}", "train.epochs=1", "train.lr=0.0001"])
    spec = resolve_spec(model_name)
    model = build_model(model_name, pretrained=spec.default_pretrained)
    model = model.to(memory_format=torch.channels_last)
    steps = len(x) // batch
    module = FractureModule(model, cfg, spec.mean, spec.std, None, steps)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    timer = _Timer(warmup)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        precision="32-true",
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.images / (timer.end - timer.start)


def paired_precision_steps(
    model_name: str, x: torch.Tensor, y: torch.Tensor, batch: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per training step in fp32 and in bf16 autocast, the two alternating step by step.

    bf16 autocast around forward + loss is what Lightning's ``bf16-mixed`` does on a CPU.
    Alternating single steps (the order flipping each time) lets both precisions share the
    machine's noise, which run-level repeats on a busy machine do not.
    """
    spec = resolve_spec(model_name)
    setups = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(model_name, pretrained=spec.default_pretrained)
        model = model.to(memory_format=torch.channels_last).train()
        setups[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(len(x) // batch):
        xb = to_input(x[i * batch : (i + 1) * batch], spec.mean, spec.std, channels_last=True)
        yb = y[i * batch : (i + 1) * batch]
        order = ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")
        for name in order:
            model, opt = setups[name]
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                loss = loss_fn(model(xb).squeeze(1).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def compare_precisions(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> None:
    """Training step in bf16 autocast vs fp32 on the CPU; prints img/s and the ratio."""
    import statistics

    found = cpu_bf16_flags()
    print(
        f"CPU bf16 flags ({' / '.join(BF16_CPU_FLAGS)}): {', '.join(found) or 'none'};"
        f" train.precision auto -> {auto_precision('cpu')}"
    )
    times = paired_precision_steps(args.model, x, y, args.batch, args.warmup)
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    per_step = sorted(a / b for a, b in zip(times["fp32"], times["bf16"], strict=True))
    print(
        f"fp32: {rate['fp32']:.1f} img/s, bf16 autocast: {rate['bf16']:.1f} img/s"
        f" (median of {len(per_step)} alternating steps each)"
    )
    print(
        f"ratio bf16/fp32: {rate['bf16'] / rate['fp32']:.3f}  (per-step pairs: min"
        f" {per_step[0]:.2f}, median {statistics.median(per_step):.2f}, max {per_step[-1]:.2f});"
        " bf16 becomes the CPU default only at >= 1.3 with matching val ROC-AUC"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--precision", action="store_true", help="compare bf16-mixed with 32-true instead"
    )
    args = parser.parse_args()
    x, y = make_batches(args.steps, args.batch, args.size)
    print(
        f"machine: {platform.processor() or platform.machine()}, threads={torch.get_num_threads()}"
    )
    print(
        f"model={args.model} size={args.size} batch={args.batch} timed steps={args.steps - args.warmup}"
    )
    if args.precision:
        compare_precisions(args, x, y)
        return
    bare, ours = [], []
    for r in range(args.repeats):  # interleave to share the machine's noise
        bare.append(bare_loop(args.model, x, y, args.batch, args.warmup))
        ours.append(bonefrac_loop(args.model, x, y, args.batch, args.warmup))
        print(f"  repeat {r}: bare {bare[-1]:.1f} img/s   bonefrac {ours[-1]:.1f} img/s")
    b, o = max(bare), max(ours)
    print(f"bare PyTorch loop: {b:.1f} img/s (best of {args.repeats})")
    print(f"bonefrac Lightning step: {o:.1f} img/s (best of {args.repeats})")
    print(f"ratio bonefrac/bare: {o / b:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
