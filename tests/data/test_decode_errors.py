"""load_grayscale turns every decoder failure into ImageDecodeError (never a bare exception)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from bonefrac.data.imageio import load_grayscale
from bonefrac.errors import ImageDecodeError
from tests.inference.dicom_files import write_dicom
from tests.serving.test_fuzz import bad_ts, bad_vr, mutate


@pytest.fixture()
def dcm(tmp_path: Path) -> bytes:
    arr = (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)
    return write_dicom(tmp_path / "a.dcm", arr).read_bytes()


def test_transfer_syntax_that_is_not_one(dcm):
    with pytest.raises(ImageDecodeError, match="not a transfer syntax") as info:
        load_grayscale(bad_ts(dcm), name="x.dcm")
    assert info.value.reason == "undecodable" and info.value.path == "x.dcm"


def test_unknown_vr_in_rows(dcm, tmp_path):
    path = tmp_path / "vr.dcm"
    path.write_bytes(bad_vr(dcm))
    with pytest.raises(ImageDecodeError, match="Unknown Value Representation") as info:
        load_grayscale(path)
    assert info.value.reason == "undecodable"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_dicoms_raise_only_image_decode_error(dcm):
    rng = np.random.default_rng(7)
    for _ in range(150):
        with contextlib.suppress(ImageDecodeError):
            load_grayscale(mutate(rng, dcm))
