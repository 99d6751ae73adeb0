"""Model quality on FracAtlas's fixed test split, with 95% CIs, plus external validation.

For each run: ROC-AUC and PR-AUC, and sensitivity / specificity at two operating points chosen
on the validation split only (max-F1, and sensitivity >= 0.90), applied to test; training wall
time from model.json; optionally the same metrics on an external manifest (e.g. the Roboflow
YOLO set for a model trained on FracAtlas only). Nothing is retrained unless ``--train`` is given.

    .venv/bin/python docs/experiments/quality/quality.py --runs runs/simple_cnn runs/lite0 \
        --external /path/to/yolo/manifest.csv

Train first with ``--train MANIFEST`` (uses configs/<name>.yaml for each --runs folder name).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))  # benchinfo
from benchinfo import REPO, git_commit, machine  # noqa: E402

from bonefrac.evaluation.tables import markdown_table  # noqa: E402
from bonefrac.evaluation.thresholds import choose_threshold  # noqa: E402
from bonefrac.inference.run_predictions import predict_run_frame  # noqa: E402
from bonefrac.metrics import compute_metrics, format_ci  # noqa: E402
from bonefrac.rundir import RunDir  # noqa: E402

CRITERIA = ("f1", "sensitivity:0.90")


def run_rows(run: Path, external: Path | None, n_boot: int) -> list[dict]:
    layout = RunDir.open(run)
    meta = layout.raw_meta()
    val = layout.read_predictions_raw("val")
    test = layout.read_predictions_raw("test")
    sets = {"test": test}
    if external is not None:
        name = f"bench_{external.parent.name}"
        if not layout.prediction_path(name).is_file():
            ext = pd.read_csv(external)
            layout.write_predictions(name, predict_run_frame(run, ext).predictions)
        sets[f"external:{external.parent.name}"] = layout.read_predictions_raw(name)
    rows = []
    for crit in CRITERIA:
        thr = choose_threshold(val["label"].to_numpy(), val["prob"].to_numpy(), crit)
        for name, df in sets.items():
            m = compute_metrics(df["label"].to_numpy(), df["prob"].to_numpy(), thr, n_boot=n_boot)
            rows.append(
                {
                    "run": run.name,
                    "model": meta["architecture"],
                    "pretrained": meta.get("pretrained"),
                    "image_size": meta["image_size"],
                    "epochs": meta.get("epochs_trained"),
                    "train_s": meta.get("train_seconds"),
                    "set": name,
                    "n": int(len(df)),
                    "criterion (val)": crit,
                    "threshold": round(float(thr), 4),
                    "roc_auc": format_ci(m["roc_auc"]),
                    "pr_auc": format_ci(m["pr_auc"]),
                    "sensitivity": format_ci(m["sensitivity"]),
                    "specificity": format_ci(m["specificity"]),
                }
            )
    return rows


def markdown(table: pd.DataFrame) -> str:
    return markdown_table(table.columns, table.itertuples(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--external", type=Path, help="manifest.csv of an external set")
    parser.add_argument("--train", type=Path, help="train each run first on this manifest")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="write the table as markdown here")
    args = parser.parse_args()
    if args.train:
        for run in args.runs:
            config = REPO / "configs" / f"{run.name}.yaml"
            cmd = ["bonefrac", "train", "--config", str(config), "--manifest", str(args.train)]
            subprocess.run([*cmd, "--out", str(run), "--force"], check=True)
    rows = [r for run in args.runs for r in run_rows(run, args.external, args.n_boot)]
    table = pd.DataFrame(rows)
    print(f"machine: {machine()}, commit {git_commit()}")
    print(markdown(table))
    if args.out:
        args.out.write_text(markdown(table) + "\n")
    print(json.dumps({"rows": len(rows), "bootstrap": args.n_boot}))


if __name__ == "__main__":
    main()
