"""Multi-process batch prediction: images/s of ``bonefrac predict`` with 1 vs 2 processes.

Runs the real command line (``python -m bonefrac predict ... --devices N``, Lightning Fabric
``ddp`` on CPU) on the same images for N = 1 and 2, in this one run, and prints the ratio.
Each N runs on ``--n`` images and on ``--warm`` images, so that besides the end-to-end rate
(process start-up, imports and model load included) the steady rate
``(n - warm) / (t_n - t_warm)`` is shown, which is what a long job sees. Rounds alternate
1, 2, 1, 2, ... (``--repeat``) and each time is the fastest of its rounds, the least disturbed
by other load on a shared machine.

Without ``--run`` an untrained run of ``--model`` (random head; ImageNet backbone where offline
weights exist) is made in a temp folder; without ``--images``, ``--n`` synthetic greyscale PNGs
of ``--px`` pixels a side are written there. Decode workers: the CLI default per process.
Threads: by default one process uses all cores for the model and N processes split them
(Lightning's rule); ``OMP_NUM_THREADS=1`` in the environment gives every process one thread,
which separates the gain from more processes from the cost of intra-op threads on a busy
machine (large: on the shared 2-core box one process ran ~12x faster with 1 thread than 2).

Run: ``.venv/bin/python bench/predict_scale.py [--model efficientnet_lite0 --size 224]
[--n 300 --warm 20 --px 512] [--images ../shared/data/fracatlas/images] [--run runs/x]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import REPO, git_commit, machine  # noqa: E402
from inference import make_untrained_run  # noqa: E402


def synthetic_images(folder: Path, n: int, px: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = (60 + 40 * rng.standard_normal((px, px))).clip(0, 255).astype(np.uint8)
        path = folder / f"img_{i:05d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def timed_predict(run: Path, images: list[Path], out: Path, devices: int, batch: int) -> float:
    """Wall seconds of one ``bonefrac predict`` over ``images`` (a folder of links to them)."""
    folder = out.with_suffix(".in")
    if out.exists():
        out.unlink()
        Path(str(out) + ".meta.json").unlink()
    folder.mkdir(exist_ok=True)
    for img in images:
        if not (folder / img.name).is_symlink():
            (folder / img.name).symlink_to(img)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "bonefrac", "predict", str(run), str(folder), "--out", str(out)]
    cmd += ["--devices", str(devices), "--batch-size", str(batch), "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="Run directory (default: an untrained --model).")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224, help="Input size of the untrained run.")
    ap.add_argument("--images", type=Path, help="Folder of images (default: synthetic PNGs).")
    ap.add_argument("--n", type=int, default=300, help="Images per timed job.")
    ap.add_argument("--warm", type=int, default=20, help="Images of the short job (start-up).")
    ap.add_argument("--px", type=int, default=512, help="Side of the synthetic PNGs.")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="Rounds per process count (best).")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bonefrac-predict-scale-") as tmp_name:
        tmp = Path(tmp_name)
        run = args.run or make_untrained_run(args.model, args.size, tmp / "run")
        if args.images:
            from bonefrac.batch_predict.stream import collect_inputs

            images = collect_inputs([args.images])[: args.n]
        else:
            images = synthetic_images(tmp / "images", args.n, args.px)
        print(f"commit {git_commit()}; {machine()}")
        print(f"run {run.name} ({args.model if not args.run else 'given'}), {len(images)} images")
        times: dict[tuple[int, str], float] = {}
        for _ in range(args.repeat):
            for devices in (1, 2):
                for what, subset in (("n", images), ("w", images[: args.warm])):
                    out = tmp / f"{what}{devices}.csv"
                    t = timed_predict(run, subset, out, devices, args.batch_size)
                    times[devices, what] = min(t, times.get((devices, what), float("inf")))
        rates = {}
        for devices in (1, 2):
            t_n, t_w = times[devices, "n"], times[devices, "w"]
            steady = (len(images) - args.warm) / max(t_n - t_w, 1e-9)
            rates[devices] = (len(images) / t_n, steady)
            print(
                f"{devices} process(es): {t_n:.1f} s for {len(images)} images "
                f"({rates[devices][0]:.1f} images/s end to end), {t_w:.1f} s for "
                f"{args.warm} (start-up), steady {steady:.1f} images/s "
                f"(best of {args.repeat})"
            )
        print(
            f"2 / 1 processes: end to end x{rates[2][0] / rates[1][0]:.2f}, "
            f"steady x{rates[2][1] / rates[1][1]:.2f}"
        )


if __name__ == "__main__":
    main()
