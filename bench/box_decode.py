"""Does a different box decode lift a localising run's AP50? Variants on cached head outputs.

Predicts the val and test splits of a box-regressing run once (the CPU, fp32), then decodes the
same head outputs several ways and scores each per source with
:mod:`bonefrac.evaluation.localization_metrics` (AP50, FROC at 0.5 / 1 / 2 FP per image), candidates
down to ``--floor``:

* ``peak``: the product's decode (:func:`bonefrac.inference.box_decoding.decode_regressed_boxes`);
* ``avg``: each peak's box averaged over its 3 x 3 cells, weighted by the map's probability;
* ``scale S``: every box's width and height times S about its centre (regressed boxes ran
  about 15% large on FracAtlas).

Choose on val, confirm on test. None of these was adopted (BENCHMARKS.md, localisation).

    .venv/bin/python bench/box_decode.py --run runs/gpu/loc/seed1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from box_threshold import head_outputs

from bonefrac.evaluation.localization_metrics import (
    FROC_BUDGETS,
    ap50,
    froc_items,
    froc_sensitivities,
)
from bonefrac.inference.box_decoding import MAX_CANDIDATES, decode_regressed_boxes, row_boxes
from bonefrac.inference.predictor import Predictor
from bonefrac.models.lochead import cell_boxes
from bonefrac.rundir import RunDir

VARIANTS = {"peak": (False, 1.0), "avg": (True, 1.0), "scale 0.85": (False, 0.85)}
VARIANTS |= {"avg + scale 0.85": (True, 0.85), "scale 0.7": (False, 0.7)}


def variant_boxes(raw: np.ndarray, size_wh: tuple[int, int], size: int, floor: float,
                  average: bool, scale: float) -> list[list[float]]:  # fmt: skip
    """The product's decode, on neighbourhood-averaged boxes and/or with boxes scaled after."""
    if average:
        out = torch.tensor(np.asarray(raw, dtype=np.float32))[None]  # a copy: raw is reused
        prob = torch.sigmoid(out[:, :1])
        boxes = cell_boxes(out)  # (1, 4, h, w) corners in cells
        boxes = F.avg_pool2d(boxes * prob, 3, 1, 1) / F.avg_pool2d(prob, 3, 1, 1).clamp_min(1e-6)
        # back to log distances from each cell's centre, so the product's decoder does the rest
        # (an averaged box that misses its cell's centre, rare, is pulled onto it)
        h, w = prob.shape[-2:]
        xs = torch.arange(w).view(1, 1, w) + 0.5
        ys = torch.arange(h).view(1, h, 1) + 0.5
        dist = torch.stack(
            [xs - boxes[:, 0], ys - boxes[:, 1], boxes[:, 2] - xs, boxes[:, 3] - ys], dim=1
        )
        out[:, 1:5] = dist.clamp_min(1e-3).log()
        raw = out[0].numpy()
    found = decode_regressed_boxes(raw, size_wh, size, floor, MAX_CANDIDATES)
    return [[cx, cy, w * scale, h * scale, score] for cx, cy, w, h, score in found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a localising run with box regression")
    ap.add_argument("--floor", type=float, default=0.05, help="lowest candidate score")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    run = RunDir.open(args.run)
    pred = Predictor.from_run(run)
    print(f"run {run.path}; candidates down to {args.floor}; FROC budgets {list(FROC_BUDGETS)}")
    print("| split | source | decode | AP50 | FROC 0.5 / 1 / 2 |\n|---|---|---|---|---|")
    for split in ("val", "test"):
        df = run.predictions(split)
        raws, sizes = head_outputs(pred, df["path"], args.batch_size)
        truth = [row_boxes(v) for v in df["boxes"]]
        for source in sorted(df["source"].unique()):
            idx = np.flatnonzero(df["source"].to_numpy() == source)
            for name, (average, scale) in VARIANTS.items():
                boxes = [
                    variant_boxes(raws[i], sizes[i], pred.image_size, args.floor, average, scale)
                    for i in idx
                ]
                true = [truth[i] for i in idx]
                froc = froc_sensitivities(froc_items(true, boxes), list(FROC_BUDGETS.values()))
                frocs = " / ".join(f"{v:.3f}" for v in froc)
                print(f"| {split} | {source} | {name} | {ap50(true, boxes):.4f} | {frocs} |")


if __name__ == "__main__":
    main()
