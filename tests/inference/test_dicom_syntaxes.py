"""Every compressed DICOM transfer syntax decodes out of the box through bonefrac's DICOM path.

The files are pydicom's own test files (shipped with pydicom, no download); JPEG Lossless
Process 14 (.57) is made here from the .70 file, whose codestream (selection value 1) is a valid
Process 14 stream.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGLossless

from bonefrac.data.imageio import decode_image, load_grayscale
from bonefrac.errors import ImageDecodeError
from bonefrac.inference.scope import MAX_CHROMA

#: (file, transfer syntax it uses): at least one file per syntax family.
FILES = [
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG Baseline, YBR_FULL
    ("SC_jpeg_no_color_transform.dcm", "1.2.840.10008.1.2.4.50"),  # RGB, no Adobe marker
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "1.2.840.10008.1.2.4.50"),  # YBR_FULL_422
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG Extended, 12-bit
    ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51"),  # the same with a slightly bad codestream
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG Lossless SV1
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_08.dcm", "1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
    ("SC_rgb_jls_lossy_sample.dcm", "1.2.840.10008.1.2.4.81"),
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ("GDCMJ2K_TextGBR.dcm", "1.2.840.10008.1.2.4.90"),  # YBR_RCT
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),
    ("SC_rgb_gdcm_KY.dcm", "1.2.840.10008.1.2.4.91"),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),  # RLE Lossless
    ("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5"),
]


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return str(path)


@pytest.mark.parametrize(("name", "syntax"), FILES, ids=[f"{s[-4:]}-{n}" for n, s in FILES])
def test_each_compressed_syntax_decodes(name: str, syntax: str) -> None:
    path = pydicom_file(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert str(ds.file_meta.TransferSyntaxUID) == syntax
    arr = np.asarray(load_grayscale(path), dtype=np.float64)
    assert arr.shape == (ds.Rows, ds.Columns)
    assert np.isfinite(arr).all() and arr.std() > 0


def test_jpeg_lossless_process_14(tmp_path) -> None:
    ds = pydicom.dcmread(pydicom_file("SC_rgb_jpeg_gdcm.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGLossless  # .57: the SV1 stream is a Process 14 stream
    path = tmp_path / "p14.dcm"
    ds.save_as(path)
    out = np.asarray(load_grayscale(path))
    assert np.array_equal(out, np.asarray(load_grayscale(pydicom_file("SC_rgb_jpeg_gdcm.dcm"))))


def test_lossless_syntaxes_match_the_uncompressed_file() -> None:
    reference = np.asarray(load_grayscale(pydicom_file("MR_small.dcm")))
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        assert np.array_equal(np.asarray(load_grayscale(pydicom_file(name))), reference), name


def test_12_bit_jpeg_extended_gives_pydicoms_reference_values() -> None:
    from pydicom.pixels import pixel_array

    from bonefrac.data.dicom_codecs import register

    register()
    arr = pixel_array(pydicom_file("JPGExtended.dcm"))
    assert arr.shape == (1024, 256) and (arr[420, 140], arr[230, 120]) == (244, 95)


def test_corrupt_codestream_is_undecodable_not_a_missing_decoder() -> None:
    with pytest.raises(ImageDecodeError) as info:
        load_grayscale(pydicom_file("JPEG2000-embedded-sequence-delimiter.dcm"))
    assert info.value.reason == "undecodable"


def test_colour_dicom_carries_its_chroma_and_modality() -> None:
    decoded = decode_image(pydicom_file("SC_rgb_rle.dcm"))
    assert decoded.modality == "OT" and decoded.chroma > MAX_CHROMA
    assert decode_image(pydicom_file("MR_small_RLE.dcm")).modality == "MR"
