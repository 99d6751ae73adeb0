"""How coloured an image is, measured while decoding, before the grey conversion drops it.

The statistic (:func:`chroma_of`): the image reduced by an integer factor to a long side of
at most :data:`CHROMA_SIDE` pixels (a box average: fast, and it damps JPEG chroma noise),
converted to YCbCr (JPEG's full-range BT.601), then the :data:`CHROMA_PERCENTILE` th
percentile over pixels of ``max(|Cb - 128|, |Cr - 128|)``. A grey pixel (R = G = B) scores 0,
so a radiograph stored as RGB scores about 0; a colour photograph or a tinted image scores
its typical chroma. The chroma is absolute, not relative to brightness (as HSV saturation
would be): a tint shows in bright pixels and hardly in dark ones, and near-black pixels, where
a relative measure turns one level of noise into full saturation, count for nothing. The
percentile (not the maximum) lets a small coloured annotation burned
into a radiograph (a ruler, a label) through. The cut-off that calls an input colour lives with
the other out-of-scope rules (:mod:`bonefrac.inference.scope`); ``bench/chroma.py`` measures the
statistic over the shared data with these same functions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Long side (pixels) the image is reduced to before the chroma is measured.
CHROMA_SIDE = 256
#: Percentile of the per-pixel chroma that is the image's chroma.
CHROMA_PERCENTILE = 99.0
#: Modes without colour: their chroma is 0 without looking at the pixels.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _reduced(img: Image.Image) -> Image.Image:
    factor = max(1, -(-max(img.size) // CHROMA_SIDE))  # ceil(long side / CHROMA_SIDE)
    return img.reduce(factor) if factor > 1 else img


def chroma_ycbcr(img: Image.Image) -> float:
    """The chroma statistic of a ``YCbCr`` image (e.g. a JPEG decoded without colour
    conversion)."""
    arr = np.asarray(_reduced(img), dtype=np.int16)
    dev = np.maximum(np.abs(arr[..., 1] - 128), np.abs(arr[..., 2] - 128))
    return float(np.percentile(dev, CHROMA_PERCENTILE))


def chroma_of(img: Image.Image) -> float:
    """The chroma statistic of any PIL image (0 for greyscale modes; alpha is ignored and a
    palette or CMYK image is measured through its RGB colours)."""
    if img.mode in GREY_MODES:
        return 0.0
    if img.mode == "YCbCr":
        return chroma_ycbcr(img)
    try:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    except ValueError:  # a mode Pillow cannot turn into RGB (LAB TIFF): the feature rule judges
        return 0.0
    return chroma_ycbcr(_reduced(rgb).convert("YCbCr"))


def chroma_of_array(rgb: np.ndarray) -> float:
    """The chroma statistic of a uint8 ``(H, W, 3)`` RGB array."""
    return chroma_of(Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB"))
