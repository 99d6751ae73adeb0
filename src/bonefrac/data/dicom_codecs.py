"""A pydicom decoder plugin for what the default install decodes but pydicom's plugins refuse.

The default install decodes every compressed transfer syntax with permissively licensed
packages (``pyproject.toml``): GDCM (``python-gdcm``: JPEG Baseline, Extended, Lossless,
JPEG-LS, JPEG 2000), ``pylibjpeg`` + ``pylibjpeg-openjpeg`` (JPEG 2000, HTJ2K), ``pylibjpeg-rle``
(RLE), ``pyjpegls`` (JPEG-LS, via highdicom) and Pillow. One gap is left: **12-bit JPEG
Extended** (``1.2.840.10008.1.2.4.51``, Process 4). Pillow cannot decode it, pydicom's GDCM
plugin refuses it before GDCM sees the data, and the one pydicom plugin that takes it needs
``pylibjpeg-libjpeg``, which is GPL-3 and so stays out of the default install. GDCM itself
decodes it (its IJG 12-bit codec): on pydicom's ``JPGExtended.dcm`` it gives pydicom's reference
values (``arr[420, 140] == 244``, ``arr[230, 120] == 95``). :func:`register` adds a plugin that
hands such a frame to GDCM without the refusal; it is added last, so it is only tried when the
plugins pydicom ships have failed.
"""

from __future__ import annotations

import threading
from typing import Any

from pydicom import uid

LABEL = "bonefrac-gdcm12"
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("gdcm>=3.0.10",)}
_lock = threading.Lock()
_registered = False


def is_available(transfer_syntax: str) -> bool:
    """True when GDCM is importable and ``transfer_syntax`` is one this plugin decodes."""
    if transfer_syntax not in DECODER_DEPENDENCIES:
        return False
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One encoded JPEG Extended frame -> its decoded samples (pydicom's plugin contract)."""
    import gdcm

    if runner.samples_per_pixel != 1:
        raise NotImplementedError("bonefrac's GDCM 12-bit plugin decodes greyscale frames only")
    gdcm.Trace.WarningOff()  # GDCM tries its 8-bit codec first and warns on stderr
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    pi_type = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
    ts_type = gdcm.TransferSyntax.GetTSType(str(uid.JPEGExtended12Bit))
    image.SetTransferSyntax(gdcm.TransferSyntax(ts_type))
    bits = runner.bits_stored
    image.SetPixelFormat(
        gdcm.PixelFormat(1, runner.bits_allocated, bits, bits - 1, runner.pixel_representation)
    )
    buffer = image.GetBuffer()
    expected = runner.rows * runner.columns * (runner.bits_allocated // 8)
    if not buffer or len(buffer) != expected:
        raise ValueError(f"GDCM could not decode the JPEG Extended frame ({len(buffer or '')} "
                         f"of {expected} bytes)")  # fmt: skip
    return buffer.encode("utf-8", "surrogateescape")  # GDCM hands char* back as str


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder once (idempotent, thread-safe)."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        from pydicom.pixels import get_decoder

        decoder = get_decoder(uid.JPEGExtended12Bit)
        if LABEL not in decoder.available_plugins and is_available(uid.JPEGExtended12Bit):
            decoder.add_plugin(LABEL, (__name__, "decode_frame"))
        _registered = True
