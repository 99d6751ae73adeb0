"""A trained run becomes a shipped model (:mod:`bonefrac.rundir.shipped`): package data that
``pip install .`` carries, found by name (``bonefrac predict default IMG``).

:func:`package_run`, in the shipped root's staging folder (:func:`bonefrac.rundir.shipped.stage`),
then placed (:func:`bonefrac.rundir.shipped.place`):

1. copies the run's record (model.json, config.yaml, history.csv, metrics.json, val/test
   predictions, the appearance rule's statistics; no checkpoints, plots or reports);
2. stores the weights in fp16 (:data:`PARITY_MAX_DELTA_PROB`: the parity check on the test
   split decides; fp32 where it fails) and records their SHA-256 as any run's;
3. predicts val and test again with the stored weights and checks them against the fp32
   model's on the same inputs (largest |delta probability| and |delta logit|, fracture
   calls that flip);
4. refits every deploy safeguard on those predictions (:func:`bonefrac.deploy.deploy_run`:
   temperature, threshold, refer rule, out-of-scope statistics), so model.json describes the
   weights that ship, not the fp32 ones;
5. writes MODEL_CARD.md (:mod:`bonefrac.evaluation.model_card`) and refuses a folder over
   :data:`MAX_BYTES`; ``default=True`` points the ``default`` alias at it.

Layer: above deploy (it runs the deploy fits), below the CLI and bench scripts.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.deploy import deploy_run
from bonefrac.errors import RunDirError
from bonefrac.evaluation.model_card import CardInputs, write_model_card
from bonefrac.fileio import atomic_path, file_sha256, folder_bytes
from bonefrac.inference.run_predictions import predict_run_frame, split_rows
from bonefrac.rundir import RUN_SPLITS, RunDir, missing_safeguards, shipped
from bonefrac.rundir.layout import (
    APPEARANCE_STATS,
    CONFIG,
    GZIP_SUFFIX,
    HISTORY,
    METRICS,
    MODEL_JSON,
)
from bonefrac.rundir.meta import EnsembleRecord, ModelMeta
from bonefrac.rundir.predictions import IMAGE_ID, LOGIT, PATH, SOURCE
from bonefrac.rundir.relocate import unroot_run

log = logging.getLogger(__name__)

#: A shipped model's folder may hold at most this many bytes per model it holds (issue 25:
#: 12 MB per model; an ensemble of k members, issue 37: k times that).
MAX_BYTES = 12_000_000
#: fp16 weights ship when no test image's probability moves by more than this against fp32
#: (at the fp32 run's temperature) ...
PARITY_MAX_DELTA_PROB = 0.05
#: ... and at most this share of the test split's fracture calls flip. A bound on the logit
#: alone (0.05, the first rule) failed on the shipped Lite0 for one Roboflow image (0.18; mean
#: 0.012) whose probability moved by at most 0.023, far from the threshold, while 2 of 1,160
#: calls flipped. What a clinician sees is the probability and the call.
PARITY_MAX_FLIP_SHARE = 0.005
#: The deploy settings a refit keeps from the shipped model's config (the out-of-scope
#: detector's); the decision rule's become this version's defaults.
_KEPT_DEPLOY = ("ood", "ood_max_images", "calibrate")
#: ... and the appearance rule's statistics: they describe the train images, not the weights, so
#: they stay valid (the out-of-scope refit below fits them again only with a feature detector).
_RECORD = (MODEL_JSON, CONFIG, HISTORY, METRICS, APPEARANCE_STATS)


@dataclass
class PackageReport:
    """What :func:`package_run` wrote and measured."""

    path: Path
    weights_dtype: str
    parity: dict[str, Any]
    bytes: int
    deploy: dict[str, str] = field(default_factory=dict)


def _fp16_weights(src: Path, dest: Path) -> None:
    """``src``'s safetensors with every floating tensor stored as float16."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(dest) as tmp:
        save_file(half, str(tmp))


def _store_weights(src: RunDir, run: RunDir, dtype: str) -> None:
    """``src``'s weights files (one, or an ensemble's members) into ``run`` as ``dtype``
    (``float16``: converted; ``float32``: copied), their hashes recorded in model.json."""
    meta = src.meta()
    for source, dest in zip(src.weight_files(meta), run.weight_files(meta), strict=True):
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dtype == "float16":
            _fp16_weights(source, dest)
        else:
            shutil.copy2(source, dest)
    raw = run.raw_meta()
    if meta.ensemble is None:
        raw["weights_sha256"] = file_sha256(run.weights_path)
    else:
        members = [{**m.model_dump(mode="json"), "weights_sha256": file_sha256(run.path / m.file)}
                   for m in meta.ensemble.members]  # fmt: skip
        raw["ensemble"] = {**meta.ensemble.model_dump(mode="json"), "members": members}
        raw["weights_sha256"] = EnsembleRecord.model_validate(raw["ensemble"]).digest()
    raw["weights_dtype"] = dtype
    run.write_meta(raw)


def parity(
    fp32: pd.DataFrame, stored: pd.DataFrame, threshold: float, temperature: float
) -> dict[str, Any]:
    """fp32 vs stored-weight logits of the same images: the largest |delta logit| (all and per
    source) and the fracture calls at ``threshold`` / ``temperature`` that flip."""
    from bonefrac.metrics import apply_temperature

    a = fp32.set_index(IMAGE_ID)
    b = stored.set_index(IMAGE_ID).loc[a.index]
    za, zb = a[LOGIT].to_numpy(float), b[LOGIT].to_numpy(float)
    delta = np.abs(za - zb)
    pa, pb = apply_temperature(za, temperature), apply_temperature(zb, temperature)
    calls_a, calls_b = pa >= threshold, pb >= threshold
    prob_delta = np.abs(pa - pb)
    out: dict[str, Any] = {
        "n_images": len(a),
        "max_abs_delta_prob": float(prob_delta.max()),
        "max_abs_delta_logit": float(delta.max()),
        "mean_abs_delta_logit": float(delta.mean()),
        "flipped_calls": int((calls_a != calls_b).sum()),
        "threshold": threshold,
        "temperature": temperature,
    }
    if SOURCE in a.columns:
        out["max_abs_delta_logit_by_source"] = {
            str(s): float(delta[(a[SOURCE] == s).to_numpy()].max())
            for s in sorted(a[SOURCE].astype(str).unique())
        }
    return out


def _gzip(path: Path) -> Path:
    """``path`` -> ``path.gz`` (deterministic: no name or time in the header); removes ``path``."""
    import gzip

    out = path.with_name(path.name + GZIP_SUFFIX)
    with (
        path.open("rb") as src,
        atomic_path(out) as tmp,
        tmp.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as gz,
    ):
        shutil.copyfileobj(src, gz)
    path.unlink()
    return out


def package_run(
    run_dir: str | Path,
    name: str,
    *,
    root: Path | None = None,
    default: bool = True,
    card: CardInputs | None = None,
    force: bool = False,
    batch_size: int = 32,
) -> PackageReport:
    """Package the trained run ``run_dir`` as the shipped model ``name`` (see the module)."""
    root = shipped.SHIPPED_ROOT if root is None else Path(root)
    src = RunDir.open(run_dir)
    status = src.meta().get("training_status")
    if status != "ok":
        raise RunDirError(f"{src.path}: training_status is {status!r}, "
                          "not 'ok'; only a finished, healthy run ships")  # fmt: skip
    final, stage = shipped.stage(root, name, force=force)
    RunDir(stage).predictions_dir.mkdir(parents=True)
    try:
        report = _build(src, stage, name, card, batch_size)
        _place(report, stage, final, default)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return report


def _build(
    src: RunDir, stage: Path, name: str, card: CardInputs | None, batch_size: int
) -> PackageReport:
    for fname in _RECORD:
        if (src.path / fname).is_file():
            shutil.copy2(src.path / fname, stage / fname)
    run = RunDir(stage)
    frames = {split: split_rows(src, split) for split in RUN_SPLITS}
    log.info("%s: fp32 test predictions for the parity check", name)
    fp32_test = predict_run_frame(src.path, frames["test"], batch_size=batch_size).predictions

    _store_weights(src, run, "float16")
    run.reset_fits()  # refitted below, on the stored weights
    stored: dict[str, pd.DataFrame] = {}
    for split in RUN_SPLITS:
        log.info("%s: %s predictions with the fp16 weights", name, split)
        stored[split] = predict_run_frame(stage, frames[split], batch_size=batch_size).predictions
    src_meta = src.meta()
    check = parity(fp32_test, stored["test"], src_meta.threshold, src_meta.temperature)
    ok = (
        check["max_abs_delta_prob"] <= PARITY_MAX_DELTA_PROB
        and check["flipped_calls"] <= PARITY_MAX_FLIP_SHARE * check["n_images"]
    )
    dtype = "float16"
    if not ok:  # fp32 it is: the stored predictions are the fp32 model's
        log.warning("%s: fp16 parity failed (%s); shipping fp32 weights", name, check)
        dtype = "float32"
        _store_weights(src, run, dtype)
        stored = {s: predict_run_frame(stage, frames[s], batch_size=batch_size).predictions
                  for s in RUN_SPLITS}  # fmt: skip
    for split in RUN_SPLITS:
        run.write_predictions(split, stored[split])

    deployed = _deploy(run, name)
    shipped_meta = run.meta()
    # the same check at the shipped model's own threshold and temperature
    check["at_shipped_settings"] = parity(
        fp32_test, stored["test"], shipped_meta.threshold, shipped_meta.temperature
    )
    check["passed"] = bool(ok)
    check["limits"] = {"max_abs_delta_prob": PARITY_MAX_DELTA_PROB,
                       "max_flip_share": PARITY_MAX_FLIP_SHARE}  # fmt: skip
    raw = run.raw_meta()
    raw["shipped"] = {
        "name": name,
        "packaged": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "from_run": src.name,
        "from_weights_sha256": src_meta.weights_sha256,
        "weights_dtype": dtype,
        "parity": check,
    }
    run.write_meta(raw)
    _finish(run, name, card or CardInputs())
    return PackageReport(stage, dtype, check, folder_bytes(stage), dict(deployed.fitted))


def _deploy(run: RunDir, name: str) -> Any:
    """Every deploy fit on the staged model (its config's deploy block); a failed or a
    missing safeguard is an error: such a model does not ship."""
    deployed = deploy_run(run.path, run.config().deploy)
    if deployed.failed:
        raise RunDirError(f"{name}: deploy fits failed on the shipped weights: {deployed.failed}")
    missing = missing_safeguards(run.meta())
    if missing:
        raise RunDirError(f"{name}: lacks {', '.join(m.name for m in missing)}; not shipped")
    return deployed


def _finish(run: RunDir, name: str, card: CardInputs) -> None:
    """The card (while the manifest is still at hand), then no path of this machine in the
    folder, compressed predictions and no plots."""
    write_model_card(run, name, card)
    paths = [p for s in RUN_SPLITS for p in run.read_predictions_raw(s)[PATH].astype(str)]
    unroot_run(run, os.path.commonpath([str(Path(p).resolve()) for p in paths]))
    for split in RUN_SPLITS:  # compressed: the candidate boxes make each CSV about 0.8 MB
        _gzip(run.prediction_path(split))
    shutil.rmtree(run.plots_dir, ignore_errors=True)  # the deploy fits' figures: not a model's
    for path in run.path.rglob("*"):  # package data every user of the install can read
        path.chmod(0o755 if path.is_dir() else 0o644)


def max_bytes(meta: ModelMeta) -> int:
    """The most bytes the shipped folder of ``meta``'s model may take: :data:`MAX_BYTES` per
    model (an ensemble's members each count)."""
    return MAX_BYTES * (1 if meta.ensemble is None else len(meta.ensemble.members))


def _place(report: PackageReport, stage: Path, final: Path, default: bool) -> None:
    limit = max_bytes(RunDir(stage).meta())
    if report.bytes > limit:
        raise RunDirError(f"{final.name}: {report.bytes / 1e6:.1f} MB, over the "
                          f"{limit / 1e6:.0f} MB a shipped model may take")  # fmt: skip
    report.path = shipped.place(stage, final, default=default)


def refit_shipped(
    source: str,
    name: str,
    manifest: str | Path,
    *,
    root: Path | None = None,
    default: bool = True,
    card: CardInputs | None = None,
    force: bool = False,
    appearance_only: bool = False,
    drop_feature_detector: bool = False,
) -> PackageReport:
    """The shipped model ``source`` with every deploy fit made again on its own stored weights
    and val predictions (a new decision rule or out-of-scope gate; the weights and their
    parity record are unchanged), shipped as ``name``. ``manifest``: this machine's copy of
    its manifest (the out-of-scope fit reads its train images); the deploy block of its
    config becomes this version's defaults. ``appearance_only``: keep every fit that depends
    on the weights (they are the same weights) and fit the appearance rule alone (it reads
    no model: :func:`bonefrac.evaluation.ood.refit_appearance`). ``drop_feature_detector``:
    ship without the Mahalanobis feature detector, the appearance rule being the model's
    out-of-scope detector (what keeps Lite0 with both under the size cap)."""
    import yaml

    from bonefrac.config import DeployConfig, build_config

    root = shipped.SHIPPED_ROOT if root is None else Path(root)
    final, stage = shipped.stage(root, name, force=force)
    src = shipped.resolve_run(source)
    try:
        shutil.copytree(src, stage)
        run = RunDir(stage)
        old = run.raw_meta()
        if appearance_only:
            from bonefrac.evaluation.ood import refit_appearance

            run.relocate(manifest)
            looks = refit_appearance(run.path)
            fitted = {"appearance": f"appearance rule, cut-off {looks['cutoff']:.4g}"}
            if drop_feature_detector:
                run.update_meta(ood=None)
                run.ood_stats_path.unlink(missing_ok=True)
                fitted["ood"] = "feature detector not shipped (the appearance rule is)"
        else:
            run.reset_fits()
            raw_cfg = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
            kept = {k: v for k, v in (raw_cfg.get("deploy") or {}).items() if k in _KEPT_DEPLOY}
            raw_cfg["deploy"] = DeployConfig(**kept).model_dump(mode="json")
            run.write_config(build_config(raw_cfg, run.config_path))
            run.relocate(manifest)
            fitted = dict(_deploy(run, name).fitted)
        raw = run.raw_meta()
        raw["shipped"] = {
            **(old.get("shipped") or {}),
            "name": name,
            "refitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "refitted_from": source,
        }
        run.write_meta(raw)
        _finish(run, name, card or CardInputs())
        parity_record = raw["shipped"].get("parity", {})
        report = PackageReport(stage, str(raw.get("weights_dtype")), parity_record,
                               folder_bytes(stage), fitted)  # fmt: skip
        _place(report, stage, final, default)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return report
