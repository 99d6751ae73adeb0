from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from bonefrac.metrics import (
    METRIC_NAMES,
    _bootstrap_distribution,
    apply_temperature,
    compute_metrics,
    format_ci,
    logit_from_prob,
    point_metrics,
)

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
P = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.6, 0.3, 0.7, 0.45, 0.2])


def test_point_metrics_hand_computed():
    m = compute_metrics(Y, P, threshold=0.5, n_boot=200)
    # negatives 0.1 0.4 0.35 0.8 0.2 -> tn 4, fp 1; positives 0.9 0.6 0.3 0.7 0.45 -> tp 3, fn 2
    assert m["confusion_matrix"] == {"tn": 4, "fp": 1, "fn": 2, "tp": 3}
    assert m["support"] == {"n": 10, "n_pos": 5, "n_neg": 5}
    expected = {
        "accuracy": 0.7,
        "sensitivity": 0.6,
        "specificity": 0.8,
        "precision": 0.75,
        "f1": 2 / 3,
        "balanced_accuracy": 0.7,
        "roc_auc": 19 / 25,  # 19 of 25 (pos, neg) pairs ordered correctly
        "pr_auc": (1 + 2 / 3 + 3 / 4 + 4 / 5 + 5 / 8) / 5,
    }
    for name, value in expected.items():
        assert m[name]["value"] == pytest.approx(value), name
    assert set(METRIC_NAMES) <= set(m)


def test_threshold_changes_counts():
    m = compute_metrics(Y, P, threshold=0.42, n_boot=0)
    # 0.42: negative 0.8 is still >= 0.42 -> fp 1; positive 0.3 is the only miss
    assert m["confusion_matrix"] == {"tn": 4, "fp": 1, "fn": 1, "tp": 4}
    assert m["accuracy"]["ci_low"] is None  # n_boot=0: no CI


def _data(n=1000, seed=3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # rounding -> ties
    return y, p


def test_ci_contains_point_and_is_reproducible():
    y, p = _data()
    a = compute_metrics(y, p, 0.5, n_boot=500, seed=7)
    b = compute_metrics(y, p, 0.5, n_boot=500, seed=7)
    c = compute_metrics(y, p, 0.5, n_boot=500, seed=8)
    assert a == b
    assert a["roc_auc"] != c["roc_auc"]
    for name in METRIC_NAMES:
        e = a[name]
        assert e["ci_low"] <= e["value"] <= e["ci_high"], name
        assert e["ci_high"] - e["ci_low"] < 0.2, name


def test_bootstrap_matches_sklearn_on_each_resample():
    """The vectorised bootstrap reproduces sklearn on explicit stratified resamples."""
    y, p = _data(200, 5)
    dist = _bootstrap_distribution(y, p, 0.5, 4, seed=11)
    order = np.argsort(p, kind="mergesort")
    ys, ps = y[order], p[order]
    pos, neg = np.flatnonzero(ys == 1), np.flatnonzero(ys == 0)
    rng = np.random.default_rng(11)
    a = pos[rng.integers(0, len(pos), size=(4, len(pos)))]
    b = neg[rng.integers(0, len(neg), size=(4, len(neg)))]
    for i in range(4):
        idx = np.concatenate([a[i], b[i]])
        yy, pp = ys[idx], ps[idx]
        assert dist["roc_auc"][i] == pytest.approx(skm.roc_auc_score(yy, pp))
        assert dist["pr_auc"][i] == pytest.approx(skm.average_precision_score(yy, pp))
        assert dist["f1"][i] == pytest.approx(skm.f1_score(yy, pp >= 0.5))
        assert dist["sensitivity"][i] == pytest.approx(skm.recall_score(yy, pp >= 0.5))


def test_point_metrics_match_sklearn():
    y, p = _data()
    m = point_metrics(y, p, 0.4)
    pred = p >= 0.4
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))


def test_bootstrap_is_fast():
    y, p = _data(1000)
    t0 = time.perf_counter()
    compute_metrics(y, p, 0.5, n_boot=1000)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_never_crashes(label):
    y = np.full(20, label)
    p = np.linspace(0, 1, 20)
    m = compute_metrics(y, p, 0.5, n_boot=100)
    assert m["roc_auc"]["value"] is None
    assert m["pr_auc"]["value"] is None
    assert "roc_auc" in m["notes"]
    json.dumps(m, allow_nan=False)  # valid strict JSON (no NaN)
    assert m["accuracy"]["value"] == pytest.approx(0.5)


def test_empty_input():
    m = compute_metrics([], [], 0.5)
    assert m["accuracy"]["value"] is None
    json.dumps(m, allow_nan=False)


def test_input_validation():
    with pytest.raises(ValueError):
        compute_metrics([0, 1], [0.5])
    with pytest.raises(ValueError):
        compute_metrics([0, 2], [0.5, 0.5])


def test_apply_temperature():
    z = np.array([-4.0, 0.0, 2.0, 800.0, -800.0])
    p = apply_temperature(z, 2.0)
    assert p[1] == 0.5
    assert p[2] == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(apply_temperature(z[:3], 1.0), 1 / (1 + np.exp(-z[:3])))
    np.testing.assert_allclose(logit_from_prob(apply_temperature(z[:3], 1.0)), z[:3], atol=1e-6)
    with pytest.raises(ValueError):
        apply_temperature(z, 0.0)


def test_format_ci():
    assert format_ci({"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}) == "0.500 [0.400, 0.600]"
    assert format_ci({"value": None, "ci_low": None, "ci_high": None}) == "n/a"
