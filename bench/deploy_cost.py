"""What the deploy fits at the end of ``bonefrac train`` cost, as a share of the training time.

Reads each run's model.json: ``train_seconds`` (the fit) and ``deploy.seconds`` (calibrate,
threshold and refer rule, out-of-scope detector), both measured in the same process; prints
them per run and the share, then the mean share.

    .venv/bin/python bench/deploy_cost.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    shares = []
    print("| run | train s | calibrate s | threshold + refer s | ood s | deploy s | share |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        meta = json.loads((run / "model.json").read_text())
        deploy = meta.get("deploy")
        if not deploy:
            print(f"| {run} | {meta.get('train_seconds')} | no deploy record | | | | |")
            continue
        sec = deploy["seconds"]
        total = sum(sec.values())
        share = total / meta["train_seconds"]
        shares.append(share)
        thr = sec.get("threshold", 0) + sec.get("refer", 0)
        print(
            f"| {run} | {meta['train_seconds']:.0f} | {sec.get('calibrate', 0):.0f} | {thr:.0f} "
            f"| {sec.get('ood', 0):.0f} | {total:.0f} | {share:.1%} |"
        )
    if shares:
        print(f"mean share {np.mean(shares):.1%} over {len(shares)} runs")


if __name__ == "__main__":
    main()
