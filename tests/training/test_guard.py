"""Training stability: the collapse guard, the backbone LR re-warm at unfreeze, exit status 3."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.metrics import point_metrics
from bonefrac.training.guard import CollapseGuard, epoch_collapsed
from bonefrac.training.module import rewarm_after, warmup_cosine
from tests.synthetic import FAST_OVERRIDES, make_manifest

runner = CliRunner()


@pytest.mark.parametrize(
    ("loss", "auc", "collapsed"),
    [
        (0.70, 0.50, True),
        (1e8, 0.52, True),
        (math.nan, 0.90, True),
        (math.inf, 0.90, True),
        (0.69, 0.50, False),  # below ln 2: still learning something
        (0.80, 0.60, False),  # ranks above chance
        (0.75, math.nan, True),  # no ranking at all (non-finite outputs)
    ],
)
def test_epoch_collapsed_needs_chance_ranking_and_a_constant_guess_loss(
    loss: float, auc: float, collapsed: bool
) -> None:
    assert epoch_collapsed(loss, auc) is collapsed


def test_non_finite_outputs_give_nan_roc_auc_instead_of_an_error() -> None:
    labels = np.array([0, 1, 0, 1])
    metrics = point_metrics(labels, np.array([0.1, np.nan, 0.2, 0.9]))
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])


def test_backbone_lr_rewarms_from_near_zero_at_unfreeze() -> None:
    base = warmup_cosine(total_steps=100, warmup_steps=5)
    backbone = rewarm_after(start_step=20, rewarm_steps=10, base=base)
    assert backbone(19) == base(19)
    assert backbone(20) == pytest.approx(base(20) / 11)
    ratios = [backbone(s) / base(s) for s in range(20, 30)]
    assert ratios == sorted(ratios) and ratios[-1] < 1.0
    assert backbone(30) == base(30) and backbone(60) == base(60)
    assert rewarm_after(20, 0, base)(20) == base(20)


def test_freeze_bn_keeps_every_batchnorm_on_running_statistics() -> None:
    from bonefrac.config import load_config
    from bonefrac.models.registry import build_model
    from bonefrac.training.module import FractureModule

    cfg = load_config(None, [*FAST_OVERRIDES, "train.freeze_bn=true"])
    model = build_model("simple_cnn", pretrained="none")
    module = FractureModule(model, cfg, (0.5,) * 3, (0.5,) * 3, None, steps_per_epoch=4)
    module.train()
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert module.model.head.training


def test_guard_reports_best_epoch_inside_the_frozen_warmup() -> None:
    guard = CollapseGuard(patience=2, monitor="val_roc_auc", frozen_epochs=1)
    guard.scores = {0: 0.8, 1: 0.5, 2: 0.79}
    meta = guard.meta()
    assert meta["training_status"] == "ok" and meta["best_epoch"] == 0
    assert meta["best_in_frozen_warmup"] is True
    loss_guard = CollapseGuard(monitor="val_loss", frozen_epochs=1)
    loss_guard.scores = {0: 0.6, 1: 0.4}
    assert loss_guard.meta()["best_epoch"] == 1
    assert loss_guard.meta()["best_in_frozen_warmup"] is False
    fresh = CollapseGuard()
    fresh.load_state_dict(guard.state_dict())
    assert fresh.scores == guard.scores


def _fake_trainer(epoch: int, **metrics: float) -> SimpleNamespace:
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    return SimpleNamespace(
        current_epoch=epoch,
        sanity_checking=False,
        world_size=1,
        should_stop=False,
        strategy=strategy,
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
    )


def test_guard_needs_patience_consecutive_epochs_and_stops_at_once_on_nan() -> None:
    guard = CollapseGuard(patience=2)
    for epoch, (loss, auc, stop) in enumerate(
        [(0.9, 0.5, False), (0.5, 0.5, False), (0.8, 0.52, False), (0.7, 0.5, True)]
    ):
        trainer = _fake_trainer(epoch, train_loss_epoch=loss, val_roc_auc=auc)
        guard.on_train_epoch_end(trainer, None)
        assert trainer.should_stop is stop, epoch
    assert guard.meta()["training_status"] == "collapsed" and "2 epochs" in guard.verdict.reason

    nan_guard = CollapseGuard(patience=5)
    trainer = _fake_trainer(0, train_loss_epoch=math.nan, val_roc_auc=0.9)
    nan_guard.on_train_epoch_end(trainer, None)
    assert trainer.should_stop and "nan" in nan_guard.verdict.reason

    batch_guard = CollapseGuard()
    trainer = _fake_trainer(1)
    batch_guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(math.inf)}, None, 3)
    assert trainer.should_stop and "step 4" in batch_guard.verdict.reason


def test_healthy_tiny_run_says_ok_and_times_its_epochs(tiny_run: Path) -> None:
    meta = json.loads((tiny_run / "model.json").read_text())
    assert meta["training_status"] == "ok" and meta["collapse_reason"] is None
    elapsed = pd.read_csv(tiny_run / "history.csv")["elapsed_s"]
    assert (elapsed > 0).all() and elapsed.is_monotonic_increasing


def test_lightning_messages_are_not_repeated_and_the_litlogger_tip_is_dropped() -> None:
    from bonefrac.cli import _main

    _main(verbose=False)
    assert logging.getLogger("lightning").propagate is False
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip = logging.LogRecord(rank_zero.name, logging.INFO, "", 0, "Tip: try litlogger", (), None)
    other = logging.LogRecord(rank_zero.name, logging.INFO, "", 0, "GPU available", (), None)
    assert not rank_zero.filter(tip) and rank_zero.filter(other)


def test_absurd_learning_rate_trips_the_guard_and_exits_3(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "d", {"train": 32, "val": 16, "test": 16}, size=64)
    out = tmp_path / "run"
    args = ["train", "--manifest", str(manifest), "--out", str(out), "--no-progress"]
    for item in [*FAST_OVERRIDES, "train.epochs=6", "train.lr=1e4"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "collapsed" in result.output and "train.lr" in result.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["training_status"] == "collapsed"
    assert "val ROC-AUC" in meta["collapse_reason"] or "loss" in meta["collapse_reason"]
    assert meta["epochs_trained"] < 6  # stopped early
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert meta["best_checkpoint"] == "best.ckpt"
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert (out / "predictions" / "test.csv").is_file()


def test_library_train_records_a_collapse_without_raising(tmp_path: Path) -> None:
    """Callers such as a tuning study get a scored run, not an exception."""
    from bonefrac.config import load_config
    from bonefrac.training.fit import train

    manifest = make_manifest(tmp_path / "d", {"train": 32, "val": 16, "test": 16}, size=64)
    overrides = [*FAST_OVERRIDES, "train.epochs=4", "train.lr=1e4"]
    run = train(load_config(None, overrides), manifest, tmp_path / "run", progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["training_status"] == "collapsed" and "train.lr" in meta["collapse_advice"]
