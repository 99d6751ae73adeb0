"""CPU cost of localising: the localising model vs the classification-only model, one run.

Issue 24's goal: training img/s of the localising model (the FCOS detector head) / the
classification-only model >= 0.6 at the same size and batch, and batch-1 inference latency of
the localising model <= 1.6 x the classification-only one. Both models are efficientnet_lite0 with
the same ImageNet backbone weights; training steps are ``FractureModule.training_step`` under
each model's config (configs/lite0_cls.yaml, configs/lite0_loc.yaml: full fine-tuning, frozen
BatchNorm, channels_last) with AdamW, cls and loc steps alternating so machine noise hits both
alike. Inference is batch 1: cls = forward + sigmoid; loc = forward_with_map + detector_maps +
decode_box_sets (the shown boxes at threshold 0.5 and the best box), as the predictor does.
Run: ``PYTHONPATH=src:bench .venv/bin/python bench/loc_cost.py [--size 384 --steps 20 --iters 50]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from benchinfo import REPO, git_commit, machine

from bonefrac.config import load_config
from bonefrac.data.transforms import box_targets, min_box_px, to_input
from bonefrac.inference.box_decoding import MAX_BOXES, decode_box_sets
from bonefrac.inference.predictor import BEST_BOX_FLOOR
from bonefrac.maps.learned import detector_maps
from bonefrac.models import build_model, resolve_spec
from bonefrac.system import usable_cpus
from bonefrac.training.module import FractureModule

MODEL = "efficientnet_lite0"
CONFIGS = {"cls": REPO / "configs/lite0_cls.yaml", "loc": REPO / "configs/lite0_loc.yaml"}


def make_batches(
    n: int, batch: int, size: int, levels: tuple[int, ...]
) -> list[tuple[torch.Tensor, ...]]:
    """Random greyscale uint8 images, ~30% positive, each positive with one random box."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=gen)
        y = (torch.rand(batch, generator=gen) < 0.3).float()
        targets, valid = [], []
        for label in y.tolist():
            wh = torch.randint(size // 14, size // 3, (2,), generator=gen).float()
            x0y0 = torch.rand(2, generator=gen) * (size - wh)
            box = torch.cat([x0y0, x0y0 + wh])
            target, count = box_targets(box, size, min_box_px(levels[0]))
            targets.append(target if label else target.zero_())
            valid.append(float(count > 0) if label else 1.0)
        out.append((x, y, torch.stack(targets), torch.tensor(valid)))
    return out


def build(
    kind: str, steps: int, levels: tuple[int, ...]
) -> tuple[FractureModule, torch.optim.Optimizer]:
    torch.manual_seed(0)  # same head init; backbone weights are the packaged ImageNet ones
    spec = resolve_spec(MODEL)
    model = build_model(MODEL, pretrained="imagenet", localize=kind == "loc", loc_levels=levels)
    cfg = load_config(CONFIGS[kind])
    module = FractureModule(
        model.to(memory_format=torch.channels_last), cfg, spec.mean, spec.std, None, steps
    )
    return module.train(), torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)


def train_rates(args: argparse.Namespace) -> dict[str, tuple[FractureModule, float]]:
    """img/s of each model: batch / median step time over alternating steps."""
    n = args.warmup + args.steps
    setups = {k: build(k, n, args.levels) for k in ("cls", "loc")}
    times: dict[str, list[float]] = {"cls": [], "loc": []}
    for i, (x, y, target, valid) in enumerate(make_batches(n, args.batch, args.size, args.levels)):
        for kind in ("cls", "loc") if i % 2 == 0 else ("loc", "cls"):
            module, opt = setups[kind]
            batch = (x, y) if kind == "cls" else (x, y, target, valid)
            start = time.perf_counter()
            loss = module.training_step(batch, i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= args.warmup:
                times[kind].append(time.perf_counter() - start)
    return {k: (setups[k][0], args.batch / statistics.median(v)) for k, v in times.items()}


def latencies(
    cls: FractureModule, loc: FractureModule, args: argparse.Namespace
) -> dict[str, float]:
    """Median batch-1 latency (ms) of cls and loc inference, alternating; loc's mean box count."""
    spec = resolve_spec(MODEL)
    gen = torch.Generator().manual_seed(1)
    cls.model.eval()
    loc.model.eval()
    times: dict[str, list[float]] = {"cls": [], "loc": []}
    boxes = 0
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            img = torch.randint(
                0, 256, (1, 1, args.size, args.size), dtype=torch.uint8, generator=gen
            )
            for kind in ("cls", "loc") if i % 2 == 0 else ("loc", "cls"):
                start = time.perf_counter()
                x = to_input(img, spec.mean, spec.std, channels_last=True)
                if kind == "cls":
                    torch.sigmoid(cls.model(x).float()).item()
                else:
                    logit, head = loc.model.forward_with_map(x)
                    torch.sigmoid(logit.float()).item()
                    raw = head.float().numpy()
                    detector_maps(raw, args.size, args.levels)
                    cuts = [(0.5, MAX_BOXES), (BEST_BOX_FLOOR, 1)]
                    found, _ = decode_box_sets(
                        raw[0], (args.size, args.size), args.size, args.levels, cuts
                    )
                    boxes += len(found) if i >= args.warmup else 0
                if i >= args.warmup:
                    times[kind].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()} | {"boxes": boxes / args.iters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    args.levels = tuple(sorted(args.levels))
    torch.set_num_threads(usable_cpus())
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step outside a Trainer
    rates = train_rates(args)
    ms = latencies(rates["cls"][0], rates["loc"][0], args)
    (_, cls_rate), (_, loc_rate) = rates["cls"], rates["loc"]
    print(f"commit: {git_commit()}")
    print(f"machine: {machine()}")
    print(
        f"{MODEL}, {args.size} px, detector levels {list(args.levels)}; train: batch {args.batch}, {args.steps} timed steps each"
        f" (after {args.warmup}); inference: batch 1, median of {args.iters}"
        f" (loc decoded {ms['boxes']:.2f} boxes/image at threshold 0.5)\n"
    )
    print("| | cls only | localising | ratio | goal |")
    print("|---|---|---|---|---|")
    print(f"| train img/s | {cls_rate:.1f} | {loc_rate:.1f} | {loc_rate / cls_rate:.3f} | >= 0.6 |")
    print(
        f"| inference latency ms | {ms['cls']:.1f} | {ms['loc']:.1f} |"
        f" {ms['loc'] / ms['cls']:.3f} (loc / cls) | <= 1.6 |"
    )


if __name__ == "__main__":
    main()
