"""The node's study tracker: a study is *waiting* from its first image until its study report,
*due* only once it has been quiet for ``study_quiet_s`` (the node is idle only when none waits)."""

from __future__ import annotations

import pydicom

from bonefrac.dicom.write import ModelInfo
from bonefrac.node.spool import Audit
from bonefrac.node.studies import StudyTracker
from tests.node.helpers import synthetic_radiograph, write_cr

ROW = {"prob": "0.7", "decision": "refer", "threshold": "0.6", "error": ""}


def tracker(tmp_path, quiet_s, delivered):
    folder = tmp_path / "studies"
    folder.mkdir(exist_ok=True)
    model = ModelInfo(name="tiny", architecture="baseline")
    return StudyTracker(folder, quiet_s, "max", model, delivered.extend, Audit(tmp_path / "a.log"))


def test_a_quiet_waiting_study_is_waiting_before_it_is_due_and_neither_after_its_report(tmp_path):
    delivered: list = []
    studies = tracker(tmp_path, 30.0, delivered)
    header = pydicom.dcmread(write_cr(tmp_path / "cr.dcm", synthetic_radiograph(1)))
    studies.add(header, ROW)
    study = str(header.StudyInstanceUID)
    assert studies.waiting() == [study] and studies.due() == []  # in its quiet time
    later = studies._index[study][0] + 31
    assert studies.due(later) == [study]
    assert studies.tick(later) == 1 and len(delivered) == 1
    assert studies.waiting() == [] and studies.due(later) == []
    assert tracker(tmp_path, 30.0, []).waiting() == []  # a restart remembers the report


def test_without_study_reports_nothing_waits(tmp_path):
    studies = tracker(tmp_path, None, [])
    studies.add(pydicom.dcmread(write_cr(tmp_path / "cr.dcm", synthetic_radiograph(1))), ROW)
    assert studies.waiting() == [] and studies.due() == []
