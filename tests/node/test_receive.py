"""What the SCP accepts: :func:`bonefrac.node.receive.check_instance` on received bytes."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

from bonefrac.node.receive import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH_SOP_CLASS,
    InvalidInstance,
    check_instance,
)
from tests.node.helpers import synthetic_radiograph, write_cr


def test_a_complete_cr_is_accepted(tmp_path):
    path = write_cr(tmp_path / "a.dcm", synthetic_radiograph())
    got = check_instance(path.read_bytes(), ComputedRadiographyImageStorage)
    ds = pydicom.dcmread(path)
    assert (
        got.sop_instance_uid == ds.SOPInstanceUID and got.study_instance_uid == ds.StudyInstanceUID
    )


def test_refusals_carry_a_failure_status(tmp_path):
    path = write_cr(tmp_path / "a.dcm", synthetic_radiograph())
    data = path.read_bytes()
    with pytest.raises(InvalidInstance, match="truncated") as info:
        check_instance(data[:-500])
    assert info.value.status == CANNOT_UNDERSTAND
    with pytest.raises(InvalidInstance, match="differs") as info:
        check_instance(data, DigitalXRayImageStorageForPresentation)
    assert info.value.status == DOES_NOT_MATCH_SOP_CLASS
    with pytest.raises(InvalidInstance, match="PixelData"):
        check_instance(data[:600])
    with pytest.raises(InvalidInstance, match="cannot be parsed|no "):
        check_instance(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = "1.2.abc"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidInstance, match="not a valid UID"):
        check_instance(path.read_bytes())
