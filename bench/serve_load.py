"""Load test of ``bonefrac serve`` on loopback: errors, latency p50/p95, peak RSS of the server.

Starts ``bonefrac serve RUN --host 127.0.0.1 --port <free>`` as a child process, waits for
``/health``, then sends ``--requests`` (default 200) ``POST /v1/predict`` at ``--concurrency``
(default 8) with httpx, cycling over the images of ``--images`` (default: synthetic 512 px PNGs
made here). Every ``--heatmap-every``-th request asks for a heatmap. Reports status counts, client
latency p50/p95/max, throughput, and the server's peak RSS (``VmHWM`` from /proc, Linux).
Only loopback addresses are used. Without RUN an untrained run of ``--model`` is made in a
temp folder (see bench/inference.py).

Run: ``.venv/bin/python bench/serve_load.py [RUN] [--images DIR] [--backend onnx]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def synthetic_images(n: int = 16, size: int = 512) -> list[tuple[str, bytes]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = np.clip(rng.normal(90, 30, (size, int(size * 0.8))), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG" if i % 2 else "PNG")
        out.append((f"synthetic_{i}.{'jpg' if i % 2 else 'png'}", buf.getvalue()))
    return out


def folder_images(folder: Path, n: int) -> list[tuple[str, bytes]]:
    from bonefrac.inference.batch import collect_inputs

    return [(p.name, p.read_bytes()) for p in collect_inputs([folder])[:n]]


async def fire(
    url: str, images: list, n: int, concurrency: int, heatmap_every: int
) -> tuple[list[float], dict[int | str, int]]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i: int) -> None:
            name, data = images[i % len(images)]
            params = {"heatmap": "true"} if heatmap_every and i % heatmap_every == 0 else {}
            async with sem:
                t = time.perf_counter()
                try:
                    r = await client.post(
                        "/v1/predict", files={"file": (name, data)}, params=params
                    )
                    key: int | str = r.status_code
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append(time.perf_counter() - t)
                statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return latencies, statuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="Run directory (default: untrained).")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    ap.add_argument("--images", type=Path, help="Folder of images to send (default: synthetic).")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--heatmap-every", type=int, default=0, help="Every k-th asks for a heatmap.")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    run = args.run
    if run is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from inference import make_untrained_run

        run = make_untrained_run(args.model, args.size, Path(tmp.name) / args.model)
    if args.backend == "onnx":
        from bonefrac.inference.onnx import export_onnx

        export_onnx(run)
    images = folder_images(args.images, 64) if args.images else synthetic_images()
    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-c", "from bonefrac.cli import app; app()", "serve", str(run),
           "--host", HOST, "--port", str(port), "--backend", args.backend]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not become healthy in 120 s")
            time.sleep(0.2)
        idle_rss = proc_status_kb(server.pid, "VmRSS")
        start = time.perf_counter()
        latencies, statuses = asyncio.run(
            fire(url, images, args.requests, args.concurrency, args.heatmap_every)
        )
        wall = time.perf_counter() - start
        peak = proc_status_kb(server.pid, "VmHWM")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        tmp.cleanup()
    ms = np.array(latencies) * 1000
    errors = sum(v for k, v in statuses.items() if k != 200)
    print(
        f"serve {run.name} ({args.backend}) on {HOST}, {os.cpu_count()} CPUs: {args.requests} "
        f"requests at concurrency {args.concurrency}, {len(images)} distinct images"
        + (f", heatmap every {args.heatmap_every}" if args.heatmap_every else "")
    )
    print(f"  status counts: {statuses}; errors: {errors}")
    print(
        f"  latency p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, "
        f"max {ms.max():.0f} ms; throughput {args.requests / wall:.1f} req/s ({wall:.1f} s)"
    )
    print(f"  server RSS: {idle_rss / 1024:.0f} MiB idle, peak {peak / 1024:.0f} MiB (VmHWM)")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
