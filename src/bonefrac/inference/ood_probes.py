"""Offline out-of-scope probe images: inputs a limb-radiograph model should refuse.

Used to measure an out-of-scope detector (tests, ``bench/ood.py``) without any download:
scikit-learn's two sample photographs (crops and greyscale versions), scikit-image's sample
images when that package is installed, rendered text pages (a scanned form), noise and blank
frames. :func:`transformed` gives rotated / inverted versions of in-scope images, which should
mostly stay in scope.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _grey(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.clip(arr, 0, 255).astype(np.uint8)


def photographs(rng: np.random.Generator, n: int = 8) -> list[np.ndarray]:
    """Greyscale crops of scikit-learn's (and, if installed, scikit-image's) sample photos."""
    from sklearn.datasets import load_sample_images

    photos = [_grey(img) for img in load_sample_images().images]
    try:  # optional: scikit-image's data images
        from skimage import data as skdata

        for name in ("astronaut", "camera", "coffee", "chelsea", "rocket"):
            photos.append(_grey(getattr(skdata, name)()))
    except Exception:  # noqa: BLE001 - not installed or its data not available offline
        pass
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(img[y : y + side, x : x + side].copy())
    return out


def text_pages(rng: np.random.Generator, n: int = 4, size: int = 256) -> list[np.ndarray]:
    """Black text on white, like a scanned form."""
    words = ["patient", "name", "date", "signature", "ward", "form", "consent", "dose", "mg"]
    out = []
    for _ in range(n):
        img = Image.new("L", (size, int(size * 1.3)), 245)
        draw = ImageDraw.Draw(img)
        for row in range(8, img.height - 10, 14):
            line = " ".join(rng.choice(words, size=int(rng.integers(3, 7))))
            draw.text((8, row), line, fill=int(rng.integers(0, 60)))
        out.append(np.asarray(img))
    return out


def noise_frames(rng: np.random.Generator, n: int = 4, size: int = 128) -> list[np.ndarray]:
    """Uniform and salt-and-pepper noise."""
    out = []
    for i in range(n):
        if i % 2:
            out.append((rng.random((size, size)) > 0.5).astype(np.uint8) * 255)
        else:
            out.append(rng.integers(0, 256, (size, size), dtype=np.uint8))
    return out


def blank_frames(size: int = 128) -> list[np.ndarray]:
    """Black, mid-grey and white frames."""
    return [np.full((size, size), v, np.uint8) for v in (0, 128, 255)]


def probe_images(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Every kind of out-of-scope probe, by kind."""
    rng = np.random.default_rng(seed)
    return {
        "photograph": photographs(rng),
        "text_page": text_pages(rng),
        "noise": noise_frames(rng),
        "blank": blank_frames(),
    }


def transformed(img: np.ndarray) -> dict[str, np.ndarray]:
    """Rotated (90, 180 degrees) and inverted versions of an in-scope image."""
    return {
        "rot90": np.ascontiguousarray(np.rot90(img)),
        "rot180": np.ascontiguousarray(np.rot90(img, 2)),
        "inverted": (255 - np.asarray(img, dtype=np.uint8)).astype(np.uint8),
    }
