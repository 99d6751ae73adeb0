"""Chroma measured at decode time: grey sources score 0, colour ones high, and measuring it
never changes the grey pixels the model sees."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bonefrac.data.chroma import chroma_of, chroma_of_array
from bonefrac.data.imageio import decode_array, decode_image, decode_pil_image, load_grayscale
from tests.conftest import shared_data_dir


def colour_photo(size: int = 300) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return (np.stack([xx, yy, 1 - xx], axis=-1) * 255).astype(np.uint8)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_grey_scores_zero_and_colour_scores_high() -> None:
    grey = np.random.default_rng(0).integers(0, 256, (120, 90), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for mode in ("L", "I;16", "F"):
        assert chroma_of(Image.fromarray(grey).convert(mode)) == 0.0
    assert chroma_of_array(rgb) == 0.0 and chroma_of(Image.fromarray(rgb).convert("P")) == 0.0
    photo = colour_photo()
    high = chroma_of_array(photo)
    assert high > 40
    rgba = Image.fromarray(photo).convert("RGBA")
    assert chroma_of(rgba) == high and chroma_of(Image.fromarray(photo).convert("P")) > 40
    assert chroma_of(Image.fromarray(photo).convert("CMYK")) > 40


@pytest.mark.parametrize("draft", [None, 64])
def test_measuring_keeps_the_grey_pixels(draft: int | None) -> None:
    photo = Image.fromarray(colour_photo(400))
    for data in (encoded(photo, "JPEG", quality=90), encoded(photo, "PNG")):
        decoded = decode_image(data, draft_size=draft)
        grey = load_grayscale(data, draft_size=draft)
        assert decoded.image.mode == "L" and np.array_equal(np.asarray(decoded.image), grey)
        assert decoded.chroma > 40 and decoded.modality is None


def test_arrays_and_pil_images_carry_chroma() -> None:
    photo = colour_photo(64)
    assert decode_array(photo).chroma > 40 and decode_pil_image(Image.fromarray(photo)).chroma > 40
    assert decode_array(photo[..., 0]).chroma == 0.0
    assert decode_array(photo.astype(np.float32)).chroma > 40  # windowed to 8 bits first


def test_fracatlas_rgb_jpeg_is_grey_and_decodes_identically() -> None:
    data = shared_data_dir()
    if data is None:
        pytest.skip("the shared data (FracAtlas) is absent")
    paths = sorted((data / "fracatlas" / "images" / "Non_fractured").glob("*.jpg"))[:40]
    rgb = [p for p in paths if Image.open(p).mode == "RGB"][:5]
    assert rgb, "expected RGB-encoded FracAtlas JPEGs"
    for path in rgb:
        for draft in (None, 224):
            decoded = decode_image(path, draft_size=draft)
            assert decoded.chroma == 0.0
            assert np.array_equal(np.asarray(decoded.image), load_grayscale(path, draft_size=draft))
