"""Out-of-scope detection on real radiographs: does the Predictor refuse what it should, and why?

For a run trained on FracAtlas (with ``bonefrac ood RUN`` already fitted, or fitted here with
``--fit``), the script scores with BOTH out-of-scope scores (Mahalanobis on penultimate
features with a Ledoit-Wolf covariance fitted on the train split, and the logit's energy) and
asks the Predictor itself for its decision and ``ood_reason`` (``modality`` / ``colour`` /
``blank`` / ``features``, :mod:`bonefrac.inference.scope`):

- in scope: the run's test split images from its manifest (at most ``--limit`` per source;
  each source also alone when there are several);
- out of scope: the offline probes of :mod:`tests.fixtures.ood_probes` (scikit-learn's
  sample photographs in grey, in colour and tinted, rendered text pages, noise, blank frames,
  CT and MR DICOM files built with pydicom);
- the same test radiographs rotated 90 / 180 degrees and inverted (should stay in scope),
  tinted (the colour rule should refuse them) and wrapped as CT DICOM files (the modality rule
  should refuse them);
- an external radiograph set: the Roboflow "Bone Fracture Detection" test split (another
  source, other regions: how much of it a FracAtlas model calls out of scope).

It prints the AUROC of in-scope vs probes for each score, the share of each group flagged at
each score's val cut-off (the 99th percentile of val scores) and by the Predictor, with the
Predictor's reasons, as markdown tables, then the reason of every probe.

    .venv/bin/python bench/ood.py --run /tmp/fa_run \
        --external ../shared/data/bone_fracture_yolo/test/images [--fit]

``--external`` is a manifest (its test split) or a folder of images (all of them).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from benchinfo import git_commit, machine
from sklearn.metrics import roc_auc_score

from bonefrac.data.imageio import IMAGE_SUFFIXES
from bonefrac.data.schema import read_manifest
from bonefrac.evaluation import ood
from bonefrac.evaluation.tables import markdown_table
from bonefrac.inference import ood_stats
from bonefrac.inference.predictor import Predictor, PreparedInput
from bonefrac.rundir import RunDir
from tests.fixtures.ood_probes import (
    dicom_bytes,
    dicom_probes,
    probe_images,
    tinted,
    transformed,
)

SCORES = ("mahalanobis", "energy")
#: At most this many test radiographs are wrapped as CT DICOM files.
MAX_AS_CT = 40


def _paths(manifest: Path, split: str, limit: int, seed: int = 0) -> list[str]:
    if manifest.is_dir():
        found = sorted(str(p) for p in manifest.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        rng = np.random.default_rng(seed)
        return found if len(found) <= limit else sorted(rng.choice(found, limit, replace=False))
    df = read_manifest(manifest)
    if "split" in df.columns:
        df = df[df["split"].astype(str) == split]
    if len(df) > limit:
        df = df.sample(n=limit, random_state=seed)
    return df["path"].astype(str).tolist()


def _test_by_source(manifest: Path, limit: int, seed: int = 0) -> dict[str, list[str]]:
    """The manifest's test paths per source, at most ``limit`` of each."""
    df = read_manifest(manifest)
    df = df[df["split"].astype(str) == "test"]
    out = {}
    for source, part in df.groupby(df["source"].astype(str), sort=True):
        if len(part) > limit:
            part = part.sample(n=limit, random_state=seed)
        out[str(source)] = part["path"].astype(str).tolist()
    return out


class Scorer:
    """Both scores and the Predictor's answers for a list of sources."""

    def __init__(self, pred: Predictor, stats: ood_stats.MahalanobisStats, batch: int = 32):
        self.pred = pred
        self.stats = stats
        self.batch = batch

    def __call__(self, sources: list[Any]) -> dict[str, Any]:
        prepared = [self.pred.prepare(s) for s in sources]
        return self.prepared(prepared)

    def prepared(self, prepared: list[PreparedInput]) -> dict[str, Any]:
        maha, energy, reasons = [], [], []
        for i in range(0, len(prepared), self.batch):
            chunk = prepared[i : i + self.batch]
            arrays = [p.array for p in chunk]
            feats, _ = self.pred.features(arrays)
            maha.append(self.stats.score(feats))
            # the logits predict scores (a localising run's are fused with its map's peak)
            energy.append(ood_stats.energy_score(self.pred.logits(arrays)))
            reasons += [p.ood_reason for p in self.pred.predict_prepared(chunk)]
        return {
            "mahalanobis": np.concatenate(maha),
            "energy": np.concatenate(energy),
            "reason": reasons,
        }


def _reasons(reasons: list[str | None]) -> str:
    counts = Counter(r for r in reasons if r)
    return ", ".join(f"{k} {v}" for k, v in counts.most_common()) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--external", type=Path, help="manifest of an external set (test split)")
    ap.add_argument("--fit", action="store_true", help="fit 'bonefrac ood' (mahalanobis) first")
    ap.add_argument("--max-train", type=int, default=1200)
    ap.add_argument("--limit", type=int, default=400, help="at most this many test images")
    ap.add_argument(
        "--limit-transformed", type=int, default=100,
        help="at most this many of them rotated, inverted, tinted and wrapped as CT",
    )  # fmt: skip
    args = ap.parse_args()

    t0 = time.time()
    if args.fit:
        ood.fit_ood(args.run, "mahalanobis", max_images=args.max_train, force=True)
    run = RunDir.open(args.run)
    meta = run.meta()
    if meta.ood is None or meta.ood.method != "mahalanobis":
        raise SystemExit(f"{args.run}: no Mahalanobis out-of-scope detector; pass --fit")
    pred = Predictor.from_run(run)
    scores = Scorer(pred, ood_stats.load_stats(run, meta.ood))

    val = scores(run.predictions("val")["path"].astype(str).tolist())
    cut = {k: float(np.percentile(val[k], 99.0)) for k in SCORES}
    by_source = _test_by_source(Path(meta.get("manifest")), args.limit)
    inside = [pred.prepare(p) for paths in by_source.values() for p in paths]
    arrays = [p.array for p in inside]
    groups: dict[str, dict[str, Any]] = {"test (in scope)": scores.prepared(inside)}
    if len(by_source) > 1:  # the in-scope share per source (goal: <= 2 % flagged)
        for source, paths in by_source.items():
            groups[f"test, {source} only"] = scores(paths)
    probes: dict[str, list[Any]] = {**probe_images(), **dicom_probes()}
    for kind, items in probes.items():
        groups[f"probe: {kind}"] = scores(items)
    arrays = arrays[: args.limit_transformed]  # rotated, inverted, tinted and CT copies
    for kind in ("rot90", "rot180", "inverted"):
        groups[f"test {kind}"] = scores([transformed(a)[kind] for a in arrays])
    for kind in tinted(arrays[0]):
        groups[f"test {kind}"] = scores([tinted(a)[kind] for a in arrays])
    groups["test as CT DICOM"] = scores([dicom_bytes(a, "CT") for a in arrays[:MAX_AS_CT]])
    if args.external:
        ext = _paths(args.external, "test", args.limit)
        groups[f"external: {args.external} ({len(ext)} images)"] = scores(ext)

    probe_groups = [groups[f"probe: {kind}"] for kind in probes]
    all_probes = {k: np.concatenate([g[k] for g in probe_groups]) for k in SCORES}
    s_in = groups["test (in scope)"]
    auroc = {
        k: roc_auc_score(
            np.r_[np.zeros(len(s_in[k])), np.ones(len(all_probes[k]))],
            np.r_[s_in[k], all_probes[k]],
        )  # fmt: skip
        for k in SCORES
    }
    rows = []
    for name, g in groups.items():
        flagged = np.mean([r is not None for r in g["reason"]])
        rows.append([name, len(g["reason"])]
                    + [f"{np.mean(g[k] > cut[k]):.1%}" for k in SCORES]
                    + [f"{flagged:.1%}", _reasons(g["reason"])])  # fmt: skip
    print(f"run {args.run} ({meta.architecture}); commit {git_commit()}; {machine()}")
    print("out-of-scope AUROC, test vs offline probes: "
          + ", ".join(f"{k} {v:.3f}" for k, v in auroc.items()))  # fmt: skip
    head = ["group", "n", "flagged (mahalanobis)", "flagged (energy)",
            "out of scope (the Predictor: rules + its detector)", "ood_reason"]  # fmt: skip
    print(markdown_table(head, rows))
    per_probe = [
        [kind, i, g["reason"][i] or "in scope", f"{g['mahalanobis'][i]:.1f}"]
        for kind, g in zip(probes, probe_groups, strict=True)
        for i in range(len(g["reason"]))
    ]
    print(markdown_table(["probe", "#", "ood_reason", "mahalanobis"], per_probe))
    print(f"cut-offs (val 99th percentile): {cut}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
