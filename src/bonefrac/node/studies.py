"""Study-level results of the node: when a study has had no new image for ``study_quiet_s``,
one study SR over all its images (the aggregation of ``predict --study-column``,
:func:`bonefrac.inference.studies.study_rows`: ``max`` / ``mean`` / ``noisy_or``, images out of
scope left out, failed images counted).

State lives in the spool (``studies/<Study UID>.json`` plus the image headers and earlier study
reports under ``studies/<Study UID>/``), so a restart neither forgets a study nor reports it
twice. An image arriving after its study was reported makes a new study report once the study
is quiet again; it names the earlier one as its predecessor (highdicom ``previous_versions``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bonefrac.csvpaths import encode_path
from bonefrac.dicom.write import ModelInfo, build_study_report, dataset_bytes
from bonefrac.fileio import atomic_open
from bonefrac.inference.studies import study_rows
from bonefrac.node.spool import Audit, write_file
from bonefrac.rundir.predictions import DECISION, PROB

log = logging.getLogger(__name__)

#: A reported study's state is dropped after this long without a new image (a week: images
#: of one visit arrive within hours; a later one starts a new study state and report).
FORGET_S = 7 * 24 * 3600.0


class StudyTracker:
    """The studies seen so far and when each is due for its study report."""

    def __init__(
        self,
        folder: Path,
        quiet_s: float | None,
        how: str,
        model: ModelInfo,
        deliver: Callable[[list[Any]], None],
        audit: Audit,
        *,
        report_out_of_scope: bool = True,
    ) -> None:
        self.folder = folder
        self.quiet_s = quiet_s
        self.how = how
        self.model = model
        self.deliver = deliver
        self.audit = audit
        self.report_out_of_scope = report_out_of_scope
        #: study UID -> (last update, reported up to date)
        self._index: dict[str, tuple[float, bool]] = {}
        if quiet_s is not None:
            for path in folder.glob("*.json"):
                state = self._read(path.stem)
                self._index[path.stem] = (state["updated"], _up_to_date(state))

    @property
    def enabled(self) -> bool:
        return self.quiet_s is not None

    def _path(self, study: str) -> Path:
        return self.folder / f"{study}.json"

    def _read(self, study: str) -> dict[str, Any]:
        path = self._path(study)
        if not path.is_file():
            return {"study": study, "updated": 0.0, "images": {}, "reported": [], "reports": 0}
        return json.loads(path.read_text(encoding="utf-8"))

    def _write(self, state: dict[str, Any]) -> None:
        with atomic_open(self._path(state["study"]), "w", encoding="utf-8") as fh:
            json.dump(state, fh)

    def add(self, header: Any, row: dict[str, str]) -> None:
        """Record one image's answer (``prob``, ``decision``, ``threshold``, ``error``)."""
        if not self.enabled:
            return
        study = str(header.StudyInstanceUID)
        sop = str(header.SOPInstanceUID)
        images = self.folder / study
        images.mkdir(exist_ok=True)
        write_file(images / f"{sop}.dcm", dataset_bytes(header))
        state = self._read(study)
        state["images"][sop] = row
        state["updated"] = time.time()
        self._write(state)
        self._index[study] = (state["updated"], _up_to_date(state))

    def due(self, now: float | None = None) -> list[str]:
        """Studies quiet for ``quiet_s`` whose images are not all in their last report."""
        if not self.enabled:
            return []
        now = time.time() if now is None else now
        assert self.quiet_s is not None
        return sorted(
            s for s, (t, done) in self._index.items() if not done and now - t >= self.quiet_s
        )

    def waiting(self) -> list[str]:
        """Studies whose images are not all in their last report, due or still quiet-waiting."""
        if not self.enabled:
            return []
        return sorted(s for s, (_, done) in self._index.items() if not done)

    def tick(self, now: float | None = None) -> int:
        """Report every due study and forget old ones; the number of reports made."""
        now = time.time() if now is None else now
        made = 0
        for study in self.due(now):
            try:
                made += self.report(study)
            except Exception as exc:  # noqa: BLE001 - one study's failure stops no other
                log.exception("study %s: no study report", study)
                self.audit.write("study_failed", study_instance_uid=study, detail=str(exc)[:500])
                self._index[study] = (self._index[study][0], True)
        for study, (t, done) in list(self._index.items()):
            if done and now - t >= FORGET_S:
                self._path(study).unlink(missing_ok=True)
                shutil.rmtree(self.folder / study, ignore_errors=True)
                del self._index[study]
        return made

    def report(self, study: str) -> int:
        """Make and deliver ``study``'s report now (1), or record that it gets none (0)."""
        import pydicom

        state = self._read(study)
        sops = sorted(state["images"])
        rows = [{"path": encode_path(Path(s)), **state["images"][s]} for s in sops]
        (summary,) = study_rows(rows, {Path(s): study for s in sops}, self.how)
        decision = summary[DECISION]
        made = 0
        if decision and (decision != "out_of_scope" or self.report_out_of_scope):
            folder = self.folder / study
            headers = [pydicom.dcmread(folder / f"{s}.dcm") for s in sops]
            previous = [
                pydicom.dcmread(_report_file(folder, i)) for i in range(1, state["reports"] + 1)
            ]
            prob = float(summary[PROB]) if summary[PROB] else float("nan")
            sr = build_study_report(headers, decision, prob, self.how, self.model, previous)
            self.deliver([sr])
            write_file(_report_file(folder, state["reports"] + 1), dataset_bytes(sr))
            state["reports"] += 1
            made = 1
            self.audit.write(
                "study_report", study_instance_uid=study, result_uid=str(sr.SOPInstanceUID),
                decision=decision, probability=summary[PROB] or None,
                detail=f"{self.how} of {len(sops)} image(s), {summary['n_failed']} failed",
            )  # fmt: skip
        state["reported"] = sops
        self._write(state)
        self._index[study] = (state["updated"], True)
        return made


def _up_to_date(state: dict[str, Any]) -> bool:
    return sorted(state["images"]) == list(state["reported"])


def _report_file(folder: Path, number: int) -> Path:
    """The study's ``number``-th report, kept to name it as the next one's predecessor."""
    return folder / f"report-{number:04d}.sr"
