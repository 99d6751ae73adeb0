"""Decode radiographs (JPEG, PNG, other Pillow formats, DICOM) to 8-bit greyscale.

:func:`decode_image` also keeps what the grey conversion loses or the pixels cannot tell
(:class:`DecodedImage`): the source's chroma (:mod:`bonefrac.data.chroma`, measured before the
colour is dropped) and a DICOM file's Modality. :func:`load_grayscale` is the same decode
without the chroma measurement (training and data build need only the grey image); both give
the same grey pixels.

Every decoder path raises :class:`ImageDecodeError` with a short ``reason`` label
(``zero bytes``, ``truncated``, ``not an image``, ``undecodable``, ``bad checksum``,
``too many pixels``, ``no pixel data``, ``multi-frame``, ``missing decoder``) so callers can quarantine
or report the file without guessing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from bonefrac.data.chroma import chroma_of, chroma_of_array, chroma_ycbcr
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


@dataclass(frozen=True)
class DecodedImage:
    """One decoded input: the 8-bit greyscale image, and what the grey image cannot tell."""

    image: Image.Image  # mode "L"
    #: :func:`bonefrac.data.chroma.chroma_of` of the source before the grey conversion (0 for
    #: greyscale sources, and when the measurement was not asked for)
    chroma: float = 0.0
    #: a DICOM file's Modality (stripped, upper case; "" when empty); None when the file has
    #: none or is not DICOM
    modality: str | None = None


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
    return _decode(source, draft_size, max_pixels, dicom_frame, name, measure=False).image


def decode_image(
    source: str | Path | bytes,
    *,
    draft_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    dicom_frame: int | None = None,
    name: str | None = None,
) -> DecodedImage:
    """:func:`load_grayscale` (the same grey pixels) with the source's chroma and a DICOM
    file's Modality."""
    return _decode(source, draft_size, max_pixels, dicom_frame, name, measure=True)


def _decode(
    source: str | Path | bytes,
    draft_size: int | None,
    max_pixels: int,
    dicom_frame: int | None,
    name: str | None,
    *,
    measure: bool,
) -> DecodedImage:
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = _read_bytes(source, label)
    if len(data) == 0:
        raise ImageDecodeError(label, "zero bytes", "the file is empty")
    dicom = is_dicom_bytes(data[:132]) or (
        not isinstance(source, bytes) and Path(source).suffix.lower() in DICOM_SUFFIXES
    )
    try:
        if dicom:
            return _load_dicom(
                data, label, max_pixels=max_pixels, frame=dicom_frame, measure=measure
            )
        return _load_pillow(
            data, label, draft_size=draft_size, max_pixels=max_pixels, measure=measure
        )
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError(label, "too many pixels", "not enough memory to decode") from exc
    except Exception as exc:  # noqa: BLE001 - any other decoder failure is a decode failure
        raise ImageDecodeError(label, "undecodable", _first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` for an unexpected decoder exception."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


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
    data: bytes, label: str, *, draft_size: int | None, max_pixels: int, measure: bool
) -> DecodedImage:
    crc_error = png_crc_error(data)
    if crc_error:
        raise ImageDecodeError(label, "bad checksum", crc_error)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(label, "not an image", "Pillow cannot identify the format") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own header check, before any decode
        raise ImageDecodeError(label, "too many pixels", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure is a decode failure
        raise ImageDecodeError(label, "undecodable", str(exc)) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            label, "too many pixels", f"{width}x{height} exceeds the limit of {max_pixels} pixels"
        )
    if draft_size and img.format == "JPEG":
        # libjpeg's grey output is the Y plane; "YCbCr" keeps the very same Y plane and adds
        # the chroma planes (no colour conversion), so the grey pixels do not depend on
        # whether the chroma is measured
        img.draft("YCbCr" if measure else "L", (draft_size, draft_size))
    try:
        img.load()
    except OSError as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg.lower() else "undecodable"
        raise ImageDecodeError(label, reason, msg) from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(label, "undecodable", str(exc)) from exc
    grey, chroma = _to_l(img, measure)
    return DecodedImage(grey, chroma)


def _to_l(img: Image.Image, measure: bool = False) -> tuple[Image.Image, float]:
    """8-bit greyscale, and (``measure``) the chroma of ``img`` before the conversion."""
    if img.mode == "L":
        return img, 0.0
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        return Image.fromarray(_window_to_uint8(arr)), 0.0
    if img.mode == "YCbCr":  # a JPEG drafted without colour conversion: Y is the grey image
        return img.getchannel(0), chroma_ycbcr(img) if measure else 0.0
    chroma = chroma_of(img) if measure else 0.0
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA").convert("RGB")
    return img.convert("L"), chroma


def _window_to_uint8(
    arr: np.ndarray, low: float | None = None, high: float | None = None
) -> np.ndarray:
    arr = arr.astype(np.float32, copy=False)
    lo = float(np.min(arr)) if low is None else low
    hi = float(np.max(arr)) if high is None else high
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    # the same operations as (clip - lo) / (hi - lo) * 255, in place: one float32 temporary
    out = np.clip(arr, lo, hi)
    out -= lo
    out /= hi - lo
    out *= 255.0
    np.round(out, out=out)
    return out.astype(np.uint8)


#: Transfer syntax families -> the pip packages that decode them (for error messages). All but
#: ``pyjpegls`` are in bonefrac's default install, so a missing one means a broken environment.
_DECODER_HINTS = {
    "JPEG-LS": "'python-gdcm' or 'pyjpegls'",
    "JPEG 2000": "'python-gdcm' or 'pylibjpeg pylibjpeg-openjpeg'",
    "High-Throughput JPEG 2000": "'pylibjpeg pylibjpeg-openjpeg'",
    "JPEG": "'python-gdcm'",
    "RLE": "'pylibjpeg pylibjpeg-rle'",
}


def _decoder_hint(ts_name: str) -> str:
    for key, hint in _DECODER_HINTS.items():
        if ts_name.startswith(key):
            return hint
    return "'python-gdcm pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle'"


def _missing_decoder(label: str, ts: object, extra: str = "") -> ImageDecodeError:
    name = getattr(ts, "name", str(ts))
    detail = f"transfer syntax {ts} ({name}) needs a decoder: pip install {_decoder_hint(name)}"
    if extra:
        detail += f"; {extra}"
    return ImageDecodeError(label, "missing decoder", detail)


def _no_capable_decoder(lines: list[str]) -> bool:
    """True when pydicom's failure says no installed decoder can take this data (each plugin
    that was tried says it does not support it), not that the data is broken.

    pydicom reports ``Unable to decode as exceptions were raised by all available plugins:``
    and one line per plugin; a plugin that *tried* and failed (a corrupt codestream) makes the
    file undecodable, not a missing decoder.
    """
    if not lines or not any(w in lines[0].lower() for w in ("decoder", "plugin", "install")):
        return False
    per_plugin = lines[1:]
    return all("support" in line.lower() for line in per_plugin)


def _load_dicom(
    data: bytes, label: str, *, max_pixels: int, frame: int | None, measure: bool = False
) -> DecodedImage:
    """DICOM -> 8-bit greyscale as a viewer would show it.

    Order (PS3.3 C.11): decode (one frame) -> modality LUT / rescale slope+intercept ->
    VOI LUT sequence, else window centre/width (LINEAR, LINEAR_EXACT, SIGMOID), else the full
    range of the data -> MONOCHROME1 (or an INVERSE presentation LUT) inverted, so bone is
    always bright. Frame count, pixel count and decoder availability are checked before any
    pixel data is decoded.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from bonefrac.data.dicom_codecs import register

    register()  # 12-bit JPEG Extended through GDCM (see bonefrac.data.dicom_codecs)

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(label, "undecodable", f"not a readable DICOM file: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError(label, "no pixel data", "the DICOM dataset has no PixelData element")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(label, "undecodable", f"bad Rows/Columns/Frames: {exc}") from exc
    if rows <= 0 or cols <= 0:
        raise ImageDecodeError(label, "undecodable", "Rows/Columns missing or zero")
    if rows * cols > max_pixels:
        raise ImageDecodeError(
            label, "too many pixels", f"{cols}x{rows} exceeds the limit of {max_pixels} pixels"
        )
    if n_frames > 1 and frame is None:
        raise ImageDecodeError(
            label,
            "multi-frame",
            f"{n_frames} frames; choose one with dicom_frame=<index> (--dicom-frame K)",
        )
    if frame is not None and not 0 <= frame < n_frames:
        raise ImageDecodeError(
            label, "multi-frame", f"frame {frame} out of range 0..{n_frames - 1}"
        )

    file_meta = ds.file_meta
    ts = file_meta.get("TransferSyntaxUID")
    if ts is None:  # raw dataset without a file meta header: use the encoding it was read with
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else True
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        file_meta.TransferSyntaxUID = ts
    ts = UID(str(ts))
    try:
        compressed = ts.is_compressed
    except ValueError as exc:  # a UID that is not a transfer syntax (e.g. a SOP class)
        raise ImageDecodeError(
            label, "undecodable", f"TransferSyntaxUID {ts} is not a transfer syntax"
        ) from exc
    if compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError as exc:
            raise _missing_decoder(label, ts, "pydicom has no decoder for it") from exc
        if not decoder.is_available:
            raise _missing_decoder(label, ts)

    try:
        arr = pixel_array(ds, index=frame if n_frames > 1 else None)
    except Exception as exc:  # noqa: BLE001
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        msg = lines[0] if lines else type(exc).__name__
        if compressed and _no_capable_decoder(lines):
            raise _missing_decoder(label, ts, "; ".join(lines)[:400]) from exc
        raise ImageDecodeError(label, "undecodable", "; ".join(lines)[:400] or msg) from exc

    modality = dicom_modality(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1 or photometric == "PALETTE COLOR":
        grey, chroma = _dicom_colour_to_l(arr, ds, photometric, measure)
        return DecodedImage(grey, chroma, modality)

    arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    out = _dicom_voi_to_uint8(arr, ds)
    shape = str(ds.get("PresentationLUTShape", "")).upper().strip()
    if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE"):
        out = 255 - out
    return DecodedImage(Image.fromarray(out), 0.0, modality)


def dicom_modality(ds: object) -> str | None:
    """The dataset's Modality, stripped and upper case ("" when empty, None when absent);
    a (malformed) multi-valued one gives its first value."""
    value = ds.get("Modality")  # type: ignore[attr-defined]
    if value is None:
        return None
    if not isinstance(value, str) and hasattr(value, "__len__"):
        value = value[0] if len(value) else ""
    return str(value).strip().upper()


def _dicom_colour_to_l(
    arr: np.ndarray, ds: object, photometric: str, measure: bool
) -> tuple[Image.Image, float]:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    # pixel_array already converted YBR_* to RGB (raw=False)
    rgb = np.asarray(arr)[..., :3]
    if rgb.dtype != np.uint8:
        rgb = _window_to_uint8(rgb.astype(np.float32))
    chroma = chroma_of_array(rgb) if measure else 0.0
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").convert("L"), chroma


def _dicom_voi_to_uint8(arr: np.ndarray, ds: object) -> np.ndarray:
    """Apply the first VOI transform present; map its output range to 0..255."""
    from pydicom.pixels import apply_voi

    voi_seq = ds.get("VOILUTSequence")  # type: ignore[attr-defined]
    if voi_seq:
        item = voi_seq[0]
        lut = np.asarray(item.LUTData, dtype=np.float64).ravel()
        # LUT entries are indexed by integers; the modality output is float64 here
        out = np.asarray(apply_voi(np.rint(arr).astype(np.int64), ds, index=0), np.float64)
        return _window_to_uint8(out, float(lut.min()), float(lut.max()))
    center = _first_float(ds.get("WindowCenter"))  # type: ignore[attr-defined]
    width = _first_float(ds.get("WindowWidth"))  # type: ignore[attr-defined]
    if center is None or width is None or width <= 0:
        return _window_to_uint8(arr)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper().strip()  # type: ignore[attr-defined]
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (arr - center) / width, -50, 50)))
    elif function == "LINEAR_EXACT":
        y = np.clip((arr - center) / width + 0.5, 0.0, 1.0)
    elif width <= 1:  # LINEAR with width 1 is a threshold at centre - 0.5
        y = (arr > center - 0.5).astype(np.float64)
    else:  # LINEAR (PS3.3 C.11.2.1.2.1)
        y = np.clip((arr - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.round(y * 255.0).astype(np.uint8)


def _first_float(value: object) -> float | None:
    """First value of a (possibly multi-valued) DS element, or ``None``."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) or not hasattr(value, "__len__") else list(value)
    try:
        return float(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def decode_pil_image(img: Image.Image) -> DecodedImage:
    """Any PIL image -> 8-bit greyscale (16-bit and float images windowed to their range),
    with its chroma."""
    grey, chroma = _to_l(img, measure=True)
    return DecodedImage(grey, chroma)


def decode_array(arr: np.ndarray, label: str = "<array>") -> DecodedImage:
    """A numpy image -> 8-bit greyscale PIL image, with its chroma.

    Greyscale ``(H, W)`` of any numeric type (non-uint8 windowed to its range), ``(H, W, 1)``,
    or colour ``(H, W, 3|4)``.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if rgb.dtype != np.uint8:
            rgb = _window_to_uint8(rgb.astype(np.float32))
        img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        return DecodedImage(img.convert("L"), chroma_of(img))
    if arr.ndim != 2:
        raise ImageDecodeError(
            label, "not an image", f"expected (H, W) or (H, W, 3), got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return DecodedImage(Image.fromarray(np.ascontiguousarray(arr), "L"))
    if arr.dtype == np.bool_:
        return DecodedImage(Image.fromarray(arr.astype(np.uint8) * 255, "L"))
    return DecodedImage(Image.fromarray(_window_to_uint8(arr.astype(np.float32)), "L"))
