"""The predict job's entry: files and folders -> one predictions CSV, in one or several processes.

The single-process path streams batches (:mod:`bonefrac.batch_predict.stream`); with
``devices > 1`` Lightning Fabric starts that many processes, each streaming its share to a part
file that the first one merges (:mod:`bonefrac.batch_predict.distributed`). The job's options are
one :class:`~bonefrac.config.PredictConfig`; :class:`BatchJob` is built from it here, once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonefrac.batch_predict.distributed import load_predictor, predict_distributed
from bonefrac.batch_predict.stream import (
    BatchJob,
    BatchSummary,
    collect_inputs,
    predicted_rows,
    prepare_job,
    stream_predictions,
)
from bonefrac.config import PredictConfig
from bonefrac.errors import ConfigError
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import warn_missing_safeguards
from bonefrac.system import usable_cpus


@dataclass
class PredictJob:
    """What ``bonefrac predict`` did: the files' summary and, when asked, the studies."""

    summary: BatchSummary
    studies_path: Path | None = None  # <out>.studies.csv
    studies: list[dict[str, Any]] | None = None


def predict_job(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    out: str | Path,
    config: PredictConfig | None = None,
) -> PredictJob | None:
    """:func:`predict_to_csv`, then ``<out>.studies.csv`` when ``config`` groups the images
    into studies (``study_column``: ``paths`` is one CSV list; ``study_by="folder"``).
    ``None`` in the helper processes of a multi-process job."""
    from bonefrac.batch_predict.stream import read_rows
    from bonefrac.inference.studies import check_aggregation, study_inputs, write_studies

    config = config or PredictConfig()
    if config.studies:
        check_aggregation(config.study_agg)
    inputs, study_of = study_inputs([Path(p) for p in paths], config.study_column, config.study_by)
    summary = predict_to_csv(run_dir, inputs, out, config)
    if summary is None:
        return None
    job = PredictJob(summary)
    if config.studies:
        job.studies_path, job.studies = write_studies(
            Path(out), read_rows(Path(out)), study_of, config.study_agg
        )
    return job


def predict_to_csv(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    config: PredictConfig | None = None,
    *,
    predictor: Predictor | None = None,
) -> BatchSummary | None:
    """Predict every input file into ``out`` (CSV, :data:`COLUMNS`), resuming a previous run.

    ``config.devices > 1`` runs that many processes (Lightning Fabric, ``accelerator`` /
    ``strategy``); then only the first process gets the summary and the others get ``None``.
    ``config.dicom_out``: write a DICOM Secondary Capture and SR per DICOM input there
    (:mod:`bonefrac.dicom.write`); other inputs are counted, not failed.
    ``predictor``: an already loaded model (tests and benchmarks share one).
    """
    config = config or PredictConfig()
    job = batch_job(run_dir, inputs, out, config)
    if config.devices > 1:
        return predict_distributed(
            job, devices=config.devices, accelerator=config.accelerator, strategy=config.strategy
        )
    start = time.perf_counter()
    if predictor is None:
        predictor = load_predictor(job, config.accelerator)
    todo, summary = prepare_job(job, predictor)
    stream_predictions(predictor, todo, job.out, job, summary)
    summary.seconds = time.perf_counter() - start
    return summary


def predict_rows(
    run_dir: str | Path, inputs: Sequence[str | Path], config: PredictConfig | None = None
) -> tuple[list[dict[str, Any]], BatchSummary]:
    """Predict every input file in this process and return its predict-CSV rows and the
    summary, writing no CSV (``bonefrac predict`` without ``--out`` prints them)."""
    config = config or PredictConfig()
    if config.devices > 1:
        raise ConfigError(
            "--devices > 1 shares the files through part files of the CSV: pass --out"
        )
    start = time.perf_counter()
    job = batch_job(run_dir, inputs, Path(), config)
    predictor = load_predictor(job, config.accelerator)
    files = collect_inputs(job.inputs)
    summary = BatchSummary(out=job.out, total=len(files))
    missing = warn_missing_safeguards(predictor.meta, str(job.run_dir))
    summary.missing_safeguards = [item.name for item in missing]
    for folder in (job.cam_dir, job.dicom_out):
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
    rows = [row for batch in predicted_rows(predictor, files, job, summary) for row in batch]
    summary.seconds = time.perf_counter() - start
    return rows, summary


def batch_job(
    run_dir: str | Path, inputs: Sequence[str | Path], out: str | Path, config: PredictConfig
) -> BatchJob:
    """The picklable job every prediction process runs, from the command's options."""
    workers = config.workers
    if workers is None:
        workers = default_decode_workers(config.devices)
    return BatchJob(
        run_dir=Path(run_dir),
        inputs=[Path(p) for p in inputs],
        out=Path(out),
        backend=config.backend,
        batch_size=config.batch_size,
        cam_dir=config.cam_dir,
        dicom_frame=config.dicom_frame,
        workers=workers,
        force=config.force,
        retry_errors=config.retry_errors,
        progress=config.progress,
        dicom_out=config.dicom_out,
    )


def default_decode_workers(processes: int) -> int:
    """DataLoader decode workers per prediction process: its share of CPUs - 1, at most 4."""
    share = usable_cpus() // max(1, processes)
    return min(4, share - 1) if share > 2 else 0


def exit_status(summary: BatchSummary) -> int:
    """``bonefrac predict``'s exit status: 2 when the model answered for no file, 1 when some
    files (or a requested DICOM output) failed, else 0."""
    if summary.model_broken:
        return 2
    if summary.any_failed or summary.dicom_out.failed:
        return 1
    return 0
