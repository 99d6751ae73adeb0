"""The node's worker: one received instance at a time -> the Predictor -> SR + SC in the
outboxes (:mod:`bonefrac.dicom.write`, the same objects as ``predict --dicom-out``).

One image at a time keeps memory bounded whatever the burst: the spool on disk is the queue.
The input is deleted from ``incoming/`` only after its results are in every outbox and its
study state is updated; a crash before that predicts it again after the restart, giving the
same SOP Instance UIDs. An input that cannot be predicted (undecodable pixels, a multi-frame
image without ``dicom_frame``, a model output that cannot be trusted) goes to
``dead/incoming/`` with the reason and gets no result: never a decision that cannot be trusted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bonefrac.config import NodeConfig
from bonefrac.dicom.write import (
    ModelInfo,
    build_outputs,
    dataset_bytes,
    decision_label,
    read_header,
)
from bonefrac.errors import BonefracError
from bonefrac.inference.predictor import Predictor
from bonefrac.node.send import Sender
from bonefrac.node.spool import INCOMING, Spool, write_file
from bonefrac.node.studies import StudyTracker

log = logging.getLogger(__name__)

OUT_OF_SCOPE = "out_of_scope"


class Worker:
    """The prediction thread (see the module text)."""

    def __init__(
        self,
        config: NodeConfig,
        spool: Spool,
        predictor: Predictor,
        senders: Sequence[Sender],
    ) -> None:
        self.config = config
        self.spool = spool
        self.predictor = predictor
        self.model = ModelInfo.of(predictor)
        self.senders = list(senders)
        self.studies = StudyTracker(
            spool.studies, config.study_quiet_s, config.study_agg, self.model, self.deliver,
            spool.audit, report_out_of_scope=config.out_of_scope == "report",
        )  # fmt: skip
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bonefrac-node-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the instance in hand (its result is finished, not cut off)."""
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.wake.clear()
            for path in self.spool.pending():
                if self._stop.is_set():
                    return
                self._busy.set()
                try:
                    self.process(path)
                finally:
                    self._busy.clear()
            try:
                self.studies.tick()
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.exception("study reports failed")
            self.wake.wait(1.0)

    def deliver(self, datasets: Sequence[Any]) -> None:
        """Put each dataset into every destination's outbox (named by its SOP Instance UID)."""
        for ds in datasets:
            data = dataset_bytes(ds)
            for sender in self.senders:
                write_file(sender.outbox / f"{ds.SOPInstanceUID}.dcm", data)
        for sender in self.senders:
            sender.wake.set()

    def process(self, path: Path) -> None:
        """Predict one spooled instance and queue its results; never raises for the input."""
        try:
            self._process(path)
        except Exception as exc:  # noqa: BLE001 - one bad instance stops no other
            reason = str(exc) if isinstance(exc, BonefracError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, BonefracError):
                log.exception("%s: unexpected failure", path.name)
            if path.exists():
                self.spool.bury(path, INCOMING, reason)
            self.spool.audit.write(
                "failed", sop_instance_uid=path.stem, status="no result", detail=reason[:1000]
            )
            log.warning("%s: no result (%s)", path.name, reason)

    def _process(self, path: Path) -> None:
        header = read_header(path)
        common = {
            "sop_instance_uid": str(header.SOPInstanceUID),
            "study_instance_uid": str(header.StudyInstanceUID),
        }
        try:
            prepared = self.predictor.prepare(
                path, name=path.name, dicom_frame=self.config.dicom_frame, keep_display=True
            )
            (pred,) = self.predictor.predict_prepared([prepared], heatmap=True)
        except BonefracError as exc:
            self.studies.add(
                header, {"prob": "", "decision": "", "threshold": "", "error": str(exc)}
            )
            raise
        decision = decision_label(pred)
        datasets: list[Any] = []
        if decision != OUT_OF_SCOPE or self.config.out_of_scope == "report":
            outputs = build_outputs(header, pred, self.model, capture=decision != OUT_OF_SCOPE)
            datasets = outputs.datasets
        self.deliver(datasets)
        self.studies.add(
            header,
            {"prob": repr(float(pred.probability)), "decision": decision,
             "threshold": repr(float(pred.threshold)), "error": ""},
        )  # fmt: skip
        path.unlink(missing_ok=True)
        self.spool.audit.write(
            "predicted", **common, decision=decision,
            probability=round(float(pred.probability), 6) if decision != OUT_OF_SCOPE else None,
            status=f"{len(datasets)} result(s) queued",
            result_uid=",".join(str(ds.SOPInstanceUID) for ds in datasets) or None,
            detail=pred.ood_reason,
        )  # fmt: skip
