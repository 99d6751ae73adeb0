"""The run directory: one layout, validated model metadata, one error per problem."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bonefrac.errors import RunDirError
from bonefrac.rundir import FORMAT_VERSION, ModelMeta, RunDir, usable_threshold

GOOD = {
    "format_version": FORMAT_VERSION,
    "architecture": "simple_cnn",
    "image_size": 64,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "threshold": 0.5,
    "temperature": 1.0,
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"threshold": -0.5}, "threshold"),
        ({"threshold": 2.0}, "threshold"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": "abc"}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"std": [0, 0, 0]}, "std"),
        ({"std": [0.5, float("nan"), 0.5]}, "std"),
        ({"mean": [0.5, float("inf"), 0.5]}, "mean"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": None}, "image_size"),
        ({"architecture": ""}, "architecture"),
    ],
)
def test_metadata_that_cannot_be_trusted_is_refused(change, field):
    with pytest.raises(RunDirError, match=rf"model.json: invalid model metadata \({field}"):
        ModelMeta.parse({**GOOD, **change}, "run/model.json")


def test_missing_field_is_named():
    meta = dict(GOOD)
    del meta["image_size"]
    with pytest.raises(RunDirError, match="image_size: Field required"):
        ModelMeta.parse(meta, "model.json")


@pytest.mark.parametrize(
    ("version", "line"),
    [
        (None, "trained with an older bonefrac (model.json format_version missing"),
        (0, "trained with an older bonefrac (model.json format_version 0"),
        (True, "trained with an older bonefrac (model.json format_version True"),
        (FORMAT_VERSION + 1, f"written by a newer bonefrac (model.json format_version "
         f"{FORMAT_VERSION + 1}"),
    ],
)  # fmt: skip
def test_another_format_version_is_one_line_that_says_to_retrain(version, line):
    meta = {k: v for k, v in GOOD.items() if k != "format_version"}
    if version is not None:
        meta["format_version"] = version
    with pytest.raises(RunDirError) as err:
        ModelMeta.parse({**meta, "threshold": 7.0}, "run/model.json")  # the version comes first
    message = str(err.value)
    assert message.startswith(f"run/model.json: {line}, this version reads {FORMAT_VERSION}); ")
    assert message.endswith("retrain it with 'bonefrac train'") and "\n" not in message


def test_rewriting_model_json_keeps_its_format_version(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.write_meta(GOOD)
    run.update_meta(threshold=0.3)
    assert run.raw_meta()["format_version"] == FORMAT_VERSION == run.meta().format_version


def test_probability_and_decision_use_temperature_and_threshold():
    meta = ModelMeta.parse({**GOOD, "temperature": 2.0, "threshold": 0.4, "custom": {"k": 1}})
    logits = np.array([-3.0, 0.0, 1.0, 50.0, -800.0])
    prob = meta.probability(logits)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logits / 2.0)))
    assert meta.decide(prob).tolist() == [False, True, True, True, False]
    assert meta.get("custom") == {"k": 1} and meta.temperature == 2.0
    assert ModelMeta.parse({**GOOD, "temperature": None}).temperature == 1.0


def test_usable_threshold_stays_inside_the_open_interval():
    assert 0.0 < usable_threshold(0.0) < 1e-300
    assert usable_threshold(1.0000001) < 1.0 and usable_threshold(1.0) == np.nextafter(1.0, 0.0)
    assert usable_threshold(0.25) == 0.25
    assert not math.isnan(usable_threshold(2.0))


def test_open_and_create_messages(tmp_path):
    with pytest.raises(RunDirError, match="run directory not found"):
        RunDir.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="model.json: missing"):
        RunDir.open(tmp_path / "empty")
    run = RunDir.create(tmp_path / "run")
    run.write_meta(GOOD)
    with pytest.raises(RunDirError, match="pass --force"):
        RunDir.create(tmp_path / "run")
    assert not any(RunDir.create(tmp_path / "run", force=True).path.iterdir())
    with pytest.raises(RunDirError, match="no config.yaml"):
        RunDir.for_resume(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunDir.for_resume(tmp_path / "run")


def test_write_meta_validates_before_writing_and_keeps_key_order(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.write_meta({"zeta": 1, **GOOD})
    with pytest.raises(RunDirError, match="threshold"):
        run.update_meta(threshold=1.5)
    assert run.meta().threshold == 0.5  # the bad value never reached the file
    assert list(run.raw_meta())[0] == "zeta"
    run.meta_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(RunDirError, match="not valid JSON"):
        run.meta()


def test_predictions_and_metrics_round_trip(tmp_path):
    import pandas as pd

    run = RunDir.create(tmp_path / "run")
    frame = pd.DataFrame({"image_id": ["a", "b"], "path": ["/a", "/b"], "label": [0, 1]})
    from bonefrac.rundir import predictions_frame

    sizes = [(40, 30), (30, 40)]
    run.write_predictions("val", predictions_frame(frame, np.array([-1.0, 2.0]), sizes))
    df = run.predictions("val")
    np.testing.assert_allclose(df["prob"], 1 / (1 + np.exp(-np.array([-1.0, 2.0]))))
    assert run.available_predictions() == ["val"]
    with pytest.raises(RunDirError, match="available predictions: val"):
        run.predictions("test")
    with pytest.raises(RunDirError, match="not a usable prediction name"):
        run.prediction_path("../x")
    run.merge_metrics("val", {"roc_auc": 1})
    run.merge_metrics("test", {"roc_auc": 0.5})
    assert run.metrics() == {"val": {"roc_auc": 1}, "test": {"roc_auc": 0.5}}
