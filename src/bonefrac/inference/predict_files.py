"""``bonefrac predict``: files and folders -> one predictions CSV, in one or several processes.

The single-process path streams batches (:mod:`bonefrac.inference.batch`); with
``devices > 1`` Lightning Fabric starts that many processes, each streaming its share to a part
file that the first one merges (:mod:`bonefrac.inference.distributed`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from bonefrac.errors import BonefracError
from bonefrac.inference.batch import BatchJob, BatchSummary, prepare_job, stream_predictions
from bonefrac.inference.distributed import load_predictor, predict_distributed
from bonefrac.inference.predictor import Predictor


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
    retry_errors: bool = False,
    progress: bool = True,
    predictor: Predictor | None = None,
    devices: int = 1,
    accelerator: str = "cpu",
    strategy: str = "ddp",
    dicom_out: str | Path | None = None,
) -> BatchSummary | None:
    """Predict every input file into ``out`` (CSV, :data:`COLUMNS`), resuming a previous run.

    ``devices > 1`` runs that many processes (Lightning Fabric, ``accelerator``/``strategy``);
    then only the first process gets the summary and the others get ``None``.
    ``dicom_out``: write a DICOM Secondary Capture and SR per DICOM input there
    (:mod:`bonefrac.dicom.write`); other inputs are counted, not failed.
    """
    if batch_size < 1:
        raise BonefracError(f"--batch-size must be at least 1, got {batch_size}")
    if devices < 1:
        raise BonefracError(f"--devices must be at least 1, got {devices}")
    job = BatchJob(
        run_dir=Path(run_dir),
        inputs=[Path(p) for p in inputs],
        out=Path(out),
        backend=backend,
        batch_size=batch_size,
        cam_dir=Path(cam_dir) if cam_dir else None,
        dicom_frame=dicom_frame,
        workers=workers,
        force=force,
        retry_errors=retry_errors,
        progress=progress,
        dicom_out=Path(dicom_out) if dicom_out else None,
    )
    if devices > 1:
        return predict_distributed(job, devices=devices, accelerator=accelerator, strategy=strategy)
    start = time.perf_counter()
    if predictor is None:
        predictor = load_predictor(job, accelerator)
    todo, summary = prepare_job(job, predictor)
    stream_predictions(predictor, todo, job.out, job, summary)
    summary.seconds = time.perf_counter() - start
    return summary
