from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.evaluation.calibration import calibrate_run, fit_temperature, rescale_threshold
from bonefrac.fileio import read_json
from bonefrac.metrics import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    reliability_bins,
    sigmoid,
)
from tests.evaluation.conftest import make_run


def _overconfident(n=4000, factor=4.0, seed=0):
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0, 1.5, n)
    y = (rng.random(n) < sigmoid(true_logit)).astype(int)
    return y, factor * true_logit  # the model is `factor` times too sure of itself


def test_ece_and_brier_hand_computed():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    # two bins, each with observed 0.5 and mean prob 0.05 / 0.95 -> ECE = 0.45
    assert expected_calibration_error(y, p, 15) == pytest.approx(0.45)
    assert brier_score(y, p) == pytest.approx((0.05**2 + 0.95**2 + 0.05**2 + 0.95**2) / 4)
    bins = reliability_bins(y, p, 15)
    assert bins["count"].sum() == 4 and len(bins["edges"]) == 16
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_temperature_lowers_ece_on_overconfident_logits():
    y, z = _overconfident()
    t = fit_temperature(z, y)
    assert 3.0 < t < 5.5  # recovers the over-confidence factor
    before = expected_calibration_error(y, sigmoid(z))
    after = expected_calibration_error(y, apply_temperature(z, t))
    assert after < before / 2
    assert brier_score(y, apply_temperature(z, t)) < brier_score(y, sigmoid(z))


def test_rescale_threshold_keeps_decisions():
    z = np.linspace(-5, 5, 101)
    old = 0.3
    new = rescale_threshold(old, 1.0, 2.5)
    np.testing.assert_array_equal(sigmoid(z) >= old, apply_temperature(z, 2.5) >= new)
    assert rescale_threshold(0.5, 1.0, 2.5) == pytest.approx(0.5)


def test_calibrate_run(tmp_path):
    run = make_run(tmp_path, scale=10.0, extra_model={"threshold": 0.3})
    summary = calibrate_run(run)
    model = read_json(run / "model.json")
    assert model["temperature"] == pytest.approx(summary["temperature"])
    assert summary["temperature"] > 2.0  # logits 10x the data, whose Bayes log-odds are ~3x
    assert summary["val"]["nll_after"] < summary["val"]["nll_before"]
    assert model["custom_key"] == {"keep": True}
    assert model["calibration"]["fitted_on"] == "val"
    assert summary["val"]["ece_after"] < summary["val"]["ece_before"]
    assert summary["test"]["brier_after"] < summary["test"]["brier_before"]
    assert model["threshold"] == pytest.approx(rescale_threshold(0.3, 1.0, summary["temperature"]))
    assert (run / "plots" / "calibration_val.png").is_file()
    assert (run / "plots" / "calibration_test.png").is_file()


def test_cli_calibrate(tmp_path):
    run = make_run(tmp_path, scale=3.0)
    result = CliRunner().invoke(app, ["calibrate", str(run)])
    assert result.exit_code == 0, result.output
    assert "ECE" in result.output


def test_cli_calibrate_missing_run(tmp_path):
    result = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "run directory not found" in result.output
