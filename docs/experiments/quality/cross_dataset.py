"""Generalisation across sources: train on each source (and on all), test on every source.

One manifest holds every source with fixed splits (build it with ``bonefrac data build`` and
``--freeze-split`` from the single-source manifests so each source keeps its own held-out
split). Each experiment in the YAML file trains with ``data.sources`` limiting train/val; the
test split keeps every source, so one run gives one row of the matrix. For every (experiment,
test source) the script reports ROC-AUC and PR-AUC with 95% bootstrap CIs, and sensitivity /
specificity at the max-F1 and sensitivity-0.90 thresholds chosen on the experiment's own
validation split, with and without test-time augmentation (mirror-image mean logit).

    .venv/bin/python docs/experiments/quality/cross_dataset.py --manifest runs/cross/manifest.csv \
        --experiments docs/experiments/quality/cross_dataset.yaml --out runs/cross_runs [--only fa,rf] \
        [--set data.num_workers=4]

Finished experiments (``OUT/<name>/cross.json``) are skipped, so an interrupted sweep resumes.
``OUT/cross_results.jsonl`` gets one line per finished experiment; ``OUT/cross_matrix.md`` is
rewritten after each one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))  # benchinfo
from benchinfo import REPO, git_commit, machine  # noqa: E402

from bonefrac.config import load_config, read_yaml_mapping  # noqa: E402
from bonefrac.data.schema import read_manifest  # noqa: E402
from bonefrac.evaluation.compare import delong_test  # noqa: E402
from bonefrac.evaluation.tables import markdown_table  # noqa: E402
from bonefrac.evaluation.thresholds import choose_threshold  # noqa: E402
from bonefrac.fileio import atomic_open, write_json  # noqa: E402
from bonefrac.inference.predictor import Predictor  # noqa: E402
from bonefrac.inference.run_predictions import predict_frame  # noqa: E402
from bonefrac.metrics import compute_metrics, format_ci  # noqa: E402
from bonefrac.rundir import RunDir  # noqa: E402
from bonefrac.training.fit import train  # noqa: E402

CRITERIA = ("f1", "sensitivity:0.90")


def score(val: pd.DataFrame, test: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    """Per test source: ROC/PR-AUC with CIs, sens/spec at val-chosen thresholds."""
    thresholds = {
        c: choose_threshold(val["label"].to_numpy(), val["prob"].to_numpy(), c) for c in CRITERIA
    }
    out: dict[str, Any] = {"thresholds": thresholds, "sources": {}}
    for source, part in test.groupby(test["source"].astype(str)):
        y, p = part["label"].to_numpy(), part["prob"].to_numpy()
        first = compute_metrics(y, p, thresholds["f1"], n_boot=n_boot)
        row: dict[str, Any] = {
            "n": first["support"]["n"],
            "n_pos": first["support"]["n_pos"],
            "roc_auc": first["roc_auc"],
            "pr_auc": first["pr_auc"],
        }
        for crit, thr in thresholds.items():
            m = first if crit == "f1" else compute_metrics(y, p, thr, n_boot=n_boot)
            row[crit] = {k: m[k] for k in ("sensitivity", "specificity", "f1")}
        out["sources"][source] = row
    return out


def run_experiment(
    exp: dict[str, Any], defaults: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Train (unless ``--rescore`` finds the run's predictions already there), then score."""
    name = exp["name"]
    run_dir = args.out / name
    config = REPO / (exp.get("config") or defaults.get("config") or "configs/lite0_cls.yaml")
    overrides = [*defaults.get("set", []), *exp.get("set", []), *(args.set or [])]
    cfg = load_config(config, overrides)
    cfg.name = name
    wall = None
    run = RunDir(run_dir)
    if not (args.rescore and run.prediction_path("test").is_file()):
        start = time.perf_counter()
        train(cfg, args.manifest, run_dir, force=True, progress=False)
        wall = round(time.perf_counter() - start, 1)
    meta = run.raw_meta()
    val = run.read_predictions_raw("val")
    test = run.read_predictions_raw("test")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict[str, Any] = {
        "name": name,
        "description": exp.get("description", ""),
        "config": str(config.relative_to(REPO)),
        "overrides": overrides,
        "train_sources": cfg.data.sources or "all",
        "model": meta["architecture"],
        "pretrained": meta.get("pretrained"),
        "image_size": meta["image_size"],
        "epochs": meta.get("epochs_trained"),
        "train_seconds": meta.get("train_seconds"),
        "wall_seconds": wall,
        "hardware": args.hardware or machine(),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "plain": score(val, test, args.n_boot),
    }
    if not args.no_tta and run.weights_path.is_file():
        manifest = read_manifest(args.manifest).set_index("path", drop=False)
        predictor = Predictor.from_run(run)
        predictor = Predictor.from_model(predictor.torch_model, predictor.meta, device=device)
        tta = {}
        for split, frame in (("val", val), ("test", test)):
            rows = manifest.loc[frame["path"].astype(str)].reset_index(drop=True)
            tta[split] = predict_frame(
                predictor, rows, batch_size=64, progress=False, tta=True
            ).predictions
        result["tta"] = score(tta["val"], tta["test"], args.n_boot)
    write_json(run_dir / "cross.json", result)
    return result


def matrix_markdown(results: list[dict[str, Any]]) -> str:
    sources = sorted({s for r in results for s in r["plain"]["sources"]})
    head = ["experiment", "trained on", "model", "px", "epochs", "train s"]
    for s in sources:
        head += [f"{s} ROC-AUC", f"{s} ROC-AUC (TTA)", f"{s} sens/spec @maxF1(val)"]
    rows = []
    for r in results:
        trained = r["train_sources"]
        row = [
            r["name"],
            trained if isinstance(trained, str) else "+".join(trained),
            f"{r['model']} ({r['pretrained']})",
            str(r["image_size"]),
            str(r["epochs"]),
            str(r["train_seconds"]),
        ]
        for s in sources:
            plain = r["plain"]["sources"].get(s)
            tta = r.get("tta", {}).get("sources", {}).get(s)
            row.append(format_ci(plain["roc_auc"]) if plain else "n/a")
            row.append(format_ci(tta["roc_auc"]) if tta else "n/a")
            if plain:
                ss = plain["f1"]
                row.append(f"{ss['sensitivity']['value']:.2f} / {ss['specificity']['value']:.2f}")
            else:
                row.append("n/a")
        rows.append(row)
    hw = "; ".join(sorted({r["hardware"] for r in results}))
    commits = ", ".join(sorted({r["commit"] for r in results}))
    return f"{markdown_table(head, rows)}\n\nHardware: {hw}. Commit(s): {commits}.\n"


def paired_markdown(out: Path, results: list[dict[str, Any]], base: str) -> str:
    """ROC-AUC change of each experiment vs ``base`` per test source: paired DeLong test on
    the same test images (single training seed each: this is test-set noise only)."""
    names = [r["name"] for r in results]
    if base not in names:
        return ""
    preds = {
        n: pd.read_csv(out / n / "predictions" / "test.csv").set_index("image_id") for n in names
    }
    ref = preds[base]
    sources = sorted(ref["source"].astype(str).unique())
    head = ["experiment"] + [f"{s}: ΔROC-AUC vs {base} [95% CI], p" for s in sources]
    rows = []
    for n in names:
        if n == base:
            continue
        row = [n]
        for s in sources:
            a = ref[ref["source"].astype(str) == s]
            b = preds[n].reindex(a.index)
            if b["prob"].isna().any():
                row.append("n/a (different test images)")
                continue
            t = delong_test(a["label"].to_numpy(), b["prob"].to_numpy(), a["prob"].to_numpy())
            row.append(
                f"{t['diff']:+.3f} [{t['diff_ci_low']:+.3f}, {t['diff_ci_high']:+.3f}],"
                f" p={t['p_value']:.2g}"
            )
        rows.append(row)
    return markdown_table(head, rows) + "\n"


def write_matrix(out: Path, results: list[dict[str, Any]], base: str) -> None:
    text = matrix_markdown(results)
    paired = paired_markdown(out, results, base)
    if paired:
        text += "\n" + paired
    with atomic_open(out / "cross_matrix.md", "w", encoding="utf-8") as fh:
        fh.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument(
        "--experiments", type=Path, default=Path(__file__).with_name("cross_dataset.yaml")
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default=None, help="comma-separated experiment names")
    ap.add_argument("--set", action="append", help="override for every experiment (key=value)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--baseline", default="fa", help="experiment the paired table compares to")
    ap.add_argument(
        "--hardware", default=None, help="hardware note (with --rescore: the trainer's)"
    )
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="score runs whose predictions exist (e.g. copied back from a GPU machine) without"
        " training again",
    )
    args = ap.parse_args()
    spec = read_yaml_mapping(args.experiments, "experiments file not found", "a mapping")
    defaults = spec.get("defaults", {})
    experiments = spec["experiments"]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {e["name"] for e in experiments})
        if unknown:
            raise SystemExit(f"--only: unknown experiment(s) {unknown}")
        experiments = [e for e in experiments if e["name"] in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for exp in experiments:
        done = args.out / exp["name"] / "cross.json"
        if done.is_file():
            results.append(json.loads(done.read_text(encoding="utf-8")))
            print(f"[skip] {exp['name']}: {done} exists", flush=True)
            continue
        print(f"[run ] {exp['name']}: {exp.get('description', '')}", flush=True)
        try:
            result = run_experiment(exp, defaults, args)
        except Exception as exc:  # noqa: BLE001 - keep the sweep going, report the failure
            print(f"[fail] {exp['name']}: {type(exc).__name__}: {exc}", flush=True)
            continue
        results.append(result)
        with (args.out / "cross_results.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(result) + "\n")
        write_matrix(args.out, results, args.baseline)
        aucs = {s: format_ci(v["roc_auc"]) for s, v in result["plain"]["sources"].items()}
        print(f"[done] {exp['name']} in {result['wall_seconds']} s: {aucs}", flush=True)
    if results:
        write_matrix(args.out, results, args.baseline)
        print(f"matrix: {args.out / 'cross_matrix.md'}")


if __name__ == "__main__":
    main()
