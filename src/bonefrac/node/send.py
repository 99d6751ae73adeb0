"""Where results go: C-STORE to a PACS AE (pynetdicom) or DICOMweb STOW-RS (dicomweb-client),
with retries, backoff and a dead-letter folder.

One :class:`Sender` thread per destination drains that destination's outbox, oldest first,
in batches over one association (or one HTTP request per instance). A destination that cannot
be reached (connection refused, association rejected, timeout, HTTP 5xx) is retried after a
wait that doubles from ``retry_backoff_s`` up to ``retry_max_backoff_s``; a result that failed
``retry_attempts`` sends (refused by the destination, or never delivered while it was down) is
moved to ``dead/<destination>/`` with the last reason. A result is deleted from the outbox
only after the destination confirmed it (C-STORE success or warning status, a STOW-RS answer
without it among the failures), so a crash in between sends it again with the same SOP
Instance UID, which the PACS stores once.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bonefrac.config import NodeConfig, parse_dicom_destination
from bonefrac.node.spool import Spool, oldest_first

log = logging.getLogger(__name__)

#: Results sent over one association per round.
BATCH = 32
#: C-STORE statuses that mean stored: success and the warnings (coercion, elements discarded,
#: dataset does not match SOP class).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DestinationDown(Exception):
    """The destination could not be reached at all (nothing of the batch was sent)."""


@dataclass
class Outcome:
    path: Path
    stored: bool
    detail: str = ""


class Destination(Protocol):
    key: str  # folder name in the spool's outbox/ and dead/
    label: str  # what logs and the audit say

    def send(self, paths: Sequence[Path]) -> list[Outcome]: ...


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:100]


class CStoreDestination:
    """A PACS (or any Storage SCP) at ``AE@HOST:PORT``, called from the node's AE title."""

    def __init__(self, spec: str, calling_ae: str, timeout_s: float) -> None:
        self.ae_title, self.host, self.port = parse_dicom_destination(spec)
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        self.label = f"{self.ae_title}@{self.host}:{self.port}"
        self.key = "dicom-" + _key(self.label)

    def send(self, paths: Sequence[Path]) -> list[Outcome]:
        import pydicom
        from pynetdicom import AE

        datasets = []
        for path in paths:
            datasets.append((path, pydicom.dcmread(path)))
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        syntaxes = {str(ds.file_meta.TransferSyntaxUID) for _, ds in datasets}
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
            ae.add_requested_context(sop_class, sorted(syntaxes))
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "no association"
            raise DestinationDown(f"{self.label}: {why} (aborted or unreachable)")
        out = []
        try:
            for path, ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:  # no answer: the association died under us
                    raise DestinationDown(f"{self.label}: no C-STORE response (connection lost)")
                out.append(Outcome(path, code in STORED, f"C-STORE status 0x{code:04X}"))
        finally:
            if assoc.is_established:
                assoc.release()
        return out


class StowDestination:
    """A DICOMweb service: STOW-RS to ``URL/studies`` (dicomweb-client)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.url = url
        self.label = url
        self.key = "stow-" + _key(url.split("://", 1)[-1])
        self.client = DICOMwebClient(url=url, timeout=timeout_s)
        self.client.set_http_retry_params(retry=False)  # the sender's retries, one policy

    def send(self, paths: Sequence[Path]) -> list[Outcome]:
        import pydicom
        import requests

        out = []
        for path in paths:
            ds = pydicom.dcmread(path)
            try:
                answer = self.client.store_instances([ds], str(ds.StudyInstanceUID))
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                if code >= 500 or code in (408, 429):
                    raise DestinationDown(f"{self.url}: HTTP {code}") from None
                out.append(Outcome(path, False, f"HTTP {code}"))
                continue
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise DestinationDown(f"{self.url}: {type(exc).__name__}") from None
            failed = {
                str(item.get("ReferencedSOPInstanceUID", "")): item.get("FailureReason")
                for item in (answer.get("FailedSOPSequence") or [])
            }
            if str(ds.SOPInstanceUID) in failed:
                out.append(
                    Outcome(path, False, f"STOW-RS failure {failed[str(ds.SOPInstanceUID)]}")
                )
            else:
                out.append(Outcome(path, True, "STOW-RS stored"))
        return out


def destinations(config: NodeConfig) -> list[Destination]:
    """Every destination of the config, C-STORE ones first."""
    found: list[Destination] = [
        CStoreDestination(spec, config.ae_title, config.send_timeout_s) for spec in config.send_to
    ]
    found += [StowDestination(url, config.send_timeout_s) for url in config.stow_to]
    keys = [d.key for d in found]
    if len(set(keys)) != len(keys):
        from bonefrac.errors import ConfigError

        raise ConfigError("a destination is given twice (--send-to / --stow-to)")
    return found


class Sender:
    """The thread that drains one destination's outbox (see the module text)."""

    def __init__(self, destination: Destination, spool: Spool, config: NodeConfig) -> None:
        self.destination = destination
        self.spool = spool
        self.config = config
        self.outbox = spool.outbox(destination.key)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._attempts: dict[str, int] = {}
        self._failures = 0  # consecutive failed rounds: the backoff's exponent
        self._thread = threading.Thread(
            target=self._loop, name=f"bonefrac-send-{destination.key}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout)

    @property
    def backoff_s(self) -> float:
        if self._failures == 0:
            return 0.0
        wait = self.config.retry_backoff_s * 2 ** (self._failures - 1)
        return min(wait, self.config.retry_max_backoff_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = oldest_first(self.outbox)[:BATCH]
            if not batch:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self.send_round(batch)
            except Exception:  # noqa: BLE001 - a bug must not stop the deliveries for good
                log.exception("sending to %s failed unexpectedly", self.destination.label)
                self._failures += 1
            if self._failures:
                self._stop.wait(self.backoff_s)

    def send_round(self, batch: list[Path]) -> None:
        """Send ``batch`` once; count failures, bury what used up its attempts."""
        label = self.destination.label
        try:
            outcomes = self.destination.send(batch)
        except DestinationDown as exc:
            self._failures += 1
            log.warning("%s; retrying in %.0f s", exc, self.backoff_s)
            outcomes = [Outcome(p, False, str(exc)) for p in batch]
        else:
            failed = any(not o.stored for o in outcomes)
            self._failures = self._failures + 1 if failed else 0
        for outcome in outcomes:
            name = outcome.path.name
            uid = outcome.path.stem
            if outcome.stored:
                outcome.path.unlink(missing_ok=True)
                self._attempts.pop(name, None)
                self.spool.audit.write(
                    "sent", result_uid=uid, destination=label, status="stored",
                    detail=outcome.detail,
                )  # fmt: skip
                continue
            tries = self._attempts.get(name, 0) + 1
            self._attempts[name] = tries
            if tries >= self.config.retry_attempts:
                self._attempts.pop(name, None)
                self.spool.bury(outcome.path, self.destination.key, outcome.detail,
                                destination=label, attempts=tries)  # fmt: skip
                self.spool.audit.write(
                    "dead_letter", result_uid=uid, destination=label, status="undelivered",
                    detail=f"{outcome.detail} after {tries} attempts",
                )  # fmt: skip
                log.error("%s: %s not delivered after %d attempts (%s); see dead/%s",
                          label, name, tries, outcome.detail, self.destination.key)  # fmt: skip


def make_senders(config: NodeConfig, spool: Spool) -> list[Sender]:
    return [Sender(d, spool, config) for d in destinations(config)]


def outbox_keys(senders: Sequence[Sender]) -> list[str]:
    return [s.destination.key for s in senders]


def any_pending(senders: Sequence[Sender]) -> bool:
    return any(oldest_first(s.outbox) for s in senders)
