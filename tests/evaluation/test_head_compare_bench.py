"""docs/experiments/localisation/head_compare.py on fake run directories: one seed per arm gets paired bootstrap CIs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from bonefrac.rundir import RunDir
from tests.evaluation.conftest import make_run
from tests.evaluation.locfake import add_localization

BENCH = (
    Path(__file__).resolve().parents[2]
    / "docs"
    / "experiments"
    / "localisation"
    / "head_compare.py"
)


@pytest.fixture(scope="module")
def bench_mod():
    spec = importlib.util.spec_from_file_location("bench_head_compare", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_head_compare"] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, name: str, quality: str) -> Path:
    """A localising run on seed 0's test images, its boxes as good as ``quality`` says."""
    run = make_run(root, name, seed=0)
    layout = RunDir.open(run)
    df = layout.read_predictions_raw("test")
    df["source"] = np.where(np.arange(len(df)) % 2 == 0, "fracatlas", "roboflow")
    layout.write_predictions("test", add_localization(df, seed=3, quality=quality, n_false=1))
    return run


def test_one_seed_gets_a_paired_interval_on_each_difference(tmp_path, bench_mod):
    bad, good = _run(tmp_path, "bad", "shuffled"), _run(tmp_path, "good", "perfect")
    per_group, cis = bench_mod.compare([bad], [good], "test", n_boot=200)
    row = per_group["all"][0]
    low, high = row["diff_ci_ap50_boxed"]
    assert 0 < low <= row["b_ap50_boxed"] - row["a_ap50_boxed"] <= high
    low, high = row["diff_ci_hit_rate"]
    assert low <= row["b_hit_rate"] - row["a_hit_rate"] <= high
    # the same logits in both arms: DeLong's interval on the ROC-AUC difference is a point
    assert row["diff_ci_roc_auc_loc"] == pytest.approx((0.0, 0.0))
    text = bench_mod.markdown(per_group, ("bad", "good"), cis)
    line = next(x for x in text.splitlines() if x.startswith("| ap50_boxed"))
    assert line.count("[") == 3  # each arm's CI and the difference's


def test_an_arm_against_itself_differs_by_exactly_nothing(tmp_path, bench_mod):
    # unpaired resamples would spread the difference of two identical arms around 0
    run = _run(tmp_path, "same", "perfect")
    per_group, _ = bench_mod.compare([run], [run], "test", n_boot=100)
    row = per_group["source=fracatlas"][0]
    for key in ("ap50_boxed", "ap50", "hit_rate", "froc_1"):
        assert row[f"diff_ci_{key}"] == (0.0, 0.0), key
    several, _ = bench_mod.compare([run, run], [run, run], "test", n_boot=0)
    assert not any(k.startswith("diff_ci_ap") for k in several["all"][0])


def test_a_fused_arm_is_tested_against_its_class_logit_alone(tmp_path, bench_mod):
    old, new = _run(tmp_path, "old", "perfect"), _run(tmp_path, "new", "perfect")
    layout = RunDir.open(new)
    df = layout.read_predictions_raw("test")
    noise = np.random.default_rng(0).normal(0.0, 3.0, len(df))
    df["class_logit"] = df["logit"].astype(float) + noise  # the logit alone ranks worse
    layout.write_predictions("test", df)
    per_group, cis = bench_mod.compare([old], [new], "test", n_boot=200)
    row = per_group["all"][0]
    assert np.isnan(row["a_roc_auc_class"])  # no class_logit column: nothing to report
    assert row["b_roc_auc_class"] < row["b_roc_auc_loc"]
    diff, p = row["b_fusion_delong"]
    assert diff == pytest.approx(row["b_roc_auc_loc"] - row["b_roc_auc_class"])
    assert diff > 0 and p < 0.05
    assert "a_fusion_delong" not in row
    low, high = cis["b"]["all"]["roc_auc_class"]
    assert low <= row["b_roc_auc_class"] <= high
    text = bench_mod.markdown(per_group, ("old", "new"), cis)
    assert "class logit alone, each arm (paired DeLong): new: seed 1: +" in text
    line = next(x for x in text.splitlines() if x.startswith("| ROC-AUC (class logit"))
    assert "| n/a |" in line
