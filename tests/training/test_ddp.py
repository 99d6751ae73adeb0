"""Multi-process (DDP, gloo on CPU) training: run directory, predictions, samplers, resume.

The end-to-end test runs ``bonefrac train`` as a subprocess because Lightning's launcher
re-executes the command line for rank 1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler

from bonefrac.config import load_config
from bonefrac.data.dataset import make_sampler
from bonefrac.training.datamodule import FractureDataModule, split_frames
from bonefrac.training.distributed import (
    gather_uneven,
    is_launcher_rank_zero,
    owns_run_dir,
)
from tests.cli_subprocess import bonefrac_command, cli_env, set_args
from tests.synthetic import make_manifest

DDP_SETS = [
    "model.name=simple_cnn",
    "model.pretrained=none",
    "data.image_size=32",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.augment=light",
    "data.sampler=weighted",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.monitor=val_roc_auc",
    "train.progress_bar=false",
    "train.accelerator=cpu",
    "train.strategy=ddp",
    "train.devices=2",
]
#: Odd split sizes, so a padding sampler would have to repeat an image to even out 2 ranks.
SIZES = {"train": 41, "val": 15, "test": 13}


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*bonefrac_command(), *args], env=cli_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _check_predictions(run: Path, manifest: Path) -> None:
    frame = pd.read_csv(manifest)
    for split in ("val", "test"):
        preds = pd.read_csv(run / "predictions" / f"{split}.csv")
        expected = sorted(frame.loc[frame["split"] == split, "image_id"])
        assert sorted(preds["image_id"]) == expected, split  # every image, exactly once
        assert preds["prob"].between(0, 1).all()


def test_ddp_train_force_and_resume_on_two_cpu_processes(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "data", dict(SIZES), size=32)
    run = tmp_path / "run"
    run.mkdir()
    (run / "stale.txt").write_text("from an older run", encoding="utf-8")
    # --force: rank 0 wipes and re-creates the run directory; the re-launched rank 1 must
    # neither refuse ("already exists") nor wipe what rank 0 has written meanwhile.
    args = ["train", "--manifest", str(manifest), "--out", str(run), "--force", "--no-progress"]
    result = _run([*args, *set_args(DDP_SETS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr  # two processes really ran
    assert result.stdout.count("run directory:") == 1  # only rank 0 reports

    assert not (run / "stale.txt").exists()
    for name in ("config.yaml", "model.json", "model.safetensors", "metrics.json",
                 "history.csv", "checkpoints/last.ckpt", "plots/training_curves.png"):  # fmt: skip
        assert (run / name).is_file(), name
    leftovers = [p.name for p in run.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert not leftovers  # atomic writes leave no temp files behind
    _check_predictions(run, manifest)

    # val metrics of the epoch cover both ranks' halves: they match the metrics rank 0
    # computes afterwards over the whole val split with the same weights
    hist = pd.read_csv(run / "history.csv")
    assert list(hist["epoch"]) == [0]
    metrics = json.loads((run / "metrics.json").read_text())["val"]
    for key in ("roc_auc", "pr_auc"):
        assert hist[f"val_{key}"].iloc[0] == pytest.approx(metrics[key]["value"], abs=0.02)

    # resume under DDP: continue the same run to a second epoch
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = _run(["train", "--resume", str(run), "--no-progress"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0, 1]
    _check_predictions(run, manifest)


@pytest.mark.parametrize("kind", ["none", "weighted", "oversample"])
def test_samplers_split_each_epoch_between_ranks_deterministically(kind: str) -> None:
    labels = np.array([1] * 7 + [0] * 14)
    single = make_sampler(kind, labels, seed=3)
    ranks = [make_sampler(kind, labels, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        assert isinstance(sampler, DistributedSampler)  # Lightning will not wrap it again
    for epoch in (0, 1):
        for sampler in [single, *ranks]:
            sampler.set_epoch(epoch)
        whole = list(single)
        parts = [list(s) for s in ranks]
        assert len(parts[0]) == len(parts[1]) == len(ranks[0]) == (len(whole) + 1) // 2
        # interleaving the ranks gives back the one-process epoch (plus one wrapped-around pad)
        merged = [i for pair in zip(*parts, strict=True) for i in pair]
        assert merged[: len(whole)] == whole
        assert merged[len(whole) :] == whole[: len(merged) - len(whole)]
        # same (seed, epoch) -> same draw on a fresh sampler
        again = make_sampler(kind, labels, seed=3, num_replicas=2, rank=1)
        again.set_epoch(epoch)
        assert list(again) == parts[1]
    ranks[0].set_epoch(0)
    first = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first  # a new epoch draws anew


def test_val_loaders_give_each_image_to_exactly_one_rank(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, dict(SIZES), size=16)
    cfg = load_config(None, ["data.image_size=16", "data.cache=false", "data.eval_batch_size=4"])
    frames = split_frames(pd.read_csv(manifest), str(manifest))
    seen: list[int] = []
    train_lengths = []
    for rank in (0, 1):
        dm = FractureDataModule(frames, cfg.data, seed=0, progress=False)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        seen += list(dm.val_dataloader().sampler)
        train_lengths.append(len(dm.train_dataloader()))
    assert sorted(seen) == list(range(SIZES["val"]))
    assert train_lengths[0] == train_lengths[1]  # every rank takes the same number of steps


def test_gather_uneven_drops_the_padding() -> None:
    parts = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])]

    class FakeModule:  # rank 1 of 2; all_gather stacks what each rank passes in
        _trainer = trainer = SimpleNamespace(world_size=2)
        calls = 0

        def all_gather(self, t: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 1:  # sizes
                return torch.stack([torch.tensor([3]), t])
            other = torch.zeros_like(t)
            other[:3] = parts[0]
            return torch.stack([other, t])

    gathered = gather_uneven(FakeModule(), parts[1])
    assert gathered.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_rank_zero_is_read_from_the_launchers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert is_launcher_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_launcher_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's re-launched process
    assert not is_launcher_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # local rank 0 on the second node
    assert not is_launcher_rank_zero()
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert not is_launcher_rank_zero()
    # a one-device run is one process, whatever rank its environment names
    assert owns_run_dir(1) and owns_run_dir([0]) and owns_run_dir("1")
    assert not owns_run_dir(2) and not owns_run_dir("auto") and not owns_run_dir(1, num_nodes=2)
