"""At a site the model has never seen (issue 37): leave one site out, arms paired over seeds.

Three settings (bench/unseen_site.yaml): FracAtlas + bone_fracture_yolo -> all of
roboflow_sr2022; FracAtlas -> bone_fracture_yolo's test split; bone_fracture_yolo ->
FracAtlas's test split. An ARM is the reduced recipe (224 px, <= 1,000 images per split, 6
epochs) with a lever's overrides (``baseline``: none). For every (setting, arm, seed) it trains
(nice'd, ``bonefrac train --no-deploy``), predicts the unseen site, and keeps the run's small
record (model.json, config, history, predictions as .csv.gz; no weights) in
``bench/results/unseen_site/<setting>/<arm>_s<seed>/``. A record found there is a finished run
(skipped), an interrupted training resumes from its last checkpoint.

    .venv/bin/python bench/unseen_site.py run --arm baseline --setting fa_bfy_to_sr2022
    .venv/bin/python bench/unseen_site.py tta --arm baseline --setting fa_bfy_to_sr2022
    .venv/bin/python bench/unseen_site.py ensemble --arm baseline --setting fa_bfy_to_sr2022
    .venv/bin/python bench/unseen_site.py report [--md docs/experiments/x.md]

``tta`` adds hflip test-time averaged predictions (mean logit with the mirror image) to finished
records whose weights are still in WORK; ``ensemble`` predicts the unseen site with the ensemble
of an arm's seeds as one model (mean logit and mean map: its hit rate and boxes). ``report`` scores every record the same way, from the
predictions alone: per unseen site ROC-AUC with its 95% CI, sensitivity at the val threshold
(``deploy.threshold``'s criterion, f1, fitted on the run's val predictions), the miss rate under
a rule-out cut fitted on val at sensitivity 0.95 (fractured images below it would be called
``no_fracture``), hit rate and ap50_boxed on the boxed images; the in-domain test figures;
each lever minus baseline paired by seed (mean +- sd and the per-seed values); and two levers
needing no training: the ensemble of each arm's seeds (mean logit, on the images every member
predicted; paired against each member on those images) and hflip test-time averaging.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from benchinfo import REPO, git_commit, machine

from bonefrac.config import read_yaml_mapping
from bonefrac.data.schema import read_manifest
from bonefrac.evaluation.localization_metrics import split_localization
from bonefrac.evaluation.tables import markdown_table
from bonefrac.evaluation.thresholds import choose_threshold
from bonefrac.fileio import atomic_open, write_json
from bonefrac.metrics import compute_metrics, format_ci
from bonefrac.rundir import RunDir

SPEC = REPO / "bench" / "unseen_site.yaml"
RESULTS = REPO / "bench" / "results" / "unseen_site"
RECORD = "record.json"
#: the key the ensemble's one score goes under where seeds go
ENSEMBLE_SEED = -1
#: the val threshold's criterion (DeployConfig.threshold's default) and the rule-out cut's
THRESHOLD_CRITERION = "f1"
RULE_OUT_CRITERION = "sensitivity:0.95"
#: files of a finished run kept in its record (predictions go separately, gzipped)
KEPT = ("model.json", "config.yaml", "history.csv")


def load_spec(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "unseen-site spec not found", "a mapping")


def build_manifests(spec: dict[str, Any], work: Path, data: Path) -> dict[str, Path]:
    """WORK/data/<name>/manifest.csv for every manifest of the spec (built once)."""
    out = {}
    for name, args in spec["manifests"].items():
        folder = work / "data" / name
        manifest = folder / "manifest.csv"
        if not manifest.is_file():
            cmd = [str(REPO / ".venv" / "bin" / "bonefrac"), "data", "build", "--out", str(folder)]
            cmd += [a.format(data=data) for a in args] + ["--force"]
            print("[data]", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        out[name] = manifest
    return out


def record_dir(setting: str, arm: str, seed: int, results: Path = RESULTS) -> Path:
    return results / setting / f"{arm}_s{seed}"


def overrides(spec: dict[str, Any], setting: str, arm: str, seed: int) -> list[str]:
    if arm not in spec["arms"]:
        raise SystemExit(f"unknown arm {arm!r}: one of {sorted(spec['arms'])}")
    sources = spec["settings"][setting]["sources"]
    sets = [f"seed={seed}", *spec["recipe"]["set"]]
    if sources:
        sets.append(f"data.sources=[{','.join(sources)}]")
    return sets + list(spec["arms"][arm])


def train_command(
    spec: dict[str, Any], manifest: Path, run: Path, sets: list[str], nice: int = 5
) -> list[str]:
    """The nice'd ``bonefrac train`` of one run (``--resume`` when a checkpoint is there)."""
    bonefrac = str(REPO / ".venv" / "bin" / "bonefrac")
    if (run / "checkpoints" / "last.ckpt").is_file():
        cmd = [bonefrac, "train", "--resume", str(run), "--no-deploy", "--no-progress"]
    else:
        cmd = [bonefrac, "train", "--config", str(REPO / spec["recipe"]["config"])]
        cmd += ["--manifest", str(manifest), "--out", str(run), "--no-deploy", "--force"]
        cmd += ["--no-progress"] + [a for s in sets for a in ("--set", s)]
    return ["nice", "-n", str(nice), *cmd]


def predict_rows(
    args: argparse.Namespace, run: Path, rows: pd.DataFrame, target: Path, tta: bool = False
) -> None:
    """Manifest ``rows`` through the run's model into the predictions CSV ``target`` (gzip when
    it ends in .gz); ``tta``: mean logit with the mirror image. ``--predict-cmd`` (a template
    with {run}, {rows}, {out}, {tta}) predicts in another process instead, e.g. with an older
    checkout on PYTHONPATH for runs whose model.json an older format_version wrote."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if args.predict_cmd:
        rows_csv = target.with_name(target.name + ".rows.csv")
        rows.to_csv(rows_csv, index=False)
        cmd = args.predict_cmd.format(run=run, rows=rows_csv, out=target, tta=int(tta))
        subprocess.run(cmd, shell=True, check=True)
        rows_csv.unlink()
        return
    from bonefrac.inference.run_predictions import predict_run_frame

    out = predict_run_frame(run, rows.reset_index(drop=True), progress=False, tta=tta)
    with atomic_open(target, "wb") as fh:
        out.predictions.to_csv(
            fh, index=False, compression="gzip" if target.suffix == ".gz" else None
        )


def store(run: Path, rec: Path, info: dict[str, Any]) -> None:
    """The run's small record: model.json, config, history, predictions (.csv.gz)."""
    tmp = rec.with_name(rec.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "predictions").mkdir(parents=True)
    for name in KEPT:
        if (run / name).is_file():
            shutil.copy2(run / name, tmp / name)
    for csv in sorted((run / "predictions").glob("*.csv")):
        pd.read_csv(csv).to_csv(tmp / "predictions" / f"{csv.name}.gz", index=False)
    write_json(tmp / RECORD, info)
    shutil.rmtree(rec, ignore_errors=True)
    tmp.rename(rec)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_pid(lock: Path) -> int | None:
    """The pid a run's lock names while that process lives (a training in progress)."""
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def live_trainings(work: Path) -> int:
    return sum(lock_pid(lock) is not None for lock in (work / "runs").glob("*/*.lock"))


def finished(run: Path) -> bool:
    return (run / "metrics.json").is_file() and (run / "model.safetensors").is_file()


def run_arm(args: argparse.Namespace, spec: dict[str, Any]) -> None:
    """Train every (arm, seed) without a record, at most ``--parallel`` trainings at a time
    (counting any other process's, by their locks: WORK/runs/<setting>/<arm>_s<seed>.lock
    holds the trainer's pid), then predict the unseen site and store the record."""
    manifests = build_manifests(spec, args.work, args.data)
    setting = spec["settings"][args.setting]
    external = setting["unseen"].get("external")
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]  # pairs finish together
    running: dict[tuple[str, int], tuple[subprocess.Popen, float]] = {}
    done: set[tuple[str, int]] = set()
    while len(done) < len(jobs):
        for arm, seed in jobs:
            if (arm, seed) in done:
                continue
            rec = record_dir(args.setting, arm, seed)
            run = args.work / "runs" / args.setting / f"{arm}_s{seed}"
            lock = run.with_name(run.name + ".lock")
            if (rec / RECORD).is_file():
                print(f"[skip] {args.setting} {arm} s{seed}: {rec} exists", flush=True)
                done.add((arm, seed))
                continue
            if (arm, seed) in running:
                proc, start = running[(arm, seed)]
                if proc.poll() is None:
                    continue
                del running[(arm, seed)]
                lock.unlink(missing_ok=True)
                if proc.returncode != 0 or not finished(run):
                    print(
                        f"[fail] {args.setting} {arm} s{seed}: exit {proc.returncode}", flush=True
                    )
                    done.add((arm, seed))
                    continue
            elif lock_pid(lock) is not None:
                continue  # another process trains it
            elif not finished(run):
                if live_trainings(args.work) >= args.parallel:
                    continue
                sets = overrides(spec, args.setting, arm, seed)
                log = args.work / "logs" / f"{args.setting}_{arm}_s{seed}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                run.parent.mkdir(parents=True, exist_ok=True)
                cmd = train_command(spec, manifests[setting["manifest"]], run, sets, args.nice)
                with log.open("a", encoding="utf-8") as fh:
                    fh.write(" ".join(cmd) + "\n")
                    fh.flush()
                    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
                lock.write_text(str(proc.pid))
                running[(arm, seed)] = (proc, time.perf_counter())
                print(f"[run ] {args.setting} {arm} s{seed}: {' '.join(sets)}", flush=True)
                continue
            if external and not RunDir(run).prediction_path(external).is_file():
                rows = read_manifest(manifests[external])
                predict_rows(args, run, rows, RunDir(run).prediction_path(external))
            meta = RunDir(run).raw_meta()
            info = {
                "setting": args.setting,
                "arm": arm,
                "seed": seed,
                "overrides": overrides(spec, args.setting, arm, seed),
                "config": spec["recipe"]["config"],
                "train_seconds": meta.get("train_seconds"),
                "epochs_trained": meta.get("epochs_trained"),
                "hardware": machine(),
                "commit": git_commit(),
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
            store(run, rec, info)
            done.add((arm, seed))
            print(f"[done] {args.setting} {arm} s{seed} -> {rec}", flush=True)
        if len(done) < len(jobs):
            time.sleep(20)


def run_tta(args: argparse.Namespace, spec: dict[str, Any]) -> None:
    """hflip-averaged predictions of val, test and the external site into finished records."""
    manifests = build_manifests(spec, args.work, args.data)
    setting = spec["settings"][args.setting]
    external = setting["unseen"].get("external")
    for arm, seed in [(a, s) for a in args.arms for s in args.seeds]:
        rec = record_dir(args.setting, arm, seed)
        run = args.work / "runs" / args.setting / f"{arm}_s{seed}"
        if not (rec / RECORD).is_file() or not (run / "model.safetensors").is_file():
            print(f"[tta ] {args.setting} {arm} s{seed}: no finished run, skipped", flush=True)
            continue
        stored = RunDir(rec)
        names = ["val", "test"] + ([external] if external else [])
        for name in names:
            target = rec / "predictions" / f"tta_{name}.csv.gz"
            if target.is_file():
                continue
            plain = stored.read_predictions_raw(name)
            rows = read_manifest(manifests[setting["manifest"] if name != external else external])
            rows = rows.set_index("path", drop=False).loc[plain["path"].astype(str)]
            predict_rows(args, run, rows.reset_index(drop=True), target, tta=True)
            print(f"[tta ] {args.setting} {arm} s{seed}: {target}", flush=True)


def run_shipped(args: argparse.Namespace, spec: dict[str, Any]) -> None:
    """A shipped model (``--model``, default ``default``) at the external unseen site, plain and
    hflip-averaged, with its own val (and test) predictions: record
    ``<setting>/shipped_<model>_s<its seed>``. Its val images are found in the setting's
    manifest by image_id (the same build), so the hflip run refits its cuts on hflip val."""
    manifests = build_manifests(spec, args.work, args.data)
    setting = spec["settings"][args.setting]
    external = setting["unseen"].get("external")
    if not external:
        raise SystemExit(f"{args.setting}: 'shipped' needs a setting with an external site")
    shipped = RunDir.open(args.model)
    meta = shipped.raw_meta()
    rec = record_dir(args.setting, f"shipped_{args.model}", int(meta.get("seed", 0)))
    tmp = args.work / "shipped" / args.model
    (tmp / "predictions").mkdir(parents=True, exist_ok=True)
    for name in ("val", "test"):
        target = tmp / "predictions" / f"{name}.csv.gz"
        if not target.is_file():
            shipped.read_predictions_raw(name).to_csv(target, index=False)
    own = read_manifest(manifests[setting["manifest"]]).set_index("image_id", drop=False)
    jobs = {
        external: (read_manifest(manifests[external]), False),
        f"tta_{external}": (read_manifest(manifests[external]), True),
        "tta_val": (own.loc[shipped.read_predictions_raw("val")["image_id"].astype(str)], True),
    }
    for name, (rows, tta) in jobs.items():
        target = tmp / "predictions" / f"{name}.csv.gz"
        if target.is_file():
            continue
        print(f"[ship] {args.model}: {name} ({len(rows)} images, tta={tta})", flush=True)
        predict_rows(args, shipped.path, rows.reset_index(drop=True), target, tta=tta)
    info = {
        "setting": args.setting,
        "arm": f"shipped_{args.model}",
        "seed": int(meta.get("seed", 0)),
        "model": meta.get("name"),
        "image_size": meta.get("image_size"),
        "hardware": machine(),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    for name in KEPT[:1]:
        shutil.copy2(shipped.path / name, tmp / name)
    write_json(tmp / RECORD, info)
    shutil.rmtree(rec, ignore_errors=True)
    rec.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tmp, rec)
    print(f"[done] shipped {args.model} -> {rec}", flush=True)


def ensemble_dir(setting: str, arm: str, results: Path = RESULTS) -> Path:
    """Where the real ensemble of an arm's seeds keeps its unseen-site predictions."""
    return results / setting / "ensembles" / arm


def run_ensemble(args: argparse.Namespace, spec: dict[str, Any]) -> None:
    """The ensemble of each arm's seeds as one model (bonefrac.models.ensemble: mean logit and
    mean detector output, so its map and boxes are the mean map's) on the unseen site: the
    external manifest, or the unseen source's test rows every member predicted. The members'
    val/test subsamples differ, so this is the EnsembleModel itself, not a `bonefrac ensemble`
    run (which refuses members of other splits); the report scores it with the mean-logit val."""
    from bonefrac.inference.backend import TorchBackend
    from bonefrac.inference.predictor import Predictor
    from bonefrac.inference.run_predictions import predict_frame
    from bonefrac.models.ensemble import EnsembleModel
    from bonefrac.models.runio import load_model

    manifests = build_manifests(spec, args.work, args.data)
    setting = spec["settings"][args.setting]
    unseen = setting["unseen"]
    for arm in args.arms:
        runs = [args.work / "runs" / args.setting / f"{arm}_s{s}" for s in args.seeds]
        missing = [r for r in runs if not finished(r)]
        if missing:
            print(f"[ens ] {args.setting} {arm}: {len(missing)} seed(s) unfinished", flush=True)
            continue
        target = ensemble_dir(args.setting, arm)
        out = target / "predictions" / "unseen.csv.gz"
        if out.is_file():
            print(f"[skip] {args.setting} {arm} ensemble: {out} exists", flush=True)
            continue
        members = [RunDir(r) for r in runs]
        if "external" in unseen:
            rows = read_manifest(manifests[unseen["external"]])
        else:  # the unseen source's test rows that every member predicted
            tests = [m.read_predictions_raw("test") for m in members]
            common = set.intersection(*(set(t["image_id"].astype(str)) for t in tests))
            rows = read_manifest(manifests[setting["manifest"]])
            rows = rows[rows["image_id"].astype(str).isin(common)
                        & (rows["source"].astype(str) == unseen["source"])]  # fmt: skip
        model = EnsembleModel([load_model(m, m.meta()) for m in members])
        meta = members[0].meta().model_copy(update={"score_fusion": None})
        print(f"[ens ] {args.setting} {arm}: {len(members)} members on {len(rows)} images",
              flush=True)  # fmt: skip
        frame = predict_frame(Predictor(meta, TorchBackend(model)), rows, progress=False)
        (target / "predictions").mkdir(parents=True, exist_ok=True)
        with atomic_open(out, "wb") as fh:
            frame.predictions.to_csv(fh, index=False, compression="gzip")
        info = {"setting": args.setting, "arm": arm, "seeds": args.seeds, "n": len(rows),
                "hardware": machine(), "commit": git_commit(),
                "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
        write_json(target / RECORD, info)
        print(f"[done] {args.setting} {arm} ensemble -> {out}", flush=True)


# --- scoring ---------------------------------------------------------------------------------


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def site_figures(frame: pd.DataFrame, threshold: float, rule_out: float, n_boot: int) -> dict:
    """ROC-AUC (CI), sensitivity at the val threshold, miss rate under the rule-out cut, hit
    rate and ap50_boxed (boxed images) of one site's predictions."""
    y, p = frame["label"].to_numpy().astype(int), frame["prob"].to_numpy(dtype=float)
    at_thr = compute_metrics(y, p, threshold, n_boot=n_boot)
    at_cut = compute_metrics(y, p, rule_out, n_boot=n_boot)
    sens_cut = at_cut["sensitivity"]
    miss = {
        k: (None if sens_cut.get(j) is None else 1.0 - sens_cut[j])
        for k, j in (("value", "value"), ("ci_low", "ci_high"), ("ci_high", "ci_low"))
    }
    out = {
        "n": int(len(y)),
        "n_pos": int(y.sum()),
        "roc_auc": at_thr["roc_auc"],
        "sensitivity": at_thr["sensitivity"],
        "specificity": at_thr["specificity"],
        "miss_rate_rule": miss,
        "rule_out_specificity": at_cut["specificity"],
    }
    loc = split_localization(frame.reset_index(drop=True), n_boot=n_boot)
    if loc is not None:
        out["hit_rate"] = loc.get("hit_rate")
        out["ap50_boxed"] = loc.get("ap50_boxed")
    return out


def frames_of(rec: Path, spec: dict[str, Any], prefix: str = "") -> dict[str, pd.DataFrame] | None:
    """``{"val", "unseen", "in:<source>"...}`` prediction frames of a record (``prefix``
    ``tta_``: its hflip-averaged predictions); None when those are missing."""
    info = json.loads((rec / RECORD).read_text(encoding="utf-8"))
    setting = spec["settings"][info["setting"]]
    run = RunDir(rec)
    if not run.prediction_path(f"{prefix}val").is_file():
        return None
    val = run.read_predictions_raw(f"{prefix}val")
    has_test = run.prediction_path(f"{prefix}test").is_file()
    test = run.read_predictions_raw(f"{prefix}test") if has_test else val.iloc[:0]
    out = {"val": val}
    unseen = setting["unseen"]
    if "external" in unseen:
        if not run.prediction_path(prefix + unseen["external"]).is_file():
            return None
        out["unseen"] = run.read_predictions_raw(prefix + unseen["external"])
    else:
        out["unseen"] = test[test["source"].astype(str) == unseen["source"]]
    trained = setting["sources"] or sorted(set(val["source"].astype(str)))
    for source in trained:
        if has_test:
            out[f"in:{source}"] = test[test["source"].astype(str) == source]
    return out


def score_frames(frames: dict[str, pd.DataFrame], n_boot: int) -> dict[str, Any]:
    val = frames["val"]
    y, p = val["label"].to_numpy().astype(int), val["prob"].to_numpy(dtype=float)
    thr = choose_threshold(y, p, THRESHOLD_CRITERION)
    cut = choose_threshold(y, p, RULE_OUT_CRITERION)
    out: dict[str, Any] = {"threshold": thr, "rule_out": cut, "sites": {}}
    for key, frame in frames.items():
        if key != "val":
            out["sites"][key] = site_figures(frame, thr, cut, n_boot)
    return out


def ensemble_frames(members: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Mean logit of the members per image, on the images every member predicted (a seed's
    <= 1,000-image subsample differs); localisation columns are not averaged (dropped)."""
    out = {}
    for key in members[0]:
        tables = [m[key].set_index("image_id") for m in members]
        common = tables[0].index
        for t in tables[1:]:
            common = common.intersection(t.index)
        base = tables[0].loc[common, ["path", "label", "source"]].copy()
        mean = np.mean([logit(t.loc[common, "prob"].to_numpy()) for t in tables], axis=0)
        base["prob"] = 1.0 / (1.0 + np.exp(-mean))
        out[key] = base.reset_index()
    return out


def restrict(member: dict[str, pd.DataFrame], to: dict[str, pd.DataFrame]) -> dict:
    """A member's frames on the images of the ensemble's frames ``to`` (per key), so the two
    are compared on the same images."""
    out = {}
    for key, frame in member.items():
        ids = set(to[key]["image_id"].astype(str))
        out[key] = frame[frame["image_id"].astype(str).isin(ids)]
    return out


def value(entry: Any) -> float:
    if isinstance(entry, dict):
        entry = entry.get("value")
    return math.nan if entry is None else float(entry)


#: (label, site key or None for every unseen/in-domain site, metric)
COLUMNS = (
    ("ROC-AUC", "roc_auc"),
    ("sens @val thr", "sensitivity"),
    ("miss (rule-out)", "miss_rate_rule"),
    ("hit rate", "hit_rate"),
    ("ap50_boxed", "ap50_boxed"),
)


def mean_sd(values: list[float], sign: bool = False) -> str:
    v = np.array([x for x in values if not math.isnan(x)])
    fmt = "+.3f" if sign else ".3f"
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:{fmt}}"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):.3f}"


def arm_table(scores: dict[int, dict[str, Any]], sites: list[str]) -> str:
    """One arm of one setting: a row per site, mean ± sd over seeds and the per-seed values."""
    seeds = sorted(scores)
    head = ["site", "n (fractured)"] + [c for c, _ in COLUMNS]
    rows = []
    for site in sites:
        per = [scores[s]["sites"].get(site) for s in seeds]
        if any(x is None for x in per):
            continue
        row = [site, f"{per[0]['n']} ({per[0]['n_pos']})"]
        for _, metric in COLUMNS:
            vals = [value(x.get(metric)) for x in per]
            seed_txt = ", ".join(f"{v:.3f}" for v in vals)
            row.append(f"{mean_sd(vals)} ({seed_txt})")
        rows.append(row)
    ci_rows = []
    for s in seeds:
        roc = scores[s]["sites"].get("unseen", {}).get("roc_auc")
        ci_rows.append(f"{'s' + str(s) if s != ENSEMBLE_SEED else 'ensemble'}: {format_ci(roc)}")
    seeds_txt = (
        "the ensemble" if seeds == [ENSEMBLE_SEED] else f"seeds {', '.join(map(str, seeds))}"
    )
    return (
        markdown_table(head, rows)
        + f"\nMean ± sd over {seeds_txt} (per-seed values in brackets). Unseen ROC-AUC"
        f" with 95% CI: {'; '.join(ci_rows)}.\n"
    )


def paired_table(
    base: dict[int, dict[str, Any]], lever: dict[int, dict[str, Any]], sites: list[str]
) -> str:
    """Lever minus baseline on the same splits and seeds: mean ± sd of the paired difference
    and the per-seed differences."""
    seeds = sorted(set(base) & set(lever))
    head = ["site"] + [f"Δ {c}" for c, _ in COLUMNS]
    rows = []
    for site in sites:
        row = [site]
        for _, metric in COLUMNS:
            diffs = [
                value(lever[s]["sites"][site].get(metric))
                - value(base[s]["sites"][site].get(metric))
                for s in seeds
            ]
            row.append(f"{mean_sd(diffs, sign=True)} ({', '.join(f'{d:+.3f}' for d in diffs)})")
        rows.append(row)
    return markdown_table(head, rows) + f"\nPaired over seeds {', '.join(map(str, seeds))}.\n"


def verdict(base: dict[int, dict], lever: dict[int, dict], sites: list[str]) -> str:
    """Issue 37's rule: kept when the mean paired unseen ROC-AUC gain is above zero and no
    in-domain ROC-AUC falls by more than 0.01 on average."""
    seeds = sorted(set(base) & set(lever))
    if len(seeds) < 3:
        return f"not decided: {len(seeds)} paired seed(s), the rule needs 3"

    def gain(site: str) -> float:
        return float(
            np.mean(
                [
                    value(lever[s]["sites"][site]["roc_auc"])
                    - value(base[s]["sites"][site]["roc_auc"])
                    for s in seeds
                ]
            )
        )

    unseen = gain("unseen")
    inside = [gain(s) for s in sites if s.startswith("in:")]
    if not inside:
        return f"not decided: no in-domain figures (unseen ROC-AUC {unseen:+.3f})"
    cost = min(inside)
    kept = unseen > 0 and cost >= -0.01
    return (
        f"{'kept' if kept else 'not kept'}: unseen ROC-AUC {unseen:+.3f} (mean paired), worst"
        f" in-domain ROC-AUC {cost:+.3f}"
    )


def report(args: argparse.Namespace, spec: dict[str, Any]) -> str:
    lines = ["# Unseen-site protocol (bench/unseen_site.py)", ""]
    for setting in spec["settings"]:
        arms: dict[str, dict[int, dict[str, Any]]] = {}
        raw: dict[str, dict[int, dict[str, pd.DataFrame]]] = {}
        walls: dict[str, list[float]] = {}
        for rec in sorted((RESULTS / setting).glob(f"*{'_s'}*")):
            if not (rec / RECORD).is_file():
                continue
            info = json.loads((rec / RECORD).read_text(encoding="utf-8"))
            frames = frames_of(rec, spec)
            if frames is None:
                continue
            arm, seed = info["arm"], int(info["seed"])
            raw.setdefault(arm, {})[seed] = frames
            arms.setdefault(arm, {})[seed] = score_frames(frames, args.n_boot)
            if info.get("train_seconds"):
                walls.setdefault(arm, []).append(info["train_seconds"])
            tta = frames_of(rec, spec, prefix="tta_")
            if tta is not None:
                arms.setdefault(f"{arm}+hflip_tta", {})[seed] = score_frames(tta, args.n_boot)
        if not arms:
            continue
        against: dict[str, dict[int, dict[str, Any]]] = {}  # members on the ensemble's images
        for arm in [a for a in raw if not a.startswith("shipped_") and len(raw[a]) >= 2]:
            seeds = sorted(raw[arm])
            frames = ensemble_frames([raw[arm][s] for s in seeds])
            real = ensemble_dir(setting, arm)
            if (real / RECORD).is_file():
                info = json.loads((real / RECORD).read_text(encoding="utf-8"))
                if sorted(info["seeds"]) == seeds:  # the EnsembleModel's own maps and boxes
                    mapped = pd.read_csv(real / "predictions" / "unseen.csv.gz")
                    ids = set(frames["unseen"]["image_id"].astype(str))
                    frames["unseen"] = mapped[mapped["image_id"].astype(str).isin(ids)]
            arms[f"{arm}_ensemble"] = {ENSEMBLE_SEED: score_frames(frames, args.n_boot)}
            against[f"{arm}_ensemble"] = {
                s: score_frames(restrict(raw[arm][s], frames), args.n_boot) for s in seeds
            }
        arms = dict(
            sorted(
                arms.items(),
                key=lambda kv: (
                    kv[0] != "baseline",
                    "+" in kv[0] or kv[0].endswith("_ensemble"),
                    kv[0],
                ),
            )
        )
        sites = ["unseen"] + sorted(
            {k for a in arms.values() for sc in a.values() for k in sc["sites"] if k != "unseen"}
        )
        lines += [f"## {setting}", ""]
        unseen = spec["settings"][setting]["unseen"]
        lines.append(f"Unseen site: {unseen.get('external') or unseen.get('source')}.\n")
        for arm, scores in arms.items():
            wall = walls.get(arm)
            took = f" (training wall {np.mean(wall) / 60:.1f} min per run)" if wall else ""
            lines += [f"### {arm}{took}", "", arm_table(scores, sites)]
            if arm.endswith("_ensemble"):
                lines.append(
                    "Ensemble: mean logit of the arm's seeds on the images all of them"
                    " predicted; threshold and rule-out cut fitted on its own val; unseen-site"
                    " hit rate and ap50 from the EnsembleModel's mean map (`bench/unseen_site.py"
                    " ensemble`), n/a without it.\n"
                )
        for arm, members in against.items():
            ens = {s: arms[arm][ENSEMBLE_SEED] for s in members}
            common = [x for x in sites if all(x in members[s]["sites"] and x in ens[s]["sites"]
                                              for s in members)]  # fmt: skip
            ref = arm.removesuffix("_ensemble")
            lines += [f"### {arm} − each {ref} seed (paired on the ensemble's images)", "",
                      paired_table(members, ens, common)]  # fmt: skip
            lines.append(f"Verdict: {verdict(members, ens, common)}.\n")
        for arm, scores in arms.items():
            ref = arm.split("+")[0] if "+" in arm else "baseline"
            base = arms.get(ref)
            if arm == ref or arm.endswith("_ensemble") or base is None:
                continue
            if arm.startswith("shipped_") and "+" not in arm or not set(scores) & set(base):
                continue
            common = [x for x in sites if all(x in base[s]["sites"] and x in scores[s]["sites"]
                                              for s in set(scores) & set(base))]  # fmt: skip
            lines += [f"### {arm} − {ref} (paired)", "", paired_table(base, scores, common)]
            lines.append(f"Verdict: {verdict(base, scores, common)}.\n")
    lines.append(f"Scored at commit {git_commit()}; n_boot {args.n_boot}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("run", "tta", "ensemble", "shipped", "report"))
    ap.add_argument("--model", default="default", help="shipped model for 'shipped'")
    ap.add_argument(
        "--predict-cmd", default=None, help="predict in this command (see predict_rows)"
    )
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--arm", default="baseline", help="arm(s), comma-separated")
    ap.add_argument("--parallel", type=int, default=1, help="trainings at a time (all of WORK's)")
    ap.add_argument("--nice", type=int, default=5, help="niceness of the trainings")
    ap.add_argument("--setting", default="fa_bfy_to_sr2022")
    ap.add_argument("--seeds", default=None, help="comma-separated (default: the spec's)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/unseen_site"), help="runs + data")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--md", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    if args.setting not in spec["settings"]:
        raise SystemExit(f"unknown setting {args.setting!r}: one of {sorted(spec['settings'])}")
    args.seeds = [int(s) for s in (args.seeds.split(",") if args.seeds else spec["seeds"])]
    args.arms = [a.strip() for a in args.arm.split(",") if a.strip()]
    for arm in args.arms:
        if arm not in spec["arms"]:
            raise SystemExit(f"unknown arm {arm!r}: one of {sorted(spec['arms'])}")
    if args.command == "run":
        run_arm(args, spec)
    elif args.command == "tta":
        run_tta(args, spec)
    elif args.command == "ensemble":
        run_ensemble(args, spec)
    elif args.command == "shipped":
        run_shipped(args, spec)
    else:
        text = report(args, spec)
        sys.stdout.write(text)
        if args.md:
            with atomic_open(args.md, "w", encoding="utf-8") as fh:
                fh.write(text)


if __name__ == "__main__":
    main()
