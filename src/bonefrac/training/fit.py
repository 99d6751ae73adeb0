"""``train`` and ``resume``: config + manifest -> a complete run directory."""

from __future__ import annotations

import logging
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch

from bonefrac.config import ExperimentConfig
from bonefrac.data.schema import read_manifest
from bonefrac.data.transforms import min_box_px
from bonefrac.fileio import file_sha1
from bonefrac.inference.loop import CachedInputs, Outputs, collect
from bonefrac.inference.predictor import Predictor
from bonefrac.inference.run_predictions import predictions_table
from bonefrac.models.detector import map_peak_logits
from bonefrac.models.registry import build_model, resolve_spec
from bonefrac.models.runio import save_weights
from bonefrac.precision import resolve_precision
from bonefrac.rundir import (
    CLASS_NAMES,
    FORMAT_VERSION,
    RUN_SPLITS,
    ModelMeta,
    RunDir,
    library_versions,
    metrics_entry,
)
from bonefrac.rundir.predictions import LABEL, PROB
from bonefrac.training.datamodule import FractureDataModule, split_frames
from bonefrac.training.distributed import owns_run_dir
from bonefrac.training.guard import CollapseGuard, outputs_of
from bonefrac.training.history import HistoryCallback, plot_training_curves
from bonefrac.training.losses import resolve_pos_weight
from bonefrac.training.module import FractureModule

log = logging.getLogger(__name__)

# Expected with frozen parts (their BatchNorm stays in eval mode) and harmless: keep logs clean.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")


def train(
    cfg: ExperimentConfig,
    manifest: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
) -> Path:
    """Train ``cfg`` on ``manifest`` and write a run directory at ``out``.

    Everything that can be checked (config, manifest, splits, model name, weights) is checked
    before ``out`` is created, so bad input leaves nothing behind.
    """
    manifest = Path(manifest).resolve()
    cfg = cfg.model_copy(deep=True)
    cfg.data.manifest = str(manifest)
    frame = read_manifest(manifest, require_split=True)
    frames = split_frames(
        frame, str(manifest), cfg.data.limit_per_split, cfg.seed, cfg.data.sources
    )
    L.seed_everything(cfg.seed, verbose=False)
    model = _build(cfg)
    if not owns_run_dir(cfg.train.devices, cfg.train.num_nodes):  # a DDP rank other than 0
        # Lightning's launcher re-runs this command for each rank: only rank 0 creates the
        # run directory (and, with --force, wipes it), the others train beside it.
        run = RunDir(Path(out))
    else:
        run = RunDir.create(out, force=force)
        run.write_config(cfg)
    return _fit(
        cfg, frames, model, run, manifest, resume=False, progress=progress, callbacks=callbacks
    )


def resume(
    run_dir: str | Path, *, progress: bool = True, callbacks: list[L.Callback] | None = None
) -> Path:
    """Continue ``run_dir`` from ``checkpoints/last.ckpt`` to the configured final epoch."""
    run = RunDir.for_resume(run_dir)
    cfg = run.config()
    manifest = Path(cfg.data.manifest or "")
    frame = read_manifest(manifest, require_split=True)
    frames = split_frames(
        frame, str(manifest), cfg.data.limit_per_split, cfg.seed, cfg.data.sources
    )
    L.seed_everything(cfg.seed, verbose=False)
    model = _build(cfg)
    return _fit(
        cfg, frames, model, run, manifest, resume=True, progress=progress, callbacks=callbacks
    )


def _build(cfg: ExperimentConfig):  # noqa: ANN202
    initial_freeze = "backbone" if cfg.train.warmup_frozen_epochs else cfg.model.freeze
    model = build_model(
        cfg.model.name,
        pretrained=cfg.model.pretrained,
        freeze=initial_freeze,
        weights_path=cfg.model.weights_path,
        dropout=cfg.model.dropout,
        localize=cfg.model.localize,
        loc_levels=cfg.model.loc_levels,
    )
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _fit(
    cfg: ExperimentConfig,
    frames: dict,
    model: Any,
    run: RunDir,
    manifest: Path,
    *,
    resume: bool,
    progress: bool,
    callbacks: list[L.Callback] | None,
) -> Path:
    spec = resolve_spec(cfg.model.name)
    progress = progress and cfg.train.progress_bar
    start = time.perf_counter()
    dm = FractureDataModule(
        frames,
        cfg.data,
        cfg.seed,
        progress=progress,
        boxes=cfg.model.localize,
        min_box=min_box_px(cfg.model.loc_levels[0]),
    )
    dm.prepare_data()
    steps = dm.steps_per_epoch()
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    pos_weight = resolve_pos_weight(cfg.train.pos_weight, frames["train"][LABEL].to_numpy())
    module = FractureModule(model, cfg, spec.mean, spec.std, pos_weight, steps)
    ckpt_dir = run.checkpoints_dir
    mode = "min" if cfg.train.monitor == "val_loss" else "max"
    best_cb = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=cfg.train.monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    guard = CollapseGuard.from_config(cfg.train)
    all_callbacks: list[L.Callback] = [best_cb, HistoryCallback(run.history_path), guard]
    if cfg.train.early_stopping_patience:
        all_callbacks.append(
            L.pytorch.callbacks.EarlyStopping(
                monitor=cfg.train.monitor, mode=mode, patience=cfg.train.early_stopping_patience
            )
        )
    if progress:
        all_callbacks.append(L.pytorch.callbacks.RichProgressBar(leave=True))
    all_callbacks += callbacks or []
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        strategy=cfg.train.strategy,
        num_nodes=cfg.train.num_nodes,
        precision=resolve_precision(cfg),
        gradient_clip_val=cfg.train.grad_clip,
        deterministic=cfg.train.deterministic,
        limit_train_batches=cfg.train.max_steps_per_epoch,
        log_every_n_steps=min(cfg.train.log_every_n_steps, max(1, steps)),
        callbacks=all_callbacks,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run.path),
    )
    ckpt_path = str(run.last_checkpoint) if resume else None
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.is_global_zero:
        return run.path
    if trainer.interrupted:
        log.warning("training interrupted; resume with: bonefrac train --resume %s", run.path)
        return run.path
    best_path = best_cb.best_model_path or str(run.last_checkpoint)
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    model = module.model.cpu().eval()
    wall = time.perf_counter() - start
    with outputs_of(guard, run.path):  # a collapse is recorded in model.json
        _write_outputs(
            cfg, dm, model, spec, run, manifest, best_cb, trainer, wall, progress, guard.meta()
        )
    return run.path


def _box_threshold(labels: Any, val: Outputs, meta: ModelMeta) -> dict[str, Any]:
    """model.json's ``box_threshold`` from the val negatives' map peaks."""
    from bonefrac.inference.box_decoding import choose_box_threshold, map_peaks
    from bonefrac.maps.learned import detector_maps

    neg = [i for i, label in enumerate(labels) if label == 0]
    peaks = [
        map_peaks(
            detector_maps(val.head[i : i + 1], meta.image_size, meta.loc_levels),
            [val.decoded_sizes[i]],
        )[0]
        for i in neg
    ]
    return {
        "box_threshold": choose_box_threshold(peaks),
        "box_threshold_criterion": "95th percentile of the val negatives' map peaks",
    }


#: Fewest val images of each class for fitting the score fusion.
MIN_FUSION_CLASS = 10


def _score_fusion(val: tuple[Any, Any], labels: Any) -> dict[str, Any] | None:
    """Logistic regression of the val labels on (class logit, map's highest logit): the
    weights of a localising model's image logit. None when val is too small to fit them, or
    when the fused score ranks val worse than the class logit alone (then it is not used)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    logits, maps = val
    y = np.asarray(labels, dtype=int)
    x = np.c_[np.asarray(logits, dtype=float), map_peak_logits(maps)]
    if min(int(y.sum()), int(len(y) - y.sum())) < MIN_FUSION_CLASS or not np.isfinite(x).all():
        return None
    fit = LogisticRegression(C=1.0).fit(x, y)
    (a, b), c = fit.coef_[0], fit.intercept_[0]
    fused_auc = roc_auc_score(y, x @ np.array([a, b]) + c)
    logit_auc = roc_auc_score(y, x[:, 0])
    if fused_auc < logit_auc:
        log.info(
            "score fusion not used: val ROC-AUC %.4f < %.4f (logit alone)", fused_auc, logit_auc
        )
        return None
    return {
        "logit_weight": float(a),
        "map_weight": float(b),
        "bias": float(c),
        "fitted_on": "val",
        "val_roc_auc": round(float(fused_auc), 6),
        "val_roc_auc_logit_alone": round(float(logit_auc), 6),
    }


def _fused(fusion: tuple[float, float, float], logits: Any, maps: Any) -> Any:
    """Class logits and head outputs of a split -> the fused image logits (as the model's own
    forward computes them, in float32)."""
    import numpy as np

    a, b, c = fusion
    peaks = map_peak_logits(maps)
    return (a * np.asarray(logits, dtype=np.float32) + b * peaks + c).astype(np.float32)


def _write_outputs(
    cfg: ExperimentConfig,
    dm: FractureDataModule,
    model: Any,
    spec: Any,
    run: RunDir,
    manifest: Path,
    best_cb: Any,
    trainer: L.Trainer,
    wall_seconds: float,
    progress: bool,
    status: dict[str, Any],
) -> None:
    weights_sha256 = save_weights(model, run)
    score = best_cb.best_model_score
    raw_meta = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "architecture": cfg.model.name,
        "library_arch": spec.arch,
        "image_size": cfg.data.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "class_names": CLASS_NAMES,
        "positive_class": 1,
        "threshold": 0.5,
        "threshold_criterion": "default",
        "temperature": 1.0,
        "preprocess": {"letterbox": True, "jpeg_draft": True, "clahe": cfg.data.clahe},
        "input": {"channels": 3, "layout": "NCHW", "dtype": "float32"},
        "pretrained": cfg.model.pretrained,
        "weights_path": cfg.model.weights_path,
        "weights_sha256": weights_sha256,
        "freeze": cfg.model.freeze,
        "dropout": cfg.model.dropout,
        "seed": cfg.seed,
        "monitor": cfg.train.monitor,
        "best_score": float(score) if score is not None else None,
        "best_checkpoint": Path(best_cb.best_model_path).name if best_cb.best_model_path else None,
        "epochs_trained": int(trainer.current_epoch),
        **status,
        "train_seconds": round(wall_seconds, 1),
        "manifest": str(manifest),
        "manifest_sha1": file_sha1(manifest),
        "split_sizes": {k: int(len(v)) for k, v in dm.datasets.items()},
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if cfg.model.localize:
        raw_meta["localize"] = True
        raw_meta["loc_levels"] = list(cfg.model.loc_levels)
    meta = ModelMeta.parse(raw_meta, run.meta_path)
    # predict val/test where training ran, through the same door as evaluate/predict/serve
    predictor = Predictor.from_model(model, meta, device=trainer.strategy.root_device)
    outputs = {
        split: collect(
            predictor,
            CachedInputs(dm.datasets[split]),
            batch_size=cfg.data.eval_batch_size,
            progress=progress,
            description=f"predicting {split}",
        )
        for split in RUN_SPLITS
    }
    if cfg.model.localize:  # the box threshold and the score fusion come from val only
        val_labels = dm.datasets["val"].labels
        raw_meta.update(_box_threshold(val_labels, outputs["val"], meta))
        if cfg.model.fuse_map_score:
            fusion = _score_fusion((outputs["val"].logits, outputs["val"].head), val_labels)
            if fusion is not None:
                raw_meta["score_fusion"] = fusion
        meta = ModelMeta.parse(raw_meta, run.meta_path)
        if meta.score_fusion is not None:  # the model scores with it from now on
            model.score_fusion = meta.score_fusion.as_tuple()
            for out in outputs.values():
                out.logits = _fused(model.score_fusion, out.logits, out.head)
    for split in RUN_SPLITS:
        preds = predictions_table(dm.datasets[split].frame, outputs[split], meta)
        run.write_predictions(split, preds)
        run.merge_metrics(
            split, metrics_entry(preds[LABEL].to_numpy(), preds[PROB].to_numpy(), meta)
        )
    model.cpu()
    plot_training_curves(run.history_path, run.plot_path("training_curves"))
    run.write_meta(raw_meta)
