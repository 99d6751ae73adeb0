"""The CLI's parts without running a model: job options, the source registry, the renderers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bonefrac.batch_predict.job import exit_status
from bonefrac.batch_predict.stream import BatchSummary
from bonefrac.cli import app, render
from bonefrac.config import DataBuildConfig, PredictConfig, ServeConfig
from bonefrac.data.sources import SOURCE_KINDS, scan_sources
from bonefrac.errors import ConfigError, DataError

runner = CliRunner()


def _text(draw, *args) -> str:
    buf = io.StringIO()
    draw(Console(file=buf, width=200, color_system=None), *args)
    return buf.getvalue()


# --- job options ---


def test_a_bad_option_is_a_config_error_naming_the_option() -> None:
    with pytest.raises(ConfigError, match=r"^--batch-size must be at least 1, got 0$"):
        PredictConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"^--devices must be at least 1, got -1$"):
        PredictConfig(devices=-1)
    with pytest.raises(ConfigError, match=r"^--port: .*integer"):
        ServeConfig(port="eighty")
    with pytest.raises(ConfigError, match=r"^--max-body-mb: "):
        ServeConfig(max_body_bytes="big")
    with pytest.raises(ConfigError, match="--no-progress"):
        PredictConfig(progress="sometimes")
    with pytest.raises(ConfigError, match="--dicom-out"):
        PredictConfig(dicom_out=3)
    with pytest.raises(ConfigError, match="--typo"):
        PredictConfig(typo=1)


def test_the_cli_takes_its_defaults_from_the_configs() -> None:
    serve = ServeConfig()
    assert (serve.max_body_bytes, serve.max_pixels, serve.max_image_bytes) == (
        32 * 2**20,
        36_000_000,
        64 * 2**20,
    )
    assert (serve.max_concurrency, serve.queue, serve.allowed_hosts, serve.docs) == (
        2,
        16,
        None,
        True,
    )
    predict = PredictConfig()
    assert (predict.batch_size, predict.workers, predict.devices, predict.backend) == (
        16,
        0,
        1,
        "torch",
    )
    help_text = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "32.0" in help_text and "36000000" in help_text


def test_data_build_config_reads_sources_by_registry_kind(tmp_path: Path) -> None:
    cfg = DataBuildConfig(
        out=tmp_path, sources={"folder": tmp_path, "yolo": None}, fracture_classes="a,b"
    )
    assert cfg.sources == {"folder": [tmp_path], "yolo": []}
    assert cfg.fracture_classes == ["a", "b"]
    assert DataBuildConfig(out=tmp_path, fracture_classes=",").fracture_classes is None
    with pytest.raises(ConfigError, match="unknown source kind.*'mura'.*fracatlas, yolo"):
        scan_sources(DataBuildConfig(out=tmp_path, sources={"mura": [tmp_path]}))


# --- the source registry ---


@pytest.mark.parametrize("kind", list(SOURCE_KINDS.values()), ids=list(SOURCE_KINDS))
def test_every_registered_source_kind_is_a_data_build_option(kind) -> None:
    help_text = runner.invoke(app, ["data", "build", "--help"], env={"COLUMNS": "200"}).output
    assert kind.option in help_text and kind.help in help_text


def test_no_source_names_every_registered_option(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        scan_sources(DataBuildConfig(out=tmp_path))
    assert str(exc.value) == (
        "no data source given: pass --fracatlas, --yolo, --folder or --dicom-dir"
    )


# --- renderers ---


def test_render_data_build_summary(tmp_path: Path) -> None:
    summary = {
        "counts": {"manifest_rows": 9, "by_split": {"train": 9}, "by_label": {"0": 9}},
        "quarantine_reasons": {},
        "label_conflicts": {"groups": 0},
        "timing": {"build_seconds": 1.25},
        "warnings": ["w"],
    }
    summary["counts"]["quarantined"] = 1
    text = _text(render.data_build, summary, tmp_path)
    assert text.startswith(f"9 images in {tmp_path / 'manifest.csv'} (split {{'train': 9}}")
    assert "1 quarantined {}; 0 label-conflict groups; 1.2 s" in text
    assert f"1 warning(s), listed above and in {tmp_path / 'summary.json'}" in text


def test_render_predict_summary_failures_and_exit_status(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    ok = BatchSummary(out=out, total=3, predicted=3, positives=1, seconds=2.0)
    assert _text(render.predict_summary, ok, out) == (
        f"3 inputs: 3 predicted (1 fracture, 0 refer, 0 out of scope), 0 failed, 0 already in "
        f"{out} (0 of them error rows); 2.0 s (1.5 images/s)\n"
    )
    assert _text(render.predict_failures, ok, tmp_path, out) == "" and exit_status(ok) == 0
    some = BatchSummary(out=out, total=2, predicted=1, failed=1, errors=[("x.png", "truncated")])
    assert "failed: x.png: truncated" in _text(render.predict_summary, some, out)
    assert _text(render.predict_failures, some, tmp_path, out) == (
        f"1 file(s) failed; rows with an error are in {out}\n"
    )
    assert exit_status(some) == 1
    broken = BatchSummary(out=out, total=2, failed=2, model_failed=2)
    assert "no usable output for any of 2" in _text(render.predict_failures, broken, tmp_path, out)
    assert exit_status(broken) == 2


def test_render_text_from_files_is_never_markup(tmp_path: Path) -> None:
    out = tmp_path / "[bold]p.csv"
    summary = BatchSummary(out=out, total=1, failed=1, errors=[("[red]x", "bad [/]")])
    text = _text(render.predict_summary, summary, out)
    assert "[bold]p.csv" in text and "failed: [red]x: bad [/]" in text
