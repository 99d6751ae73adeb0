"""The chroma of every radiograph in the shared data, against the colour rule's cut-off.

Decodes each image exactly as the Predictor does (:func:`bonefrac.data.imageio.decode_image`,
JPEG draft at ``--size``) and takes its chroma (:mod:`bonefrac.data.chroma`: 99th percentile
of ``max(|Cb - 128|, |Cr - 128|)`` on a copy reduced to <= 256 px). Prints, per source and
per encoding (greyscale JPEG or RGB-encoded), the quantiles and the maximum (and the largest
single-pixel chroma, the statistic's upper bound), the cut-off
:data:`bonefrac.inference.scope.MAX_CHROMA` and its margin over the radiographs' maximum, and
the chroma of the colour probes (:func:`tests.fixtures.ood_probes.colour_images`), which
must all lie above it.

    PYTHONPATH=src python bench/chroma.py [--data ../shared/data] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import REPO, git_commit, machine  # noqa: E402

from bonefrac.data.chroma import chroma_of_array  # noqa: E402
from bonefrac.data.imageio import decode_image  # noqa: E402
from bonefrac.errors import ImageDecodeError  # noqa: E402
from bonefrac.evaluation.tables import markdown_table  # noqa: E402
from bonefrac.inference.scope import MAX_CHROMA  # noqa: E402
from tests.fixtures.ood_probes import colour_images  # noqa: E402

#: Source name -> glob under the data folder.
SOURCES = {
    "fracatlas": "fracatlas/images/*/*.jpg",
    "roboflow": "bone_fracture_yolo/*/images/*.jpg",
}
QUANTILES = (50, 90, 99, 99.9)


def pixel_max(path: Path, size: int) -> float:
    """The largest per-pixel ``max(|Cb - 128|, |Cr - 128|)`` of the JPEG drafted at ``size``."""
    with Image.open(path) as im:
        if im.mode == "L":
            return 0.0
        im.draft("YCbCr", (size, size))
        arr = np.asarray(im.convert("YCbCr"), dtype=np.int16)
    return float(np.abs(arr[..., 1:] - 128).max())


def measure(
    paths: list[Path], size: int
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Path], int]:
    """(chroma, pixel max) by encoding (``grey JPEG`` / ``RGB JPEG``), the file of each
    encoding's highest chroma, and the number of files that did not decode."""
    values: dict[str, list[tuple[float, float]]] = {}
    top: dict[str, tuple[float, Path]] = {}
    failed = 0
    for path in paths:
        try:
            with Image.open(path) as im:
                encoding = "grey JPEG" if im.mode == "L" else f"{im.mode} JPEG"
            chroma = decode_image(path, draft_size=size).chroma
            values.setdefault(encoding, []).append((chroma, pixel_max(path, size)))
        except (ImageDecodeError, OSError):
            failed += 1
            continue
        if chroma >= top.get(encoding, (-1.0, path))[0]:
            top[encoding] = (chroma, path)
    return values, {k: p for k, (_, p) in top.items()}, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(os.environ.get("BONEFRAC_DATA") or REPO.parent / "shared" / "data")
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--size", type=int, default=224, help="JPEG draft size (the model input)")
    args = ap.parse_args()

    t0 = time.time()
    rows = []
    overall = 0.0
    for source, pattern in SOURCES.items():
        paths = sorted(args.data.glob(pattern))
        if not paths:
            print(f"{source}: no images under {args.data / pattern}")
            continue
        values, top, failed = measure(paths, args.size)
        every = [v for vs in values.values() for v in vs]
        for encoding, vs in [*sorted(values.items()), ("all", every)]:
            arr, pix = np.asarray(vs)[:, 0], np.asarray(vs)[:, 1]
            rows.append(
                [source, encoding, len(arr)]
                + [f"{np.percentile(arr, q):.2f}" for q in QUANTILES]
                + [f"{arr.max():.2f}", f"{pix.max():.0f}", top[encoding].name if encoding in top else ""]
            )  # fmt: skip
        overall = max(overall, max(v[0] for v in every))
        if failed:
            print(f"{source}: {failed} files could not be decoded (left out)")
    probes = [chroma_of_array(img) for img in colour_images(np.random.default_rng(0))]
    print(f"commit {git_commit()}; {machine()}; draft size {args.size}")
    head = ["source", "encoding", "n", *[f"p{q:g}" for q in QUANTILES], "max",
            "largest pixel chroma", "file at max"]  # fmt: skip
    print(markdown_table(head, rows))
    ratio = f"{MAX_CHROMA / overall:.1f}x the maximum, " if overall > 0 else ""
    print(f"radiographs' maximum chroma {overall:.2f}; cut-off MAX_CHROMA = {MAX_CHROMA:g} "
          f"({ratio}margin {MAX_CHROMA - overall:.2f} of 128 levels)")  # fmt: skip
    print(f"colour probes ({len(probes)}): chroma min {min(probes):.2f}, median "
          f"{np.median(probes):.2f}; {sum(p > MAX_CHROMA for p in probes)} above the cut-off")  # fmt: skip
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
