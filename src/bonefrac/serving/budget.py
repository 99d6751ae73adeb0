"""The service's image budget: pixels and decoded bytes, read from the header before decoding.

The decoded size of an image is ``width x height x channels x bytes per sample`` of the mode
the decoder produces (a 16-bit greyscale PNG: 2 bytes a pixel; RGB JPEG: 3; an RGBA PNG: 4;
a DICOM: ``SamplesPerPixel x BitsAllocated / 8``). A tiny compressed file can declare a huge
image (a 189 KiB 16-bit PNG of 9999 x 9999 zeros decodes to 200 MB, and the float
conversions after decoding multiply that), so the budget is checked on the header alone.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from bonefrac.data.imageio import is_dicom_bytes
from bonefrac.errors import ImageDecodeError


@dataclass(frozen=True)
class Footprint:
    """What the header says the decoded image will be."""

    width: int
    height: int
    channels: int
    bytes_per_sample: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def nbytes(self) -> int:
        """Decoded bytes of one frame."""
        return self.pixels * self.channels * self.bytes_per_sample


def footprint(data: bytes, name: str, kind: str) -> Footprint:
    """The decoded footprint of ``data`` (``kind``: ``dicom`` or a Pillow format), header only.

    Raises :class:`ImageDecodeError` when the header itself cannot be read.
    """
    if kind == "dicom" or is_dicom_bytes(data[:132]):
        return _dicom_footprint(data, name)
    return _pillow_footprint(data, name)


def check_budget(fp: Footprint, name: str, max_pixels: int, max_bytes: int) -> None:
    """Raise ``ImageDecodeError`` (reason ``too many pixels``) when ``fp`` is over a limit."""
    size = f"{fp.width}x{fp.height}"
    if fp.pixels > max_pixels:
        raise ImageDecodeError(
            name,
            "too many pixels",
            f"{size} = {fp.pixels} pixels exceeds the limit of {max_pixels} pixels",
        )
    if fp.nbytes > max_bytes:
        raise ImageDecodeError(
            name,
            "too many pixels",
            f"{size} x {fp.channels} channel(s) x {fp.bytes_per_sample} byte(s) = {fp.nbytes} "
            f"decoded bytes exceeds the limit of {max_bytes} bytes",
        )


def _pillow_footprint(data: bytes, name: str) -> Footprint:
    from PIL import Image, ImageMode, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            mode = ImageMode.getmode(img.mode)
            frames = int(getattr(img, "n_frames", 1) or 1)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, "too many pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, "not an image", "Pillow cannot identify the format") from exc
    except Exception as exc:  # noqa: BLE001 - any header parser failure is a decode failure
        raise ImageDecodeError(name, "undecodable", f"{type(exc).__name__}: {exc}") from exc
    sample = max(1, int(mode.typestr[-1])) if mode.typestr[-1:].isdigit() else 1
    channels = len(mode.bands)
    if mode.mode in ("P", "PA"):  # palette images are expanded to RGBA before greyscale
        channels, sample = 4, 1
    return Footprint(width, height, channels, sample, frames)


def _dicom_footprint(data: bytes, name: str) -> Footprint:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        rows = int(ds.get("Rows", 0) or 0)
        cols = int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # noqa: BLE001 - malformed header elements of any kind
        msg = (str(exc).splitlines() or [""])[0]
        raise ImageDecodeError(
            name, "undecodable", f"unreadable DICOM header: {type(exc).__name__}: {msg}"
        ) from exc
    return Footprint(cols, rows, max(1, samples), max(1, (bits + 7) // 8), max(1, frames))
