"""Decode radiographs (JPEG, PNG, other Pillow formats, DICOM) to 8-bit greyscale.

Every decoder path raises :class:`ImageDecodeError` with a short ``reason`` label
(``zero bytes``, ``truncated``, ``not an image``, ``undecodable``, ``bad checksum``,
``too many pixels``, ``no pixel data``, ``multi-frame``, ``missing decoder``) so callers can quarantine
or report the file without guessing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from bonefrac.errors import ImageDecodeError

# Never let Pillow quietly pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Default cap on decoded pixels (decompression-bomb guard): 16k x 16k.
MAX_PIXELS = 16384 * 16384

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_dicom_bytes(head: bytes) -> bool:
    """True when ``head`` (the first 132+ bytes) carries the DICM magic at offset 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return is_dicom_bytes(fh.read(132))
    except OSError:
        return False


def is_candidate_image(path: str | Path) -> bool:
    """Files a folder scan should consider: known image suffixes or DICOM."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path)


def load_grayscale(
    source: str | Path | bytes,
    *,
    draft_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    dicom_frame: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Fully decode ``source`` (path or bytes) to an 8-bit greyscale ``PIL.Image``.

    ``draft_size``: for JPEGs, let libjpeg decode at a reduced scale whose short side is
    still at least ``draft_size`` (fast path for big radiographs).
    ``dicom_frame``: for multi-frame DICOM, which frame to take; ``None`` rejects them.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = _read_bytes(source, label)
    if len(data) == 0:
        raise ImageDecodeError(label, "zero bytes", "the file is empty")
    if is_dicom_bytes(data[:132]) or (
        not isinstance(source, bytes) and Path(source).suffix.lower() in DICOM_SUFFIXES
    ):
        return _load_dicom(data, label, max_pixels=max_pixels, frame=dicom_frame)
    return _load_pillow(data, label, draft_size=draft_size, max_pixels=max_pixels)


def _read_bytes(source: str | Path | bytes, label: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except FileNotFoundError as exc:
        raise ImageDecodeError(label, "missing", "no such file") from exc
    except OSError as exc:
        raise ImageDecodeError(label, "unreadable", str(exc)) from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_crc_error(data: bytes) -> str | None:
    """For PNG bytes: a message naming the first chunk whose CRC is wrong, else ``None``.

    Pillow checks the CRCs of the header chunks only, so a PNG with a corrupted IDAT CRC
    would otherwise decode silently.
    """
    import zlib

    if not data.startswith(PNG_SIGNATURE):
        return None
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(data):
            return None  # truncation: left to the decoder, which reports it
        ctype = data[pos + 4 : pos + 8]
        stored = int.from_bytes(data[end : end + 4], "big")
        if zlib.crc32(data[pos + 4 : end]) != stored:
            return f"PNG chunk {ctype.decode('latin-1')!r} at byte {pos} has a wrong CRC"
        if ctype == b"IEND":
            return None
        pos = end + 4
    return None


def _load_pillow(
    data: bytes, label: str, *, draft_size: int | None, max_pixels: int
) -> Image.Image:
    crc_error = png_crc_error(data)
    if crc_error:
        raise ImageDecodeError(label, "bad checksum", crc_error)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(label, "not an image", "Pillow cannot identify the format") from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure is a decode failure
        raise ImageDecodeError(label, "undecodable", str(exc)) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            label, "too many pixels", f"{width}x{height} exceeds the limit of {max_pixels} pixels"
        )
    if draft_size and img.format == "JPEG":
        img.draft("L", (draft_size, draft_size))
    try:
        img.load()
    except OSError as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg.lower() else "undecodable"
        raise ImageDecodeError(label, reason, msg) from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(label, "undecodable", str(exc)) from exc
    return _to_l(img)


def _to_l(img: Image.Image) -> Image.Image:
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        return Image.fromarray(_window_to_uint8(arr))
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA").convert("RGB")
    return img.convert("L")


def _window_to_uint8(
    arr: np.ndarray, low: float | None = None, high: float | None = None
) -> np.ndarray:
    arr = arr.astype(np.float32)
    lo = float(np.min(arr)) if low is None else low
    hi = float(np.max(arr)) if high is None else high
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.clip(arr, lo, hi) - lo) / (hi - lo) * 255.0
    return np.round(out).astype(np.uint8)


def _load_dicom(data: bytes, label: str, *, max_pixels: int, frame: int | None) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(label, "undecodable", f"not a readable DICOM file: {exc}") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageDecodeError(label, "no pixel data", "the DICOM dataset has no PixelData element")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise ImageDecodeError(
            label, "too many pixels", f"{cols}x{rows} exceeds the limit of {max_pixels} pixels"
        )
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        msg = str(exc)
        if "decoder" in msg.lower() or "plugin" in msg.lower() or "transfer syntax" in msg.lower():
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise ImageDecodeError(
                label,
                "missing decoder",
                f"transfer syntax {ts} needs a decoder plugin; install 'pylibjpeg pylibjpeg-libjpeg"
                f" pylibjpeg-openjpeg' or 'python-gdcm' ({msg.splitlines()[0]})",
            ) from exc
        raise ImageDecodeError(label, "undecodable", msg) from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        if frame is None:
            raise ImageDecodeError(
                label, "multi-frame", f"{n_frames} frames; choose one with dicom_frame=<index>"
            )
        if not 0 <= frame < n_frames:
            raise ImageDecodeError(
                label, "multi-frame", f"frame {frame} out of range 0..{n_frames - 1}"
            )
        arr = arr[frame]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour DICOM (RGB/YBR): take luminance
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        return Image.fromarray(np.asarray(arr[..., :3], dtype=np.uint8)).convert("L")
    arr = apply_modality_lut(arr, ds)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_voi:
        arr = apply_voi_lut(arr, ds, index=0)
    arr = np.asarray(arr, dtype=np.float32)
    if has_voi and "WindowCenter" in ds and "VOILUTSequence" not in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        out = _window_to_uint8(arr, center - width / 2.0, center + width / 2.0)
    else:
        out = _window_to_uint8(arr)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out)
