"""One process's share of a predict job: the inputs found, the CSV checked or started,
batches predicted and appended as rows (the job: :mod:`bonefrac.batch_predict`)."""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bonefrac.batch_predict.sidecar import (
    check_sidecar,
    fingerprint,
    sidecar_path,
    write_sidecar,
)
from bonefrac.csvpaths import decode_path, encode_path, safe_text
from bonefrac.data.imageio import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom_file
from bonefrac.dicom.write import DicomOutCounts, write_dicom_out
from bonefrac.errors import BonefracError, DataError
from bonefrac.inference.loop import Batch, FileInputs, batches
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import OUT_OF_SCOPE, REFER, warn_missing_safeguards
from bonefrac.rundir.predictions import ERROR, PATH, PREDICT_COLUMNS, PREDICT_REQUIRED, predict_row

log = logging.getLogger(__name__)

#: Prefix of the error text of rows whose image decoded but the model's output was unusable.
MODEL_ERROR = "model output"


@dataclass
class BatchSummary:
    out: Path
    total: int = 0  # inputs found
    predicted: int = 0  # rows written with a probability in this run
    failed: int = 0  # error rows written in this run
    model_failed: int = 0  # of which the model's output was unusable (not the file)
    skipped: int = 0  # already in the CSV
    earlier_failed: int = 0  # skipped paths whose existing row is an error row
    positives: int = 0  # decision == fracture among this run's predictions
    referred: int = 0  # decision == refer
    out_of_scope: int = 0  # decision == out_of_scope
    seconds: float = 0.0
    processes: int = 1
    errors: list[tuple[str, str]] = field(default_factory=list)  # (CSV path, error) this run
    dicom_out: DicomOutCounts = field(default_factory=DicomOutCounts)
    missing_safeguards: list[str] = field(default_factory=list)  # names (warned once)

    @property
    def any_failed(self) -> bool:
        return self.failed > 0 or self.earlier_failed > 0

    @property
    def model_broken(self) -> bool:
        """The model answered for no image at all: the job failed, not some files."""
        return self.model_failed > 0 and self.predicted == 0

    @property
    def images_per_second(self) -> float:
        done = self.predicted + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: BatchSummary) -> None:
        """Fold one process's counts of this run into this summary."""
        self.predicted += other.predicted
        self.failed += other.failed
        self.model_failed += other.model_failed
        self.positives += other.positives
        self.referred += other.referred
        self.out_of_scope += other.out_of_scope
        self.errors += other.errors
        self.dicom_out.add(other.dicom_out)


@dataclass
class BatchJob:
    """Everything one process needs to take part in a prediction job (picklable)."""

    run_dir: Path
    inputs: list[Path]
    out: Path
    backend: str = "torch"
    batch_size: int = 16
    cam_dir: Path | None = None
    dicom_frame: int | None = None
    workers: int = 0
    force: bool = False
    retry_errors: bool = False
    progress: bool = True
    dicom_out: Path | None = None  # folder for DICOM SC + SR results of DICOM inputs


def collect_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) into candidate files; keep named files as given.

    Returns absolute paths without duplicates, in input order. A missing path is kept so it
    becomes an error row. In folders, a non-regular file is kept (as a future error row) when
    its suffix is an image's and skipped otherwise: it is never opened to look for DICM magic.
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
                    if _is_candidate(f):
                        out.setdefault(f.absolute(), None)
        else:
            out.setdefault(path.absolute(), None)
    return list(out)


def _is_candidate(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES:
        return True
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
    return regular and is_dicom_file(path)


def part_files(out: Path) -> list[Path]:
    """Part files of ``out`` left by the processes of a multi-process job."""
    return sorted(out.parent.glob(glob.escape(out.name) + ".part*"))


def part_file(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.part{rank}")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a predictions CSV (or part); a half-written last line is cut off first."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping a half-written last line", path)
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(
            f"{path}: not a 'bonefrac predict' CSV (not UTF-8); "
            "choose another --out or pass --force to start it afresh"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = set(PREDICT_REQUIRED) - set(reader.fieldnames or [])
    if reader.fieldnames is not None and missing:
        raise DataError(
            f"{path}: not a 'bonefrac predict' CSV (no {', '.join(sorted(missing))} column); "
            "choose another --out or pass --force to start it afresh"
        )
    if reader.fieldnames is not None and reader.fieldnames != PREDICT_COLUMNS:
        raise DataError(
            f"{path}: its columns {reader.fieldnames} differ from this version's "
            f"{PREDICT_COLUMNS}; choose another --out or pass --force"
        )
    return list(reader)


def read_done(out: Path) -> dict[str, str]:
    """``{CSV path: error}`` of the rows already in ``out`` (error is '' for good rows)."""
    return {row[PATH]: row.get(ERROR) or "" for row in read_rows(Path(out))}


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to ``path`` (header first if new) and flush them to disk."""
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=PREDICT_COLUMNS)
        if os.fstat(fh.fileno()).st_size == 0:
            writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def merge_parts(out: Path, done: dict[str, str]) -> int:
    """Move the rows of ``out``'s part files into ``out`` (paths already there are skipped)."""
    merged = 0
    for part in part_files(out):
        new = [r for r in read_rows(part) if r[PATH] not in done]
        if new:
            _write_rows(out, new)
        for r in new:
            done[r[PATH]] = r.get(ERROR) or ""
        merged += len(new)
        part.unlink()
    if merged:
        log.debug("%s: merged %d rows from part files", out, merged)
    return merged


def _drop_error_rows(out: Path) -> int:
    """Rewrite ``out`` (atomically) without its error rows; returns how many were dropped."""
    from bonefrac.fileio import atomic_open

    rows = read_rows(out)
    kept = [r for r in rows if not r.get(ERROR)]
    if len(kept) < len(rows):
        with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=PREDICT_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
    return len(rows) - len(kept)


def prepare_job(job: BatchJob, predictor: Predictor) -> tuple[list[Path], BatchSummary]:
    """Check or start ``job.out`` and its sidecar, merge parts; return the files still to do.

    Runs once per job (in the first process): ``force`` removes the CSV, its sidecar and parts;
    a resume is refused when the sidecar differs from ``predictor``'s settings.
    """
    out = job.out
    try:
        if job.force:
            for stale in [out, sidecar_path(out), *part_files(out)]:
                if stale.is_file():
                    stale.unlink()
        record = fingerprint(predictor, job.dicom_frame, PREDICT_COLUMNS)
        has_rows = (out.is_file() and out.stat().st_size > 0) or bool(part_files(out))
        out.parent.mkdir(parents=True, exist_ok=True)
        if has_rows:
            check_sidecar(out, record)
        else:
            write_sidecar(out, record)
        done = read_done(out)
        merge_parts(out, done)
        if job.retry_errors and _drop_error_rows(out):
            done = read_done(out)
        for folder in (job.cam_dir, job.dicom_out):
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)
        if not out.is_file():
            _write_rows(out, [])  # the header: an unwritable --out fails before any work
    except OSError as exc:
        raise _write_error(exc, out) from None
    files = collect_inputs(job.inputs)
    summary = BatchSummary(out=out, total=len(files))
    missing = warn_missing_safeguards(predictor.meta, str(job.run_dir))
    summary.missing_safeguards = [item.name for item in missing]
    todo = []
    for f in files:
        key = encode_path(f)
        if key in done:
            summary.skipped += 1
            summary.earlier_failed += bool(done[key])
        else:
            todo.append(f)
    return todo, summary


def _write_error(exc: OSError, out: Path) -> BonefracError:
    reason = exc.strerror or str(exc)
    if exc.filename and Path(exc.filename) != out:
        reason += f": {exc.filename}"
    return BonefracError(f"{out}: cannot write it ({reason}); choose a writable --out")


def stream_predictions(
    predictor: Predictor,
    todo: list[Path],
    target: Path,
    job: BatchJob,
    summary: BatchSummary,
    label: str = "predicting",
) -> None:
    """Predict ``todo`` and append its rows to ``target`` after every batch."""
    if not todo:
        return
    try:
        with open(target, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=PREDICT_COLUMNS)
            if os.fstat(fh.fileno()).st_size == 0:
                writer.writeheader()
                fh.flush()
            for rows in predicted_rows(predictor, todo, job, summary, label):
                writer.writerows(rows)
                fh.flush()
    except OSError as exc:  # the CSV, a part or a heatmap could not be written
        raise _write_error(exc, target) from None


def predicted_rows(
    predictor: Predictor,
    todo: list[Path],
    job: BatchJob,
    summary: BatchSummary,
    label: str = "predicting",
) -> Iterator[list[dict[str, Any]]]:
    """The predict-CSV rows of ``todo``, one list per batch, counted into ``summary`` (with
    ``job``'s heatmaps and DICOM output written on the way) and a progress bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    # the DICOM capture shows the same map as the page: the Predictor's (the learned map of a
    # localising run, Grad-CAM otherwise), asked for here as serve asks for it
    heatmap = job.cam_dir is not None or job.dicom_out is not None
    inputs = FileInputs(
        todo,
        predictor.image_size,
        predictor.clahe,
        dicom_frame=job.dicom_frame,
        keep_display=heatmap,
    )
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not job.progress, transient=False) as bar:
        task = bar.add_task(label, total=len(todo), failed=0)
        for batch in batches(
            predictor,
            inputs,
            "predictions",
            batch_size=job.batch_size,
            workers=job.workers,
            heatmap=heatmap,
        ):
            yield _batch_rows(predictor, todo, batch, job.cam_dir, summary, job.dicom_out)
            bar.update(task, advance=batch.count, failed=summary.failed)


def cam_file_name(path: Path) -> str:
    digest = hashlib.sha1(os.fsencode(path)).hexdigest()[:8]
    return f"{encode_path(path.stem)}-{digest}.png"


def _batch_rows(
    predictor: Predictor,
    todo: list[Path],
    batch: Batch,
    cam_dir: Path | None,
    summary: BatchSummary,
    dicom_out: Path | None = None,
) -> list[dict[str, Any]]:
    """The predict-CSV rows of one batch, in source order: an answer per prediction, an error
    row per file that did not decode or whose model output is unusable."""
    by_index: dict[int, Any] = {}
    if batch.predictions is not None:
        by_index = dict(zip(batch.indices, batch.predictions, strict=True))
    reasons = dict(batch.skipped)
    batch_error = f"{MODEL_ERROR}: {batch.error}" if batch.error else ""
    rows = []
    for i in sorted([*batch.indices, *reasons]):
        path = todo[i]
        pred = by_index.get(i)
        err = reasons.get(i, "")
        if i in by_index and pred is None:  # decoded, but the model's answer is not finite
            err = f"{MODEL_ERROR}: the logit or probability is not finite (NaN or inf)"
        elif pred is None and not err:
            err = batch_error or "unknown error"
        if pred is None:
            error = safe_text(err) or "unknown error"
            row = predict_row(
                encode_path(path), predictor.threshold, predictor.temperature, error=error
            )
            summary.failed += 1
            summary.model_failed += error.startswith(MODEL_ERROR)
            summary.errors.append((row[PATH], error))
            rows.append(row)
            continue
        summary.predicted += 1
        summary.positives += int(pred.fracture)
        summary.referred += int(pred.decision == REFER)
        summary.out_of_scope += int(pred.decision == OUT_OF_SCOPE)
        cam_path = ""
        if cam_dir is not None and pred.heatmap is not None:
            target = cam_dir / cam_file_name(path)
            _save_png(pred.overlay(), target)
            cam_path = encode_path(target)
        if dicom_out is not None:
            write_dicom_out(predictor, pred, path, dicom_out, summary.dicom_out)
        rows.append(
            predict_row(
                encode_path(path),
                predictor.threshold,
                predictor.temperature,
                pred,
                cam_path=cam_path,
            )
        )
    return rows


def _save_png(img: Any, path: Path) -> None:
    from bonefrac.fileio import atomic_path

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def row_path(row: dict[str, str]) -> Path:
    """The file a CSV row is about (``path`` decoded, see :mod:`bonefrac.csvpaths`)."""
    return decode_path(row[PATH])
