"""Seed-to-seed spread of one config: N trainings that differ only in ``seed``.

Prints per-seed and mean ± sd val/test ROC-AUC (also per source when the manifest has several),
how many runs collapsed (``bonefrac train`` exit status 3) and the wall time. Resumable: a seed
whose run directory already holds ``model.json`` is read, not retrained; an interrupted one is
resumed from its last checkpoint.

    .venv/bin/python bench/stability.py --config configs/lite0.yaml \\
        --manifest /tmp/fa_data/manifest.csv --seeds 5 [--set train.epochs=3 ...] [--out DIR]

On a GPU, ``--parallel N`` trains N seeds at once (each one's output then goes to
``OUT/seed<N>.log``); per-run times are then shared-device times, not a speed measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from benchinfo import REPO, git_commit, machine
from sklearn.metrics import roc_auc_score

COLLAPSED_EXIT = 3


def train_seed(
    config: Path, manifest: Path, seed: int, sets: list[str], run: Path, log: Path | None = None
) -> float:
    """Train (or resume) one seed through the CLI; returns the wall seconds spent now. With
    ``log`` its output goes to that file instead of the terminal."""
    cmd = [sys.executable, "-c", "from bonefrac.cli import app; app()", "train", "--no-progress"]
    if (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file():
        cmd += ["--resume", str(run)]
    else:
        cmd += ["--config", str(config), "--manifest", str(manifest), "--out", str(run)]
        cmd += ["--force", "--set", f"seed={seed}"]
        for item in sets:
            cmd += ["--set", item]
    start = time.perf_counter()
    if log is None:
        result = subprocess.run(cmd, check=False)
    else:
        with log.open("w") as sink:
            result = subprocess.run(cmd, check=False, stdout=sink, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if result.returncode not in (0, COLLAPSED_EXIT):
        where = f"in {log}" if log is not None else "above"
        raise SystemExit(f"seed {seed}: bonefrac train exited {result.returncode}; see {where}")
    return wall


def seed_done(out: Path, seed: int) -> bool:
    run = out / f"seed{seed}"
    return (run / "model.json").is_file() and (run / "predictions" / "test.csv").is_file()


def auc(frame: pd.DataFrame) -> float:
    if frame["label"].nunique() < 2 or not np.isfinite(frame["prob"]).all():
        return math.nan
    return float(roc_auc_score(frame["label"], frame["prob"]))


def seed_row(seed: int, run: Path) -> dict:
    """ROC-AUC per split (and per source), training status and time of one finished run."""
    meta = json.loads((run / "model.json").read_text())
    row: dict = {"seed": seed, "status": meta.get("training_status", "ok")}
    row["best_epoch"] = meta.get("best_epoch")
    for split in ("val", "test"):
        preds = pd.read_csv(run / "predictions" / f"{split}.csv")
        row[f"{split}_roc_auc"] = auc(preds)
        if "source" in preds and preds["source"].nunique() > 1:
            for source, part in preds.groupby("source"):
                row[f"{split}_roc_auc[{source}]"] = auc(part)
    row["train_s"] = meta.get("train_seconds")
    return row


def summary(table: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in table.columns if "roc_auc" in c]
    rows = []
    for col in cols:
        values = table[col].dropna()
        sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(
            {
                "metric": col,
                "mean": round(float(values.mean()), 4),
                "sd": round(sd, 4),
                "min": round(float(values.min()), 4),
                "max": round(float(values.max()), 4),
                "n": int(len(values)),
                "per seed": ", ".join(f"{v:.3f}" for v in table[col]),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "lite0.yaml")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--first-seed", type=int, default=1, help="seeds are first..first+N-1")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="default: runs/stability/<config stem>")
    parser.add_argument("--parallel", type=int, default=1, help="seeds trained at once (a GPU)")
    args = parser.parse_args()
    out = args.out or REPO / "runs" / "stability" / args.config.stem
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    def one(seed: int) -> str | None:
        """Train one seed; the reason it failed, or None."""
        run = out / f"seed{seed}"
        if (run / "model.json").is_file():
            print(f"seed {seed}: finished earlier, reading {run}", flush=True)
            return None
        print(f"seed {seed}: training into {run}", flush=True)
        log = out / f"seed{seed}.log" if args.parallel > 1 else None
        try:
            train_seed(args.config, args.manifest.resolve(), seed, args.sets, run, log)
        except SystemExit as exc:  # one failed seed does not lose the others
            print(exc, flush=True)
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        failures = [f for f in pool.map(one, seeds) if f]
    rows = [seed_row(seed, out / f"seed{seed}") for seed in seeds if seed_done(out, seed)]
    if not rows:
        raise SystemExit(f"no seed finished: {'; '.join(failures)}")
    wall = time.perf_counter() - start
    table = pd.DataFrame(rows)
    collapsed = int((table["status"] == "collapsed").sum())
    print(f"\n{args.config} on {args.manifest}, --set {' '.join(args.sets) or '(none)'}")
    print(f"commit {git_commit()}; {machine()}\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print()
    print(summary(table).to_string(index=False))
    train_total = float(pd.to_numeric(table["train_s"], errors="coerce").sum())
    print(
        f"\nfailed runs: {len(failures)}; collapsed runs: {collapsed} of {len(table)}; wall time this invocation "
        f"{wall:.0f} s; training time over all seeds {train_total:.0f} s"
    )


if __name__ == "__main__":
    main()
