"""Training end to end on synthetic data: run directory contents, CLI errors, resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.config import load_config
from bonefrac.training.fit import resume, train
from tests.synthetic import FAST_OVERRIDES, make_manifest

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_tiny_run_learns_and_writes_every_artefact(tiny_run: Path) -> None:
    for name in [
        "config.yaml",
        "model.safetensors",
        "model.json",
        "metrics.json",
        "history.csv",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "predictions/val.csv",
        "predictions/test.csv",
        "plots/training_curves.png",
    ]:
        assert (tiny_run / name).is_file(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["val"]["roc_auc"]["value"] > 0.9
    assert metrics["test"]["roc_auc"]["value"] > 0.9
    meta = json.loads((tiny_run / "model.json").read_text())
    assert meta["architecture"] == "simple_cnn"
    assert meta["image_size"] == 64 and meta["threshold"] == 0.5
    assert meta["mean"] == [0.5, 0.5, 0.5]
    preds = pd.read_csv(tiny_run / "predictions" / "test.csv")
    assert {"image_id", "label", "prob", "logit", "path"} <= set(preds.columns)
    assert len(preds) == 30 and preds["image_id"].is_unique
    hist = pd.read_csv(tiny_run / "history.csv")
    assert list(hist["epoch"]) == list(range(6))
    assert load_config(tiny_run / "config.yaml").model.name == "simple_cnn"


def _sets(extra: list[str] = ()) -> list[str]:
    args: list[str] = []
    for item in [*FAST_OVERRIDES, *extra]:
        args += ["--set", item]
    return args


def test_cli_trains_with_ready_config_and_set_overrides(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "d", {"train": 24, "val": 12, "test": 12}, size=48)
    out = tmp_path / "run"
    args = ["train", "--config", str(REPO / "configs" / "lite0.yaml"), "--manifest", str(manifest)]
    args += ["--out", str(out), "--no-progress", *_sets(["train.epochs=1"])]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "model.json").is_file()
    assert json.loads((out / "model.json").read_text())["architecture"] == "simple_cnn"
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model.name=resnet5O"], "valid names"),
        (["train.epoks=3"], "train.epoks"),
        (["data.sampler=sometimes"], "data.sampler"),
    ],
)
def test_cli_bad_config_is_one_clear_error_and_writes_nothing(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    manifest = make_manifest(tmp_path / "d", {"train": 8, "val": 4, "test": 4}, size=32)
    out = tmp_path / "run"
    args = ["train", "--manifest", str(manifest), "--out", str(out), *_sets(extra)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_bad_manifests_are_rejected_before_anything_is_written(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "d", {"train": 8, "val": 4, "test": 4}, size=32)
    df = pd.read_csv(manifest)
    no_val = tmp_path / "no_val.csv"
    df[df["split"] != "val"].to_csv(no_val, index=False)
    one_class = tmp_path / "one_class.csv"
    df[~((df["split"] == "train") & (df["label"] == 1))].to_csv(one_class, index=False)
    for bad, message in [(no_val, "split 'val'"), (one_class, "no fractured")]:
        out = tmp_path / f"run_{bad.stem}"
        result = runner.invoke(app, ["train", "--manifest", str(bad), "--out", str(out), *_sets()])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not out.exists()


class _CrashAfterFirstEpoch(L.Callback):
    """Dies in the middle of the second epoch, after last.ckpt of the first was written."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:  # noqa: ANN001
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_ends_with_the_same_weights(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "d", {"train": 32, "val": 12, "test": 12}, size=32)
    overrides = [
        *FAST_OVERRIDES,
        "train.epochs=2",
        "train.deterministic=true",
        "data.image_size=32",
    ]
    overrides += ["data.augment=medium", "data.sampler=weighted", "train.monitor=val_roc_auc"]
    cfg = load_config(None, overrides)
    straight = train(cfg, manifest, tmp_path / "straight", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            cfg, manifest, tmp_path / "crashed", progress=False, callbacks=[_CrashAfterFirstEpoch()]
        )
    assert (tmp_path / "crashed" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "crashed" / "model.safetensors").exists()
    resumed = resume(tmp_path / "crashed", progress=False)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist = pd.read_csv(resumed / "history.csv")
    assert list(hist["epoch"]) == [0, 1]


def _two_source_manifest(tmp_path: Path) -> Path:
    manifest = make_manifest(tmp_path / "data", {"train": 40, "val": 20, "test": 20}, size=32)
    df = pd.read_csv(manifest)
    df["source"] = ["alpha" if i % 2 else "beta" for i in range(len(df))]
    df.to_csv(manifest, index=False)
    return manifest


def test_data_sources_limit_train_and_val_but_test_keeps_every_source(tmp_path: Path) -> None:
    from bonefrac.data.schema import read_manifest
    from bonefrac.errors import DataError
    from bonefrac.training.datamodule import split_frames

    manifest = _two_source_manifest(tmp_path)
    df = read_manifest(manifest)
    frames = split_frames(df, "m.csv", sources=["alpha"])
    assert set(frames["train"]["source"]) == {"alpha"} and len(frames["train"]) == 20
    assert set(frames["val"]["source"]) == {"alpha"}
    assert set(frames["test"]["source"]) == {"alpha", "beta"} and len(frames["test"]) == 20
    with pytest.raises(DataError, match="gamma"):
        split_frames(df, "m.csv", sources=["gamma"])
    with pytest.raises(DataError, match="no 'source' column"):
        split_frames(df.drop(columns="source"), "m.csv", sources=["alpha"])

    cfg = load_config(None, [*FAST_OVERRIDES, "data.sources=[alpha]", "train.epochs=1"])
    run = train(cfg, manifest, tmp_path / "run", progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["split_sizes"] == {"train": 20, "val": 10, "test": 20}
    test = pd.read_csv(run / "predictions" / "test.csv")
    assert set(test["source"]) == {"alpha", "beta"}


def test_empty_sources_list_is_a_config_error() -> None:
    from bonefrac.errors import ConfigError

    with pytest.raises(ConfigError, match="data.sources"):
        load_config(None, ["data.sources=[]"])
