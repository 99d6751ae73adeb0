"""Time to a useful model: the default config from a fresh FracAtlas manifest.

Builds the manifest (``bonefrac data build --fracatlas``), trains ``configs/lite0.yaml`` and
reports the wall time until val ROC-AUC first reaches the target (default 0.85, from the run's
``history.csv``: manifest build + the ``bonefrac train`` command up to that epoch's end) and at
the end (manifest build + the whole ``bonefrac train`` command, predictions and plots
included).

    .venv/bin/python docs/experiments/quality/time_to_quality.py --fracatlas ../shared/data/fracatlas \\
        [--out runs/time_to_quality] [--target 0.85] [--set train.epochs=3 ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))  # benchinfo
from benchinfo import REPO, git_commit, machine  # noqa: E402

CLI = [sys.executable, "-c", "from bonefrac.cli import app; app()"]


def timed(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run(cmd, check=False)
    if result.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd[3:5])} exited {result.returncode}; see above")
    return time.perf_counter() - start, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fracatlas", type=Path, default=REPO.parent / "shared/data/fracatlas")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "lite0.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "time_to_quality")
    parser.add_argument("--target", type=float, default=0.85, help="val ROC-AUC to reach")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)  # a fresh manifest and run every time
    data, run = args.out / "data", args.out / "run"
    build_s, _ = timed(
        [*CLI, "data", "build", "--fracatlas", str(args.fracatlas), "--seed", "0"]
        + ["--out", str(data)]
    )
    cmd = [*CLI, "train", "--config", str(args.config), "--manifest", str(data / "manifest.csv")]
    cmd += ["--out", str(run), "--no-progress"]
    for item in args.sets:
        cmd += ["--set", item]
    train_started = time.time()
    train_s, code = timed(cmd, ok=(0, 3))
    hist = pd.read_csv(run / "history.csv")
    meta = json.loads((run / "model.json").read_text())
    reached = hist[hist["val_roc_auc"] >= args.target]
    print(f"\n{args.config}, --set {' '.join(args.sets) or '(none)'}")
    print(f"commit {git_commit()}; {machine()}")
    print(hist[["epoch", "train_loss", "val_roc_auc", "elapsed_s"]].to_string(index=False))
    print(f"manifest build: {build_s:.0f} s; training status: {meta.get('training_status')}")
    if reached.empty:
        print(f"val ROC-AUC never reached {args.target} (best {hist['val_roc_auc'].max():.3f})")
    else:
        first = reached.iloc[0]
        print(
            f"val ROC-AUC >= {args.target} after epoch {int(first['epoch']) + 1}: "
            f"{(build_s + first['finished_at'] - train_started) / 60:.1f} min from nothing "
            f"(val ROC-AUC {first['val_roc_auc']:.3f})"
        )
    print(
        f"at the end ({len(hist)} epochs, best val ROC-AUC {hist['val_roc_auc'].max():.3f}): "
        f"{(build_s + train_s) / 60:.1f} min from nothing (exit status {code})"
    )


if __name__ == "__main__":
    main()
