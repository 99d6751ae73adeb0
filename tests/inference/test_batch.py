"""Batch prediction (``bonefrac predict``): lossless paths, FIFOs, resume safety, exit statuses,
non-finite model output, literal file names in messages, and several processes."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import bonefrac
from bonefrac.batch_predict.job import predict_to_csv
from bonefrac.batch_predict.sidecar import sidecar_path
from bonefrac.batch_predict.stream import part_file, row_path
from bonefrac.cli import app
from bonefrac.config import PredictConfig
from bonefrac.csvpaths import decode_path, encode_path
from bonefrac.errors import ModelOutputError
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir
from bonefrac.rundir.predictions import PREDICT_COLUMNS

SRC = Path(bonefrac.__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _images(synthetic_manifest: Path, n: int, split: str = "val") -> list[Path]:
    return sorted((synthetic_manifest.parent / "images").glob(f"{split}_*.png"))[:n]


def _predict(*args: object) -> object:
    return CliRunner().invoke(app, ["predict", *map(str, args), "--no-progress", "--workers", "0"])


@pytest.mark.parametrize(
    "name",
    ["plain.png", "sp ace.png", "pct%41.png", "new\nline.png", "cr\rx.png", "é\u2028.png"],
)
def test_path_encoding_round_trips(tmp_path, name):
    path = tmp_path / name
    text = encode_path(path)
    assert "\n" not in text and "\r" not in text and "\u2028" not in text
    assert decode_path(text) == path
    if name in ("plain.png", "sp ace.png"):
        assert text == str(path)  # ordinary paths read as themselves


def test_non_utf8_and_newline_names_resume_without_duplicates(
    tiny_run, synthetic_manifest, tmp_path
):
    folder = tmp_path / "in"
    folder.mkdir()
    names = [b"bad\xff\xfename.png", b"new\nline.png", b"pct%41.png", b"ok.png"]
    for src, name in zip(_images(synthetic_manifest, 4), names, strict=True):
        with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
            fh.write(src.read_bytes())
    out = tmp_path / "preds.csv"
    result = _predict(tiny_run, folder, "--out", out, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert len(rows) == 4 and not any(r["error"] for r in rows)
    assert {os.fsencode(row_path(r)) for r in rows} == {
        os.path.join(os.fsencode(folder), n) for n in names
    }
    assert len(out.read_bytes().splitlines()) == 5  # header + one line per row
    for _ in range(2):  # resuming twice redoes nothing and adds nothing
        result = _predict(tiny_run, folder, "--out", out)
        assert result.exit_code == 0 and "4 already in" in result.output, result.output
        assert _rows(out) == rows


def test_fifo_and_device_are_error_rows_never_opened(tiny_run, synthetic_manifest, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(_images(synthetic_manifest, 1)[0], folder / "good.png")
    os.mkfifo(folder / "pipe.jpg")  # an image suffix: kept as an error row
    os.mkfifo(folder / "pipe_no_suffix")  # would need its magic read: skipped, not opened
    summary = predict_to_csv(
        tiny_run,
        [folder, "/dev/zero"],
        tmp_path / "p.csv",
        PredictConfig(progress=False, workers=0),
    )
    by_name = {row_path(r).name: r for r in _rows(tmp_path / "p.csv")}
    assert set(by_name) == {"good.png", "pipe.jpg", "zero"}
    assert by_name["pipe.jpg"]["error"] == "not a regular file: a FIFO (named pipe)"
    assert by_name["zero"]["error"] == "not a regular file: a character device"
    assert by_name["good.png"]["prob"] and summary.failed == 2


def test_resume_refused_for_another_threshold_unless_force(tiny_run, synthetic_manifest, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    images = _images(synthetic_manifest, 3)
    out = tmp_path / "preds.csv"
    assert _predict(run, *images[:2], "--out", out).exit_code == 0
    meta = sidecar_path(out)
    assert meta.is_file() and len(_rows(out)) == 2

    RunDir.open(run).update_meta(threshold=0.123)
    result = _predict(run, *images, "--out", out)
    assert result.exit_code == 2, result.output
    assert "threshold" in result.output and "--force" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert len(_rows(out)) == 2  # nothing appended

    result = _predict(run, *images, "--out", out, "--force")
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert len(rows) == 3 and {r["threshold"] for r in rows} == {"0.123"}

    meta.unlink()  # a CSV nobody vouches for is not appended to either
    result = _predict(run, *images, "--out", out)
    assert result.exit_code == 2 and "meta.json" in result.output


def test_retry_errors_predicts_error_rows_again(tiny_run, synthetic_manifest, tmp_path):
    good = _images(synthetic_manifest, 2)
    broken = tmp_path / "later.png"
    broken.write_bytes(b"not yet a png")
    out = tmp_path / "preds.csv"
    assert _predict(tiny_run, *good, broken, "--out", out).exit_code == 1
    broken.write_bytes(good[0].read_bytes())  # the file is fixed
    assert _predict(tiny_run, *good, broken, "--out", out).exit_code == 1  # a plain resume
    result = _predict(tiny_run, *good, broken, "--out", out, "--retry-errors")
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert len(rows) == 3 and not any(r["error"] for r in rows)
    assert len({r["path"] for r in rows}) == 3


def test_job_failures_exit_2_without_traceback(tiny_run, synthetic_manifest, tmp_path):
    image = _images(synthetic_manifest, 1)[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = _predict(tiny_run, image, "--out", blocker / "preds.csv")  # unwritable --out
    assert result.exit_code == 2 and "choose a writable --out" in result.output, result.output
    result = _predict(tmp_path / "no_run", image, "--out", tmp_path / "p.csv")  # bad run
    assert result.exit_code == 2 and "run directory not found" in result.output
    result = _predict(tiny_run, image, "--out", tmp_path / "p.csv", "--batch-size", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_markup_characters_in_paths_print_literally(tiny_run, tmp_path):
    odd = tmp_path / "d["
    odd.mkdir()
    bad = [odd / "]e.jpg", tmp_path / "zero[red]x.jpg"]  # paths holding "[/]" and "[red]"
    bad.append(Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"raw\xff.jpg"))))
    for path in bad:
        path.write_bytes(b"garbage")
    result = _predict(tiny_run, *bad, "--out", tmp_path / "p.csv")
    assert result.exit_code == 1, result.output
    assert "d[/]e.jpg" in result.output and "zero[red]x.jpg" in result.output
    assert "raw%FF.jpg" in result.output  # as in the CSV
    blocker = tmp_path / "x["  # a file: "x[/]p.csv" cannot be written, and the error names it
    blocker.write_text("")
    result = _predict(tiny_run, *bad, "--out", blocker / "]p.csv")
    assert result.exit_code == 2 and "x[/]p.csv" in result.output, result.output


def _nan_logits(every: int):
    def logits(self, arrays):
        out = np.linspace(-1.0, 1.0, len(arrays)).astype(np.float32)
        out[::every] = np.nan
        return out

    return logits


def test_non_finite_logits_are_error_rows(tiny_run, synthetic_manifest, tmp_path, monkeypatch):
    images = _images(synthetic_manifest, 4)
    monkeypatch.setattr(Predictor, "logits", _nan_logits(every=2))  # half the images
    monkeypatch.setattr(Predictor, "self_check", lambda self: None)  # NaN on some inputs only
    out = tmp_path / "half.csv"
    result = _predict(tiny_run, *images, "--out", out)
    assert result.exit_code == 1, result.output
    rows = _rows(out)
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 2 and all(r["error"].startswith("model output") for r in bad)
    assert all(r["prob"] == "" and r["decision"] == "" for r in bad)

    monkeypatch.setattr(Predictor, "logits", _nan_logits(every=1))  # every image: exit 2

    monkeypatch.setattr(Predictor, "self_check", lambda self: None)  # NaN on some inputs only
    result = _predict(tiny_run, *images, "--out", tmp_path / "all.csv")
    assert result.exit_code == 2 and "no usable output" in result.output, result.output
    assert all(r["error"] and not r["decision"] for r in _rows(tmp_path / "all.csv"))


def test_model_output_error_fails_its_batch(tiny_run, synthetic_manifest, tmp_path, monkeypatch):
    calls = []

    def predict_prepared(self, prepared, heatmap=False, strict=True):
        calls.append(len(prepared))
        if len(calls) == 1:
            raise ModelOutputError("logits are NaN")
        return original(self, prepared, heatmap, strict=strict)

    original = Predictor.predict_prepared
    monkeypatch.setattr(Predictor, "predict_prepared", predict_prepared)
    summary = predict_to_csv(
        tiny_run,
        _images(synthetic_manifest, 5),
        tmp_path / "p.csv",
        PredictConfig(batch_size=2, workers=0, progress=False),
    )
    assert summary.failed == 2 and summary.model_failed == 2 and summary.predicted == 3
    assert not summary.model_broken
    errors = [r["error"] for r in _rows(tmp_path / "p.csv") if r["error"]]
    assert errors == ["model output: logits are NaN"] * 2


def test_two_processes_equal_one_process_and_resume(tiny_run, synthetic_manifest, tmp_path):
    images = _images(synthetic_manifest, 7, "test")
    folder = tmp_path / "in"
    folder.mkdir()
    for img in images:
        shutil.copy(img, folder / img.name)
    (folder / "broken.png").write_bytes(b"not a png")
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    predict_to_csv(tiny_run, [folder], one, PredictConfig(batch_size=3, workers=0, progress=False))

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bonefrac", "predict", str(tiny_run), str(folder)]
    cmd += ["--out", str(two), "--batch-size", "3", "--workers", "0", "--no-progress"]
    cmd += ["--devices", "2", "--accelerator", "cpu", "--strategy", "ddp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # broken.png failed
    assert "2 processes" in proc.stdout and "1 failed" in proc.stdout, proc.stdout
    assert not list(tmp_path.glob("two.csv.part*"))  # parts merged and removed

    by_path_1 = {r["path"]: r for r in _rows(one)}
    rows_2 = _rows(two)
    by_path_2 = {r["path"]: r for r in rows_2}
    assert len(rows_2) == len(by_path_2) == 8 and set(by_path_1) == set(by_path_2)
    for path, r1 in by_path_1.items():
        r2 = by_path_2[path]
        assert r1["error"] == r2["error"] and r1["decision"] == r2["decision"]
        if not r1["error"]:
            assert abs(float(r1["prob"]) - float(r2["prob"])) < 1e-6

    # a job killed before its merge: rows still in a part (one of them half-written) are
    # merged by the next run, whatever its process count, without duplicates
    lines = two.read_bytes().splitlines(keepends=True)
    two.write_bytes(b"".join(lines[:-3]))
    part_file(two, 1).write_bytes(lines[0] + b"".join(lines[-3:]) + lines[1][:10])
    result = _predict(tiny_run, folder, "--out", two)
    assert result.exit_code == 1 and "8 already in" in result.output, result.output
    assert not part_file(two, 1).exists()
    assert sorted(_rows(two), key=lambda r: r["path"]) == sorted(rows_2, key=lambda r: r["path"])
    assert list(_rows(two)[0]) == PREDICT_COLUMNS
