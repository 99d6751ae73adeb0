"""Pre-resized copy of a manifest's images: small enough to ship to a GPU machine.

Every image is decoded the way training decodes it (greyscale), shrunk so its long side is at
most ``--size`` (aspect kept, never enlarged) and written as WebP or JPEG under
``OUT/images/<source>/``; ``OUT/manifest.csv`` is the input manifest with ``path`` pointing at
the copies (relative, so the folder can move). Boxes are normalised, so they still fit.
Train at ``image_size <= --size`` (with ``data.cache_scale`` such that the cache stays within
``--size``) to lose nothing but the codec's rounding.

    .venv/bin/python bench/pack_images.py runs/cross/data/manifest.csv --size 384 \
        --format webp --quality 85 --out pack
"""

from __future__ import annotations

import argparse
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from bonefrac.data.imageio import load_grayscale
from bonefrac.data.schema import read_manifest
from bonefrac.fileio import atomic_path, write_csv


def pack_one(src: str, dst: Path, size: int, fmt: str, quality: int) -> int:
    img = load_grayscale(src)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        img.save(tmp, format=fmt.upper(), quality=quality, method=4 if fmt == "webp" else None)
    return dst.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--format", choices=("webp", "jpeg"), default="webp")
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--sizes", default=None, help="per-source long side, e.g. yolo=320")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    per_source = dict(kv.split("=") for kv in args.sizes.split(",")) if args.sizes else {}
    df = read_manifest(args.manifest)
    ext = ".webp" if args.format == "webp" else ".jpg"
    rel = [
        Path("images") / str(src) / f"{Path(p).stem}_{i}{ext}"
        for i, (p, src) in enumerate(zip(df["path"], df["source"], strict=True))
    ]
    jobs = [
        (p, args.out / r, int(per_source.get(str(s), args.size)))
        for p, r, s in zip(df["path"], rel, df["source"], strict=True)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        sizes = list(
            pool.map(lambda j: pack_one(j[0], j[1], j[2], args.format, args.quality), jobs)
        )
    out = df.copy()
    out["path"] = [str(r) for r in rel]
    write_csv(args.out / "manifest.csv", out)
    summary = args.manifest.parent / "summary.json"  # the build's record (split seed, counts)
    if summary.is_file():
        shutil.copy2(summary, args.out / "summary.json")
    print(f"{len(out)} images, {sum(sizes) / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
