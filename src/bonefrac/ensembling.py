"""``bonefrac ensemble``: trained runs of one recipe (seeds) become one ensemble run.

The ensemble is an ordinary run directory that any command takes (predict, serve, node,
evaluate, export, package): its model.json records each member's weights file under
``members/`` with its SHA-256 (:class:`bonefrac.rundir.meta.EnsembleRecord`; a member whose file
does not match is refused at load), its logit is the mean of the members' logits and its map the
mean of their detector outputs (:class:`bonefrac.models.ensemble.EnsembleModel`). Building one:

1. checks the members are finished runs of the same architecture, input and preprocessing,
   localising, and predicted on the same val and test images (the fits below need one split);
2. copies their weights and the first member's config and appearance rule (it reads no model);
3. predicts val and test with the ensemble, picks its box threshold from the val negatives'
   map peaks (as training does), and runs every deploy fit of the config on those predictions
   (temperature, the two cuts, the out-of-scope detector), so the ensemble's decisions are
   fitted on its own scores, never borrowed from a member.

Layer: beside packaging (it runs the deploy fits), below the CLI and bench scripts.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.deploy import DeployReport, deploy_run
from bonefrac.errors import RunDirError
from bonefrac.fileio import file_sha256
from bonefrac.inference.box_decoding import choose_box_threshold
from bonefrac.inference.loop import FileInputs, collect
from bonefrac.inference.predictor import Predictor
from bonefrac.inference.run_predictions import predictions_table, split_rows
from bonefrac.rundir import RUN_SPLITS, ModelMeta, RunDir
from bonefrac.rundir.meta import EnsembleRecord
from bonefrac.rundir.predictions import IMAGE_ID, LABEL, MAP_MAX, PATH

log = logging.getLogger(__name__)

#: model.json fields every member must share: they decide what the ensemble's input is.
SHARED_FIELDS = (
    "architecture",
    "image_size",
    "mean",
    "std",
    "preprocess",
    "localize",
    "loc_levels",
)
#: Keys of the first member's model.json that describe that member alone, not the ensemble.
_MEMBER_KEYS = ("score_fusion", "shipped", "weights_dtype", "onnx", "ood")


@dataclass
class EnsembleReport:
    """What :func:`build_ensemble` made."""

    path: Path
    members: list[str]
    box_threshold: float
    deployed: DeployReport
    n_images: dict[str, int] = field(default_factory=dict)


def _check_members(runs: Sequence[RunDir]) -> list[ModelMeta]:
    if len(runs) < 2:
        raise RunDirError(f"an ensemble needs at least 2 member runs, got {len(runs)}")
    metas = [r.meta() for r in runs]
    first = metas[0]
    for run, meta in zip(runs, metas, strict=True):
        if meta.get("training_status") != "ok":
            raise RunDirError(f"{run.path}: training_status is {meta.get('training_status')!r},"
                              " not 'ok'; only finished, healthy runs are members")  # fmt: skip
        if meta.ensemble is not None:
            raise RunDirError(f"{run.path}: is an ensemble itself; give its member runs")
        for key in SHARED_FIELDS:
            if getattr(meta, key) != getattr(first, key):
                raise RunDirError(
                    f"{run.path}: {key} {getattr(meta, key)!r} differs from {runs[0].path}'s "
                    f"{getattr(first, key)!r}; members must share the recipe's model and input"
                )
    if not first.localize:
        raise RunDirError(
            f"{runs[0].path}: not a localising run (model.localize: false); an ensemble's "
            "heatmap is its members' mean learned map, and Grad-CAM of one member would not "
            "explain it"
        )
    for split in RUN_SPLITS:
        ids = [set(r.read_predictions_raw(split)[IMAGE_ID].astype(str)) for r in runs]
        for run, got in zip(runs[1:], ids[1:], strict=True):
            if got != ids[0]:
                raise RunDirError(
                    f"{run.path}: its {split} images differ from {runs[0].path}'s "
                    f"({len(got ^ ids[0])} not in both); members must share the split"
                )
    return metas


def _member_record(runs: Sequence[RunDir], metas: Sequence[ModelMeta], dest: RunDir) -> dict:
    dest.members_dir.mkdir()
    members = []
    for k, (run, meta) in enumerate(zip(runs, metas, strict=True)):
        rel = f"{dest.members_dir.name}/m{k}.safetensors"
        shutil.copy2(run.weights_path, dest.path / rel)
        sha = file_sha256(dest.path / rel)
        if sha != meta.weights_sha256:
            raise RunDirError(f"{run.weights_path}: SHA-256 differs from its model.json's; "
                              "restore the member or retrain it")  # fmt: skip
        fusion = meta.score_fusion.model_dump(mode="json") if meta.score_fusion else None
        members.append({"file": rel, "weights_sha256": sha, "from_run": run.name,
                        "score_fusion": fusion})  # fmt: skip
    return EnsembleRecord.model_validate({"members": members}).model_dump(mode="json")


def build_ensemble(
    members: Sequence[str | Path],
    out: str | Path,
    *,
    force: bool = False,
    batch_size: int = 32,
    progress: bool = True,
    ood: str | None = None,
) -> EnsembleReport:
    """The ensemble run of ``members`` at ``out`` (see the module); a failure leaves no
    half-built run behind. ``ood``: the out-of-scope detector to fit instead of the config's
    ``deploy.ood`` (the feature detector of k members reads k times the features: ``none``
    leaves the appearance rule as the ensemble's detector, as the shipped Lite0 does)."""
    runs = [RunDir.open(m) for m in members]
    metas = _check_members(runs)
    frames = {split: split_rows(runs[0], split) for split in RUN_SPLITS}
    dest = RunDir.create(out, force=force)
    try:
        ensemble = _member_record(runs, metas, dest)
        shutil.copy2(runs[0].config_path, dest.config_path)
        if ood is not None:
            _set_ood(dest, ood)
        first = runs[0]
        if metas[0].appearance is not None and first.appearance_stats_path.is_file():
            shutil.copy2(first.appearance_stats_path, dest.appearance_stats_path)
        raw = {k: v for k, v in first.raw_meta().items() if k not in _MEMBER_KEYS}
        raw.update(
            ensemble=ensemble,
            weights_sha256=EnsembleRecord.model_validate(ensemble).digest(),
            name=dest.name,
            seeds=[m.get("seed") for m in metas],
            ensemble_built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        dest.write_meta(raw)
        dest.reset_fits()
        box = _predict_splits(dest, frames, batch_size, progress)
        deployed = deploy_run(dest.path, dest.config().deploy)
        if deployed.failed:
            raise RunDirError(f"{dest.path}: deploy fits failed on the ensemble: {deployed.failed}")
    except BaseException:
        shutil.rmtree(dest.path, ignore_errors=True)
        raise
    counts = {s: len(dest.read_predictions_raw(s)) for s in RUN_SPLITS}
    return EnsembleReport(dest.path, [r.name for r in runs], box, deployed, counts)


def _set_ood(run: RunDir, method: str) -> None:
    """``deploy.ood: method`` in the run's config (validated as any config value)."""
    from bonefrac.config import build_config

    raw = run.config().model_dump(mode="json")
    raw["deploy"]["ood"] = method
    run.write_config(build_config(raw, "--ood"))


def _predict_splits(run: RunDir, frames: dict[str, Any], batch_size: int, progress: bool) -> float:
    """val and test predictions of the ensemble; its box threshold chosen on val's negatives
    (the 95th percentile of their map peaks, as training chooses one) before either table is
    written. Returns the box threshold."""
    predictor = Predictor.from_run(run)
    outs = {}
    for split in RUN_SPLITS:
        frame = frames[split].reset_index(drop=True)
        inputs = FileInputs(frame[PATH].astype(str).tolist(), predictor.image_size,
                            predictor.clahe, original_size=True)  # fmt: skip
        outs[split] = collect(predictor, inputs, batch_size=batch_size, progress=progress,
                              description=f"ensemble {split}")  # fmt: skip
        if outs[split].skipped:
            raise RunDirError(f"{run.path}: {len(outs[split].skipped)} {split} image(s) did not "
                              f"decode (first: {outs[split].skipped[0]})")  # fmt: skip
    val = predictions_table(frames["val"], outs["val"], predictor.meta)
    negatives = np.asarray(val[LABEL]) == 0
    box = choose_box_threshold(np.asarray(val[MAP_MAX], dtype=float)[negatives])
    meta = run.update_meta(
        box_threshold=box, box_threshold_criterion="95th percentile of the val negatives' map peaks"
    )
    for split in RUN_SPLITS:
        run.write_predictions(split, predictions_table(frames[split], outs[split], meta))
    return box
