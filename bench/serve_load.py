"""Load test of ``bonefrac serve`` on loopback: errors, latency p50/p95, peak RSS of the server.

Starts ``bonefrac serve RUN --host 127.0.0.1 --port <free>`` as a child process, waits for
``/health``, then sends ``--requests`` (default 200) ``POST /v1/predict`` at ``--concurrency``
(default 8) with httpx, cycling over the images of ``--images`` (default: synthetic 512 px PNGs
made here). Every ``--heatmap-every``-th request asks for a heatmap. Reports status counts, client
latency p50/p95/max, throughput, and the server's peak RSS (``VmHWM`` from /proc, Linux).
Then the decompression bomb (unless ``--no-bomb``): 1, 8 and 32 concurrent uploads of a
189 KiB 16-bit PNG of 9999 x 9999 zeros (refused from its header) and of a 16-bit PNG that just
fits the default decoded-bytes budget (5790 x 5790, 67 MB decoded: admitted and decoded under
the concurrency cap), printing the server's peak RSS growth over its idle RSS after each
round against ``--bound-mb`` (default 768 MiB; the idle RSS of a CUDA build of torch with the
default model is already about 1.3 GB); exits 1 if a round reaches it or a request gets a 5xx
other than 503.
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

from bonefrac.system import process_status_kb

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


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


def png16_zeros(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_rounds(url: str, pid: int, idle_kb: int, bound_mb: float) -> bool:
    """Concurrent bomb uploads; prints the peak RSS growth over idle per round; False if it
    reaches ``bound_mb`` or a request gets a 5xx other than 503."""
    ok = True
    bombs = [("9999x9999 16-bit (refused)", png16_zeros(9999, 9999)),
             ("5790x5790 16-bit (at budget)", png16_zeros(5790, 5790))]  # fmt: skip
    for label, data in bombs:
        for n in (1, 8, 32):
            _, statuses = asyncio.run(fire(url, [("bomb.png", data)], n, n, 0))
            peak = (process_status_kb(pid, "VmHWM") - idle_kb) / 1024
            bad = {k: v for k, v in statuses.items() if not isinstance(k, int) or k >= 500}
            bad.pop(503, None)  # queue full: the intended answer under overload
            over = peak >= bound_mb
            ok = ok and not bad and not over
            print(f"  bomb {label} ({len(data) // 1024} KiB) x{n} concurrent: {statuses}; "
                  f"peak RSS idle + {peak:.0f} MiB {'>=' if over else '<'} {bound_mb:.0f} MiB")  # fmt: skip
    return ok


def folder_images(folder: Path, n: int) -> list[tuple[str, bytes]]:
    from bonefrac.batch_predict.stream import collect_inputs

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
    ap.add_argument("--no-bomb", action="store_true", help="Skip the decompression-bomb rounds.")
    ap.add_argument(
        "--bound-mb", type=float, default=768, help="Bound on peak RSS growth over idle (MiB)."
    )
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
        idle_rss = process_status_kb(server.pid, "VmRSS")
        start = time.perf_counter()
        latencies, statuses = asyncio.run(
            fire(url, images, args.requests, args.concurrency, args.heatmap_every)
        )
        wall = time.perf_counter() - start
        peak = process_status_kb(server.pid, "VmHWM")
        print(f"normal load: server peak RSS {peak / 1024:.0f} MiB (VmHWM)")
        bombs_ok = args.no_bomb or bomb_rounds(url, server.pid, idle_rss, args.bound_mb)
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
    if errors or not bombs_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
