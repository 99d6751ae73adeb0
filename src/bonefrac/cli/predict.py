"""Inference commands: ``predict`` (files -> CSV), ``export`` (ONNX), ``serve`` (HTTP).

``predict`` and ``serve`` fill one :class:`~bonefrac.config.PredictConfig` /
:class:`~bonefrac.config.ServeConfig` from their options (whose defaults come from it) and hand
it to the library whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from bonefrac.cli import render
from bonefrac.cli.runarg import RUN_HELP, into_option, run_arg
from bonefrac.config import MIB, PredictConfig, ServeConfig
from bonefrac.errors import BonefracError, ConfigError

if TYPE_CHECKING:
    from bonefrac.batch_predict.job import PredictJob

T = TypeVar("T")
_PREDICT = PredictConfig.model_fields
_SERVE = ServeConfig.model_fields


def predict(
    run: Path = typer.Argument(..., help=RUN_HELP),
    paths: list[Path] = typer.Argument(..., help="Image/DICOM files or folders (recursive)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="CSV to write; re-running resumes it. Default: print a table."
    ),
    backend: str = typer.Option(
        _PREDICT["backend"].default, "--backend", help="torch | onnx (RUN/model.onnx)."
    ),
    cam_dir: Path = typer.Option(None, "--cam-dir", help="Also save heatmap overlays here."),
    batch_size: int = typer.Option(
        _PREDICT["batch_size"].default, "--batch-size", help="Images per model call."
    ),
    dicom_frame: int = typer.Option(
        None, "--dicom-frame", help="Frame of multi-frame DICOMs (default: refuse them)."
    ),
    workers: int = typer.Option(
        None, "--workers", help="Decode processes per process (default: its CPUs - 1, at most 4)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Start --out afresh (also when another run or setting wrote it)."
    ),
    retry_errors: bool = typer.Option(
        False, "--retry-errors", help="Predict again the files whose row in --out has an error."
    ),
    devices: int = typer.Option(
        _PREDICT["devices"].default,
        "--devices",
        help="Processes (one per device) to share the files; parts are merged.",
    ),
    accelerator: str = typer.Option(
        _PREDICT["accelerator"].default, "--accelerator", help="cpu | gpu (Lightning)."
    ),
    strategy: str = typer.Option(
        _PREDICT["strategy"].default,
        "--strategy",
        help="Lightning launcher with --devices > 1: ddp | ddp_spawn.",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    dicom_out: Path = typer.Option(
        None, "--dicom-out", help="Write a DICOM Secondary Capture + SR per DICOM input here."
    ),
    study_column: str = typer.Option(
        None, "--study-column", help="PATHS is one CSV list (path + this column): study rows."
    ),
    study_by: str = typer.Option(
        None, "--study-by", help="'folder': the images of one folder form a study."
    ),
    study_agg: str = typer.Option(
        "max", "--study-agg", help="Study probability from its images: max | mean | noisy_or."
    ),
) -> None:
    """Predict files and folders into a CSV (path, prob, decision, error, ...); resumable.

    Without --out, print one line per file instead (nothing is written).
    With --study-column or --study-by, also one row per study in <out>.studies.csv.

    Exit status: 0 every file predicted; 1 some files failed (their rows have the error);
    2 the job itself failed (bad run or arguments, unwritable --out, a CSV written by another
    run or setting, or a model that gave no usable output for any file).
    """
    run = run_arg(run)
    config = PredictConfig(
        backend=backend, batch_size=batch_size, cam_dir=cam_dir, dicom_frame=dicom_frame,
        workers=workers, force=force, retry_errors=retry_errors, progress=not no_progress,
        devices=devices, accelerator=accelerator, strategy=strategy, dicom_out=dicom_out,
        study_column=study_column, study_by=study_by, study_agg=study_agg,
    )  # fmt: skip
    if out is None:
        if config.studies:
            raise ConfigError("--study-column / --study-by write <out>.studies.csv: pass --out")
        from bonefrac.batch_predict.job import PredictJob, predict_rows

        rows, summary = _run_job(lambda: predict_rows(run, paths, config))
        render.prediction_rows(render.console, rows)
        _report(PredictJob(summary), run, None, config)
        return
    from bonefrac.batch_predict.job import predict_job

    _report(_run_job(lambda: predict_job(run, paths, out, config)), run, out, config)


def _run_job(job: Callable[[], T]) -> T:
    """The predict job; an unexpected failure is the job's (exit 2), never a file's."""
    try:
        return job()
    except (BonefracError, KeyboardInterrupt):
        raise
    except Exception as exc:  # an unexpected failure is still the job's, not a file's: exit 2
        logging.getLogger(__name__).debug("predict failed", exc_info=True)
        render.job_failed(render.err_console, exc)
        raise typer.Exit(code=2) from None


def _report(job: PredictJob | None, run: Path, out: Path | None, config: PredictConfig) -> None:
    """The job's summary lines and exit status (``out`` None: the rows were printed)."""
    from bonefrac.batch_predict.job import exit_status

    if job is None:  # a helper process of a multi-process job: the first one reports
        return
    summary = job.summary
    render.predict_summary(render.console, summary, out)
    if config.dicom_out is not None:
        render.dicom_out(render.console, summary.dicom_out, config.dicom_out)
    if job.studies is not None:
        render.studies(render.console, job.studies_path, job.studies, config.study_agg)
    render.predict_failures(render.console, summary, run, out)
    status = exit_status(summary)
    if status:
        raise typer.Exit(code=status)


def export(
    run: Path = typer.Argument(..., help=RUN_HELP),
    onnx: bool = typer.Option(False, "--onnx", help="Write RUN/model.onnx (dynamic batch)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    force: bool = typer.Option(False, "--force", help="Re-export even when up to date."),
    into: Path | None = into_option(),
) -> None:
    """Export the model; --onnx writes RUN/model.onnx after a PyTorch parity check."""
    from bonefrac.inference.onnx import export_onnx

    if not onnx:
        raise ConfigError("choose an export format: bonefrac export RUN --onnx")
    run = run_arg(run, into)
    render.export(render.console, export_onnx(run, opset=opset, force=force))


def serve(
    run: Path | None = typer.Argument(
        None, help=f"{RUN_HELP} Default: the default shipped model.", show_default=False
    ),
    host: str = typer.Option(_SERVE["host"].default, "--host", help="Address to listen on."),
    port: int = typer.Option(_SERVE["port"].default, "--port", help="TCP port."),
    backend: str = typer.Option(
        _SERVE["backend"].default, "--backend", help="torch | onnx (RUN/model.onnx)."
    ),
    max_body_mb: float = typer.Option(
        _SERVE["max_body_bytes"].default / MIB, "--max-body-mb", help="Largest upload, in MiB."
    ),
    max_pixels: int = typer.Option(
        _SERVE["max_pixels"].default,
        "--max-pixels",
        help="Largest image (width x height) accepted.",
    ),
    max_image_mb: float = typer.Option(
        _SERVE["max_image_bytes"].default / MIB,
        "--max-image-mb",
        help="Largest decoded image (w x h x channels x bytes), MiB.",
    ),
    max_concurrency: int = typer.Option(
        _SERVE["max_concurrency"].default,
        "--max-concurrency",
        help="Requests decoding + predicting at once.",
    ),
    queue: int = typer.Option(
        _SERVE["queue"].default, "--queue", help="Requests that may wait; then 503."
    ),
    allowed_host: list[str] | None = typer.Option(
        None, "--allowed-host", help="Extra Host header name to accept (*.dom, *); repeatable."
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="Require 'Authorization: Bearer <token in FILE>' on /v1/."
    ),
    allow_open: bool = typer.Option(
        _SERVE["allow_open"].default,
        "--allow-open",
        help="Serve a non-loopback --host without --token-file (refused otherwise).",
    ),
    docs: bool = typer.Option(
        _SERVE["docs"].default, "--docs/--no-docs", help="Serve Swagger UI at /docs."
    ),
    keep_alive_s: int = typer.Option(
        _SERVE["keep_alive_s"].default, "--keep-alive-s", help="Close idle connections after."
    ),
    body_timeout_s: float = typer.Option(
        _SERVE["body_timeout_s"].default,
        "--body-timeout-s",
        help="408 when an upload stalls this long.",
    ),
    max_connections: int = typer.Option(
        _SERVE["max_connections"].default,
        "--max-connections",
        help="Open connections before uvicorn answers 503.",
    ),
) -> None:
    """Serve the model: POST /v1/predict, GET /v1/model, /health, /docs and a page at /.

    Without RUN, serves the default shipped model ('bonefrac models').
    """
    from bonefrac.rundir import DEFAULT_NAME, RunDir
    from bonefrac.serving.app import check_open, resolve_token
    from bonefrac.serving.app import serve as run_server

    config = ServeConfig(
        host=host, port=port, backend=backend, max_body_bytes=int(max_body_mb * MIB),
        max_pixels=max_pixels, max_image_bytes=int(max_image_mb * MIB),
        max_concurrency=max_concurrency, queue=queue, allowed_hosts=allowed_host,
        token_file=token_file, allow_open=allow_open, docs=docs, keep_alive_s=keep_alive_s,
        body_timeout_s=body_timeout_s, max_connections=max_connections,
    )  # fmt: skip
    check_open(host, resolve_token(config), allow_open)  # before the model loads
    run = RunDir.open(run or DEFAULT_NAME).path  # resolved; a missing model is one line
    render.serving(render.console, run, host, port)
    run_server(run, config)


COMMANDS = (predict, export, serve)
