"""Offline out-of-scope probe images: inputs a limb-radiograph model should refuse.

Used to measure an out-of-scope detector (tests, ``bench/ood.py``) without any download:
scikit-learn's two sample photographs (crops and greyscale versions), scikit-image's sample
images when that package is installed, the same photographs in colour and tinted, rendered
text pages (a scanned form), noise and blank frames; :func:`dicom_probes` adds CT and MR DICOM
files built with pydicom. :func:`transformed` gives rotated / inverted versions of in-scope
images, which should mostly stay in scope; :func:`tinted` gives colour-tinted ones, which the
colour rule should refuse.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageOps

#: Tints for :func:`tinted` and the tinted probes: the colour that white maps to.
TINTS = {"sepia": (255, 230, 180), "blue": (170, 200, 255), "green": (180, 255, 180)}


def _grey(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.clip(arr, 0, 255).astype(np.uint8)


def _sample_photos(colour: bool) -> list[np.ndarray]:
    """scikit-learn's sample photos (and, if installed, scikit-image's); colour ones only
    with ``colour``, else all of them in grey."""
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    try:  # optional: scikit-image's data images
        from skimage import data as skdata

        for name in ("astronaut", "camera", "coffee", "chelsea", "rocket"):
            photos.append(getattr(skdata, name)())
    except Exception:  # noqa: BLE001 - not installed or its data not available offline
        pass
    if colour:
        return [np.asarray(p)[..., :3] for p in photos if np.asarray(p).ndim == 3]
    return [_grey(p) for p in photos]


def _crops(photos: list[np.ndarray], rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(img[y : y + side, x : x + side].copy())
    return out


def photographs(rng: np.random.Generator, n: int = 8) -> list[np.ndarray]:
    """Greyscale crops of scikit-learn's (and, if installed, scikit-image's) sample photos."""
    return _crops(_sample_photos(colour=False), rng, n)


def tint(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """A greyscale uint8 image as RGB, black staying black and white becoming ``colour``."""
    grey = Image.fromarray(np.asarray(img, dtype=np.uint8), "L")
    return np.asarray(ImageOps.colorize(grey, (0, 0, 0), colour))


def colour_images(rng: np.random.Generator, n: int = 8) -> list[np.ndarray]:
    """RGB ``(H, W, 3)`` probes: crops of the colour sample photos, and greyscale photo crops
    tinted (:data:`TINTS`), half each."""
    photos = _crops(_sample_photos(colour=True), rng, n - n // 2)
    tints = list(TINTS.values())
    grey = photographs(rng, n // 2)
    return photos + [tint(g, tints[i % len(tints)]) for i, g in enumerate(grey)]


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
    """Every kind of out-of-scope probe image, by kind (``colour``: ``(H, W, 3)`` RGB)."""
    rng = np.random.default_rng(seed)
    return {
        "photograph": photographs(rng),
        "colour": colour_images(rng),
        "text_page": text_pages(rng),
        "noise": noise_frames(rng),
        "blank": blank_frames(),
    }


def dicom_bytes(pixels: np.ndarray, modality: str) -> bytes:
    """A small DICOM file (explicit VR little endian, MONOCHROME2) of ``pixels`` (uint8,
    uint16 or int16 ``(H, W)``) whose Modality is ``modality``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        MRImageStorage,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    arr = np.ascontiguousarray(pixels)
    sop = {"CT": CTImageStorage, "MR": MRImageStorage}.get(modality, SecondaryCaptureImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("probe.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Probe^Synthetic"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = arr.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(arr.dtype, np.signedinteger))
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _slice(
    rng: np.random.Generator, size: int, body: float, bone: float, noise: float
) -> np.ndarray:
    """An axial 'slice': an elliptic body with a round bright bone inside, plus noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    img = np.where((xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1, body, 0.0)
    cx, cy = rng.uniform(-0.15, 0.15, 2)
    img = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < 0.08**2, bone, img)
    return img + rng.normal(0, noise, img.shape)


def dicom_probes(seed: int = 0, n: int = 2, size: int = 128) -> dict[str, list[bytes]]:
    """CT (int16 Hounsfield-like values) and MR (uint16) DICOM files, ``n`` of each: inputs
    the modality rule refuses whatever their pixels look like."""
    rng = np.random.default_rng(seed)
    # CT: air -1000 HU, soft tissue 40, bone 1200
    ct = [_slice(rng, size, 1040, 2200, 20) - 1000 for _ in range(n)]
    mr = [_slice(rng, size, 900, 150, 40) for _ in range(n)]
    return {
        "dicom_ct": [dicom_bytes(np.clip(a, -1024, 3000).astype(np.int16), "CT") for a in ct],
        "dicom_mr": [dicom_bytes(np.clip(a, 0, 4095).astype(np.uint16), "MR") for a in mr],
    }


def tinted(img: np.ndarray) -> dict[str, np.ndarray]:
    """An in-scope greyscale image tinted each way of :data:`TINTS` (RGB)."""
    return {f"tinted {name}": tint(img, colour) for name, colour in TINTS.items()}


def transformed(img: np.ndarray) -> dict[str, np.ndarray]:
    """Rotated (90, 180 degrees) and inverted versions of an in-scope image."""
    return {
        "rot90": np.ascontiguousarray(np.rot90(img)),
        "rot180": np.ascontiguousarray(np.rot90(img, 2)),
        "inverted": (255 - np.asarray(img, dtype=np.uint8)).astype(np.uint8),
    }
