"""Batch prediction over several processes (Lightning Fabric) and on an accelerator.

``predict_distributed`` starts ``devices`` processes with ``L.Fabric(accelerator, devices,
strategy).launch``. With ``strategy="ddp"`` Lightning re-runs the same command line for ranks
1..N-1 (as for training); ``ddp_spawn``/``ddp_fork`` start them from this process instead
(needed where the command line cannot be re-run, e.g. inside pytest or a notebook).

In every process: load the model (on ``fabric.device``); the first process alone checks or
starts the CSV (sidecar, ``--force``, leftover parts, ``--retry-errors``) and lists the files
still to do; each process predicts every N-th of them into its own part file
(``<out>.part<rank>``, streamed and flushed per batch); at the end the first process merges the
parts into ``out``. A job killed part way leaves part files that the next run (one process or
many) merges before it starts, so a resume is exact. Failures are gathered from all processes
before anyone waits on another, so a bad run directory fails every process at once instead of
leaving some blocked.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from bonefrac.batch_predict.stream import (
    BatchJob,
    BatchSummary,
    merge_parts,
    part_file,
    prepare_job,
    read_done,
    stream_predictions,
)
from bonefrac.errors import BonefracError
from bonefrac.inference.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class _Outcome:
    summary: BatchSummary | None = None
    error: str = ""


def predict_distributed(
    job: BatchJob, *, devices: int, accelerator: str = "cpu", strategy: str = "ddp"
) -> BatchSummary | None:
    """Run ``job`` on ``devices`` processes; the summary in the first, ``None`` in the others."""
    import lightning as L

    start = time.perf_counter()
    if not log.isEnabledFor(logging.DEBUG):  # Lightning's set-up banners: shown with -v only
        for name in ("lightning.fabric", "lightning.pytorch"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        fabric = L.Fabric(accelerator=accelerator, devices=devices, strategy=strategy)
    except Exception as exc:  # noqa: BLE001 - Lightning's own configuration errors
        raise BonefracError(
            f"--accelerator {accelerator} --devices {devices} --strategy {strategy}: "
            f"{' '.join(str(exc).split())}"
        ) from None
    outcome = fabric.launch(_rank_main, job)
    if outcome is None:  # a process other than the first: it reported through the first
        return None
    if outcome.error:
        raise BonefracError(outcome.error)
    assert outcome.summary is not None
    outcome.summary.seconds = time.perf_counter() - start  # process start-up included
    return outcome.summary


def _rank_main(fabric: Any, job: BatchJob) -> _Outcome | None:
    rank, world = fabric.global_rank, fabric.world_size
    todo = None
    summary = None
    error = ""
    try:
        predictor = load_predictor(job, device=fabric.device, threads=torch.get_num_threads())
        if rank == 0:
            todo, summary = prepare_job(job, predictor)
    except Exception as exc:  # noqa: BLE001 - reported by the first process, see _describe
        error = _describe(exc, rank)
    setup = _gather((error, todo))
    errors = [e for e, _ in setup if e]
    if errors:
        return _Outcome(error=errors[0]) if rank == 0 else None

    shard = setup[0][1][rank::world]
    mine = BatchSummary(out=job.out)
    error = ""
    try:
        stream_predictions(
            predictor,
            shard,
            part_file(job.out, rank),
            _for_rank(job, rank),
            mine,
            label=f"predicting (process 1 of {world})",
        )
    except Exception as exc:  # noqa: BLE001
        error = _describe(exc, rank)
    results = _gather((error, mine))
    if rank != 0:
        return None
    assert summary is not None
    try:
        merge_parts(job.out, read_done(job.out))
    except Exception as exc:  # noqa: BLE001
        return _Outcome(error=_describe(exc, rank))
    errors = [e for e, _ in results if e]
    if errors:
        return _Outcome(error=errors[0])
    for _, part in results:
        summary.add(part)
    summary.processes = world
    return _Outcome(summary=summary)


def _for_rank(job: BatchJob, rank: int) -> BatchJob:
    """The job as process ``rank`` runs it: one progress bar (the first process's)."""
    from dataclasses import replace

    return replace(job, progress=job.progress and rank == 0)


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _describe(exc: BaseException, rank: int) -> str:
    if isinstance(exc, BonefracError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    log.error("process %d failed:\n%s", rank, "".join(traceback.format_exception(exc)))
    return f"process {rank} failed: {type(exc).__name__}: {exc}"


def load_predictor(
    job: BatchJob,
    accelerator: str = "cpu",
    *,
    device: torch.device | None = None,
    threads: int | None = None,
) -> Predictor:
    """The job's model, on ``device`` (or the first device of ``accelerator``)."""
    if device is None and accelerator != "cpu":
        import lightning as L

        try:
            device = L.Fabric(accelerator=accelerator, devices=1).device
        except Exception as exc:  # noqa: BLE001 - Lightning's own configuration errors
            raise BonefracError(
                f"--accelerator {accelerator}: {' '.join(str(exc).split())}"
            ) from None
    predictor = Predictor.from_run(job.run_dir, backend=job.backend, threads=threads)
    if device is None or device.type == "cpu":
        return predictor
    if job.backend != "torch":
        raise BonefracError(
            f"--accelerator {accelerator or device.type} runs the PyTorch model; "
            "drop --backend onnx (ONNX Runtime runs on the CPU here)"
        )
    return predictor.to(device)
