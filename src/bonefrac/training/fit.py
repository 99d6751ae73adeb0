"""``train`` and ``resume``: config + manifest -> a complete run directory."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch

from bonefrac.config import ExperimentConfig, config_to_yaml, load_config
from bonefrac.data.schema import read_manifest
from bonefrac.errors import RunDirError
from bonefrac.fileio import atomic_open, file_sha1, write_csv, write_json
from bonefrac.models.registry import build_model, resolve_spec
from bonefrac.models.runio import MODEL_JSON, library_versions, save_weights
from bonefrac.training.datamodule import FractureDataModule, split_frames
from bonefrac.training.guard import CollapseGuard, outputs_of
from bonefrac.training.history import HistoryCallback, plot_training_curves
from bonefrac.training.losses import resolve_pos_weight
from bonefrac.training.module import FractureModule
from bonefrac.training.predict import predict_logits, predictions_frame

log = logging.getLogger(__name__)

# Expected with frozen parts (their BatchNorm stays in eval mode) and harmless: keep logs clean.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")

CLASS_NAMES = ["not_fractured", "fractured"]


def resolve_precision(cfg: ExperimentConfig) -> str:
    """Config precision, or a sensible default: bf16/16 mixed on CUDA, fp32 on CPU."""
    if cfg.train.precision:
        return cfg.train.precision
    wants_gpu = cfg.train.accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


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
    out = Path(out)
    cfg = cfg.model_copy(deep=True)
    cfg.data.manifest = str(manifest)
    frame = read_manifest(manifest, require_split=True)
    frames = split_frames(
        frame, str(manifest), cfg.data.limit_per_split, cfg.seed, cfg.data.sources
    )
    L.seed_everything(cfg.seed, verbose=False)
    model = _build(cfg)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise RunDirError(f"{out}: already exists and is not empty; pass --force to overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "config.yaml", "w", encoding="utf-8") as fh:
        fh.write(config_to_yaml(cfg))
    return _fit(
        cfg, frames, model, out, manifest, resume=False, progress=progress, callbacks=callbacks
    )


def resume(
    run_dir: str | Path, *, progress: bool = True, callbacks: list[L.Callback] | None = None
) -> Path:
    """Continue ``run_dir`` from ``checkpoints/last.ckpt`` to the configured final epoch."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: no config.yaml; not a bonefrac run directory")
    if not ckpt.is_file():
        raise RunDirError(f"{ckpt}: not found; nothing to resume (train again instead)")
    cfg = load_config(run_dir / "config.yaml")
    manifest = Path(cfg.data.manifest or "")
    frame = read_manifest(manifest, require_split=True)
    frames = split_frames(
        frame, str(manifest), cfg.data.limit_per_split, cfg.seed, cfg.data.sources
    )
    L.seed_everything(cfg.seed, verbose=False)
    model = _build(cfg)
    return _fit(
        cfg, frames, model, run_dir, manifest, resume=True, progress=progress, callbacks=callbacks
    )


def _build(cfg: ExperimentConfig):  # noqa: ANN202
    initial_freeze = "backbone" if cfg.train.warmup_frozen_epochs else cfg.model.freeze
    model = build_model(
        cfg.model.name,
        pretrained=cfg.model.pretrained,
        freeze=initial_freeze,
        weights_path=cfg.model.weights_path,
        dropout=cfg.model.dropout,
    )
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _fit(
    cfg: ExperimentConfig,
    frames: dict,
    model: Any,
    out: Path,
    manifest: Path,
    *,
    resume: bool,
    progress: bool,
    callbacks: list[L.Callback] | None,
) -> Path:
    spec = resolve_spec(cfg.model.name)
    start = time.perf_counter()
    dm = FractureDataModule(frames, cfg.data, cfg.seed, progress=progress)
    dm.prepare_data()
    steps = dm.steps_per_epoch()
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    pos_weight = resolve_pos_weight(cfg.train.pos_weight, frames["train"]["label"].to_numpy())
    module = FractureModule(model, cfg, spec.mean, spec.std, pos_weight, steps)
    ckpt_dir = out / "checkpoints"
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
    all_callbacks: list[L.Callback] = [best_cb, HistoryCallback(out / "history.csv"), guard]
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
        default_root_dir=str(out),
    )
    ckpt_path = str(ckpt_dir / "last.ckpt") if resume else None
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.is_global_zero:
        return out
    if trainer.interrupted:
        log.warning("training interrupted; resume with: bonefrac train --resume %s", out)
        return out
    best_path = best_cb.best_model_path or str(ckpt_dir / "last.ckpt")
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    model = module.model.cpu().eval()
    wall = time.perf_counter() - start
    with outputs_of(guard, out):  # a collapse is recorded in model.json
        _write_outputs(
            cfg, dm, model, spec, out, manifest, best_cb, trainer, wall, progress, guard.meta()
        )
    return out


def _write_outputs(
    cfg: ExperimentConfig,
    dm: FractureDataModule,
    model: Any,
    spec: Any,
    out: Path,
    manifest: Path,
    best_cb: Any,
    trainer: L.Trainer,
    wall_seconds: float,
    progress: bool,
    status: dict[str, Any],
) -> None:
    from bonefrac.evaluation.metrics import compute_metrics

    save_weights(model, out)
    device = trainer.strategy.root_device  # predict where training ran
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        ds = dm.datasets[split]
        logits = predict_logits(
            model,
            ds,
            spec.mean,
            spec.std,
            cfg.data.eval_batch_size,
            device=device,
            progress=progress,
            description=f"predicting {split}",
        )
        preds = predictions_frame(ds.frame, logits)
        write_csv(out / "predictions" / f"{split}.csv", preds)
        metrics[split] = compute_metrics(preds["label"].to_numpy(), preds["prob"].to_numpy(), 0.5)
    model.cpu()
    write_json(out / "metrics.json", metrics)
    plot_training_curves(out / "history.csv", out / "plots" / "training_curves.png")
    score = best_cb.best_model_score
    meta = {
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
    write_json(out / MODEL_JSON, meta)
