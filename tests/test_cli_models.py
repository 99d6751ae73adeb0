"""Shipped models on the command line: 'bonefrac models', a shipped name as RUN, --into.

The shipped root is a folder of the test's own (a copy of the tiny run under a versioned name,
an aliases.json and a model card), put in place of the package's with monkeypatch.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.rundir import shipped
from tests.conftest import tree_digests

runner = CliRunner()
NAME = "tiny-1"
CARD = f"# Model card: {NAME}\n\nA tiny synthetic test model; never a diagnosis.\n"


@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    root = tmp_path_factory.mktemp("shipped")
    shutil.copytree(tiny_run, root / NAME, ignore=shutil.ignore_patterns("checkpoints"))
    (root / NAME / shipped.MODEL_CARD).write_text(CARD, encoding="utf-8")
    (root / shipped.ALIASES_FILE).write_text(json.dumps({"default": NAME}), encoding="utf-8")
    return root


@pytest.fixture()
def as_package(shipped_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", shipped_root)
    return shipped_root / NAME


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_models_lists_the_shipped_model_with_its_alias(as_package: Path) -> None:
    res = _invoke("models")
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if NAME in line)
    assert f"{NAME} (default)" in row
    assert "simple_cnn" in row and "float32" in row and " 64 " in row
    auc = json.loads((as_package / "metrics.json").read_text())["test"]["roc_auc"]["value"]
    assert f"{auc:.3f}" in row
    assert shipped.MODEL_CARD in res.output


def test_models_without_a_shipped_model_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", tmp_path / "none")
    res = _invoke("models")
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines() == [
        "no shipped model is installed; pass a run directory (from 'bonefrac train') as RUN"
    ]


def test_serve_without_run_and_no_shipped_model_is_one_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", tmp_path / "none")
    res = _invoke("serve")
    assert res.exit_code == 2
    assert "default: run directory not found" in res.output and "(none;" in res.output
    assert "Traceback" not in res.output


def test_models_name_prints_the_card_and_an_unknown_name_is_exit_2(as_package: Path) -> None:
    for name in ("default", NAME):
        res = _invoke("models", name)
        assert res.exit_code == 0, res.output
        assert f"Model card: {NAME}" in res.output and "never a diagnosis" in res.output
    res = _invoke("models", "nope")
    assert res.exit_code == 2
    assert f"nope: not a shipped model (shipped: default ({NAME}), {NAME})" in res.output


def test_serve_without_run_serves_the_default_shipped_model(
    as_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bonefrac.serving.app

    served: list[Path] = []
    monkeypatch.setattr(bonefrac.serving.app, "serve", lambda run, config: served.append(run))
    res = _invoke("serve", "--port", "8123")
    assert res.exit_code == 0, res.output
    assert [p.resolve() for p in served] == [as_package.resolve()]
    assert f"serving {as_package}" in res.output


def test_a_writing_command_refuses_a_shipped_model_and_works_on_an_into_copy(
    as_package: Path, shipped_root: Path, tmp_path: Path
) -> None:
    before = tree_digests(shipped_root)
    res = _invoke("threshold", "default", "--criterion", "f1")
    assert res.exit_code == 2
    assert "a shipped model is never changed" in res.output and "--into DIR" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert tree_digests(shipped_root) == before

    copy = tmp_path / "copy"
    res = _invoke("threshold", "default", "--criterion", "f1", "--into", copy)
    assert res.exit_code == 0, res.output
    assert f"to {copy}" in res.output and "stored threshold" in res.output
    assert tree_digests(shipped_root) == before
    original, copied = tree_digests(as_package), tree_digests(copy)
    assert set(copied) == set(original)
    assert [k for k in copied if copied[k] != original[k]] == ["model.json"]
    assert json.loads((copy / "model.json").read_text())["threshold_criterion"] == "f1"

    res = _invoke("threshold", "default", "--criterion", "f1", "--into", copy)
    assert res.exit_code == 2 and "already exists and is not empty" in res.output


def test_predict_and_explain_read_a_shipped_model_by_name(
    as_package: Path, shipped_root: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from tests.synthetic import make_image

    arr, _ = make_image(np.random.default_rng(3), 64, fractured=True)
    img = tmp_path / "x.png"
    Image.fromarray(arr).save(img)
    before = tree_digests(shipped_root)
    out = tmp_path / "x.csv"
    res = _invoke("predict", "default", img, "--out", out, "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and not rows[0]["error"] and 0.0 <= float(rows[0]["prob"]) <= 1.0

    res = _invoke("explain", "default", "--images", img, "--n", "1")
    assert res.exit_code == 2 and "--into" in res.output
    res = _invoke("explain", "default", "--images", img, "--n", "1", "--out", tmp_path / "cams")
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "cams").rglob("*.png"))
    assert tree_digests(shipped_root) == before


def test_predict_without_out_prints_one_line_per_file_and_writes_nothing(
    as_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from tests.synthetic import make_image

    arr, _ = make_image(np.random.default_rng(4), 64, fractured=False)
    good, bad = tmp_path / "in" / "good.png", tmp_path / "in" / "bad.png"
    good.parent.mkdir()
    Image.fromarray(arr).save(good)
    bad.write_bytes(b"not an image")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    res = _invoke("predict", "default", good, bad, "--workers", "0", "--no-progress")
    assert res.exit_code == 1, res.output  # one file failed
    lines = res.output.splitlines()
    answer = next(s for s in lines if s.startswith(f"{good}: "))
    assert " probability " in answer and "(threshold " in answer
    assert next(s for s in lines if s.startswith(f"{bad}: error: "))
    assert "2 inputs: 1 predicted" in res.output and "already in" not in res.output
    assert list(work.iterdir()) == []

    res = _invoke("predict", "default", good, "--study-by", "folder", "--workers", "0")
    assert res.exit_code == 2 and "pass --out" in res.output
