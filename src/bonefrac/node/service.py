"""The node put together: spool, Storage SCP, worker, one sender per destination.

:meth:`Node.start` first cleans what a crash left half-written, then starts the senders
(results still in an outbox go out), the worker (instances still in ``incoming/`` are
predicted) and last the SCP, so nothing is accepted before the node can process it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from bonefrac.config import NodeConfig
from bonefrac.inference.predictor import Predictor
from bonefrac.node.receive import StorageSCP
from bonefrac.node.send import any_pending, make_senders
from bonefrac.node.spool import Spool
from bonefrac.node.work import Worker

log = logging.getLogger(__name__)


class Node:
    """One DICOM node. ``predictor``: an already loaded model (tests share one); else the
    config's ``run`` (a run directory or shipped name) with its ``backend``."""

    def __init__(self, config: NodeConfig, predictor: Predictor | None = None) -> None:
        from bonefrac.rundir import RunDir, warn_missing_safeguards

        config.check_ready()
        assert config.spool is not None
        self.config = config
        self.spool = Spool(config.spool)
        if predictor is None:
            run = RunDir.open(config.run)
            predictor = Predictor.from_run(run, config.backend)
            warn_missing_safeguards(predictor.meta, str(run.path))
        self.predictor = predictor
        self.senders = make_senders(config, self.spool)
        self.worker = Worker(config, self.spool, predictor, self.senders)
        self.scp = StorageSCP(config, self.spool, on_received=self.worker.wake.set)
        self.address: tuple[str, int] | None = None
        self._stopped = threading.Event()

    def start(self) -> tuple[str, int]:
        """Start everything; the address the SCP listens on."""
        removed = self.spool.clean_partials()
        if removed:
            log.info("removed %d half-written spool file(s) left by a crash", removed)
        backlog = self.spool.pending_count()
        for sender in self.senders:
            sender.start()
        self.worker.start()
        self.address = self.scp.start()
        self.spool.audit.write(
            "started", status="listening",
            detail=f"{self.config.ae_title}@{self.address[0]}:{self.address[1]}, "
            f"{backlog} spooled instance(s) to finish",
        )  # fmt: skip
        return self.address

    def stop(self) -> None:
        """Stop accepting, finish the instance in hand, stop the senders (what is queued
        stays in the spool for the next start)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.scp.stop()
        self.worker.stop()
        for sender in self.senders:
            sender.stop()
        self.spool.audit.write("stopped", status="stopped")

    def idle(self) -> bool:
        """Nothing received is waiting, nothing is being predicted or waiting to be sent,
        and no study waits for its study report (due or still in its quiet time)."""
        return (
            self.spool.pending_count() == 0
            and not self.worker.busy
            and not any_pending(self.senders)
            and not self.worker.studies.waiting()
        )

    def wait_idle(self, timeout: float) -> bool:
        """Wait until :meth:`idle` (tests, the benchmark); False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.idle():
                return True
            time.sleep(0.1)
        return self.idle()

    def serve_forever(self) -> None:
        """Start, then run until SIGTERM or SIGINT (Ctrl-C), then stop cleanly."""
        done = threading.Event()

        def _signal(signum: int, frame: Any) -> None:
            done.set()

        previous = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            done.wait()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
