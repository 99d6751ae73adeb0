"""The default decision rule: a rule-out cut for sensitivity, a rule-in cut for specificity,
``refer`` between; misses reported first."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bonefrac.config import DeployConfig, load_config
from bonefrac.deploy import deploy_run
from bonefrac.errors import ConfigError, RunDirError
from bonefrac.evaluation.thresholds import fit_rule_out, min_positives, tune_threshold
from bonefrac.fileio import read_json, write_json
from bonefrac.metrics import decision_metrics
from bonefrac.rundir import FORMAT_VERSION, ModelMeta, RunDir, run_decisions

# 20 fractured, 20 not: one fracture scores 0.10 (the one a 0.95 rule-out cut may miss), the
# next 0.30 (so the rule-out cut is 0.30); one normal scores 0.90, the next 0.55, and the
# lowest score above 0.55 is a fracture at 0.60 (so the rule-in cut at specificity 0.95 is 0.60).
POS = [0.10, 0.30, 0.60] + [round(0.61 + 0.02 * i, 2) for i in range(17)]
NEG = [0.90, 0.55] + [round(0.01 + 0.015 * i, 3) for i in range(18)]


def _val() -> pd.DataFrame:
    p = np.array(POS + NEG)
    y = np.array([1] * len(POS) + [0] * len(NEG))
    logit = np.log(p) - np.log1p(-p)
    return pd.DataFrame(
        {
            "image_id": [f"v{i:03d}" for i in range(len(p))],
            "path": [f"/data/v{i:03d}.jpg" for i in range(len(p))],
            "label": y,
            "logit": logit,
            "prob": p,
            "source": "synthetic",
        }
    )


@pytest.fixture
def known_run(fake_run):
    run = RunDir(fake_run)
    run.write_predictions("val", _val())
    return fake_run


def test_two_cuts_at_the_exact_expected_values(known_run):
    res = tune_threshold(known_run, "specificity:0.95", rule_out_sensitivity=0.95)
    meta = RunDir(known_run).meta()
    assert meta.threshold == pytest.approx(0.60)
    assert meta.rule_out == pytest.approx(0.30)
    assert meta.refer is None
    fit = res["rule_out"]
    assert fit["val_sensitivity"]["value"] == pytest.approx(19 / 20)
    assert fit["val_normals_cleared"] == pytest.approx(18 / 20)
    lo, hi = fit["val_sensitivity"]["ci_low"], fit["val_sensitivity"]["ci_high"]
    assert lo < 0.95 < hi
    # 20 val fractures cannot show a 0.95 sensitivity (the rule of three needs 60): warned
    assert "fewer than the 60 needed" in fit["warning"]
    decisions = meta.decisions([0.05, 0.29, 0.30, 0.59, 0.60, 0.99])
    assert decisions == ["no_fracture", "no_fracture", "refer", "refer", "fracture", "fracture"]


@pytest.mark.parametrize("seed", range(6))
def test_rule_out_target_met_on_val_by_construction(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 400))
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * (2 * y - 1))))
    for target in (0.8, 0.9, 0.95, 0.99):
        fit = fit_rule_out(y, p, target)
        flagged = (p >= fit["cut"]) & (y == 1)
        assert flagged.sum() / y.sum() >= target
        assert fit["val_sensitivity"]["value"] == pytest.approx(flagged.sum() / y.sum())


def test_min_positives_rule_of_three():
    assert min_positives(0.95) == 60
    assert min_positives(0.9) == 30


def test_rule_out_above_rule_in_is_clipped(known_run):
    # a rule-in cut at specificity 0.5 lies below the rule-out cut: no refer band, one cut
    tune_threshold(known_run, "specificity:0.5", rule_out_sensitivity=0.95)
    meta = RunDir(known_run).meta()
    assert meta.rule_out <= meta.threshold


def test_refit_keeps_the_rule_out_target(known_run):
    tune_threshold(known_run, "specificity:0.95", rule_out_sensitivity=0.95)
    tune_threshold(known_run, "f1")  # a new rule-in cut; the rule-out cut is refitted
    meta = RunDir(known_run).meta()
    assert meta.rule_out == pytest.approx(min(0.30, meta.threshold))
    assert meta.get("rule_out_fit")["target"] == 0.95


def test_refer_band_replaces_the_rule_out_cut(known_run):
    tune_threshold(known_run, "specificity:0.95", rule_out_sensitivity=0.95)
    tune_threshold(known_run, None, refer_coverage=0.9)
    meta = RunDir(known_run).meta()
    assert meta.rule_out is None and meta.refer is not None
    assert "rule_out_fit" not in read_json(known_run / "model.json")


def test_both_refer_rules_refused(known_run):
    with pytest.raises(ConfigError, match="choose one"):
        tune_threshold(known_run, "f1", refer_coverage=0.9, rule_out_sensitivity=0.95)
    with pytest.raises(ConfigError, match="rule_out_sensitivity: null"):
        load_config(None, ["deploy.refer_coverage=0.9"])
    cfg = load_config(None, ["deploy.refer_coverage=0.9", "deploy.rule_out_sensitivity=null"])
    assert cfg.deploy.refer_coverage == 0.9


def test_model_json_with_both_rules_refused(known_run):
    meta = read_json(known_run / "model.json")
    meta.update(rule_out=0.2, refer={"score": "p_error", "coverage": 0.9, "cutoff": 0.3,
                                     "threshold": 0.5, "temperature": 1.0})  # fmt: skip
    with pytest.raises(RunDirError, match="not both"):
        ModelMeta.parse(meta)


def test_old_format_refused_in_one_line(known_run):
    meta = read_json(known_run / "model.json")
    meta["format_version"] = FORMAT_VERSION - 1
    write_json(known_run / "model.json", meta)
    with pytest.raises(RunDirError) as exc:
        RunDir.open(known_run).meta()
    text = str(exc.value)
    assert "\n" not in text and "retrain" in text and f"reads {FORMAT_VERSION}" in text


def test_deploy_fits_the_two_cuts_by_default(known_run):
    cfg = DeployConfig(calibrate=False, ood="none")
    assert (cfg.rule_out_sensitivity, cfg.rule_in_specificity) == (0.95, 0.95)
    report = deploy_run(known_run, cfg)
    assert "refer" in report.fitted and "rule-out cut 0.3000" in report.fitted["refer"]
    meta = RunDir(known_run).meta()
    assert (meta.rule_out, meta.threshold) == pytest.approx((0.30, 0.60))
    metrics = RunDir(known_run).metrics()
    for split in ("val", "test"):
        for key in ("miss_rate", "normals_cleared", "referred", "fracture_ppv"):
            entry = metrics[split][key]
            assert entry["value"] is not None and entry["ci_low"] <= entry["value"]
    assert metrics["val"]["miss_rate"]["value"] == pytest.approx(1 / 20)
    assert metrics["val"]["normals_cleared"]["value"] == pytest.approx(18 / 20)


def test_decision_metrics_known_counts():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    d = ["fracture", "refer", "no_fracture", "out_of_scope",
         "no_fracture", "no_fracture", "refer", "fracture", "no_fracture", "fracture"]  # fmt: skip
    m = decision_metrics(y, d, n_boot=200)
    assert m["miss_rate"]["value"] == pytest.approx(1 / 5)
    assert m["normals_cleared"]["value"] == pytest.approx(3 / 5)
    assert m["referred"]["value"] == pytest.approx(2 / 10)
    assert m["fracture_ppv"]["value"] == pytest.approx(2 / 3)
    assert m["out_of_scope"]["value"] == pytest.approx(1 / 10)
    assert m["miss_rate"]["ci_low"] <= 0.2 <= m["miss_rate"]["ci_high"]
    with pytest.raises(ValueError, match="unknown decision"):
        decision_metrics([1], ["maybe"])


def test_run_decisions_match_the_predictor_rule(known_run):
    tune_threshold(known_run, "specificity:0.95", rule_out_sensitivity=0.95)
    run = RunDir(known_run)
    val = run.predictions("val")
    d = np.array(run_decisions(val, run.meta()))
    p = val["prob"].to_numpy()
    assert (d[p < 0.30] == "no_fracture").all()
    assert (d[(p >= 0.30) & (p < 0.60)] == "refer").all()
    assert (d[p >= 0.60] == "fracture").all()
