"""Refit a shipped model's deploy fits on its own stored weights (a new decision rule or
out-of-scope gate) and ship it under a new name (src/bonefrac/shipped/NAME).

    python bench/refit_shipped.py --source lite0-loc-1 --name lite0-loc-2 \\
        --manifest /tmp/shipped_model/data/manifest.csv

``--manifest``: this machine's build of the shipped model's manifest (bench/shipped_model.sh
builds it: `bonefrac data build --fracatlas DATA/fracatlas --yolo DATA/bone_fracture_yolo`;
the SHA-1 in model.json must match); the out-of-scope fit reads its train images. Prints what
was fitted and the folder's size.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bonefrac.evaluation.model_card import CardInputs  # noqa: E402
from bonefrac.packaging import refit_shipped  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="the shipped model to refit, e.g. lite0-loc-1")
    ap.add_argument("--name", required=True, help="the new folder name, e.g. lite0-loc-2")
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--commit", required=True, help="commit the weights were trained at")
    ap.add_argument("--hardware", required=True, help="what they were trained on")
    ap.add_argument("--command", required=True, help="how the weights are rebuilt")
    ap.add_argument("--no-default", action="store_true", help="do not point 'default' at it")
    ap.add_argument("--force", action="store_true")
    ap.add_argument(
        "--appearance-only",
        action="store_true",
        help="keep the fits that depend on the weights; fit the appearance rule",
    )
    ap.add_argument(
        "--drop-feature-detector",
        action="store_true",
        help="ship without the Mahalanobis feature detector (the size cap)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    card = CardInputs(commit=args.commit, hardware=args.hardware, command=args.command)
    report = refit_shipped(args.source, args.name, args.manifest, default=not args.no_default,
                           card=card, force=args.force,
                           appearance_only=args.appearance_only,
                           drop_feature_detector=args.drop_feature_detector)  # fmt: skip
    print(f"refitted {args.source} as {report.path} ({report.bytes / 1e6:.2f} MB)")
    for step, line in report.deploy.items():
        print(f"deploy {step}: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
