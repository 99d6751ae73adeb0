"""Pointing game and energy-in-box, in original-image coordinates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bonefrac.data.transforms import heatmap_to_original, letterbox_geometry
from bonefrac.maps.pointing_game import (
    box_mask,
    score_image,
    summarise,
    wilson_interval,
)


def _spot(h: int, w: int, x: float, y: float, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2) / (2 * sigma**2)).astype(np.float32)


@pytest.mark.parametrize("orig", [(80, 50), (50, 80), (64, 64), (300, 120)])
def test_heatmap_maps_back_to_the_original_place(orig):
    """A peak put at the letterboxed position of an original point comes back to that point."""
    width, height = orig
    size = 64
    scale, left, top, _, _ = letterbox_geometry(width, height, size)
    px, py = 0.7 * width, 0.3 * height
    heat = _spot(size, size, left + px * scale, top + py * scale)
    full = heatmap_to_original(heat, (width, height))
    assert full.shape == (height, width)
    y, x = np.unravel_index(np.argmax(full), full.shape)
    assert abs(x + 0.5 - px) <= 1.0 / scale + 0.5
    assert abs(y + 0.5 - py) <= 1.0 / scale + 0.5


def test_padding_is_cropped():
    heat = np.zeros((64, 64), np.float32)
    heat[:10] = 1.0  # the top padding band of an 80 x 50 image's letterbox
    full = heatmap_to_original(heat, (80, 50))
    assert full.max() < 0.5


def test_box_mask_and_thin_boxes():
    mask = box_mask([[0.5, 0.5, 0.5, 0.25]], 80, 40)
    assert mask.sum() == 40 * 10
    assert mask[20, 40] and not mask[0, 0]
    thin = box_mask([[0.5, 0.5, 0.001, 0.001]], 80, 40)
    assert thin.sum() == 1


def test_score_hit_miss_and_tolerance():
    box = [[0.25, 0.5, 0.1, 0.1]]  # x 16..24, y 22.5..27.5 px of an 80 x 50 image
    w, h = 80, 50
    inside = _spot(h, w, 0.25 * w, 0.5 * h)
    r = score_image(inside, box)
    assert r["hit"] and r["peak_distance_px"] == 0.0
    assert r["energy_in_box"] > 0.5
    assert 0 < r["box_area_share"] < r["chance_hit"] < 1
    near = _spot(h, w, 0.30 * w + 3.0, 0.5 * h)  # 3 px right of the box edge; tol = 4 px
    assert score_image(near, box, tolerance=0.05)["hit"]
    assert not score_image(near, box, tolerance=0.01)["hit"]
    far = _spot(h, w, 0.8 * w, 0.2 * h)
    r = score_image(far, box)
    assert not r["hit"] and r["energy_in_box"] < 0.05
    empty = score_image(np.zeros((h, w), np.float32), box)
    assert empty["empty_map"] and not empty["hit"] and empty["energy_in_box"] == 0.0


def test_uniform_map_scores_area_share():
    box = [[0.5, 0.5, 0.5, 0.5]]
    r = score_image(np.ones((40, 40), np.float32), box)
    assert r["energy_in_box"] == pytest.approx(0.25)


def test_summary_document():
    per = [{"hit": True, "energy_in_box": 0.5, "box_area_share": 0.1, "chance_hit": 0.2}] * 3
    per = per + [{"hit": False, "energy_in_box": 0.1, "box_area_share": 0.1, "chance_hit": 0.2}]
    doc = summarise(per, method="gradcam", layer="x", tolerance=0.05)
    assert doc["n_scored"] == 4 and doc["hit_rate"] == 0.75
    assert doc["energy_in_box"] == pytest.approx(0.4)
    assert doc["hit_rate_low"] < 0.75 < doc["hit_rate_high"]
    assert list(doc)[:3] == ["n_scored", "hit_rate", "hit_rate_low"]
    none = summarise([], method="gradcam", layer=None)
    assert none["n_scored"] == 0 and none["hit_rate"] is None and none["energy_in_box"] is None


def test_wilson():
    low, high = wilson_interval(9, 10)
    assert 0.55 < low < 0.6 and high > 0.98
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
