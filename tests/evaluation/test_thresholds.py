from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.errors import ConfigError, DataError
from bonefrac.evaluation.thresholds import choose_threshold, parse_criterion, tune_threshold
from bonefrac.fileio import read_json, write_json

# thresholds (highest first): sens / spec
# 0.8: .25/1  0.7: .5/1  0.6: .75/1  0.5: .75/.75  0.4: 1/.75  0.3: 1/.5  0.2: 1/.25  0.1: 1/0
Y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])


@pytest.mark.parametrize(
    ("criterion", "expected"),
    [
        ("f1", 0.4),  # F1 = 8/9 at 0.4, 6/7 at 0.6
        ("youden", 0.6),  # J = 0.75 at 0.6 and 0.4: the higher threshold wins the tie
        ("sensitivity:0.9", 0.4),
        ("sensitivity:0.5", 0.7),
        ("sensitivity:0.75", 0.6),
        ("specificity:0.75", 0.4),
        ("specificity:1.0", 0.6),
        ("specificity:0.5", 0.3),
        ("sens:90", 0.4),
    ],
)
def test_criteria_on_known_arrays(criterion, expected):
    assert choose_threshold(Y, P, criterion) == pytest.approx(expected)


def test_specificity_unreachable_predicts_nothing_positive():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.2, 0.9, 0.3, 0.1])  # the top score is a negative
    t = choose_threshold(y, p, "specificity:1.0")
    # the most sensitive threshold keeping every negative out lies just above 0.9
    assert t > 0.9
    assert not np.any((p >= t) & (y == 0))


def test_parse_criterion():
    assert parse_criterion("F1") == ("f1", None)
    assert parse_criterion("sensitivity:0.90") == ("sensitivity", 0.9)
    for bad in ("accuracy", "sensitivity", "sensitivity:abc", "specificity:0", "f1:3"):
        with pytest.raises(ConfigError):
            parse_criterion(bad)


def test_single_class_refused():
    with pytest.raises(DataError):
        choose_threshold([1, 1], [0.2, 0.3], "f1")


def test_tune_threshold_writes_model_json(fake_run):
    res = tune_threshold(fake_run, "sensitivity:0.9")
    model = read_json(fake_run / "model.json")
    assert model["threshold"] == pytest.approx(res["new_threshold"])
    assert model["threshold_criterion"] == "sensitivity:0.9"
    assert model["threshold_tuned_on"] == "val"
    assert model["custom_key"] == {"keep": True}  # unknown keys preserved
    assert model["architecture"] == "simple_cnn"
    assert set(res["metrics"]) == {"val", "test"}
    assert res["metrics"]["val"]["new"]["sensitivity"]["value"] >= 0.9
    assert res["metrics"]["val"]["old"]["settings"]["threshold"] == 0.5


def test_tune_uses_calibrated_probabilities(fake_run):
    model = read_json(fake_run / "model.json")
    write_json(fake_run / "model.json", {**model, "temperature": 3.0})
    res = tune_threshold(fake_run, "f1")
    import pandas as pd

    val = pd.read_csv(fake_run / "predictions" / "val.csv")
    calibrated = 1 / (1 + np.exp(-val["logit"] / 3.0))
    assert res["new_threshold"] == pytest.approx(choose_threshold(val["label"], calibrated, "f1"))


def test_tuning_on_test_is_not_an_option(fake_run):
    """The rule is chosen on val only: there is no option naming another split, so a tuned
    test split cannot be asked for (the run is left untouched)."""
    import inspect

    assert "on" not in inspect.signature(tune_threshold).parameters
    before = read_json(fake_run / "model.json")
    result = CliRunner().invoke(
        app, ["threshold", str(fake_run), "--criterion", "f1", "--on", "test"]
    )
    assert result.exit_code != 0
    assert "No such option" in result.output
    assert read_json(fake_run / "model.json") == before  # untouched


def test_cli_threshold(fake_run):
    result = CliRunner().invoke(app, ["threshold", str(fake_run), "--criterion", "youden"])
    assert result.exit_code == 0, result.output
    assert "test @" in result.output and "val @" in result.output
    assert read_json(fake_run / "model.json")["threshold_criterion"] == "youden"


def test_cli_bad_criterion(fake_run):
    result = CliRunner().invoke(app, ["threshold", str(fake_run), "--criterion", "magic"])
    assert result.exit_code == 2
    assert "unknown threshold criterion" in result.output
