"""Localisation metrics from a predictions CSV: AP50, FROC, hit rate, baselines, CIs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bonefrac.errors import DataError
from bonefrac.evaluation.localization_metrics import (
    FROC_BUDGETS,
    LOC_METRIC_NAMES,
    LocInputs,
    ap50,
    chance_hits,
    froc_items,
    froc_sensitivities,
    localization_metrics,
    point_hits,
    read_inputs,
    split_localization,
)
from bonefrac.maps.pointing_game import box_mask
from tests.evaluation.conftest import make_predictions
from tests.evaluation.locfake import add_localization


def _inputs(df: pd.DataFrame, size=(100, 100)) -> LocInputs:
    return read_inputs(df, "test.csv", sizes=[size] * len(df))


def _parsed(df: pd.DataFrame) -> tuple[list, list]:
    inp = _inputs(df)
    return inp.true_boxes, inp.pred_boxes


def test_ap50_perfect_is_one_and_shuffled_near_zero():
    df = make_predictions(200, seed=1)
    truth, preds = _parsed(add_localization(df, seed=2, quality="perfect"))
    assert ap50(truth, preds) == pytest.approx(1.0)
    # false boxes on every image, scored below every true one: precision stays 1 up to full
    # recall, so AP is still 1 (negatives included, ranked last)
    truth, preds = _parsed(add_localization(df, seed=2, quality="perfect", n_false=2))
    assert ap50(truth, preds) == pytest.approx(1.0)
    truth, preds = _parsed(add_localization(df, seed=2, quality="shuffled"))
    assert ap50(truth, preds) < 0.05


def test_ap50_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    detection = pytest.importorskip("torchmetrics.detection")
    df = add_localization(make_predictions(120, seed=3), seed=4, quality="perfect", n_false=1)
    truth, preds = _parsed(df)
    rng = np.random.default_rng(5)  # jitter the predicted boxes so AP is strictly between 0 and 1
    preds = [[[b[0] + rng.normal(0, 0.02), *b[1:]] for b in p] for p in preds]
    ours = ap50(truth, preds)
    assert 0.05 < ours < 0.99
    metric = detection.MeanAveragePrecision(
        box_format="cxcywh", iou_thresholds=[0.5], backend="pycocotools"
    )
    zeros = torch.zeros
    metric.update(
        [
            {
                "boxes": torch.tensor([b[:4] for b in p], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor([b[4] for b in p], dtype=torch.float32),
                "labels": zeros(len(p), dtype=torch.long),
            }
            for p in preds
        ],
        [
            {
                "boxes": torch.tensor(t, dtype=torch.float32).reshape(-1, 4),
                "labels": zeros(len(t), dtype=torch.long),
            }
            for t in truth
        ],
    )
    assert ours == pytest.approx(float(metric.compute()["map"]), abs=1e-4)


def test_ap50_without_true_boxes_is_undefined():
    assert math.isnan(ap50([[], []], [[[0.5, 0.5, 0.1, 0.1, 0.9]], []]))


def test_froc_hand_example_and_monotone():
    truth = [[[0.5, 0.5, 0.2, 0.2]], [[0.2, 0.2, 0.1, 0.1]], []]
    preds = [
        [[0.52, 0.48, 0.05, 0.05, 0.9], [0.9, 0.9, 0.1, 0.1, 0.8]],  # found + FP
        [[0.7, 0.7, 0.1, 0.1, 0.7], [0.21, 0.2, 0.3, 0.3, 0.3]],  # FP, then found (centre in)
        [[0.5, 0.5, 0.1, 0.1, 0.6]],  # FP on a negative image
    ]
    items = froc_items(truth, preds)
    # thresholds: 0.9 -> 1/2 found, 0 FP; 0.8 -> 1 FP; 0.7 -> 2 FP; 0.6 -> 3 FP; 0.3 -> 2/2
    sens = froc_sensitivities(items, [0.0, 1 / 3, 0.5, 1.0, 2.0])
    assert list(sens) == [0.5, 0.5, 0.5, 1.0, 1.0]
    rng = np.random.default_rng(0)
    df = add_localization(make_predictions(150, seed=6), seed=7, quality="shuffled", n_false=3)
    inp = _inputs(df)
    # a mix: half the images get their own boxes back, at random scores
    preds = [
        p if i % 2 else [[*b, float(rng.uniform(0.05, 1))] for b in t] + p
        for i, (t, p) in enumerate(zip(inp.true_boxes, inp.pred_boxes, strict=True))
    ]
    items = froc_items(inp.true_boxes, preds)
    budgets = sorted(rng.uniform(0, 4, 30))
    curve = froc_sensitivities(items, budgets)
    assert np.all(np.diff(curve) >= 0)
    m = localization_metrics(LocInputs(inp.image_ids, inp.true_boxes, inp.sizes, preds), n_boot=50)
    values = [m[k]["value"] for k in FROC_BUDGETS]
    assert values == sorted(values) and 0 < values[0] < values[-1] <= 1


def test_hit_rate_peaks_at_box_centres_is_one():
    df = add_localization(make_predictions(100, seed=8), seed=9, quality="perfect")
    m = localization_metrics(_inputs(df), n_boot=100)
    assert m["hit_rate"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert m["ap50"]["value"] == pytest.approx(1.0)
    assert all(m[k]["value"] == 1.0 for k in FROC_BUDGETS)
    shuffled = localization_metrics(
        _inputs(add_localization(make_predictions(100, seed=8), seed=9, quality="shuffled")),
        n_boot=100,
    )
    assert shuffled["hit_rate"]["value"] < 0.3


def test_hit_tolerance_is_five_percent_of_the_longer_side_in_pixels():
    box = [[0.5, 0.5, 0.1, 0.1]]  # on 200 x 100 px: x 90..110, y 45..55
    sizes = [(200, 100)] * 3
    # 10 px = 5 % of 200 px: right of the box by 9 px hits, by 11 px misses
    points = [(119 / 200, 0.5), (121 / 200, 0.5), None]
    hits = point_hits(points, [box] * 3, sizes)
    assert list(hits) == [1.0, 0.0, 0.0]  # a missing peak is a miss
    assert math.isnan(point_hits([(0.5, 0.5)], [[]], [(10, 10)])[0])


def test_baselines_centre_and_chance():
    truth = [[[0.5, 0.5, 0.2, 0.2]], [[0.1, 0.1, 0.1, 0.1]], []]
    sizes = [(100, 100), (300, 200), (50, 50)]
    centre = point_hits([(0.5, 0.5)] * 3, truth, sizes)
    assert centre[0] == 1.0 and centre[1] == 0.0 and math.isnan(centre[2])
    chance = chance_hits(truth, sizes)
    assert chance[0] == pytest.approx(box_mask(truth[0], 100, 100, 5.0).mean())
    assert chance[1] == pytest.approx(box_mask(truth[1], 300, 200, 15.0).mean())
    df = add_localization(make_predictions(80, seed=10), seed=11, quality="centre")
    m = localization_metrics(_inputs(df), n_boot=0)
    assert m["hit_rate"]["value"] == m["centre_hit_rate"]["value"]
    assert m["hit_rate"]["ci_low"] is None
    assert 0 < m["chance_hit_rate"]["value"] < 0.1


def test_cis_bracket_values_and_are_seeded():
    df = add_localization(make_predictions(150, seed=12), seed=13, quality="shuffled", n_false=1)
    df.loc[df.index[::3], "pred_boxes"] = add_localization(
        make_predictions(150, seed=12), seed=13, quality="perfect"
    )["pred_boxes"][::3]
    inp = _inputs(df)
    a = localization_metrics(inp, n_boot=200, seed=1)
    b = localization_metrics(inp, n_boot=200, seed=1)
    assert a == b
    for name in LOC_METRIC_NAMES:
        e = a[name]
        assert e["ci_low"] <= e["value"] <= e["ci_high"], name
    assert a["ap50"]["ci_low"] < a["ap50"]["ci_high"]
    st = a["localization"]["settings"]
    assert st["n_boot"] == 200 and st["ap_n_boot"] == 200 and "centre" in st["froc_match"]
    assert (
        localization_metrics(inp, n_boot=200, ap_n_boot=20)["localization"]["settings"]["ap_n_boot"]
        == 20
    )
    json.dumps(a, allow_nan=False)  # plain JSON values


def test_classification_only_predictions_have_no_localisation():
    assert split_localization(make_predictions(20)) is None


def test_partial_columns_give_the_metrics_they_allow():
    df = add_localization(make_predictions(60, seed=14), seed=15).drop(
        columns=["pred_boxes", "energy_in_box"]
    )
    m = split_localization(df, "x.csv", n_boot=0)
    assert "hit_rate" in m and "ap50" not in m and "energy_in_box" not in m


def test_no_boxes_in_split_gives_undefined_values():
    df = add_localization(make_predictions(30, seed=16), seed=17)
    df["boxes"] = "[]"
    df["energy_in_box"] = np.nan
    m = split_localization(df, "x.csv", n_boot=10)
    assert m["hit_rate"]["value"] is None and m["ap50"]["value"] is None
    assert m["localization"]["notes"]


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("pred_boxes", "[[0.5, 0.5, 0.1", "not valid JSON"),
        ("pred_boxes", "[[0.5, 0.5, 0.1, 0.1]]", "score"),
        ("boxes", '[["a", 1, 2, 3]]', "finite numbers"),
        ("map_peak", "[0.5]", "[x, y]"),
        ("energy_in_box", "2.5", "[0, 1]"),
    ],
)
def test_malformed_cells_name_file_image_and_column(column, value, words):
    df = add_localization(make_predictions(20, seed=18), seed=19).astype({column: object})
    row = int(np.flatnonzero(df["label"].to_numpy() == 1)[0])
    df.loc[df.index[row], column] = value
    with pytest.raises(DataError) as err:
        split_localization(df, "preds/test.csv", n_boot=0)
    msg = str(err.value)
    assert "preds/test.csv" in msg and column in msg and df["image_id"].iloc[row] in msg
    assert words in msg


def test_sizes_from_the_size_columns_and_fallback(tmp_path):
    df = add_localization(
        make_predictions(10, seed=20), seed=21, images_dir=tmp_path, size=(60, 20)
    )
    # the images are there, but sizes come from the CSV alone (no image file is opened)
    assert read_inputs(df, "x.csv").sizes == [None] * 10
    m = split_localization(df, "x.csv", n_boot=0)
    assert "unit square" in m["localization"]["notes"]["sizes"]
    df["width"], df["height"] = 60, 20
    assert read_inputs(df, "x.csv").sizes == [(60, 20)] * 10
    assert "sizes" not in split_localization(df, "x.csv", n_boot=0)["localization"]["notes"]


def test_ap_and_froc_rank_the_candidate_boxes_when_present():
    # the shown boxes (pred_boxes, above the box threshold) miss half the fractures; the
    # candidates down to the score floor (cand_boxes) hold them all: AP and FROC use those
    df = add_localization(make_predictions(80, seed=20), seed=21, quality="perfect")
    shown = [json.dumps(b if i % 2 else []) for i, b in enumerate(df["pred_boxes"].map(json.loads))]
    df = df.assign(cand_boxes=df["pred_boxes"], pred_boxes=shown)
    m = split_localization(df, "x.csv", n_boot=0)
    assert m["ap50"]["value"] == pytest.approx(1.0)
    assert m["froc_1"]["value"] == pytest.approx(1.0)
    assert m["localization"]["settings"]["ranked_boxes"] == "cand_boxes"
    n_shown = sum(len(json.loads(v)) for v in shown)
    assert m["localization"]["support"]["n_pred_boxes"] == n_shown  # the shown ones are counted
    without = split_localization(df.drop(columns=["cand_boxes"]), "x.csv", n_boot=0)
    assert without["ap50"]["value"] < 0.75
    assert without["localization"]["settings"]["ranked_boxes"] == "pred_boxes"
    half = read_inputs(df, "x.csv", sizes=[(100, 100)] * len(df)).subset(range(10))
    assert half.cand_boxes is not None and len(half.cand_boxes) == 10


def test_ap50_boxed_ignores_boxes_on_images_without_true_boxes():
    truth = [[[0.3, 0.3, 0.2, 0.2]], [[0.6, 0.6, 0.2, 0.2]], [], []]
    found = [[[0.3, 0.3, 0.2, 0.2, 0.6]], [[0.6, 0.6, 0.2, 0.2, 0.5]]]
    # confident boxes on the two negatives outrank the true ones
    noisy = [*found, [[0.5, 0.5, 0.1, 0.1, 0.9]], [[0.4, 0.4, 0.1, 0.1, 0.8]]]
    sizes = [(100, 100)] * 4
    m = localization_metrics(LocInputs(["a", "b", "c", "d"], truth, sizes, noisy), n_boot=100)
    assert m["ap50_boxed"]["value"] == pytest.approx(1.0)  # the benchmark convention
    assert m["ap50"]["value"] < 0.6  # all images: the negatives' boxes cost precision
    assert m["ap50_boxed"]["ci_low"] == pytest.approx(1.0)
    clean = [*found, [], []]
    c = localization_metrics(LocInputs(["a", "b", "c", "d"], truth, sizes, clean), n_boot=0)
    assert c["ap50"]["value"] == pytest.approx(c["ap50_boxed"]["value"])


def test_draws_are_the_bootstrap_behind_each_ci_and_shared_across_models():
    df = add_localization(make_predictions(120, seed=21), seed=22, quality="perfect", n_false=1)
    other = add_localization(make_predictions(120, seed=21), seed=22, quality="shuffled")
    first, second = {}, {}
    m = localization_metrics(_inputs(df), n_boot=150, seed=4, draws=first)
    localization_metrics(_inputs(other), n_boot=150, seed=4, draws=second)
    assert set(first) == {k for k in LOC_METRIC_NAMES if m[k]["ci_low"] is not None}
    for name, dist in first.items():
        assert len(dist) == 150
        assert np.percentile(dist, 2.5) == pytest.approx(m[name]["ci_low"]), name
    # the same images with boxes and seed: the same resamples, so the difference is paired;
    # perfect boxes beat shuffled ones on every resample
    assert (first["ap50_boxed"] - second["ap50_boxed"] > 0).all()
