"""Are non-radiographs refused, and how many radiographs are? Per run, through the Predictor.

Builds the probe set of ``tests/fixtures/nonradiographs.py`` (greyscale, tinted and colour
photographs from scikit-image and scikit-learn, rendered documents, UI screenshots, synthetic
gradients, patterns and noise, pydicom's CT / MR / US / NM files as DICOM and as PNG) into a
temp folder, asks each run's Predictor for every probe's decision and ``ood_reason``, and
prints per category the share out of scope (and by which rule). Then the share of the run's
test-split radiographs (its manifest: FracAtlas and bone_fracture_yolo) flagged out of scope,
and the share of ``--unseen`` (roboflow_sr2022: radiographs of a site not trained on, all of
them and its fractured ones), with the reasons.

    PYTHONPATH=. .venv/bin/python bench/nonradiograph_probes.py --run RUN [--run RUN2] \\
        [--unseen ../shared/data/roboflow_sr2022] [--limit N]

Nothing here fits anything: the runs carry their fitted rules (``bonefrac ood RUN``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchinfo import git_commit, machine  # noqa: E402

from bonefrac.data.schema import read_manifest  # noqa: E402
from bonefrac.evaluation.tables import markdown_table  # noqa: E402
from bonefrac.inference.loop import FileInputs, batches  # noqa: E402
from bonefrac.inference.predictor import Predictor  # noqa: E402
from bonefrac.rundir import RunDir  # noqa: E402
from tests.fixtures.nonradiographs import CATEGORIES, build_probes  # noqa: E402


def reasons_of(predictor: Predictor, paths: list[str]) -> list[str | None]:
    """Each path's ``ood_reason`` (``None``: in scope; ``error: ...`` when it cannot be read)."""
    out: list[str | None] = [None] * len(paths)
    inputs = FileInputs(paths, predictor.image_size, predictor.clahe)
    for batch in batches(predictor, inputs, "predictions", batch_size=16):
        for i, why in batch.skipped:
            out[i] = f"error: {why}"
        for i, pred in zip(batch.indices, batch.predictions or [], strict=False):
            out[i] = "error: no answer" if pred is None else pred.ood_reason
    return out


def share(reasons: list[str | None]) -> str:
    n = len(reasons)
    k = sum(r is not None for r in reasons)
    return f"{k}/{n} ({k / n:.1%})" if n else "n/a"


def why(reasons: list[str | None]) -> str:
    c = Counter(r for r in reasons if r is not None)
    return ", ".join(f"{r} {v}" for r, v in c.most_common()) or "-"


def unseen_images(root: Path) -> tuple[list[str], list[bool]]:
    """A YOLO folder's images and whether each has a box (a fracture)."""
    paths, fractured = [], []
    for img in sorted(root.glob("*/images/*")):
        label = img.parent.parent / "labels" / (img.stem + ".txt")
        paths.append(str(img))
        fractured.append(label.is_file() and bool(label.read_text().strip()))
    return paths, fractured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, help="run directory (repeatable)")
    ap.add_argument("--unseen", type=Path, default=Path("../shared/data/roboflow_sr2022"))
    ap.add_argument("--limit", type=int, default=0, help="at most this many test images")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"commit {git_commit()}; {machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        probes = build_probes(Path(tmp) / "probes", seed=args.seed)
        flat = [(c, p) for c in CATEGORIES for p in probes.get(c, [])]
        print(f"{len(flat)} probes in {len(probes)} categories\n")
        cols = ["category", "n"]
        per_run: dict[str, dict[str, list[str | None]]] = {}
        for run_dir in args.run:
            start = time.perf_counter()
            predictor = Predictor.from_run(run_dir)
            reasons = reasons_of(predictor, [str(p) for _, p in flat])
            by_cat: dict[str, list[str | None]] = {}
            for (c, p), r in zip(flat, reasons, strict=True):
                by_cat.setdefault(c, []).append(r)
                if r is None or str(r).startswith("error"):
                    print(f"  {run_dir}: IN SCOPE or unread: {p.name} ({r})")
            per_run[run_dir] = by_cat
            cols += [f"{Path(run_dir).name}: out of scope", "by"]
            print(f"{run_dir}: probes in {time.perf_counter() - start:.0f} s")
        rows = []
        for c in CATEGORIES:
            row = [c, str(len(probes.get(c, [])))]
            for run_dir in args.run:
                row += [share(per_run[run_dir][c]), why(per_run[run_dir][c])]
            rows.append(row)
        total = ["all", str(len(flat))]
        for run_dir in args.run:
            every = [r for rs in per_run[run_dir].values() for r in rs]
            total += [share(every), why(every)]
        print("\n" + markdown_table(cols, [*rows, total]))

    print()
    rows = []
    rng = np.random.default_rng(args.seed)
    for run_dir in args.run:
        run = RunDir.open(run_dir)
        predictor = Predictor.from_run(run)
        manifest = read_manifest(Path(run.meta().get("manifest")), require_split=True)
        test = manifest[manifest["split"].astype(str) == "test"]
        for source, group in [("test (all)", test), *test.groupby("source")]:
            paths = group["path"].astype(str).tolist()
            if args.limit and len(paths) > args.limit:
                paths = list(rng.choice(paths, args.limit, replace=False))
            start = time.perf_counter()
            r = reasons_of(predictor, paths)
            rows.append([Path(run_dir).name, f"test: {source}", share(r), why(r),
                         f"{time.perf_counter() - start:.0f} s"])  # fmt: skip
        if args.unseen.is_dir():
            paths, fractured = unseen_images(args.unseen)
            r = reasons_of(predictor, paths)
            rows.append([Path(run_dir).name, f"{args.unseen.name}: all", share(r), why(r), ""])
            rf = [x for x, f in zip(r, fractured, strict=True) if f]
            rows.append([Path(run_dir).name, f"{args.unseen.name}: fractured", share(rf),
                         why(rf), ""])  # fmt: skip
    print(markdown_table(["run", "radiographs", "flagged out of scope", "by", "time"], rows))


if __name__ == "__main__":
    main()
