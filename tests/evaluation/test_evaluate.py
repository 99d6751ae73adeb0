from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.errors import ConfigError, DataError, RunDirError
from bonefrac.evaluation.evaluate import evaluate_run
from bonefrac.fileio import read_json, write_json
from bonefrac.metrics import METRIC_NAMES, compute_metrics

REQUIRED = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")


def test_evaluate_writes_metrics_plots_subgroups(fake_run):
    # metrics.json from training already holds "val": evaluate must merge, not replace
    write_json(
        fake_run / "metrics.json", {"val": {"accuracy": {"value": 1, "ci_low": 1, "ci_high": 1}}}
    )
    res = evaluate_run(fake_run, split="test", n_boot=200)
    data = json.loads((fake_run / "metrics.json").read_text(), parse_constant=None)
    assert set(data) == {"val", "test"}
    for name in REQUIRED:
        entry = data["test"][name]
        assert set(entry) == {"value", "ci_low", "ci_high"}
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    test = pd.read_csv(fake_run / "predictions" / "test.csv")
    expected = compute_metrics(test["label"], test["prob"], 0.5, n_boot=200)
    assert data["test"]["roc_auc"] == expected["roc_auc"]
    for kind in ("roc", "pr", "confusion", "reliability", "threshold"):
        assert (fake_run / "plots" / f"test_{kind}.png").stat().st_size > 1000
    sub = pd.read_csv(fake_run / "subgroups" / "test.csv")
    assert set(sub["column"]) == {"region", "view", "source"}
    assert set(sub.loc[sub["column"] == "region", "group"]) == {"hand", "leg", "hip"}
    assert sub.loc[sub["column"] == "source", "n"].item() == len(test)
    assert res.report is not None and res.report.is_file()


def test_evaluate_applies_temperature_and_threshold(fake_run):
    model = read_json(fake_run / "model.json")
    write_json(fake_run / "model.json", {**model, "temperature": 2.0, "threshold": 0.4})
    res = evaluate_run(fake_run, split="val", n_boot=0, report=False)
    val = pd.read_csv(fake_run / "predictions" / "val.csv")
    p = 1 / (1 + np.exp(-val["logit"] / 2.0))
    cm = res.metrics["confusion_matrix"]
    assert cm["tp"] + cm["fp"] == int(np.sum(p >= 0.4))
    assert res.metrics["settings"]["temperature"] == 2.0


def _fake_predict(run_dir, df, batch_size=32):
    out = df.copy()
    rng = np.random.default_rng(0)
    out["logit"] = 2.0 * (2 * out["label"] - 1) + rng.normal(0, 1, len(out))
    out["prob"] = 1 / (1 + np.exp(-out["logit"]))
    return out


@pytest.fixture()
def patched_predict(monkeypatch):
    from bonefrac.inference import run_predictions

    calls = []

    def fake(run_dir, df, batch_size=32, **kwargs):
        calls.append(len(df))
        return run_predictions.FramePrediction(_fake_predict(run_dir, df, batch_size))

    monkeypatch.setattr(run_predictions, "predict_run_frame", fake)
    return calls


def _manifest(tmp_path, with_split=True):
    rng = np.random.default_rng(1)
    n = 60
    df = pd.DataFrame(
        {
            "image_id": [f"ext_{i}" for i in range(n)],
            "path": [f"images/ext_{i}.png" for i in range(n)],
            "label": rng.integers(0, 2, n),
            "hardware": rng.choice(["siemens", "ge"], n),
        }
    )
    if with_split:
        df["split"] = ["test"] * 20 + ["train"] * 30 + ["val"] * 10
    path = tmp_path / "other.csv"
    df.to_csv(path, index=False)
    return path


def test_external_manifest_uses_test_rows(fake_run, tmp_path, patched_predict):
    man = _manifest(tmp_path)
    res = evaluate_run(fake_run, manifest=man, name="hospital", n_boot=100)
    assert patched_predict == [20]
    pred = pd.read_csv(fake_run / "predictions" / "hospital.csv")
    assert len(pred) == 20
    assert {"image_id", "path", "label", "logit", "prob", "hardware"} <= set(pred.columns)
    assert "hospital" in read_json(fake_run / "metrics.json")
    assert res.metrics["support"]["n"] == 20
    assert (fake_run / "subgroups" / "hospital.csv").is_file()
    # exists now: refuse to overwrite without force, allow with it
    with pytest.raises(RunDirError, match="--force"):
        evaluate_run(fake_run, manifest=man, name="hospital", n_boot=10)
    evaluate_run(fake_run, manifest=man, name="hospital", all_rows=True, force=True, n_boot=10)
    assert patched_predict == [20, 60]
    # and the stored predictions can be re-scored by name
    again = evaluate_run(fake_run, split="hospital", n_boot=10, report=False)
    assert again.metrics["support"]["n"] == 60


def test_external_path_label_csv(fake_run, tmp_path, patched_predict):
    csv = tmp_path / "plain.csv"
    pd.DataFrame({"path": [f"a{i}.png" for i in range(10)], "label": [0, 1] * 5}).to_csv(
        csv, index=False
    )
    res = evaluate_run(fake_run, manifest=csv, n_boot=50)  # default name: external
    assert res.key == "external"
    pred = pd.read_csv(fake_run / "predictions" / "external.csv")
    assert list(pred["image_id"]) == [f"a{i}.png" for i in range(10)]


def test_external_plain_csv_ids_stay_unique_across_folders(tmp_path, patched_predict):
    # Roboflow-style export: the same file name in several folders
    from bonefrac.evaluation.compare import compare_runs
    from tests.evaluation.conftest import make_run

    paths = [f"{split}/{cls}/{i}.png" for split in ("test", "val")
             for cls in ("fractured", "not fractured") for i in range(5)]  # fmt: skip
    csv = tmp_path / "plain.csv"
    labels = [int("not" not in p) for p in paths]
    pd.DataFrame({"path": paths, "label": labels}).to_csv(csv, index=False)
    runs = [make_run(tmp_path, name) for name in ("a", "b")]
    for run in runs:
        evaluate_run(run, manifest=csv, n_boot=0, report=False)
    ids = pd.read_csv(runs[0] / "predictions" / "external.csv")["image_id"].tolist()
    assert ids == paths  # relative to the folder all paths share, POSIX separators
    assert len(set(ids)) == len(ids)
    result = compare_runs(runs, split="external", n_boot=0)  # no "appears more than once"
    assert len(result.names) == 2 and result.n_images == len(paths)


def test_external_errors(fake_run, tmp_path, patched_predict):
    man = _manifest(tmp_path)
    with pytest.raises(ConfigError, match="reserved"):
        evaluate_run(fake_run, manifest=man, name="test")
    df = pd.read_csv(man)
    df["split"] = "train"
    df.to_csv(man, index=False)
    with pytest.raises(DataError, match="--all-rows"):
        evaluate_run(fake_run, manifest=man, name="x")


def test_missing_predictions_named(fake_run):
    with pytest.raises(RunDirError, match="available predictions: test, val"):
        evaluate_run(fake_run, split="external")


def test_cli_evaluate(fake_run, tmp_path, patched_predict):
    r = CliRunner().invoke(app, ["evaluate", str(fake_run), "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    assert "roc_auc" in r.output and "report" in r.output
    r = CliRunner().invoke(
        app, ["evaluate", str(fake_run), "--manifest", str(_manifest(tmp_path)), "--name", "ext",
              "--all-rows", "--n-boot", "50"]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert read_json(fake_run / "metrics.json")["ext"]["support"]["n"] == 60
    r = CliRunner().invoke(app, ["evaluate", str(fake_run), "--split", "nope"])
    assert r.exit_code == 2
    assert "nope.csv" in r.output


def test_metric_names_complete():
    assert set(REQUIRED) <= set(METRIC_NAMES)


def test_subgroup_flags_with_blanks_are_named_as_integers() -> None:

    from bonefrac.evaluation.evaluate import group_labels, subgroup_table

    hardware = pd.Series([0.0, 1.0, None, 0.0])
    assert group_labels(hardware).tolist() == ["0", "1", "unknown", "0"]
    assert group_labels(pd.Series([0.5, None])).tolist() == ["0.5", "unknown"]
    df = pd.DataFrame({"label": [0, 1, 1, 0, 1, 0], "hardware": [0.0, 1.0, None, 0.0, 1.0, None]})
    table = subgroup_table(df, np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.3]), 0.5, n_boot=0)
    assert sorted(table["group"]) == ["0", "1", "unknown"]
