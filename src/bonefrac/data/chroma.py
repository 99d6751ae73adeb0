"""How coloured an image is, measured while decoding, before the grey conversion drops it.

The statistic (:func:`chroma_of`): the image reduced by an integer factor to a long side of
at most :data:`CHROMA_SIDE` pixels (a box average: fast, and it damps JPEG chroma noise),
converted to YCbCr (JPEG's full-range BT.601); each pixel's chroma is its distance
``max(|Cb - tb(Y)|, |Cr - tr(Y)|)`` from the image's **tint** ``(tb, tr)`` at its luminance
(the median Cb and Cr of the pixels in the same :data:`TINT_BINS` luminance band), and the
image's chroma is the :data:`CHROMA_PERCENTILE` th percentile over pixels. A grey pixel
(R = G = B) of a grey image scores 0, so a radiograph stored as RGB scores about 0; so does a
**tinted** grey image (a film photographed under a coloured light, a viewer's teal or sepia
colour map, ``ImageOps.colorize``), whose colour is one function of its luminance and says
nothing about what the image shows: it is judged by its grey content like any grey image (a
tinted photograph by the appearance gate, :mod:`bonefrac.inference.appearance`). A colour
photograph, whose hues vary at any one luminance, scores its typical chroma.

The chroma is absolute, not relative to brightness (as HSV saturation would be): near-black
pixels, where a relative measure turns one level of noise into full saturation, count for
nothing. The percentile (not the maximum) lets coloured annotations burned into a radiograph
through (a red circle round the fracture, a coloured ruler or label, a viewer's coloured
frame: the ones met in roboflow_sr2022 cover 1.0-1.1 % of the image, see
:data:`CHROMA_PERCENTILE`). The cut-off that calls an input colour lives with the other
out-of-scope rules (:mod:`bonefrac.inference.scope`); ``bench/chroma.py`` measures the statistic
over the shared data with these same functions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Long side (pixels) the image is reduced to before the chroma is measured.
CHROMA_SIDE = 256
#: Percentile of the per-pixel chroma that is the image's chroma: a colour covering less than
#: 100 - this percent of the image (an annotation) is let through. The 99th let through none
#: of the annotated radiographs of roboflow_sr2022 (a red circle: 1.05 % of the pixels, a
#: viewer's blue frame line: 1.07 %); at the 95th an annotation may cover up to 5 %, while a
#: colour photograph's hues cover most of it (the colour probes score 10-50 at the 95th,
#: ``bench/chroma.py``).
CHROMA_PERCENTILE = 95.0
#: Luminance bands (of equal width over 0-255) within which the tint is the median colour.
TINT_BINS = 32
#: Bands of the running median that smooths the tint along luminance.
TINT_SMOOTH = 5
#: Modes without colour: their chroma is 0 without looking at the pixels.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _reduced(img: Image.Image) -> Image.Image:
    factor = max(1, -(-max(img.size) // CHROMA_SIDE))  # ceil(long side / CHROMA_SIDE)
    return img.reduce(factor) if factor > 1 else img


def _off_tint(plane: np.ndarray, band: np.ndarray) -> np.ndarray:
    """``|plane - the tint at each pixel's luminance band|``: the tint is the median of the
    band, filled across empty bands and then a running median over :data:`TINT_SMOOTH` bands,
    so that a tint is a smooth function of luminance (a flat coloured block, alone at its
    luminance, is not a tint)."""
    order = np.lexsort((plane, band))
    sorted_band, sorted_vals = band[order], plane[order]
    bands = np.arange(TINT_BINS)
    starts = np.searchsorted(sorted_band, bands, side="left")
    ends = np.searchsorted(sorted_band, bands, side="right")
    full = ends > starts
    medians = sorted_vals[np.minimum((starts + ends - 1) // 2, len(plane) - 1)].astype(float)
    medians = np.interp(bands, bands[full], medians[full])
    half = TINT_SMOOTH // 2
    padded = np.pad(medians, half, mode="edge")
    tint = np.median(np.lib.stride_tricks.sliding_window_view(padded, TINT_SMOOTH), axis=1)
    return np.abs(plane - tint[band])


def chroma_ycbcr(img: Image.Image) -> float:
    """The chroma statistic of a ``YCbCr`` image (e.g. a JPEG decoded without colour
    conversion)."""
    # a 3 x 3 box blur damps pixel-level chroma noise (a palette's dithering, JPEG's chroma
    # rounding) that a reduction of a small image does not average away
    import cv2

    arr = cv2.blur(np.asarray(_reduced(img), dtype=np.uint8), (3, 3))
    arr = arr.astype(np.int16).reshape(-1, 3)
    band = (arr[:, 0].astype(np.int32) * TINT_BINS) // 256
    dev = np.maximum(_off_tint(arr[:, 1], band), _off_tint(arr[:, 2], band))
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
