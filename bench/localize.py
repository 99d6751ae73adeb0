"""Localising vs classification-only runs: localisation metrics and ROC-AUC, mean ± sd over seeds.

Reads run directories only (train them elsewhere, e.g. ``bonefrac train --config
configs/lite0_loc.yaml --set seed=N``). ``--loc`` and ``--cls`` list runs in the same seed order:
the i-th localising run is paired with the i-th classification-only run, on the same split of
the same manifest. Per seed: the localising run's hit rate of the map's peak, energy in box,
AP50 and FROC sensitivities (:mod:`bonefrac.evaluation.localization_metrics`), both runs' ROC-AUC and a
paired DeLong test (localising minus classification-only); across seeds: mean ± sd. Beside the
hit rate: the always-the-image-centre baseline and the area-based chance. The same table per
value of each ``--by`` column (default ``source``: FracAtlas and Roboflow when the test split
holds both; ``--by hardware`` for the shortcut check) when it has several values.

    .venv/bin/python bench/localize.py --loc runs/loc_s0 runs/loc_s1 runs/loc_s2 \\
        --cls runs/cls_s0 runs/cls_s1 runs/cls_s2 [--split test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import git_commit, machine  # noqa: E402

from bonefrac.errors import ConfigError  # noqa: E402
from bonefrac.evaluation.compare import delong_test, load_aligned  # noqa: E402
from bonefrac.evaluation.localization_metrics import (  # noqa: E402
    LOC_METRIC_NAMES,
    centre_inside,
    has_localization,
    localization_metrics,
    read_inputs,
)
from bonefrac.evaluation.tables import markdown_table  # noqa: E402
from bonefrac.metrics import point_metrics  # noqa: E402
from bonefrac.rundir import RunDir  # noqa: E402

ALL = "all"


def _groups(df: pd.DataFrame, by: list[str]) -> dict[str, np.ndarray]:
    """``all`` plus ``column=value`` masks for each ``by`` column with several values."""
    out = {ALL: np.ones(len(df), dtype=bool)}
    for col in by:
        if col not in df.columns:
            continue
        values = df[col].astype("string").fillna("unknown")
        if values.nunique() < 2:
            continue
        for value in sorted(values.unique()):
            out[f"{col}={value}"] = (values == value).to_numpy()
    return out


def _value(entry: dict[str, Any]) -> float:
    return math.nan if entry["value"] is None else float(entry["value"])


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return point_metrics(y, p)["roc_auc"] if 0 < y.sum() < len(y) else math.nan


def box_size_ratios(inputs: Any) -> tuple[float, float]:
    """Median width and height ratio (predicted / true) of the boxes the model puts on true
    boxes: for each true box, the best-scored ranked box whose centre lies inside it (the
    FROC match). ``(nan, nan)`` when no true box is found."""
    ranked = inputs.ranked_boxes or [[] for _ in inputs.true_boxes]
    widths: list[float] = []
    heights: list[float] = []
    for truth, preds in zip(inputs.true_boxes, ranked, strict=True):
        best: dict[int, list[float]] = {}  # true box -> its best-scored box centred in it
        for box in preds:
            for j in centre_inside((box[0], box[1]), truth):
                if j not in best or box[4] > best[j][4]:
                    best[j] = box
        for j, box in best.items():
            w, h = truth[j][2], truth[j][3]
            if w > 0 and h > 0:
                widths.append(math.log(box[2] / w))
                heights.append(math.log(box[3] / h))
    if not widths:
        return math.nan, math.nan
    return math.exp(float(np.median(widths))), math.exp(float(np.median(heights)))


def seed_results(
    loc_dir: Path, cls_dir: Path | None, split: str, by: list[str], n_boot: int = 0
) -> dict[str, dict[str, float]]:
    """One seed: group -> metric -> value (localisation, ROC-AUCs, DeLong)."""
    run = RunDir.open(loc_dir)
    df = run.predictions(split)
    if not has_localization(df):
        raise ConfigError(
            f"{run.prediction_path(split)}: no localisation columns (boxes, pred_boxes, map_peak, "
            "energy_in_box); is this a localising run (model.localize: true)?"
        )
    inputs = read_inputs(df, run.prediction_path(split))
    dirs = [loc_dir] + ([cls_dir] if cls_dir is not None else [])
    names, y, probs = load_aligned(dirs, split)  # same images, in the localising run's order
    p_loc = probs[names[0]][0]
    p_cls = probs[names[1]][0] if cls_dir is not None else None
    out: dict[str, dict[str, float]] = {}
    for group, mask in _groups(df, by).items():
        idx = np.flatnonzero(mask)
        sub = inputs.subset(idx)
        m = localization_metrics(sub, n_boot=n_boot)
        row = {k: _value(m[k]) for k in LOC_METRIC_NAMES if k in m}
        row["box_w_ratio"], row["box_h_ratio"] = box_size_ratios(sub)
        row["n_images"] = float(len(idx))
        row["n_with_boxes"] = float(m["localization"]["support"]["n_with_boxes"])
        row["roc_auc_loc"] = _auc(y[idx], p_loc[idx])
        if p_cls is not None:
            row["roc_auc_cls"] = _auc(y[idx], p_cls[idx])
            if 0 < y[idx].sum() < len(idx):
                t = delong_test(y[idx], p_loc[idx], p_cls[idx])
                row["delong_diff"], row["delong_p"] = t["diff"], t["p_value"]
        out[group] = row
    return out


def bench(
    loc_dirs: list[Path], cls_dirs: list[Path], split: str = "test", by: list[str] | None = None
) -> dict[str, list[dict[str, float]]]:
    """group -> one result dict per seed."""
    if cls_dirs and len(cls_dirs) != len(loc_dirs):
        raise ConfigError(
            f"--loc has {len(loc_dirs)} runs and --cls {len(cls_dirs)}: give one classification-"
            "only run per localising run, in the same seed order"
        )
    per_group: dict[str, list[dict[str, float]]] = {}
    for i, loc in enumerate(loc_dirs):
        res = seed_results(loc, cls_dirs[i] if cls_dirs else None, split, by or ["source"])
        for group, row in res.items():
            per_group.setdefault(group, []).append(row)
    return per_group


def mean_sd(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


ROWS = (
    ("hit_rate", "hit rate of the map's peak (localising)"),
    ("centre_hit_rate", "baseline: always the image centre"),
    ("chance_hit_rate", "baseline: random point (area-based chance)"),
    ("energy_in_box", "energy in box"),
    ("ap50", "AP50 (COCO, all images)"),
    ("ap50_boxed", "AP50 (COCO, images with boxes only: the benchmark convention)"),
    ("box_w_ratio", "box width / true width (median, boxes found)"),
    ("box_h_ratio", "box height / true height (median, boxes found)"),
    ("froc_0.5", "FROC sensitivity @ 0.5 FP/image"),
    ("froc_1", "FROC sensitivity @ 1 FP/image"),
    ("froc_2", "FROC sensitivity @ 2 FP/image"),
    ("roc_auc_loc", "ROC-AUC, localising"),
    ("roc_auc_cls", "ROC-AUC, classification-only"),
    ("delong_diff", "ROC-AUC difference (localising - classification-only)"),
)


def markdown(per_group: dict[str, list[dict[str, float]]], split: str) -> str:
    lines = []
    for group, rows in per_group.items():
        n_seeds = len(rows)
        head = [f"{split}, {group} ({rows[0]['n_images']:.0f} images, "
                f"{rows[0]['n_with_boxes']:.0f} with boxes)", f"mean ± sd over {n_seeds} seed(s)"]  # fmt: skip
        body = [[label, mean_sd([r.get(key, math.nan) for r in rows])] for key, label in ROWS]
        body = [b for b in body if b[1] != "n/a"]
        lines += [markdown_table(head, body), ""]
        tests = [
            f"seed {i}: diff {r['delong_diff']:+.4f}, p = {r['delong_p']:.3g}"
            for i, r in enumerate(rows)
            if "delong_diff" in r
        ]
        if tests:
            lines += ["Paired DeLong test per seed (localising vs classification-only): "
                      + "; ".join(tests), ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--loc", nargs="+", type=Path, required=True, help="localising runs")
    parser.add_argument("--cls", nargs="*", type=Path, default=[], help="classification-only runs")
    parser.add_argument("--split", default="test")
    parser.add_argument("--by", nargs="*", default=["source"], help="subgroup columns")
    parser.add_argument("--json", type=Path, help="write the per-seed numbers here")
    args = parser.parse_args(argv)
    per_group = bench(args.loc, args.cls, args.split, args.by)
    print(f"commit {git_commit()} · {machine()}")
    print(markdown(per_group, args.split))
    doc = {
        "split": args.split,
        "loc_runs": [str(p) for p in args.loc],
        "cls_runs": [str(p) for p in args.cls],
        "per_group": per_group,
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    main()
