"""The sidecar of a predictions CSV (``<out>.meta.json``): which model and settings wrote it.

Resuming appends rows to the CSV, so every row must come from the same weights, threshold,
temperature, refer rule, out-of-scope detector and scope rules, backend, input size and DICOM
frame. The sidecar is written atomically before the
CSV's header; a resume compares it with the model about to predict and refuses on any
difference (``--force`` starts over).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bonefrac.csvpaths import encode_path
from bonefrac.errors import DataError
from bonefrac.fileio import read_json, write_json
from bonefrac.inference.scope import rules_record

FORMAT = "bonefrac-predictions/1"
PATH_ENCODING = "fs-bytes, UTF-8, percent-encoded where unsafe (see bonefrac.csvpaths)"
#: Fields that must match for a resume (the others are informative).
COMPARED = (
    "weights_sha256",
    "threshold",
    "temperature",
    "backend",
    "image_size",
    "clahe",
    "dicom_frame",
    "refer",
    "ood",
    "scope",
)


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def fingerprint(predictor: Any, dicom_frame: int | None, columns: list[str]) -> dict[str, Any]:
    """What identifies the predictions ``predictor`` makes (weights hashed from the run)."""
    run = predictor.run
    sha = predictor.meta.weights_sha256  # checked against the files when the run was loaded
    return {
        "format": FORMAT,
        "path_encoding": PATH_ENCODING,
        "columns": list(columns),
        "run_dir": encode_path(run.path.absolute()),
        "run_name": predictor.name,
        "weights_sha256": sha or "",
        "threshold": float(predictor.threshold),
        "temperature": float(predictor.temperature),
        "backend": predictor.backend,
        "image_size": int(predictor.image_size),
        "clahe": bool(predictor.clahe),
        "dicom_frame": dicom_frame,
        "refer": _rule(predictor.meta.refer, ("score", "cutoff", "coverage")),
        "ood": _rule(predictor.meta.ood, ("method", "cutoff", "stats_sha256")),
        "scope": rules_record(),
    }


def _rule(record: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The fields of a refer / out-of-scope record that change decisions."""
    return None if record is None else {k: getattr(record, k) for k in keys}


def check_sidecar(out: Path, current: dict[str, Any]) -> None:
    """Refuse (one line, naming the file and the fix) when ``out`` was written differently."""
    path = sidecar_path(out)
    fix = "choose another --out, or pass --force to start it over"
    if not path.is_file():
        raise DataError(
            f"{out}: no {path.name} beside it records which model wrote it "
            f"(another tool or an older bonefrac); {fix}"
        )
    try:
        stored = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {fix}") from None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} record; {fix}")
    diffs = [
        f"{key} {_show(stored.get(key))} there, {_show(current[key])} now"
        for key in COMPARED
        if stored.get(key) != current[key]
    ]
    if diffs:
        raise DataError(
            f"{out}: written by run {stored.get('run_name')!r} with other settings "
            f"({'; '.join(diffs)}); {fix}"
        )


def write_sidecar(out: Path, record: dict[str, Any]) -> None:
    write_json(sidecar_path(out), record)


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a SHA-256: its first 12 digits suffice
        return value[:12]
    return json.dumps(value)
