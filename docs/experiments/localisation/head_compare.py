"""Two localising heads, paired: the same manifest, split and seeds, one run per seed and arm.

Per seed and per test source (FracAtlas, Roboflow): each arm's ``ap50_boxed``, ``ap50``, hit
rate of the map's peak, FROC at 0.5 / 1 / 2 FP per image, energy in box and ROC-AUC (the image
score each run predicts: the fused one where its score fusion was kept; and a fused run's class
logit alone, with a paired DeLong test of fused vs logit alone), the paired difference
(B - A) and a paired DeLong test of the ROC-AUCs; across seeds mean ± sd with the per-seed
values beside. With one seed, the 95 % bootstrap CIs of that seed instead (``--n-boot``), and
of the difference: a paired bootstrap (both arms scored on the same image resamples; DeLong's
interval for ROC-AUC).
Reads run directories only (old-format runs too: only their predictions CSVs are read).

    .venv/bin/python docs/experiments/localisation/head_compare.py --a runs/old_s1 runs/old_s2 --b runs/new_s1 runs/new_s2 \\
        [--a-name "old head" --b-name "FCOS"] [--split test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))  # benchinfo, localize
import numpy as np  # noqa: E402
from benchinfo import git_commit, machine  # noqa: E402
from localize import _groups, _value  # noqa: E402

from bonefrac.errors import ConfigError  # noqa: E402
from bonefrac.evaluation.compare import delong_test  # noqa: E402
from bonefrac.evaluation.localization_metrics import (  # noqa: E402
    LOC_METRIC_NAMES,
    localization_metrics,
    read_inputs,
)
from bonefrac.metrics import compute_metrics, sigmoid  # noqa: E402
from bonefrac.rundir.predictions import CLASS_LOGIT, read_predictions  # noqa: E402

METRICS = (
    ("ap50_boxed", "ap50_boxed (images with boxes)"),
    ("ap50", "AP50 (all images)"),
    ("hit_rate", "hit rate of the map's peak"),
    ("froc_0.5", "FROC @ 0.5 FP/image"),
    ("froc_1", "FROC @ 1 FP/image"),
    ("froc_2", "FROC @ 2 FP/image"),
    ("energy_in_box", "energy in box"),
    ("roc_auc_loc", "ROC-AUC (the run's image score)"),
    ("roc_auc_class", "ROC-AUC (class logit alone)"),
)


def _predictions(run_dir: Path, split: str) -> tuple[Any, Path]:
    path = run_dir / "predictions" / f"{split}.csv"
    if not path.is_file():
        raise ConfigError(f"{path}: missing; is {run_dir} a finished localising run?")
    return read_predictions(path), path


def arm_results(run_dir: Path, split: str, n_boot: int = 0) -> dict[str, dict[str, Any]]:
    """group -> metric -> value (and ``<metric>_ci``), ``probs``, ``labels``, ``ids``; with
    ``n_boot``, ``draws`` (metric -> bootstrap values) and ``boxed`` too."""
    df, path = _predictions(run_dir, split)
    inputs = read_inputs(df, path)
    labels = df["label"].to_numpy(dtype=int)
    probs = df["prob"].to_numpy(dtype=float)
    out: dict[str, dict[str, Any]] = {}
    for group, mask in _groups(df, ["source"]).items():
        idx = np.flatnonzero(mask)
        sub, draws = inputs.subset(idx), {}
        m = localization_metrics(sub, n_boot=n_boot, draws=draws)
        row: dict[str, Any] = {k: _value(m[k]) for k in LOC_METRIC_NAMES if k in m}
        for k in LOC_METRIC_NAMES:
            if k in m and m[k].get("ci_low") is not None:
                row[f"{k}_ci"] = (m[k]["ci_low"], m[k]["ci_high"])
        row |= _roc_auc("roc_auc_loc", labels[idx], probs[idx], n_boot)
        if CLASS_LOGIT in df.columns:  # a fused run: its class logit alone, on the same images
            alone = sigmoid(df[CLASS_LOGIT].to_numpy(dtype=float)[idx])
            row |= _roc_auc("roc_auc_class", labels[idx], alone, n_boot)
            row["class_probs"] = alone
            if 0 < labels[idx].sum() < len(idx):
                t = delong_test(labels[idx], probs[idx], alone)
                row["fusion_delong"] = (t["diff"], t["p_value"])
        row["n_images"] = float(len(idx))
        row["n_with_boxes"] = float(m["localization"]["support"]["n_with_boxes"])
        row["ids"] = df["image_id"].astype(str).to_numpy()[idx]
        row["labels"], row["probs"] = labels[idx], probs[idx]
        row["draws"], row["boxed"] = draws, sub.boxed
        out[group] = row
    return out


def _roc_auc(key: str, labels: Any, probs: Any, n_boot: int) -> dict[str, Any]:
    """``key`` (ROC-AUC) and, with ``n_boot``, ``<key>_ci`` (stratified bootstrap, as evaluate's)."""
    m = compute_metrics(labels, probs, n_boot=n_boot)["roc_auc"]
    out: dict[str, Any] = {key: math.nan if m["value"] is None else m["value"]}
    if m["ci_low"] is not None:
        out[f"{key}_ci"] = (m["ci_low"], m["ci_high"])
    return out


def _fusion_sentence(rows: list[dict[str, Any]], arm: str, name: str) -> str | None:
    """``name``'s fused score − its class logit alone, per seed (paired DeLong), or None."""
    tests = [r[f"{arm}_fusion_delong"] for r in rows if f"{arm}_fusion_delong" in r]
    if not tests:
        return None
    each = "; ".join(f"seed {i + 1}: {d:+.4f} (p = {p:.3g})" for i, (d, p) in enumerate(tests))
    return f"{name}: {each}"


def _fmt(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    each = " ".join(f"{v:.3f}" for v in vals)
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f} ({each})"


def compare(
    a: list[Path], b: list[Path], split: str, n_boot: int = 0
) -> tuple[dict[str, list[dict[str, float]]], dict[str, Any]]:
    """group -> per seed: ``a_<metric>``, ``b_<metric>``, DeLong (B vs A); and, with one seed,
    each arm's CIs."""
    if len(a) != len(b):
        raise ConfigError(f"--a has {len(a)} runs and --b {len(b)}: one per seed, same order")
    per_group: dict[str, list[dict[str, float]]] = {}
    cis: dict[str, Any] = {"a": {}, "b": {}}
    for run_a, run_b in zip(a, b, strict=True):
        res_a, res_b = arm_results(run_a, split, n_boot), arm_results(run_b, split, n_boot)
        for group, row_b in res_b.items():
            row_a = res_a[group]
            if list(row_a["ids"]) != list(row_b["ids"]):
                raise ConfigError(f"{run_a} and {run_b}: not the same {split} images ({group})")
            row = {f"a_{k}": row_a.get(k, math.nan) for k, _ in METRICS}
            row |= {f"b_{k}": row_b.get(k, math.nan) for k, _ in METRICS}
            row["n_images"], row["n_with_boxes"] = row_b["n_images"], row_b["n_with_boxes"]
            y = row_b["labels"]
            if 0 < y.sum() < len(y):
                t = delong_test(y, row_b["probs"], row_a["probs"])
                row["delong_diff"], row["delong_p"] = t["diff"], t["p_value"]
                row["diff_ci_roc_auc_loc"] = (t["diff_ci_low"], t["diff_ci_high"])
                if "class_probs" in row_a and "class_probs" in row_b:
                    t = delong_test(y, row_b["class_probs"], row_a["class_probs"])
                    row["diff_ci_roc_auc_class"] = (t["diff_ci_low"], t["diff_ci_high"])
            row |= _paired_cis(row_a, row_b, f"{run_a} and {run_b} ({group})")
            per_group.setdefault(group, []).append(row)
            for arm, res in (("a", row_a), ("b", row_b)):
                cis[arm][group] = {k[:-3]: v for k, v in res.items() if k.endswith("_ci")}
                if "fusion_delong" in res:
                    row[f"{arm}_fusion_delong"] = res["fusion_delong"]
    return per_group, cis


def _paired_cis(row_a: dict[str, Any], row_b: dict[str, Any], what: str) -> dict[str, Any]:
    """``diff_ci_<metric>``: 95 % percentile interval of B - A over the shared resamples."""
    if not row_a["draws"] or not row_b["draws"]:
        return {}
    if not np.array_equal(row_a["boxed"], row_b["boxed"]):
        raise ConfigError(f"{what}: the runs' true boxes differ; the bootstrap is not paired")
    out = {}
    for key in set(row_a["draws"]) & set(row_b["draws"]):
        d = row_b["draws"][key] - row_a["draws"][key]
        d = d[np.isfinite(d)]
        if len(d):
            out[f"diff_ci_{key}"] = (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))
    return out


def markdown(per_group: dict[str, list[dict[str, float]]], names: tuple[str, str],
             cis: dict[str, Any] | None) -> str:  # fmt: skip
    lines = []
    for group, rows in per_group.items():
        n = len(rows)
        lines.append(
            f"**{group}** ({rows[0]['n_images']:.0f} images, {rows[0]['n_with_boxes']:.0f} "
            f"with boxes; {'mean ± sd over ' + str(n) + ' seeds' if n > 1 else 'one seed'})\n"
        )
        lines.append(f"| metric | {names[0]} | {names[1]} | paired difference |")
        lines.append("|---|---|---|---|")
        for key, label in METRICS:
            a = [r[f"a_{key}"] for r in rows]
            b = [r[f"b_{key}"] for r in rows]
            diff = [y - x for x, y in zip(a, b, strict=True)]
            cells = [_fmt(a), _fmt(b), _fmt(diff)]
            if len(rows) == 1 and f"diff_ci_{key}" in rows[0]:
                low, high = rows[0][f"diff_ci_{key}"]
                cells[2] += f" [{low:.3f}, {high:.3f}]"
            if cis is not None:
                for i, arm in enumerate(("a", "b")):
                    ci = cis[arm].get(group, {}).get(key)
                    if ci is not None:
                        cells[i] += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} |")
        tests = [f"seed {i + 1}: {r['delong_diff']:+.4f} (p = {r['delong_p']:.3g})"
                 for i, r in enumerate(rows) if "delong_diff" in r]  # fmt: skip
        if tests:
            lines.append(f"\nPaired DeLong ({names[1]} − {names[0]}): " + "; ".join(tests))
        fusion = [_fusion_sentence(rows, arm, name) for arm, name in zip("ab", names, strict=True)]
        fusion = [f for f in fusion if f]
        if fusion:
            lines.append("\nFused score − class logit alone, each arm (paired DeLong): "
                         + "; ".join(fusion))  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def single_arm(
    runs: list[Path], name: str, split: str, n_boot: int, json_path: Path | None
) -> dict[str, Any]:
    """Arm B alone (its pair still training): per group, each seed's metrics with 95 %
    bootstrap CIs. Not a comparison: nothing is paired."""
    print(f"commit {git_commit()} · {machine()}\n")
    doc: dict[str, Any] = {"split": split, "b": [str(p) for p in runs], "per_group": {}}
    for run in runs:
        for group, row in arm_results(run, split, n_boot).items():
            print(f"**{group}** {name} ({run.name}: {row['n_images']:.0f} images, "
                  f"{row['n_with_boxes']:.0f} with boxes)\n")  # fmt: skip
            print("| metric | value [95 % CI] |\n|---|---|")
            kept = {}
            for key, label in METRICS:
                value, ci = row.get(key, math.nan), row.get(f"{key}_ci")
                kept[key] = value
                cell = _fmt([value]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                print(f"| {label} | {cell} |")
            if "fusion_delong" in row:
                d, p = row["fusion_delong"]
                print(f"\nFused score − class logit alone (paired DeLong): {d:+.4f} (p = {p:.3g})")
                kept["fusion_delong"] = [d, p]
            print()
            doc["per_group"].setdefault(group, []).append(kept)
    if json_path:
        json_path.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return doc


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--a", nargs="+", type=Path, help="arm A runs, by seed (none: arm B alone, with CIs)"
    )
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="arm B runs, by seed")
    parser.add_argument("--a-name", default="A")
    parser.add_argument("--b-name", default="B")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n-boot", type=int, default=1000, help="CIs when one seed per arm")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.a:
        return single_arm(args.b, args.b_name, args.split, args.n_boot, args.json)
    one_seed = len(args.a) == 1
    per_group, cis = compare(args.a, args.b, args.split, args.n_boot if one_seed else 0)
    cis = cis if one_seed else None
    print(f"commit {git_commit()} · {machine()}\n")
    print(markdown(per_group, (args.a_name, args.b_name), cis))
    doc = {"split": args.split, "a": [str(p) for p in args.a], "b": [str(p) for p in args.b],
           "per_group": per_group}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    main()
