"""A model, metadata or output that cannot be trusted is an error, never a decision."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.errors import ModelOutputError, RunDirError
from bonefrac.fileio import file_sha256
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir

IMAGE = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)


@pytest.fixture()
def run_copy(tiny_run: Path, tmp_path: Path) -> RunDir:
    shutil.copytree(tiny_run, tmp_path / "run")
    return RunDir.open(tmp_path / "run")


def _one_line_exit_2(args: list[str], match: str) -> str:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert match in r.output and "Traceback" not in r.output
    return r.output


def test_training_records_the_weights_hash(run_copy):
    assert run_copy.meta().weights_sha256 == file_sha256(run_copy.weights_path)


def test_bit_flipped_weights_are_refused_everywhere(run_copy, tmp_path):
    data = bytearray(run_copy.weights_path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(b ^ 0xFF for b in data[mid : mid + 4096])
    run_copy.weights_path.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="SHA-256 differs"):
        Predictor.from_run(run_copy.path)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(IMAGE).save(img)
    _one_line_exit_2(
        ["predict", str(run_copy.path), str(img), "--out", str(tmp_path / "p.csv")],
        "SHA-256 differs",
    )
    _one_line_exit_2(["explain", str(run_copy.path), "--n", "2"], "SHA-256 differs")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"std": [0, 0, 0]}, "std"),
        ({"threshold": 2.0}, "threshold"),
        ({"threshold": "abc"}, "threshold"),
        ({"architecture": "no_such_net"}, "no_such_net"),
    ],
)
def test_bad_metadata_stops_predict_with_one_line(run_copy, tmp_path, change, match):
    meta = run_copy.raw_meta()
    meta.update(change)
    from bonefrac.fileio import write_json

    write_json(run_copy.meta_path, meta)  # bypass validation, as a hand edit would
    with pytest.raises(RunDirError, match=match):
        Predictor.from_run(run_copy.path)
    from PIL import Image

    Image.fromarray(IMAGE).save(tmp_path / "x.png")
    out = str(tmp_path / "p.csv")
    _one_line_exit_2(["predict", str(run_copy.path), str(tmp_path / "x.png"), "--out", out], match)
    if change.get("architecture") is None:  # scoring stored predictions needs valid settings too
        _one_line_exit_2(["evaluate", str(run_copy.path), "--n-boot", "0"], match)


def test_garbage_and_truncated_weights_are_refused(run_copy):
    # the hash recorded for the broken file, so only its contents can refuse it
    run_copy.weights_path.write_bytes(run_copy.weights_path.read_bytes()[:1000])
    run_copy.update_meta(weights_sha256=file_sha256(run_copy.weights_path))
    with pytest.raises(RunDirError, match="not a readable safetensors"):
        Predictor.from_run(run_copy.path)
    run_copy.weights_path.write_bytes(b"\x00" * 64)
    run_copy.update_meta(weights_sha256=file_sha256(run_copy.weights_path))
    with pytest.raises(RunDirError, match="not a readable safetensors"):
        Predictor.from_run(run_copy.path)


def test_weights_without_a_recorded_hash_are_refused(run_copy):
    run_copy.update_meta(weights_sha256=None)
    with pytest.raises(RunDirError, match="records no weights_sha256.*retrain"):
        Predictor.from_run(run_copy.path)


@pytest.mark.parametrize(
    ("version", "shown", "match"),
    [
        (None, "missing", "trained with an older bonefrac"),
        (0, "0", "trained with an older bonefrac"),
        ("1", "'1'", "trained with an older bonefrac"),
        (99, "99", "written by a newer bonefrac"),
    ],
)
def test_another_format_version_is_refused_with_one_line(run_copy, tmp_path, version, shown, match):
    from PIL import Image

    from bonefrac import load
    from bonefrac.fileio import write_json
    from bonefrac.rundir import FORMAT_VERSION

    meta = run_copy.raw_meta()
    if version is None:
        del meta["format_version"]
    else:
        meta["format_version"] = version
    write_json(run_copy.meta_path, meta)  # as a run from another bonefrac would be
    line = (
        f"{run_copy.meta_path}: {match} (model.json format_version {shown}, this version reads "
        f"{FORMAT_VERSION}); "
    )
    for refused in (Predictor.from_run, load):
        with pytest.raises(RunDirError) as err:
            refused(run_copy.path)
        assert str(err.value).startswith(line) and "retrain it with 'bonefrac train'" in str(
            err.value
        )
    Image.fromarray(IMAGE).save(tmp_path / "x.png")
    out = str(tmp_path / "p.csv")
    output = _one_line_exit_2(
        ["predict", str(run_copy.path), str(tmp_path / "x.png"), "--out", out], match
    )
    assert "retrain it with 'bonefrac train'" in output and not (tmp_path / "p.csv").exists()


def test_model_with_non_finite_output_refuses_to_start(run_copy):
    from safetensors.torch import load_file, save_file

    state = load_file(str(run_copy.weights_path))
    state = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in state.items()
    }
    save_file(state, str(run_copy.weights_path))
    run_copy.update_meta(weights_sha256=file_sha256(run_copy.weights_path))
    with pytest.raises(ModelOutputError, match="self-check"):
        Predictor.from_run(run_copy.path)


def test_non_finite_logit_is_an_error_not_a_decision(run_copy):
    meta = Predictor.from_run(run_copy.path).meta
    pred = Predictor.from_model(_Constant(float("nan")), meta)
    with pytest.raises(ModelOutputError, match="not finite"):
        pred.predict(IMAGE)
    pred = Predictor.from_model(_Constant(float("inf")), meta)
    with pytest.raises(ModelOutputError):
        pred.predict(IMAGE)


class _Constant(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), self.value)


def test_corrupt_onnx_is_refused(exported_run, tmp_path):
    shutil.copytree(exported_run, tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    run.onnx_path.write_bytes(run.onnx_path.read_bytes()[:500])
    with pytest.raises(RunDirError, match="SHA-256 differs"):
        Predictor.from_run(run.path, backend="onnx")
    record = run.raw_meta()["onnx"]
    record.pop("sha256")
    run.update_meta(onnx=record)
    with pytest.raises(RunDirError, match="ONNX Runtime cannot load it"):
        Predictor.from_run(run.path, backend="onnx")


def test_evaluate_manifest_skips_unreadable_images(run_copy, synthetic_manifest, tmp_path):
    df = pd.read_csv(synthetic_manifest)
    rows = df[df["split"] == "test"][["path", "label"]].reset_index(drop=True)
    base = synthetic_manifest.parent
    rows["path"] = [str(p if Path(p).is_absolute() else base / p) for p in rows["path"]]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    plain = pd.concat([rows, pd.DataFrame({"path": [str(bad)], "label": [1]})])
    csv = tmp_path / "hospital.csv"
    plain.to_csv(csv, index=False)
    r = CliRunner().invoke(
        app,
        ["evaluate", str(run_copy.path), "--manifest", str(csv), "--name", "hosp", "--n-boot", "0"],
    )
    assert r.exit_code == 0, r.output
    assert "skipped 1 image" in r.output and "broken.png" in r.output
    pred = run_copy.predictions("hosp")
    assert len(pred) == len(rows)
    assert run_copy.metrics()["hosp"]["skipped_images"][0]["path"] == str(bad)


def test_messages_are_printed_literally(tmp_path):
    weird = tmp_path / "zero[red]x[/]"
    out = _one_line_exit_2(["evaluate", str(weird)], "zero[red]x[/]")
    assert out.startswith("error: ")


def test_unwritable_output_is_one_line(tmp_path):
    from tests.evaluation.conftest import make_run

    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_exit_2(
        ["compare", str(a), str(b), "--out", str(blocker / "sub"), "--n-boot", "10"],
        str(blocker),
    )
