"""``bonefrac train`` ends with a deployable run: threshold, temperature, refer rule and
out-of-scope detector fitted on val (the config's ``deploy`` block); ``--no-deploy`` skips them;
a fit that cannot be done is reported and never loses the trained run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.config import DeployConfig, load_config
from bonefrac.deploy import deploy_run
from bonefrac.errors import ConfigError
from tests.synthetic import FAST_OVERRIDES, make_manifest

runner = CliRunner()


def _train_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--manifest", str(manifest), "--out", str(out), "--no-progress"]
    for item in [*FAST_OVERRIDES, "train.epochs=6", "deploy.ood_max_images=40"]:
        args += ["--set", item]
    return args + list(extra)


def _meta(run: Path) -> dict:
    return json.loads((run / "model.json").read_text())


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("deploy")
    manifest = make_manifest(root / "data")
    result = runner.invoke(app, _train_args(manifest, root / "run"))
    assert result.exit_code == 0, result.output
    return root / "run", result.output


def test_train_ends_with_every_safeguard_fitted_on_val(deployed: tuple[Path, str]) -> None:
    run, output = deployed
    meta = _meta(run)
    assert meta["threshold_criterion"] == "specificity:0.95"
    assert meta["threshold_tuned_on"] == "val"
    assert 0 < meta["rule_out"] <= meta["threshold"] < 1
    assert math.isfinite(meta["temperature"]) and meta["temperature"] > 0
    assert meta["calibration"]["fitted_on"] == "val"
    assert "refer" not in meta  # the two cuts make the refer calls
    assert meta["rule_out_fit"]["target"] == 0.95 and meta["rule_out_fit"]["tuned_on"] == "val"
    assert meta["ood"]["method"] == "mahalanobis" and (run / "ood.safetensors").is_file()
    assert sorted(meta["deploy"]["fitted"]) == ["calibrate", "ood", "refer", "threshold"]
    assert meta["deploy"]["failed"] == {}
    # metrics.json was refreshed at the deployed operating point
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["settings"]["threshold"] == pytest.approx(meta["threshold"])
    assert metrics["test"]["settings"]["threshold_criterion"] == "specificity:0.95"
    assert metrics["test"]["settings"]["rule_out"] == pytest.approx(meta["rule_out"])
    assert metrics["test"]["miss_rate"]["value"] is not None
    for name in ("calibrate", "threshold", "refer", "ood"):
        assert f"deploy: {name}:" in output
    assert "of the training time" in output


def test_no_deploy_leaves_the_run_untuned_and_resume_fits_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = make_manifest(tmp_path / "data", {"train": 40, "val": 20, "test": 10})
    result = runner.invoke(app, _train_args(manifest, tmp_path / "run", "--no-deploy"))
    assert result.exit_code == 0, result.output
    meta = _meta(tmp_path / "run")
    assert meta["threshold"] == 0.5 and meta["threshold_criterion"] == "default"
    assert meta["temperature"] == 1.0
    assert not {"refer", "ood", "calibration", "deploy"} & set(meta)
    assert "deploy:" not in result.output
    # predicting with it warns, once per job, naming each missing safeguard
    image = tmp_path / "data" / "images" / "test_0000.png"
    with caplog.at_level("WARNING"):
        predicted = runner.invoke(
            app, ["predict", str(tmp_path / "run"), str(image), "--out", str(tmp_path / "p.csv")]
        )
    assert predicted.exit_code == 0, predicted.output
    warned = " ".join(r.getMessage() for r in caplog.records)
    for command in ("bonefrac threshold", "bonefrac calibrate", "bonefrac ood"):
        assert command in warned
    # a resumed run ends like a fresh one: with the fits
    resumed = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert sorted(_meta(tmp_path / "run")["deploy"]["fitted"]) == [
        "calibrate",
        "ood",
        "refer",
        "threshold",
    ]


def test_a_one_class_val_split_skips_what_needs_both_with_a_warning(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "data", {"train": 40, "val": 20, "test": 10})
    frame = pd.read_csv(manifest, keep_default_na=False)
    val = frame["split"] == "val"
    frame.loc[val, "label"] = 0
    frame.loc[val, "boxes"] = "[]"
    frame.to_csv(manifest, index=False)
    result = runner.invoke(app, _train_args(manifest, tmp_path / "run"))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert (run / "model.safetensors").is_file()
    meta = _meta(run)
    failed = meta["deploy"]["failed"]
    assert set(failed) == {"calibrate", "threshold", "refer"}
    assert "val split" in failed["calibrate"] and "one class" in failed["calibrate"]
    assert meta["threshold_criterion"] == "default" and "refer" not in meta
    assert meta["ood"]["method"] == "mahalanobis"  # needs no labels: still fitted
    assert "calibrate NOT fitted" in result.output and "val split" in result.output


def test_a_failing_fit_keeps_the_run_and_says_what_is_missing(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = _meta(run)
    meta["manifest"] = str(tmp_path / "moved" / "manifest.csv")  # the manifest is gone
    (run / "model.json").write_text(json.dumps(meta))
    cfg = (
        (run / "config.yaml")
        .read_text()
        .replace(str(load_config(run / "config.yaml").data.manifest), str(tmp_path / "moved.csv"))
    )
    (run / "config.yaml").write_text(cfg)
    report = deploy_run(run, DeployConfig(ood_max_images=40))
    assert set(report.fitted) == {"calibrate", "threshold", "refer"}
    assert "manifest" in report.failed["ood"]
    meta = _meta(run)
    assert "ood" not in meta and meta["deploy"]["failed"]["ood"] == report.failed["ood"]
    assert meta["threshold_criterion"] == "specificity:0.95"


def test_deploy_parts_can_be_turned_off(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = DeployConfig(
        rule_in_specificity=None,
        rule_out_sensitivity=None,
        threshold="none",
        calibrate=False,
        refer_coverage=0.8,
        ood="none",
    )
    report = deploy_run(run, cfg)
    assert set(report.fitted) == {"refer"} and report.failed == {}
    assert sorted(report.skipped) == ["calibrate", "ood", "threshold"]
    meta = _meta(run)
    assert meta["threshold"] == 0.5 and meta["temperature"] == 1.0
    assert meta["refer"]["coverage"] == 0.8 and "ood" not in meta


def test_the_deploy_block_validates_its_criterion() -> None:
    parsed = DeployConfig(threshold="sens:90")
    assert parsed.threshold == ("sensitivity", 0.9)  # parsed once, when the config is read
    assert parsed.model_dump(mode="json")["threshold"] == "sensitivity:0.9"
    assert DeployConfig(threshold="NONE").threshold is None
    assert DeployConfig(threshold="NONE").model_dump(mode="json")["threshold"] == "none"
    assert DeployConfig(threshold="NONE").rule_in_criterion == ("specificity", 0.95)
    assert DeployConfig(threshold="NONE", rule_in_specificity=None).rule_in_criterion is None
    with pytest.raises(ConfigError, match="deploy.threshold"):
        load_config(None, ["deploy.threshold=accuracy"])
    with pytest.raises(ConfigError, match="deploy.refer_coverage"):
        load_config(None, ["deploy.refer_coverage=1.5"])
    assert load_config(None, ["deploy.refer_coverage=null"]).deploy.refer_coverage is None
