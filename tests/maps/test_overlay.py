"""Overlays keep the original size; boxes, colour bar and the grid are drawn."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bonefrac.maps.overlay import Panel, caption, colorize, render_overlay, save_grid, save_png


def _base(w: int, h: int) -> np.ndarray:
    return np.full((h, w), 100, np.uint8)


def test_overlay_size_equals_original_and_blends(tmp_path):
    w, h = 80, 50
    heat = np.zeros((h, w), np.float32)
    heat[10:20, 30:40] = 1.0
    img = render_overlay(_base(w, h), heat, colorbar=False)
    assert img.size == (w, h) and img.mode == "RGB"
    arr = np.asarray(img)
    assert (arr[0, 0] == 100).all()  # cold: the radiograph unchanged
    assert not (arr[15, 35] == 100).all()  # hot: coloured
    path = save_png(render_overlay(_base(w, h), heat), tmp_path / "o.png")
    with Image.open(path) as im:
        assert im.size == (w, h)


def test_boxes_drawn_outside_the_box():
    w, h = 80, 50
    img = np.asarray(render_overlay(_base(w, h), np.zeros((h, w)), [[0.5, 0.5, 0.25, 0.2]]))
    # box x 30..50, y 20..30: its pixels keep the image; the white line runs just outside
    assert (img[25, 40] == 100).all()
    assert (img[19, 40] == 255).all() and (img[18, 40] == 0).all()


def test_colorbar_inside_the_image():
    w, h = 200, 240
    img = np.asarray(render_overlay(_base(w, h), np.zeros((h, w))))
    top_right = img[8:20, w - 6]  # bar: 5 px wide, 4 px from the edge
    assert not (top_right == 100).all()
    high, low = colorize(np.array([1.0])), colorize(np.array([0.0]))
    assert not np.array_equal(high, low)


def test_grid(tmp_path):
    panels = [
        Panel(Image.new("RGB", (60, 40), (i * 40, 0, 0)), caption(f"im{i}", 0.9, 1))
        for i in range(5)
    ]
    path = save_grid(panels, tmp_path / "grid.png", title="t")
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 100
    assert caption("x.png", 0.123, None) == "x.png\np=0.12 · label ?"
    assert "p=n/a" in caption("x", None, 0)
