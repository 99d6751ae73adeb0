"""Refer rule, out-of-scope detector and the decision vocabulary (issue: know when not to
answer)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from bonefrac.errors import RunDirError
from bonefrac.metrics import (
    augrc,
    coverage_cutoff,
    error_detection_auroc,
    risk_coverage,
)
from bonefrac.rundir import DECISIONS, FORMAT_VERSION, ModelMeta, RunDir
from bonefrac.rundir.predictions import answer

META = {
    "format_version": FORMAT_VERSION,
    "architecture": "simple_cnn",
    "image_size": 64,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
}


# --- pure functions ------------------------------------------------------------------------


def test_augrc_random_and_perfect_rankings() -> None:
    rng = np.random.default_rng(0)
    errors = (rng.random(4000) < 0.2).astype(int)
    err = errors.mean()
    perfect = augrc(errors + rng.random(4000) * 0.1, errors)  # errors are the most uncertain
    random = augrc(rng.random(4000), errors)
    assert perfect == pytest.approx(err**2 / 2, abs=1e-3)
    assert random == pytest.approx(err / 2, abs=0.01)
    rc = risk_coverage([0.1, 0.1, 0.5], [0, 1, 1])  # ties move together
    assert rc["coverage"].tolist() == pytest.approx([0.0, 2 / 3, 1.0])
    assert rc["generalized_risk"].tolist() == pytest.approx([0.0, 1 / 3, 2 / 3])


def test_coverage_cutoff_is_exact_on_distinct_values() -> None:
    u = np.random.default_rng(1).random(237)
    for cov in (0.5, 0.8, 0.95, 1.0):
        assert np.mean(u <= coverage_cutoff(u, cov)) == pytest.approx(cov, abs=1 / len(u))


def test_decision_vocabulary_precedence() -> None:
    meta = ModelMeta.parse(
        {**META, "threshold": 0.5,
         "refer": {"score": "margin", "coverage": 0.8, "cutoff": 0.5, "threshold": 0.5},
         "ood": {"method": "energy", "cutoff": 1.0}}
    )  # fmt: skip
    got = meta.decisions([0.9, 0.1, 0.55, 0.9], [0.1, 0.1, 0.9, 0.9], [0.0, 0.0, 0.0, 5.0])
    assert got == ["fracture", "no_fracture", "refer", "out_of_scope"]
    assert set(got) <= set(DECISIONS)


def test_refer_rule_fitted_at_another_threshold_is_refused() -> None:
    with pytest.raises(RunDirError, match="refer-coverage"):
        ModelMeta.parse(
            {**META, "threshold": 0.3,
             "refer": {"score": "margin", "coverage": 0.8, "cutoff": 0.5, "threshold": 0.5}}
        )  # fmt: skip


# --- on the tiny trained run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def decided_run(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """A copy of the tiny run with a refer rule (coverage 0.8) and an out-of-scope detector."""
    from bonefrac.evaluation.ood import fit_ood
    from bonefrac.evaluation.thresholds import tune_threshold

    run = tmp_path_factory.mktemp("decide") / "tiny"
    shutil.copytree(tiny_run, run)
    tune_threshold(run, None, refer_coverage=0.8, refer_tta=True)
    fit_ood(run, "mahalanobis")
    return run


def test_refer_coverage_on_val_equals_the_request(decided_run: Path) -> None:
    from bonefrac.evaluation.refer import uncertainty_for

    run = RunDir.open(decided_run)
    meta = run.meta()
    rule = meta.refer
    assert rule is not None and rule.coverage == 0.8 and rule.tuned_on == "val"
    u = uncertainty_for(rule.score, run, "val", meta)
    assert np.mean(u <= rule.cutoff) == pytest.approx(0.8, abs=1 / len(u))
    raw = run.raw_meta()["refer"]
    assert set(raw["error_auroc"]) == {"p_error", "margin", "tta_std"}
    assert raw["tta_model_calls_per_image"] == 8 and set(raw["tta_gain"]) == {"gain", "low", "high"}
    # the TTA spread is cached in val.csv, so refitting does not predict the images again
    assert "tta_std" in run.read_predictions_raw("val").columns


def test_uncertainty_ranks_errors_above_right_answers(decided_run: Path, tmp_path: Path) -> None:
    # the tiny run is near perfect on val: a threshold at val's 25th percentile makes errors
    from bonefrac.evaluation.thresholds import tune_threshold

    run_dir = tmp_path / "run"
    shutil.copytree(decided_run, run_dir)
    run = RunDir.open(run_dir)
    probs = run.predictions("val")["prob"].to_numpy()
    run.update_meta(threshold=float(np.quantile(probs, 0.25)))
    tune_threshold(run_dir, None, refer_coverage=0.8)
    rule = run.raw_meta()["refer"]
    assert rule["val_error_rate"] > 0.05
    best = rule["error_auroc"][rule["score"]]
    assert best is not None and best > 0.6, rule
    assert all(v is None or v >= 0 for v in rule["error_auroc"].values())


def test_margin_uncertainty_ranks_synthetic_errors() -> None:
    # a synthetic task: labels drawn from the probabilities, so errors sit near the threshold
    from bonefrac.rundir import margin_uncertainty

    rng = np.random.default_rng(3)
    p = rng.random(2000)
    y = (rng.random(2000) < p).astype(int)
    wrong = ((p >= 0.5) != (y == 1)).astype(int)
    assert error_detection_auroc(margin_uncertainty(p, 0.5), wrong) > 0.7


@pytest.mark.parametrize("threshold", [0.2, 0.3])
def test_error_probability_ranks_errors_where_margin_fails_off_centre(threshold: float) -> None:
    # calibrated scores (labels drawn from them), skewed low as fracture scores are, and a
    # threshold below 0.5: the margin stretches the short side and ranks errors near chance
    from bonefrac.rundir import error_probability, margin_uncertainty

    rng = np.random.default_rng(3)
    p = rng.random(2000) ** 2
    y = (rng.random(2000) < p).astype(int)
    wrong = ((p >= threshold) != (y == 1)).astype(int)
    margin = error_detection_auroc(margin_uncertainty(p, threshold), wrong)
    p_error = error_detection_auroc(error_probability(p, threshold), wrong)
    assert p_error > 0.8 and p_error > margin + 0.1
    # at 0.5 both rank alike
    wrong = ((p >= 0.5) != (y == 1)).astype(int)
    assert error_detection_auroc(error_probability(p, 0.5), wrong) == pytest.approx(
        error_detection_auroc(margin_uncertainty(p, 0.5), wrong)
    )


def test_tta_is_kept_only_when_clearly_better_than_the_free_score() -> None:
    from bonefrac.evaluation.refer import tta_gain

    rng = np.random.default_rng(0)
    wrong = (rng.random(600) < 0.2).astype(int)
    free = wrong + rng.normal(0, 1.0, 600)  # ranks errors a little
    clearly = tta_gain(wrong + rng.normal(0, 0.2, 600), free, wrong)
    assert clearly["low"] > 0 and clearly["gain"] > 0.1
    same = tta_gain(wrong + rng.normal(0, 1.0, 600), free, wrong)
    assert same["low"] < 0 < same["high"]
    assert tta_gain(free, free, np.zeros(600, dtype=int))["gain"] is None


def test_predictor_gives_the_vocabulary(decided_run: Path, synthetic_manifest: Path) -> None:
    from bonefrac.inference.predictor import Predictor

    pred = Predictor.from_run(decided_run)
    images = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))
    out = pred.predict(images)
    assert {p.decision for p in out} <= set(DECISIONS)
    for p in out:
        assert p.uncertainty is not None and p.ood_score is not None
        assert p.refer == (p.uncertainty > pred.meta.refer.cutoff)
        if p.decision in ("fracture", "no_fracture"):
            assert not p.refer and not p.out_of_scope
            assert (p.decision == "fracture") == (p.probability >= p.threshold)
        # a fitted run refuses by its appearance rule or its feature detector
        assert (p.ood_reason in ("appearance", "features")) == (p.decision == "out_of_scope")
        d = answer(p)
        assert {"uncertainty", "refer", "out_of_scope", "ood_score", "decision"} <= set(d)
    assert any(p.decision == "refer" for p in out)
    for value in (0, 128, 255):  # blank frames: out of scope whatever their score
        blank = pred.predict(np.full((64, 64), value, np.uint8))[0]
        assert blank.decision == "out_of_scope" and blank.out_of_scope
        assert blank.ood_reason == "blank"
        assert blank.ood_score is not None and np.isfinite(blank.ood_score)


def test_out_of_scope_auroc_on_offline_probes(decided_run: Path, synthetic_manifest: Path) -> None:
    from bonefrac.inference.predictor import Predictor
    from tests.fixtures.ood_probes import probe_images, transformed

    pred = Predictor.from_run(decided_run)
    images = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))
    inside = [np.asarray(Image.open(p).convert("L")) for p in images]
    probes = [img for imgs in probe_images().values() for img in imgs]

    def scores(arrays: list[np.ndarray]) -> np.ndarray:
        return pred.ood_scores([pred.prepare(a).array for a in arrays])

    s_in, s_out = scores(inside), scores(probes)
    auroc = roc_auc_score([0] * len(s_in) + [1] * len(s_out), np.r_[s_in, s_out])
    assert auroc > 0.95
    # rotated / inverted radiographs: reported, not asserted (a tiny model on synthetic data)
    kept = {
        kind: float(
            np.mean(~pred.meta.out_of_scope(scores([transformed(a)[kind] for a in inside])))
        )
        for kind in ("rot90", "rot180", "inverted")
    }
    print(f"out-of-scope AUROC {auroc:.3f}; share kept in scope: {kept}")


def test_ood_refuses_a_changed_statistics_file(decided_run: Path, tmp_path: Path) -> None:
    from bonefrac.inference.predictor import Predictor

    run = tmp_path / "run"
    shutil.copytree(decided_run, run)
    RunDir(run).ood_stats_path.write_bytes(b"garbage")
    with pytest.raises(RunDirError, match="bonefrac ood"):
        Predictor.from_run(run).predict(np.zeros((64, 64), np.uint8))


def test_threshold_retune_refits_the_refer_rule(decided_run: Path, tmp_path: Path) -> None:
    from bonefrac.evaluation.thresholds import tune_threshold

    run = tmp_path / "run"
    shutil.copytree(decided_run, run)
    tune_threshold(run, "youden")
    meta = RunDir.open(run).meta()
    assert meta.refer is not None and meta.refer.threshold == meta.threshold


def test_evaluate_writes_augrc_and_selective(decided_run: Path, tmp_path: Path) -> None:
    from bonefrac.evaluation.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(decided_run, run)
    res = evaluate_run(run, split="test", n_boot=50)
    stored = json.loads(RunDir(run).metrics_path.read_text())["test"]
    a = stored["augrc"]
    assert set(a) == {"value", "ci_low", "ci_high"} and a["ci_low"] <= a["value"] <= a["ci_high"]
    ref = stored["selective"]["refer"]
    assert ref["n_accepted"] + ref["n_referred"] == stored["support"]["n"]
    assert "ci_low" in ref["sensitivity"] and "ci_low" in ref["specificity"]
    assert res.plots["risk_coverage"].is_file()
    html = RunDir(run).report_path.read_text()
    assert "AUGRC" in html and "Refer rule" in html


def test_compare_ranks_by_augrc(decided_run: Path, tiny_run: Path, tmp_path: Path) -> None:
    from bonefrac.evaluation.compare import augrc_sentence, compare_runs

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(decided_run, a)
    shutil.copytree(tiny_run, b)
    res = compare_runs([a, b], split="test", out_dir=tmp_path / "cmp", n_boot=20)
    assert sorted(res.by_augrc) == ["a", "b"]
    assert all(res.metrics[n]["augrc"]["value"] is not None for n in res.names)
    assert "AUGRC" in augrc_sentence(res)


def test_predict_csv_has_the_decision_columns(decided_run: Path, synthetic_manifest: Path,
                                              tmp_path: Path) -> None:  # fmt: skip
    from bonefrac.batch_predict.job import predict_to_csv
    from bonefrac.config import PredictConfig

    images = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[:6]
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(blank)
    out = tmp_path / "p.csv"
    predict_to_csv(decided_run, [*images, blank], out, PredictConfig(workers=0, progress=False))
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["decision"] in DECISIONS for r in rows)
    assert all(r["uncertainty"] and r["ood_score"] and r["refer"] in "01" for r in rows)
    row = next(r for r in rows if r["path"].endswith("blank.png"))
    assert row["decision"] == "out_of_scope" and row["out_of_scope"] == "1"
    assert row["ood_reason"] == "blank"


def test_cli_threshold_refer_coverage_and_ood(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bonefrac.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    runner = CliRunner()
    res = runner.invoke(app, ["threshold", str(run), "--refer-coverage", "0.9"])
    assert res.exit_code == 0, res.output
    assert "refer rule" in res.output and RunDir.open(run).meta().refer.coverage == 0.9
    res = runner.invoke(app, ["threshold", str(run)])
    assert res.exit_code == 2 and "--refer-coverage" in res.output
    res = runner.invoke(app, ["ood", str(run), "--method", "energy"])
    assert res.exit_code == 0, res.output
    assert RunDir.open(run).meta().ood.method == "energy"
    res = runner.invoke(app, ["ood", str(run)])
    assert res.exit_code == 2 and "--force" in res.output


def test_calibrate_removes_a_stale_refer_rule(decided_run: Path, tmp_path: Path) -> None:
    from bonefrac.evaluation.calibration import calibrate_run

    run = tmp_path / "run"
    shutil.copytree(decided_run, run)
    calibrate_run(run)
    meta = RunDir.open(run).meta()  # still valid: the rule fitted at T = 1 was removed
    assert meta.temperature != 1.0 and meta.refer is None


def test_tta_std_names_a_val_image_that_cannot_be_read(tiny_run, tmp_path):
    """TTA runs through the one batch loop; a missing image is an error naming it, never a
    shorter column."""
    import shutil

    from bonefrac.errors import DataError
    from bonefrac.evaluation.refer import split_tta_std

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rd = RunDir.open(run)
    raw = rd.read_predictions_raw("val")
    raw.loc[3, "path"] = str(tmp_path / "gone.png")
    rd.write_predictions("val", raw)
    with pytest.raises(DataError, match="gone.png"):
        split_tta_std(rd, "val")
    raw = rd.read_predictions_raw("val")
    assert "tta_std" not in raw.columns  # nothing half-written
