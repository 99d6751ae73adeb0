"""DICOM decoding: orientation, intensity order, VOI/modality LUTs, frames, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import JPEGLSLossless

from bonefrac.data.imageio import is_candidate_image, is_dicom_file, load_grayscale
from bonefrac.errors import ImageDecodeError
from tests.inference.dicom_files import marker_image, write_dicom


def decode(path, **kwargs) -> np.ndarray:
    return np.asarray(load_grayscale(path, **kwargs))


def test_monochrome2_keeps_orientation_and_order(tmp_path):
    src = marker_image(np.uint16)
    out = decode(write_dicom(tmp_path / "m2.dcm", src))
    assert out.shape == src.shape and out.dtype == np.uint8
    assert out[:12, :8].min() == 255  # bright block top-left stays bright and top-left
    assert out[-1, 0] == 0  # darkest stored value -> black
    assert out[-1, -1] > out[-1, 0]  # ramp increases left to right
    assert np.all(np.diff(out[-1].astype(int)) >= 0)


def test_monochrome1_is_inverted(tmp_path):
    src = marker_image(np.uint16)
    m2 = decode(write_dicom(tmp_path / "m2.dcm", src))
    m1 = decode(write_dicom(tmp_path / "m1.dcm", src, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(m1, 255 - m2)
    assert m1[:12, :8].max() == 0  # high stored values are dark in MONOCHROME1


def test_window_center_width_linear(tmp_path):
    src = marker_image(np.uint16, low=1000, high=3000)
    src[-1, -1] = 60000  # an outlier that would crush a min-max mapping
    out = decode(write_dicom(tmp_path / "w.dcm", src, window=(2000, 2000)))
    # LINEAR: values <= c - 0.5 - (w-1)/2 = 1000 -> 0; values > c - 0.5 + (w-1)/2 -> 255
    assert out[-1, 0] == 0
    assert out[:12, :8].min() == 255
    ramp = out[-1, :-1].astype(int)
    assert ramp[-1] > 40 and np.all(np.diff(ramp) >= 0)  # ramp 1000..1400 -> ~0..51
    mid = write_dicom(tmp_path / "mid.dcm", np.full((4, 4), 2000, np.uint16), window=(2000, 2000))
    assert abs(int(decode(mid)[0, 0]) - 128) <= 1
    no_window = decode(write_dicom(tmp_path / "nw.dcm", src))
    assert no_window[:12, :8].max() < 20  # min-max: the outlier takes the whole range


def test_window_applies_after_rescale(tmp_path):
    # stored 1424 with intercept -1024 -> 400 (e.g. HU); window 400 +- 100
    src = np.array([[1224, 1424], [1624, 1024]], dtype=np.uint16)
    out = decode(write_dicom(tmp_path / "r.dcm", src, rescale=(1, -1024), window=(400, 200)))
    assert out[0, 0] == 0 and out[1, 0] == 255 and out[1, 1] == 0
    assert abs(int(out[0, 1]) - 128) <= 1


def test_window_sigmoid_and_linear_exact(tmp_path):
    src = np.array([[500, 1000, 1500]], dtype=np.uint16)
    sig = decode(write_dicom(tmp_path / "s.dcm", src, window=(1000, 500), voi_function="SIGMOID"))
    assert sig[0, 0] < 10 and abs(int(sig[0, 1]) - 128) <= 1 and sig[0, 2] > 245
    exact = decode(
        write_dicom(tmp_path / "e.dcm", src, window=(1000, 1000), voi_function="LINEAR_EXACT")
    )
    assert exact[0, 0] == 0 and abs(int(exact[0, 1]) - 128) <= 1 and exact[0, 2] == 255


def test_voi_lut_sequence(tmp_path):
    src = np.array([[0, 64, 128, 255]], dtype=np.uint16)
    lut = np.clip(np.arange(256) * 4, 0, 1023)  # 8-bit input -> 10-bit output, saturates at 256
    out = decode(write_dicom(tmp_path / "lut.dcm", src, voi_lut=([256, 0, 10], lut)))
    np.testing.assert_array_equal(out[0], [0, 64, 128, 255])  # via output range 0..1023


def test_16bit_and_12bit_and_signed_keep_order(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 16), (4, 1))
    for name, arr, bits in [
        ("u16", (ramp * 16).astype(np.uint16), 16),
        ("u12", ramp.astype(np.uint16), 12),
        ("s16", (ramp - 2048).astype(np.int16), 16),
    ]:
        out = decode(write_dicom(tmp_path / f"{name}.dcm", arr, bits_stored=bits))
        assert out[0, 0] == 0 and out[0, -1] == 255, name
        assert np.all(np.diff(out[0].astype(int)) > 0), name


def test_multi_frame_refused_unless_frame_chosen(tmp_path):
    frames = np.stack([np.full((6, 5), v, np.uint8) for v in (10, 20, 30)])
    frames[2, 0, 0] = 200
    path = write_dicom(tmp_path / "mf.dcm", frames)
    with pytest.raises(ImageDecodeError) as info:
        load_grayscale(path)
    assert info.value.reason == "multi-frame" and "3 frames" in info.value.detail
    out = decode(path, dicom_frame=2)
    assert out.shape == (6, 5) and out[0, 0] == 255 and out[1, 1] == 0
    with pytest.raises(ImageDecodeError, match="out of range"):
        load_grayscale(path, dicom_frame=3)


def test_no_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(ImageDecodeError) as info:
        load_grayscale(path)
    assert info.value.reason == "no pixel data"


def test_too_many_pixels_checked_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((64, 64), np.uint8))
    with pytest.raises(ImageDecodeError) as info:
        load_grayscale(path, max_pixels=1000)
    assert info.value.reason == "too many pixels"


def test_compressed_without_decoder_names_packages(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    # the default install decodes JPEG-LS: pretend its decoders are gone
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    path = write_dicom(
        tmp_path / "jls.dcm",
        np.zeros((8, 8), np.uint8),
        transfer_syntax=JPEGLSLossless,
        encapsulated=b"\xff\xd8\xff\xf7" + b"\0" * 32,
    )
    with pytest.raises(ImageDecodeError) as info:
        load_grayscale(path)
    assert info.value.reason == "missing decoder"
    assert "python-gdcm" in info.value.detail and "JPEG-LS" in info.value.detail


def test_dicm_magic_without_suffix_is_found(tmp_path):
    path = write_dicom(tmp_path / "IM0001", marker_image(np.uint16))
    assert is_dicom_file(path) and is_candidate_image(path)
    assert decode(path)[:12, :8].min() == 255
    raw = write_dicom(tmp_path / "raw.dcm", marker_image(np.uint16), preamble=False)
    assert decode(raw)[:12, :8].min() == 255  # no preamble: known by its suffix
