"""How a localising run's AP50 and FROC depend on the map threshold that decodes its boxes.

The run's ``box_threshold`` (model.json) is chosen on val negatives; this re-decodes the val and
test maps at other thresholds (no retraining) and scores each with
:mod:`bonefrac.evaluation.localization_metrics`, so the threshold's share of a poor AP50 or FROC can be
told apart from the boxes' geometry.

    .venv/bin/python docs/experiments/localisation/box_threshold.py --run runs/lite0_loc [--thresholds 0.9 0.5 0.1]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

import numpy as np

from bonefrac.evaluation.localization_metrics import split_localization
from bonefrac.inference.box_decoding import decode_boxes
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir


def head_outputs(
    pred: Predictor, paths: Iterable[str], batch_size: int
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """A localising run's detector output ``(A, 6)`` and decoded ``(W, H)`` of every image."""
    paths = list(paths)
    raws: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    for i in range(0, len(paths), batch_size):
        chunk = [pred.prepare(p, name=p) for p in paths[i : i + batch_size]]
        raws += list(pred.logits_and_map_logits([c.array for c in chunk])[1])
        sizes += [c.decoded_size for c in chunk]
    return raws, sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="Run directory of a localising model.")
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.96, 0.8, 0.5, 0.3, 0.1])
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    run = RunDir.open(args.run)
    pred = Predictor.from_run(run)
    print(f"run {run.path} (stored box_threshold {pred.box_threshold:.3f})")
    print("| split | threshold | predicted boxes | AP50 | FROC @ 1 FP/image | FROC @ 2 FP/image |")
    print("|---|---|---|---|---|---|")
    for split in args.splits:
        df = run.read_predictions_raw(split)
        raws, sizes = head_outputs(pred, df["path"], args.batch_size)
        levels = pred.meta.loc_levels
        for t in args.thresholds:
            boxes = [
                decode_boxes(raw, size, pred.image_size, levels, t)
                for size, raw in zip(sizes, raws, strict=True)
            ]
            # AP and FROC rank the candidate column when there is one: score these boxes instead
            scored = df.drop(columns=["cand_boxes"], errors="ignore")
            scored = scored.assign(pred_boxes=[json.dumps(b) for b in boxes])
            m = split_localization(scored, run.prediction_path(split), n_boot=0)
            if m is None:
                raise SystemExit(f"{run.path}: {split} predictions have no localisation columns")
            print(
                f"| {split} | {t:g} | {sum(map(len, boxes))} | {m['ap50']['value']:.4f} | "
                f"{m['froc_1']['value']:.3f} | {m['froc_2']['value']:.3f} |"
            )


if __name__ == "__main__":
    main()
