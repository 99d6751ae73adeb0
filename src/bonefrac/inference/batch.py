"""``bonefrac predict``: many files -> a CSV, streamed, resumable, one error row per bad file.

- Inputs: files and folders (recursive): image suffixes, ``.dcm``/``.dicom`` and files with the
  DICM magic whatever their name. Files named explicitly are always tried.
- Rows are appended batch by batch and flushed, so an interrupted job loses at most one batch;
  re-running with the same ``--out`` skips every path already in the CSV (a half-written last
  line from a kill is dropped first).
- A file that cannot be read becomes a row with ``error`` set (``reason: detail``); the job goes
  on. :class:`BatchSummary` counts the failures so the CLI can exit non-zero.
- Decoding runs in DataLoader worker processes when ``workers > 0``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from bonefrac.data.imageio import is_candidate_image
from bonefrac.errors import BonefracError, DataError, ImageDecodeError
from bonefrac.inference.predictor import Predictor, PreparedInput, prepare_input

log = logging.getLogger(__name__)

COLUMNS = ["path", "prob", "decision", "logit", "threshold", "temperature", "error", "cam_path"]


@dataclass
class BatchSummary:
    out: Path
    total: int = 0  # inputs found
    predicted: int = 0  # rows written with a probability in this run
    failed: int = 0  # error rows written in this run
    skipped: int = 0  # already in the CSV
    earlier_failed: int = 0  # skipped paths whose existing row is an error row
    positives: int = 0  # decision == 1 among this run's predictions
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, error) this run

    @property
    def any_failed(self) -> bool:
        return self.failed > 0 or self.earlier_failed > 0

    @property
    def images_per_second(self) -> float:
        done = self.predicted + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0


def collect_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) into candidate files; keep named files as given.

    Returns absolute paths without duplicates, in input order. A missing path is kept so it
    becomes an error row.
    """
    out: dict[Path, None] = {}
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for fname in sorted(files):
                    if fname.startswith("."):
                        continue
                    f = Path(root) / fname
                    if is_candidate_image(f):
                        out.setdefault(f.absolute(), None)
        else:
            out.setdefault(path.absolute(), None)
    return list(out)


def read_done(out: Path) -> dict[str, str]:
    """``{path: error}`` of the rows already in ``out`` (error is '' for good rows).

    A trailing partial line (the job was killed mid-write) is cut off the file first.
    """
    if not out.is_file() or out.stat().st_size == 0:
        return {}
    data = out.read_bytes()
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping a half-written last line", out)
        with open(out, "r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    lines = data.decode("utf-8").splitlines()
    if not lines:
        return {}
    reader = csv.DictReader(lines)
    missing = {"path", "prob", "decision", "error"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(
            f"{out}: not a 'bonefrac predict' CSV (no {', '.join(sorted(missing))} column); "
            "choose another --out or pass --force to start it afresh"
        )
    if reader.fieldnames != COLUMNS:
        raise DataError(
            f"{out}: its columns {reader.fieldnames} differ from this version's {COLUMNS}; "
            "choose another --out or pass --force"
        )
    return {row["path"]: row.get("error") or "" for row in reader}


class _Files(Dataset):
    """Decode in workers; errors travel back as strings so one bad file never stops the job."""

    def __init__(self, paths: list[Path], size: int, clahe: bool, dicom_frame: int | None, keep):
        self.paths = paths
        self.size = size
        self.clahe = clahe
        self.dicom_frame = dicom_frame
        self.keep = keep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, PreparedInput | None, str]:
        path = self.paths[i]
        try:
            prepared = prepare_input(
                path,
                self.size,
                clahe=self.clahe,
                name=str(path),
                dicom_frame=self.dicom_frame,
                keep_display=self.keep,
            )
            return i, prepared, ""
        except ImageDecodeError as exc:
            return i, None, f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason
        except Exception as exc:  # noqa: BLE001 - any failure of one file is that file's row
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(items: list) -> list:
    return items


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def cam_file_name(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:8]
    return f"{path.stem}-{digest}.png"


def predict_to_csv(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    backend: str = "torch",
    batch_size: int = 16,
    cam_dir: str | Path | None = None,
    dicom_frame: int | None = None,
    workers: int = 0,
    force: bool = False,
    progress: bool = True,
    predictor: Predictor | None = None,
) -> BatchSummary:
    """Predict every input file into ``out`` (CSV, :data:`COLUMNS`), resuming a previous run."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    start = time.perf_counter()
    out = Path(out)
    if batch_size < 1:
        raise BonefracError(f"--batch-size must be at least 1, got {batch_size}")
    if force and out.exists():
        out.unlink()
    done = read_done(out)
    files = collect_inputs(inputs)
    summary = BatchSummary(out=out, total=len(files))
    todo = []
    for f in files:
        if str(f) in done:
            summary.skipped += 1
            summary.earlier_failed += bool(done[str(f)])
        else:
            todo.append(f)
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary

    predictor = predictor or Predictor.from_run(run_dir, backend=backend)
    cam_path = Path(cam_dir) if cam_dir else None
    if cam_path is not None:
        cam_path.mkdir(parents=True, exist_ok=True)
    dataset = _Files(todo, predictor.image_size, predictor.clahe, dicom_frame, cam_path is not None)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.is_file() or out.stat().st_size == 0
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
    ]
    with (
        open(out, "a", newline="", encoding="utf-8") as fh,
        Progress(*columns, disable=not progress, transient=False) as bar,
    ):
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
            fh.flush()
        task = bar.add_task("predicting", total=len(todo), failed=0)
        for items in loader:
            rows = _predict_items(predictor, todo, items, cam_path, summary)
            writer.writerows(rows)
            fh.flush()
            bar.update(task, advance=len(items), failed=summary.failed)
    summary.seconds = time.perf_counter() - start
    return summary


def _predict_items(
    predictor: Predictor,
    todo: list[Path],
    items: list[tuple[int, PreparedInput | None, str]],
    cam_dir: Path | None,
    summary: BatchSummary,
) -> list[dict[str, Any]]:
    ok = [(i, p) for i, p, err in items if p is not None]
    preds = predictor.predict_prepared([p for _, p in ok], heatmap=cam_dir is not None)
    by_index = {i: pred for (i, _), pred in zip(ok, preds, strict=True)}
    rows = []
    for i, _, err in items:
        path = todo[i]
        row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
        row["path"] = str(path)
        row["threshold"] = f"{predictor.threshold:.6g}"
        row["temperature"] = f"{predictor.temperature:.6g}"
        pred = by_index.get(i)
        if pred is None:
            row["error"] = _one_line(err) or "unknown error"
            summary.failed += 1
            summary.errors.append((str(path), row["error"]))
        else:
            row["prob"] = f"{pred.probability:.6f}"
            row["logit"] = f"{pred.logit:.6f}"
            row["decision"] = int(pred.decision)
            summary.predicted += 1
            summary.positives += int(pred.decision)
            if cam_dir is not None and pred.heatmap is not None:
                target = cam_dir / cam_file_name(path)
                _save_png(pred.overlay(), target)
                row["cam_path"] = str(target)
        rows.append(row)
    return rows


def _save_png(img: Any, path: Path) -> None:
    from bonefrac.fileio import atomic_path

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def iter_rows(out: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a predictions CSV (for callers that post-process it)."""
    with open(out, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)
