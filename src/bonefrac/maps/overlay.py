"""Overlays at the original image resolution, and a captioned grid.

:func:`render_overlay` returns an RGB image exactly the size of the original radiograph: the
heatmap (already mapped back to the original, see :func:`bonefrac.data.transforms.heatmap_to_original`) is
coloured with a colormap and alpha-blended onto the greyscale image with a per-pixel alpha of
``alpha x heat``, so cold regions keep the radiograph readable and hot regions are coloured. A
small colour bar (high at the top, low at the bottom) is drawn inside the top-right corner so
the file keeps the original size, and fracture boxes are drawn as white rectangles with a black
outline (predicted boxes, :func:`draw_scored_boxes`: amber, with their scores). :func:`save_grid`
lays out thumbnails with captions (image id, probability, label) and one shared colour bar; it
uses matplotlib's object API with the Agg canvas (no pyplot state, safe in servers and threads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bonefrac.fileio import atomic_path

DEFAULT_CMAP = "jet"
DEFAULT_ALPHA = 0.5
THUMB_SIZE = 320
#: outline colours of true (manifest) boxes and of predicted boxes
TRUE_COLOR = (255, 255, 255)
PRED_COLOR = (255, 191, 0)


def colorize(heat: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """``(H, W)`` in ``[0, 1]`` -> ``(H, W, 3)`` uint8 through a matplotlib colormap."""
    import matplotlib

    lut = (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    idx = np.clip(np.nan_to_num(heat) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut[idx]


def render_overlay(
    base: np.ndarray | Image.Image,
    heat: np.ndarray,
    boxes: Sequence[Sequence[float]] | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    colorbar: bool = True,
) -> Image.Image:
    """Blend ``heat`` (``(H, W)``, values in ``[0, 1]``) onto greyscale ``base`` of the same size.

    ``boxes``: normalised ``[cx, cy, w, h]`` of this image (drawn as rectangles).
    """
    gray = np.asarray(base.convert("L") if isinstance(base, Image.Image) else base)
    if gray.ndim != 2:
        raise ValueError(f"base must be a greyscale (H, W) image, got shape {gray.shape}")
    if heat.shape != gray.shape:
        raise ValueError(f"heatmap {heat.shape} and image {gray.shape} differ in size")
    h = np.clip(np.nan_to_num(heat.astype(np.float32)), 0.0, 1.0)
    a = (alpha * h)[..., None]
    rgb = gray.astype(np.float32)[..., None].repeat(3, axis=2)
    out = (1.0 - a) * rgb + a * colorize(h, cmap).astype(np.float32)
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    if boxes:
        draw_boxes(img, boxes)
    if colorbar:
        draw_colorbar(img, cmap)
    return img


def draw_boxes(
    img: Image.Image,
    boxes: Sequence[Sequence[float]],
    color: tuple[int, int, int] = TRUE_COLOR,
    gap: int = 0,
) -> None:
    """Rectangles (white by default) with a black outline drawn just OUTSIDE each box, in place.

    Outside, so a thin box (a fracture line a few pixels tall) keeps its content visible.
    ``gap``: further pixels between box and rectangle (to draw true boxes around predicted ones
    without hiding them).
    """
    from bonefrac.maps.pointing_game import boxes_to_pixels

    width, height = img.size
    lw = max(1, round(min(width, height) / 250))
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in boxes_to_pixels(boxes, width, height):
        inner = [round(x0), round(y0), max(round(x0), round(x1) - 1), max(round(y0), round(y1) - 1)]
        white = [inner[0] - lw - gap, inner[1] - lw - gap, inner[2] + lw + gap, inner[3] + lw + gap]
        black = [white[0] - lw, white[1] - lw, white[2] + lw, white[3] + lw]
        draw.rectangle(black, outline=(0, 0, 0), width=lw)
        draw.rectangle(white, outline=color, width=lw)


def draw_scored_boxes(
    img: Image.Image, boxes: Sequence[Sequence[float]], color: tuple[int, int, int] = PRED_COLOR
) -> None:
    """Predicted boxes ``[cx, cy, w, h, score]`` in place: rectangles as :func:`draw_boxes`
    (amber by default) with the score written above each box's top-left corner."""
    from PIL import ImageFont

    from bonefrac.maps.pointing_game import boxes_to_pixels

    draw_boxes(img, boxes, color)
    width, height = img.size
    size = max(10, round(min(width, height) * 0.035))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    lw = max(1, round(min(width, height) / 250))
    for (x0, y0, _, _), box in zip(boxes_to_pixels(boxes, width, height), boxes, strict=True):
        if len(box) < 5:
            continue
        xy = (max(0, round(x0) - 2 * lw), max(size, round(y0) - 2 * lw))
        draw.text(
            xy, f"{box[4]:.2f}", fill=color, font=font, anchor="lb",
            stroke_width=1, stroke_fill=(0, 0, 0),
        )  # fmt: skip


def draw_colorbar(img: Image.Image, cmap: str = DEFAULT_CMAP) -> None:
    """A vertical colour bar (high at the top) inside the top-right corner, in place."""
    width, height = img.size
    bar_w = max(3, round(width * 0.025))
    bar_h = max(8, round(height * 0.3))
    margin = max(2, round(min(width, height) * 0.02))
    if bar_w + 2 * margin + 2 > width or bar_h + 2 * margin + 2 > height:
        return  # too small to hold one
    ramp = np.linspace(1.0, 0.0, bar_h, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    x0, y0 = width - margin - bar_w, margin
    img.paste(Image.fromarray(colorize(ramp, cmap), "RGB"), (x0, y0))
    draw = ImageDraw.Draw(img)
    draw.rectangle([x0 - 1, y0 - 1, x0 + bar_w, y0 + bar_h], outline=(255, 255, 255), width=1)
    if height >= 200 and width >= 200:
        from PIL import ImageFont

        size = max(10, round(height * 0.025))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # pragma: no cover - Pillow < 10.1
            font = ImageFont.load_default()
        for text, ty, anchor in (("high", y0, "rt"), ("low", y0 + bar_h, "rb")):
            draw.text(
                (x0 - 3, ty), text, fill=(255, 255, 255), font=font, anchor=anchor,
                stroke_width=1, stroke_fill=(0, 0, 0),
            )  # fmt: skip


def save_png(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def thumbnail(img: Image.Image, size: int = THUMB_SIZE) -> Image.Image:
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    return thumb


@dataclass
class Panel:
    image: Image.Image
    caption: str


def caption(image_id: str, prob: float | None, label: int | None) -> str:
    p = "p=n/a" if prob is None or prob != prob else f"p={prob:.2f}"
    lab = "label ?" if label is None else f"label {int(label)}"
    short = image_id if len(image_id) <= 28 else image_id[:12] + "…" + image_id[-12:]
    return f"{short}\n{p} · {lab}"


def save_grid(
    panels: Sequence[Panel],
    path: str | Path,
    *,
    title: str = "",
    cmap: str = DEFAULT_CMAP,
    cols: int | None = None,
    bar_label: str = "evidence for fracture (relative)",
) -> Path:
    """A grid of overlays with captions and one colour bar, written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    path = Path(path)
    n = max(1, len(panels))
    cols = cols or min(4, n)
    rows = math_ceil(n, cols)
    fig = Figure(figsize=(2.6 * cols + 0.9, 2.9 * rows + (0.4 if title else 0.0)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(panels):
            ax.imshow(np.asarray(panels[i].image), interpolation="antialiased")
            ax.set_title(panels[i].caption, fontsize=8)
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no images", ha="center", va="center")
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)
    bar = fig.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label(bar_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def math_ceil(a: int, b: int) -> int:
    return -(-a // b)
