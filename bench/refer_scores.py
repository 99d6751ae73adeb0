"""How well each refer score ranks a run's errors, and what test-time augmentation costs.

For each run (after its deploy fits): the threshold and temperature, then each uncertainty
score's ROC-AUC for telling wrong answers (at the run's threshold) from right ones, on val and
test: ``p_error`` (the calibrated chance the call is wrong), ``margin`` (distance to the
threshold, each side stretched to the longer one) and, where val's TTA spread is cached,
``tta_std``; the score the refer rule chose and the TTA gain's 95% interval on val. Last, the
cost: seconds per image of one prediction with and without the 8 TTA views, measured in the
same process on the same val images (the ratio is the figure to read).

    .venv/bin/python bench/refer_scores.py RUN [RUN ...] [--time-images 32] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from benchinfo import git_commit, machine

from bonefrac.evaluation.refer import uncertainty_for
from bonefrac.inference.predictor import Predictor
from bonefrac.metrics import error_detection_auroc
from bonefrac.rundir import TTA_STD_COLUMN, RunDir, run_probabilities


def score_table(run: RunDir) -> dict:
    meta = run.meta()
    out: dict = {
        "run": str(run.path),
        "threshold": meta.threshold,
        "temperature": meta.temperature,
        "refer": run.raw_meta().get("refer"),
    }
    for split in ("val", "test"):
        preds = run.predictions(split)
        y = preds["label"].to_numpy()
        wrong = (meta.decide(run_probabilities(preds, meta)) != (y == 1)).astype(int)
        scores = ["p_error", "margin"]
        if TTA_STD_COLUMN in run.read_predictions_raw(split).columns:
            scores.append("tta_std")
        out[split] = {
            "n": len(y),
            "error_rate": float(wrong.mean()),
            **{
                s: error_detection_auroc(uncertainty_for(s, run, split, meta), wrong)
                for s in scores
            },
        }
    return out


def tta_cost(run: RunDir, n: int) -> dict:
    """Seconds per image: one forward vs the 8 TTA views, on the first ``n`` val images."""
    predictor = Predictor.from_run(run)
    paths = run.predictions("val")["path"].astype(str).tolist()[:n]
    arrays = [predictor.prepare(p, name=p).array for p in paths]
    predictor.logits(arrays[:2])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(arrays), 8):
        predictor.logits(arrays[i : i + 8])
    plain = (time.perf_counter() - start) / len(arrays)
    start = time.perf_counter()
    for i in range(0, len(arrays), 8):
        predictor.tta_logits(arrays[i : i + 8])
    tta = (time.perf_counter() - start) / len(arrays)
    return {"plain_s_per_image": plain, "tta_s_per_image": tta, "ratio": tta / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--time-images", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"# {machine()}, commit {git_commit()}")
    rows = []
    for path in args.runs:
        run = RunDir.open(path)
        row = score_table(run)
        refer = row["refer"] or {}
        gain = refer.get("tta_gain") or {}
        print(
            f"{path}: threshold {row['threshold']:.3f}, T {row['temperature']:.3f}; refer score "
            f"{refer.get('score', '-')}"
            + (
                f" (TTA gain on val {gain['gain']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}])"
                if gain.get("gain") is not None
                else ""
            )
        )
        for split in ("val", "test"):
            s = row[split]
            parts = "  ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} n/a"
                for k, v in s.items()
                if k not in ("n", "error_rate")
            )
            print(
                f"  {split} (n {s['n']}, errors {s['error_rate']:.1%}): error-ranking ROC-AUC {parts}"
            )
        if args.time_images:
            row["cost"] = tta_cost(run, args.time_images)
            c = row["cost"]
            print(
                f"  cost: {c['plain_s_per_image'] * 1e3:.1f} ms/image plain, "
                f"{c['tta_s_per_image'] * 1e3:.1f} ms/image with TTA: {c['ratio']:.1f}x"
            )
        rows.append(row)
    for split in ("val", "test"):
        for score in ("p_error", "margin", "tta_std"):
            vals = [r[split][score] for r in rows if r[split].get(score) is not None]
            if len(vals) > 1:
                print(f"{split} {score}: {np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f} "
                      f"({' '.join(f'{v:.3f}' for v in vals)})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
