"""Time the real manifest builds and compare them with a plain single-process decode loop.

    .venv/bin/python bench/data_build.py [--data DIR] [--workers N] [--repeat 1]

For FracAtlas alone and FracAtlas + bone_fracture_yolo it prints build seconds and images/s,
and the ratio against a baseline measured in the same run: one process decoding the same files
with Pillow (open + full load + convert to L), nothing else (no hashing, no dedup, no split).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bonefrac.config import DataBuildConfig
from bonefrac.data.manifest import build_manifest
from bonefrac.data.sources import scan_sources
from bonefrac.system import usable_cpus


def default_data() -> Path:
    env = os.environ.get("BONEFRAC_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def baseline(paths: list[Path]) -> float:
    """Seconds for a plain single-process decode of every file (failures skipped)."""
    t0 = time.perf_counter()
    for p in paths:
        try:
            with Image.open(p) as img:
                img.load()
                img.convert("L")
        except Exception:  # noqa: BLE001, S112 - the truncated files fail here too
            continue
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    fa, yolo = args.data / "fracatlas", args.data / "bone_fracture_yolo"
    if not (fa / "dataset.csv").is_file():
        print(f"no FracAtlas under {args.data}; pass --data or set BONEFRAC_DATA", file=sys.stderr)
        return 2
    cases = [("fracatlas", {"fracatlas": fa})]
    if (yolo / "data.yaml").is_file():
        cases.append(("fracatlas+yolo", {"fracatlas": fa, "yolo": yolo}))
    print(f"cpus available: {usable_cpus()}, workers: {args.workers or 'default'}")
    header = f"{'build':<16}{'images':>8}{'build s':>10}{'img/s':>9}{'baseline s':>12}{'img/s':>9}"
    print(header + f"{'ratio':>8}")
    for name, sources in cases:
        with tempfile.TemporaryDirectory() as tmp:
            config = DataBuildConfig(
                out=Path(tmp), sources=sources, workers=args.workers, progress=False
            )
            base_s = baseline([r.path for s in scan_sources(config) for r in s.records])
            t0 = time.perf_counter()
            summary = build_manifest(config)
            build_s = time.perf_counter() - t0
        n = summary["counts"]["images_found"]
        ratio = (n / build_s) / (n / base_s)
        print(
            f"{name:<16}{n:>8}{build_s:>10.1f}{n / build_s:>9.1f}{base_s:>12.1f}"
            f"{n / base_s:>9.1f}{ratio:>7.2f}x"
        )
        print(
            f"    quarantined {summary['counts']['quarantined']} {summary['quarantine_reasons']};"
            f" label-conflict groups {summary['label_conflicts']['groups']};"
            f" splits {summary['counts']['by_split']}; decode {summary['timing']['decode_seconds']} s"
            f" with {summary['timing']['workers']} workers"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
