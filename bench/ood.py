"""Out-of-scope detection on real radiographs: does the detector refuse what it should?

For a run trained on FracAtlas (with ``bonefrac ood RUN`` already fitted, or fitted here with
``--fit``), the script scores with BOTH out-of-scope scores (Mahalanobis on penultimate
features with a Ledoit-Wolf covariance fitted on the train split, and the logit's energy):

- in scope: the run's test split images from its manifest (FracAtlas test);
- out of scope: the offline probes of :mod:`bonefrac.inference.ood_probes` (scikit-learn's
  sample photographs, rendered text pages, noise, blank frames);
- the same test radiographs rotated 90 / 180 degrees and inverted (should stay in scope);
- an external radiograph set: the Roboflow "Bone Fracture Detection" test split (another
  source, other regions: how much of it a FracAtlas model calls out of scope).

It prints the AUROC of in-scope vs probes for each score and the share of each group flagged
at each score's val cut-off (the 99th percentile of val scores), as a markdown table.

    .venv/bin/python bench/ood.py --run /tmp/fa_run \
        --external ../shared/data/bone_fracture_yolo/test/images [--fit]

``--external`` is a manifest (its test split) or a folder of images (all of them).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from benchinfo import git_commit, machine
from sklearn.metrics import roc_auc_score

from bonefrac.data.imageio import IMAGE_SUFFIXES
from bonefrac.data.schema import read_manifest
from bonefrac.evaluation.tables import markdown_table
from bonefrac.inference import ood, ood_stats
from bonefrac.inference.ood_probes import probe_images, transformed
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--external", type=Path, help="manifest of an external set (test split)")
    ap.add_argument("--fit", action="store_true", help="fit 'bonefrac ood' (mahalanobis) first")
    ap.add_argument("--max-train", type=int, default=1200)
    ap.add_argument("--limit", type=int, default=400, help="at most this many test images")
    args = ap.parse_args()

    t0 = time.time()
    if args.fit:
        ood.fit_ood(args.run, "mahalanobis", max_images=args.max_train, force=True)
    run = RunDir.open(args.run)
    meta = run.meta()
    pred = Predictor.from_run(run)
    stats = ood_stats.load_stats(run, meta.ood)

    def features(sources: list) -> tuple[np.ndarray, np.ndarray]:
        f, z, _ = ood.image_features(pred, sources)
        return f, z

    def scores(sources: list) -> dict[str, np.ndarray]:
        f, z = features(sources)
        # the Predictor's rule: a blank frame is out of scope whatever its score
        blank = ood_stats.blank_frames([pred.prepare(s).array for s in sources])
        return {"mahalanobis": stats.score(f), "energy": ood_stats.energy_score(z), "blank": blank}

    val = scores(run.predictions("val")["path"].astype(str).tolist())
    cut = {k: float(np.percentile(val[k], 99.0)) for k in ("mahalanobis", "energy")}
    manifest = Path(meta.get("manifest"))
    test_paths = _paths(manifest, "test", args.limit)
    inside_arrays = [pred.prepare(p).array for p in test_paths]
    groups: dict[str, dict[str, np.ndarray]] = {"test (in scope)": scores(inside_arrays)}
    probes = probe_images()
    for kind, imgs in probes.items():
        groups[f"probe: {kind}"] = scores(imgs)
    for kind in ("rot90", "rot180", "inverted"):
        groups[f"test {kind}"] = scores([transformed(a)[kind] for a in inside_arrays])
    if args.external:
        ext = _paths(args.external, "test", args.limit)
        groups[f"external: {args.external} ({len(ext)} images)"] = scores(ext)

    all_probes = {k: np.concatenate([groups[f"probe: {p}"][k] for p in probes]) for k in cut}
    s_in = groups["test (in scope)"]
    rows = []
    for name, g in groups.items():
        rows.append([name, len(g["mahalanobis"])]
                    + [f"{np.mean(g[k] > cut[k]):.1%}" for k in ("mahalanobis", "energy")]
                    + [f"{np.mean((g['mahalanobis'] > cut['mahalanobis']) | g['blank']):.1%}"])  # fmt: skip
    auroc = {
        k: roc_auc_score(
            np.r_[np.zeros(len(s_in[k])), np.ones(len(all_probes[k]))],
            np.r_[s_in[k], all_probes[k]],
        )  # fmt: skip
        for k in cut
    }
    print(f"run {args.run} ({meta.architecture}); commit {git_commit()}; {machine()}")
    print("out-of-scope AUROC, test vs offline probes: "
          + ", ".join(f"{k} {v:.3f}" for k, v in auroc.items()))  # fmt: skip
    head = ["group", "n", "flagged (mahalanobis)", "flagged (energy)",
            "flagged (mahalanobis + blank-frame rule: what the Predictor does)"]  # fmt: skip
    print(markdown_table(head, rows))
    print(f"cut-offs (val 99th percentile): {cut}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
