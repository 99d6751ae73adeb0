"""Two arms trained on the same manifest, split and seeds: test ROC-AUC per source, paired.

For each seed, each arm's test ROC-AUC on every source of the test split (and all together),
the paired difference B - A with a paired DeLong p-value on the same images; then mean ± sd
over seeds with the per-seed values beside it. An arm's ``prob`` column is what the run decides
on (for a localising run with score fusion: the fused score).

    .venv/bin/python bench/paired_sources.py --a OUT/cls --b OUT/loc [--seeds 1 2 3] \\
        [--name-a cls --name-b loc] [--json OUT.json]

``--a`` / ``--b`` hold one run directory per seed: ``seed<N>/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from benchinfo import git_commit, machine
from sklearn.metrics import roc_auc_score

from bonefrac.evaluation.compare import delong_test


def test_frame(run: Path) -> pd.DataFrame:
    df = pd.read_csv(run / "predictions" / "test.csv", keep_default_na=False)
    return df.set_index("image_id")


def seed_rows(a: Path, b: Path) -> dict[str, dict[str, float]]:
    fa, fb = test_frame(a), test_frame(b)
    if set(fa.index) != set(fb.index):
        raise SystemExit(f"{a} and {b}: different test images; not a paired comparison")
    fb = fb.loc[fa.index]
    out = {}
    groups = {"all": np.ones(len(fa), dtype=bool)}
    groups |= {s: (fa["source"] == s).to_numpy() for s in sorted(fa["source"].unique())}
    for name, mask in groups.items():
        y = fa["label"].to_numpy()[mask].astype(int)
        pa = fa["prob"].to_numpy(dtype=float)[mask]
        pb = fb["prob"].to_numpy(dtype=float)[mask]
        test = delong_test(y, pa, pb)
        out[name] = {
            "n": int(mask.sum()),
            "a": float(roc_auc_score(y, pa)),
            "b": float(roc_auc_score(y, pb)),
            "p": float(test["p_value"]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", type=Path, required=True)
    parser.add_argument("--b", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--name-a", default="A")
    parser.add_argument("--name-b", default="B")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"# {machine()}, commit {git_commit()}")
    per_seed = {s: seed_rows(args.a / f"seed{s}", args.b / f"seed{s}") for s in args.seeds}
    a, b = args.name_a, args.name_b
    print(f"| test source | n | {a} ROC-AUC | {b} ROC-AUC | {b} - {a} (per seed; DeLong p) |")
    print("|---|---|---|---|---|")
    for group in per_seed[args.seeds[0]]:
        va = np.array([per_seed[s][group]["a"] for s in args.seeds])
        vb = np.array([per_seed[s][group]["b"] for s in args.seeds])
        d = vb - va
        sd = lambda v: np.std(v, ddof=1) if len(v) > 1 else float("nan")  # noqa: E731
        seeds = " ".join(
            f"{d[i]:+.3f} (p {per_seed[s][group]['p']:.2g})" for i, s in enumerate(args.seeds)
        )
        print(
            f"| {group} | {per_seed[args.seeds[0]][group]['n']} | {va.mean():.3f} ± {sd(va):.3f} "
            f"| {vb.mean():.3f} ± {sd(vb):.3f} | {d.mean():+.3f} ± {sd(d):.3f} ({seeds}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(per_seed, indent=2))


if __name__ == "__main__":
    main()
