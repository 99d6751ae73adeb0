"""``bonefrac relocate``: a run copied to another machine is pointed at the local images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.errors import RunDirError
from bonefrac.rundir import RunDir


def _moved_copy(run: Path, manifest: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The run and its images as they would arrive on another machine."""
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    images = Path(shutil.copytree(manifest.parent / "images", tmp_path / "elsewhere" / "pics"))
    df = pd.read_csv(manifest)
    df["path"] = [str(images / Path(p).name) for p in df["path"]]
    moved = tmp_path / "elsewhere" / "manifest.csv"
    df.to_csv(moved, index=False)
    return copy, moved


def test_relocate_rewrites_paths_and_manifest_references(
    tiny_run: Path, synthetic_manifest: Path, tmp_path: Path
) -> None:
    run, moved = _moved_copy(tiny_run, synthetic_manifest, tmp_path)
    result = CliRunner().invoke(app, ["relocate", str(run), "--manifest", str(moved)])
    assert result.exit_code == 0, result.output
    for name in ("val", "test"):
        pred = pd.read_csv(run / "predictions" / f"{name}.csv")
        assert all(Path(p).parent == moved.parent / "pics" for p in pred["path"])
        assert all(Path(p).is_file() for p in pred["path"])
        before = pd.read_csv(tiny_run / "predictions" / f"{name}.csv")
        assert pred["prob"].tolist() == before["prob"].tolist()
    meta = json.loads((run / "model.json").read_text())
    assert meta["manifest"] == str(moved.resolve())
    assert meta["relocated"]["from"] == str(synthetic_manifest.resolve())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["manifest"] == str(moved.resolve())


def test_relocate_refuses_another_data_set_and_changes_nothing(
    tiny_run: Path, synthetic_manifest: Path, tmp_path: Path
) -> None:
    run, moved = _moved_copy(tiny_run, synthetic_manifest, tmp_path)
    before = (run / "predictions" / "test.csv").read_bytes()
    df = pd.read_csv(moved)
    df.loc[df["split"] == "test", "label"] = 1 - df.loc[df["split"] == "test", "label"]
    df.to_csv(moved, index=False)
    with pytest.raises(RunDirError, match="another label"):
        RunDir.open(run).relocate(moved)
    df.iloc[:-5].to_csv(moved, index=False)
    with pytest.raises(RunDirError, match="no single match"):
        RunDir.open(run).relocate(moved)
    assert (run / "predictions" / "test.csv").read_bytes() == before
    assert json.loads((run / "model.json").read_text()).get("relocated") is None
