"""How often the training crop cuts a true fracture box: torchvision's RandomResizedCrop vs
:class:`bonefrac.data.transforms.BoxKeepingResizedCrop`, same draws, on a manifest's boxed
training images (boxes only; no image is decoded).

A box is "cut" when less than 99 % of its area survives the crop. Prints, per source, the share
of boxes cut and of boxed images that lose every box (the detector then learns nothing from
them), and the mean zoom (scale jitter) each crop applies.
Run: ``.venv/bin/python docs/experiments/localisation/crop_keeps_boxes.py --manifest M [--size 384]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))  # benchinfo
from benchinfo import git_commit, machine  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from bonefrac.data.schema import parse_boxes  # noqa: E402
from bonefrac.data.transforms import BoxKeepingResizedCrop, box_outlines, boxes_to_letterbox  # noqa: E402


def _area(xyxy: torch.Tensor) -> torch.Tensor:
    return (xyxy[:, 2] - xyxy[:, 0]).clamp(min=0) * (xyxy[:, 3] - xyxy[:, 1]).clamp(min=0)


def measure(crop: v2.RandomResizedCrop, rows: pd.DataFrame, size: int, draws: int) -> dict:
    """Share of boxes cut, of images left without a box, and the mean zoom, over ``draws``
    crops per image (seeded per image and draw, so both crops see the same size draws)."""
    cut = boxes = lost = images = 0
    zoom = 0.0
    img = torch.zeros(1, size, size, dtype=torch.uint8)
    for index, row in enumerate(rows.itertuples()):
        letterboxed = boxes_to_letterbox(parse_boxes(row.boxes), (row.width, row.height), size)
        xyxy = letterboxed.as_subclass(torch.Tensor)
        for d in range(draws):
            torch.manual_seed(index * draws + d)
            p = crop.make_params([img, box_outlines(letterboxed)])
            kept = v2.functional.crop(
                tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(size, size)),
                p["top"],
                p["left"],
                p["height"],
                p["width"],
            ).as_subclass(torch.Tensor)
            share = _area(kept) / _area(xyxy).clamp(min=1e-6)
            cut += int((share < 0.99).sum())
            boxes += len(xyxy)
            lost += int(bool((share <= 0).all()))
            images += 1
            zoom += size / max(p["height"], p["width"])
    return {"boxes_cut": cut / boxes, "images_lost": lost / images, "mean_zoom": zoom / images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    frame = pd.read_csv(args.manifest)
    frame = frame[(frame["split"] == "train") & (frame["label"] == 1)]
    frame = frame[frame["boxes"].map(lambda v: bool(parse_boxes(v)))]
    kwargs = {"size": (args.size, args.size), "scale": (0.7, 1.0), "ratio": (0.85, 1.18)}
    crops = {
        "RandomResizedCrop": v2.RandomResizedCrop(**kwargs),
        "BoxKeeping": BoxKeepingResizedCrop(**kwargs),
    }
    print(f"# crop_keeps_boxes: {machine()}, commit {git_commit()}, {args.size} px, medium crop")
    for source, rows in frame.groupby("source"):
        found = {name: measure(crop, rows, args.size, args.draws) for name, crop in crops.items()}
        for name, res in found.items():
            print(
                f"{source:10s} {name:18s} boxed images {len(rows):5d}  boxes cut "
                f"{res['boxes_cut']:.3f}  images left boxless {res['images_lost']:.3f}  "
                f"mean zoom {res['mean_zoom']:.3f}"
            )


if __name__ == "__main__":
    main()
