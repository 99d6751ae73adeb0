"""Export a run's model to ``RUN/model.onnx`` with a parity check against PyTorch.

The export is all-or-nothing: the graph is written to a temp file beside the target, loaded in
ONNX Runtime and compared with the PyTorch model on sample inputs (two batch sizes, so the
dynamic batch axis is exercised too); only when ``max |logit_onnx - logit_torch| < atol`` does
it replace ``model.onnx``. ``model.json`` records the export (opset, the max difference, and the
SHA-256 of the weights it came from, so a stale ``model.onnx`` is refused at load time).
A localising model (``model.localize``) gets a second output, ``detector``: the detector's
packed output ``(B, A, 6)`` (:mod:`bonefrac.models.detector`), checked for parity like the
logit, so the ONNX backend draws the same map and decodes the same boxes. Threshold and temperature are NOT baked into the graph: the graph outputs the raw logit and
the Predictor applies ``model.json``'s calibration, so re-tuning needs no re-export.

Exporter: PyTorch's TorchScript-based exporter (``dynamo=False``). The newer torch.export-based
exporter needs the ``onnxscript`` package, which is not among the project's dependencies.

Running it: :func:`open_onnx_session` opens ``RUN/model.onnx`` (refusing a stale or corrupt
export) and :class:`OnnxBackend` is the Predictor's backend over that session. The parity check
runs the candidate graph with the very session options the Predictor uses
(:func:`session_options`), so what passed at export is what answers at predict time.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bonefrac.data.transforms import to_input
from bonefrac.errors import ModelError, RunDirError
from bonefrac.fileio import atomic_path, file_sha256
from bonefrac.inference.backend import Forward, Output, first_logit
from bonefrac.system import usable_cpus

if TYPE_CHECKING:
    from bonefrac.rundir import ModelMeta, RunDir

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4
INPUT_NAME = "image"
OUTPUT_NAME = "logit"
MAP_OUTPUT_NAME = "detector"


class _WithMap(torch.nn.Module):
    """A localising model as a graph with two outputs: the logit and the detector's output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_map(x)  # type: ignore[operator]


def graph_module(model: torch.nn.Module) -> torch.nn.Module:
    """What is exported: the model itself, or its two-output wrapper when it localises."""
    if getattr(model, "loc_head", None) is None:
        return model
    # same mode as the model: the exporter restores the wrapper's mode, and with it the model's
    return _WithMap(model).train(model.training)


def output_names(model: torch.nn.Module) -> list[str]:
    if getattr(model, "loc_head", None) is not None:
        return [OUTPUT_NAME, MAP_OUTPUT_NAME]
    return [OUTPUT_NAME]


@dataclass
class ExportResult:
    path: Path
    opset: int
    max_abs_diff: float
    seconds: float
    skipped: bool = False  # True when an up-to-date model.onnx was already there


def export_model(
    model: torch.nn.Module, path: str | Path, image_size: int, opset: int = DEFAULT_OPSET
) -> None:
    """Write ``model`` (float32, contiguous, eval) as ONNX with a dynamic batch axis."""
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    names = output_names(model)
    dummy = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            graph_module(model),
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}},
            do_constant_folding=True,
        )


def sample_inputs(image_size: int, seed: int = 0) -> list[np.ndarray]:
    """Parity inputs: a batch of 2 of normal noise, a batch of 3 of uniform 'images'."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((2, 3, image_size, image_size)).astype(np.float32)
    uniform = rng.uniform(-1.0, 1.0, (3, 1, image_size, image_size)).astype(np.float32)
    return [noise, np.repeat(uniform, 3, axis=1)]


def parity(model: torch.nn.Module, onnx_path: str | Path, inputs: list[np.ndarray]) -> float:
    """Max |Δ| between PyTorch and ONNX Runtime (CPU) over ``inputs``: the logit, and the map's
    logits for a localising model."""
    session = onnx_session(onnx_path)
    worst = 0.0
    graph = graph_module(model)
    for x in inputs:
        with torch.inference_mode():
            out = graph(torch.from_numpy(x))
        refs = out if isinstance(out, tuple) else (out,)
        gots = session.run(None, {INPUT_NAME: x})
        if len(gots) != len(refs):
            raise ModelError(f"{onnx_path}: {len(gots)} ONNX outputs, PyTorch has {len(refs)}")
        for got, ref_t in zip(gots, refs, strict=True):
            ref = ref_t.float().numpy()
            if got.shape != ref.shape:
                raise ModelError(
                    f"{onnx_path}: ONNX output shape {got.shape} != PyTorch {ref.shape}"
                )
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - ref))))
    return worst


def export_onnx(
    run_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    *,
    atol: float = PARITY_ATOL,
    force: bool = False,
) -> ExportResult:
    """Export ``RUN/model.onnx`` (dynamic batch) after a parity check; atomic.

    An existing ``model.onnx`` exported from the same weights with the same opset is kept
    (``skipped=True``) unless ``force``. Raises :class:`ModelError` when parity fails, leaving
    any previous ``model.onnx`` and ``model.json`` untouched.
    """
    from bonefrac.models.runio import load_run

    start = time.perf_counter()
    loaded = load_run(run_dir)
    run, meta = loaded.run, loaded.meta
    run.require_writable()
    target = run.onnx_path
    weights_sha = meta.weights_sha256  # checked against the weights files by load_run
    record = meta.get("onnx") or {}
    if (
        not force
        and target.is_file()
        and record.get("weights_sha256") == weights_sha
        and record.get("opset") == opset
    ):
        return ExportResult(target, opset, float(record.get("max_abs_diff", 0.0)), 0.0, True)

    model = loaded.model.float().to(memory_format=torch.contiguous_format).eval()
    with atomic_path(target) as tmp:
        try:
            export_model(model, tmp, meta.image_size, opset)
        except Exception as exc:  # noqa: BLE001 - report any exporter failure the same way
            raise ModelError(
                f"{run.path}: ONNX export of {meta.architecture!r} failed: {exc}"
            ) from exc
        diff = parity(model, tmp, sample_inputs(meta.image_size))
        onnx_sha = file_sha256(tmp)
        if not diff < atol:
            raise ModelError(
                f"{run.path}: ONNX parity check failed: max |Δlogit| = {diff:.3g} >= {atol:g}; "
                "model.onnx was not written (try another --opset)"
            )
    run.update_meta(
        onnx={
            "file": target.name,
            "sha256": onnx_sha,
            "opset": opset,
            "max_abs_diff": diff,
            "weights_sha256": weights_sha,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "outputs": output_names(model),
            "torch": torch.__version__,
        },
    )
    seconds = time.perf_counter() - start
    log.info("exported %s (opset %d, max |Δlogit| %.2e, %.1f s)", target, opset, diff, seconds)
    return ExportResult(target, opset, diff, seconds)


# --- running ------------------------------------------------------------------------------


def default_threads() -> int:
    """CPU threads for one inference call: the CPUs this process may use, at most 8."""
    return max(1, min(8, usable_cpus()))


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options of every session here: ``threads`` intra-op threads (default
    :func:`default_threads`), one inter-op thread, sequential, all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path`` with :func:`session_options` (ORT's own errors
    propagate)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )


def open_onnx_session(run: RunDir, meta: ModelMeta, threads: int | None = None) -> Any:
    """The session on ``RUN/model.onnx``; refuses a stale or corrupt export."""
    from bonefrac.models.runio import weights_digest

    path = run.onnx_path
    if not path.is_file():
        raise RunDirError(f"{path}: not found; run 'bonefrac export {run.path} --onnx' first")
    record = meta.get("onnx") or {}
    if not isinstance(record, dict):
        raise RunDirError(f"{run.meta_path}: 'onnx' must be an object; re-export the model")
    current = weights_digest(run, meta) if record.get("weights_sha256") else None
    if current is not None:
        if current != record["weights_sha256"]:
            raise RunDirError(
                f"{path}: exported from other weights than {run.path}'s; "
                f"re-run 'bonefrac export {run.path} --onnx'"
            )
    else:
        log.warning(
            "%s: no export record in %s; cannot check it is up to date", path, run.meta_path
        )
    if record.get("sha256") and file_sha256(path) != record["sha256"]:
        raise RunDirError(
            f"{path}: SHA-256 differs from the one recorded at export: the file is corrupted "
            f"or was replaced; re-run 'bonefrac export {run.path} --onnx --force'"
        )
    try:
        return onnx_session(path, threads)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise RunDirError(
            f"{path}: ONNX Runtime cannot load it ({str(exc)[:200]}); "
            f"re-run 'bonefrac export {run.path} --onnx --force'"
        ) from None


class OnnxBackend:
    """The Predictor's backend over an ONNX Runtime session (CPU, contiguous float input):
    the logit, and a localising export's second output (the head's)."""

    kind = "onnx"
    outputs = frozenset({"logits", "head"})
    device = torch.device("cpu")

    def __init__(self, session: Any) -> None:
        self.session = session
        self._input_name = session.get_inputs()[0].name

    def input(
        self, batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]
    ) -> torch.Tensor:
        return to_input(batch.to(self.device), mean, std).contiguous()

    def run(self, x: torch.Tensor, output: Output = "logits") -> Forward:
        if output not in self.outputs:
            raise ModelError(f"the ONNX backend gives no {output!r}; use the PyTorch model")
        n = x.shape[0]
        outs = self.session.run(None, {self._input_name: x.cpu().numpy()})
        if output == "head":
            return Forward(first_logit(outs[0], n), head=np.asarray(outs[1], dtype=np.float32))
        return Forward(first_logit(outs[0], n))
