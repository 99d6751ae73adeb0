"""The node's spool: every state an instance passes through is a file, written atomically.

::

    SPOOL/
      incoming/<SOP UID>.dcm          received (fsynced before C-STORE answers success), not
                                      yet predicted; the worker deletes it after its results
                                      are in every outbox
      outbox/<destination>/<UID>.dcm  a result (SC, SR, study SR) waiting for one destination
      dead/incoming/<UID>.dcm         an input that got no result, beside <UID>.dcm.reason.json
      dead/<destination>/<UID>.dcm    a result no retry delivered, beside its .reason.json
      studies/                        study-level state (:mod:`bonefrac.node.studies`)
      audit.jsonl                     one JSON line per event (:class:`Audit`)

A crash at any point loses nothing: a received instance is in ``incoming`` until its results
are in the outboxes, a result stays in its outbox until its destination took it. Results
have SOP Instance UIDs derived from their input (:mod:`bonefrac.dicom.write`), so redoing a
step after a crash rewrites the same file names and a PACS stores each result once.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bonefrac.fileio import atomic_path

SUFFIX = ".dcm"
REASON_SUFFIX = ".reason.json"
INCOMING = "incoming"


class Spool:
    """The folders of one node (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / INCOMING
        self.outbox_root = self.root / "outbox"
        self.dead_root = self.root / "dead"
        self.studies = self.root / "studies"
        for folder in (self.incoming, self.outbox_root, self.dead_root, self.studies):
            folder.mkdir(parents=True, exist_ok=True)
        self.audit = Audit(self.root / "audit.jsonl")

    # --- incoming ---------------------------------------------------------------------
    def receive(self, sop_uid: str, data: bytes) -> Path:
        """Store one received instance durably (temp file, fsync, rename)."""
        return write_file(self.incoming / f"{sop_uid}{SUFFIX}", data)

    def pending(self) -> list[Path]:
        """Received instances waiting for prediction, oldest first."""
        return oldest_first(self.incoming)

    def pending_count(self) -> int:
        return sum(1 for _ in _entries(self.incoming))

    # --- outboxes and dead letters ----------------------------------------------------
    def outbox(self, destination: str) -> Path:
        folder = self.outbox_root / destination
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def dead(self, kind: str) -> Path:
        folder = self.dead_root / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def bury(self, path: Path, kind: str, reason: str, **details: Any) -> Path:
        """Move ``path`` into ``dead/<kind>/`` with a ``.reason.json`` beside it."""
        target = self.dead(kind) / path.name
        note = {"time": now_iso(), "file": path.name, "reason": reason, **details}
        write_file(target.with_name(target.name + REASON_SUFFIX), _json_bytes(note))
        os.replace(path, target)
        return target

    def clean_partials(self) -> int:
        """Remove temp files a crash left half-written (``.<name>.*.tmp``)."""
        removed = 0
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed


def _entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                yield entry


def oldest_first(folder: Path) -> list[Path]:
    """The ``.dcm`` files of ``folder`` (no temp files), oldest first (then by name)."""
    found = []
    for entry in _entries(folder):
        try:
            found.append((entry.stat().st_mtime_ns, entry.name))
        except FileNotFoundError:  # taken by another thread meanwhile
            continue
    return [folder / name for _, name in sorted(found)]


def write_file(path: Path, data: bytes) -> Path:
    """``data`` at ``path`` atomically and durably (temp file in the folder, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, indent=1, default=str).encode()


class Audit:
    """The audit log: one JSON object per line (``time``, ``event`` and what applies of
    ``sop_instance_uid``, ``study_instance_uid``, ``calling_ae``, ``decision``,
    ``probability``, ``destination``, ``status``, ``detail``). UIDs and AE titles only: no
    patient name, ID or birth date is ever written."""

    FIELDS = (
        "sop_instance_uid", "study_instance_uid", "sop_class_uid", "calling_ae", "decision",
        "probability", "destination", "status", "detail", "result_uid",
    )  # fmt: skip

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        unknown = set(fields) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"audit fields {sorted(unknown)} are not in Audit.FIELDS")
        record = {"time": now_iso(), "event": event}
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()

    def records(self) -> list[dict[str, Any]]:
        """Every record so far (tests, the benchmark)."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
