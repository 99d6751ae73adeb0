"""Write small DICOM files with pydicom for the decoder tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: tuple[list[int], np.ndarray] | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    encapsulated: bytes | None = None,
    preamble: bool = True,
    modality: str | None = "DX",
) -> Path:
    """``pixels``: (rows, cols) or (frames, rows, cols) of uint8/uint16/int16; None: no PixelData.
    ``modality``: the Modality element (None: left out)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.PatientName = "Test^Synthetic"
    if pixels is not None:
        arr = np.asarray(pixels)
        frames = arr.shape[0] if arr.ndim == 3 else 1
        rows, cols = arr.shape[-2:]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if np.issubdtype(arr.dtype, np.signedinteger) else 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if voi_function:
            ds.VOILUTFunction = voi_function
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if voi_lut is not None:
            from pydicom.dataset import Dataset

            item = Dataset()
            item.add_new(0x00283002, "US", voi_lut[0])  # LUTDescriptor
            item.add_new(0x00283006, "US", [int(v) for v in voi_lut[1]])  # LUTData
            ds.VOILUTSequence = [item]
        if encapsulated is not None:
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([encapsulated])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        else:
            ds.PixelData = np.ascontiguousarray(arr).tobytes()
    else:
        ds.Rows, ds.Columns = 8, 8
    ds.save_as(str(path), enforce_file_format=preamble)
    return path


def marker_image(dtype: type = np.uint16, low: int = 100, high: int = 3000) -> np.ndarray:
    """48 x 32 (rows x cols) ramp background with a bright block in the top-left corner."""
    rows, cols = 48, 32
    arr = np.full((rows, cols), low, dtype=np.float64)
    arr += np.linspace(0, (high - low) * 0.2, cols)[None, :]  # gentle left-to-right ramp
    arr[:12, :8] = high
    return arr.astype(dtype)
