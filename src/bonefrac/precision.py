"""Numeric precision per device: what ``train.precision: auto`` and torch inference use.

``auto`` picks bf16 only where it is a measured win:

- CUDA: ``bf16-mixed`` when the GPU does bf16 natively (Ampere and later), else ``16-mixed``.
- CPU: ``32-true``. A CPU that does bf16 natively has the ``amx_bf16`` or ``avx512_bf16`` flag
  (read from ``/proc/cpuinfo``; :func:`cpu_bf16_flags`), but that does not make bf16 *training*
  faster: one Xeon with AMX ran bf16 matmuls at 2.5x fp32 yet bf16-autocast training of
  EfficientNet-Lite0 at 0.87x and ResNet-50 at 0.89x fp32, and ``bench/train_step.py
  --precision`` on a busy 2-core AMD EPYC with ``avx512_bf16`` (Lite0, 224 px, batch 16, fp32
  and bf16 steps alternating) gave 1.32x in one run and 0.72x in the next (per-step ratios
  0.3 to 2.0): no steady 1.3x. bf16 becomes the CPU training default only at >= 1.3x with val
  ROC-AUC matching fp32 within the seed spread (:data:`CPU_BF16_TRAINING`).
- Torch inference follows the same rule (:func:`inference_dtype`). On that EPYC,
  ``bench/inference.py --precision`` measured Lite0 bf16 autocast at 2.2x fp32 (batch 1) and
  1.9x (batch 16), but the decision threshold and temperature in ``model.json`` are fitted
  on fp32 outputs and bf16 logits have not been checked against them on a trained run, so CPU
  inference stays fp32 (:data:`CPU_BF16_INFERENCE`) and matches the ONNX backend and the
  evaluation figures. Measure a new CPU with both benches before changing either constant.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from bonefrac.config import ExperimentConfig

#: CPU flags that mean native bf16 arithmetic (Intel AMX tiles; AVX-512 BF16 on Intel and AMD).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")

#: Whether ``auto`` trains in bf16 on a CPU with :data:`BF16_CPU_FLAGS` (see the docstring).
CPU_BF16_TRAINING = False

#: Whether torch inference runs in bf16 on a CPU with :data:`BF16_CPU_FLAGS` (see the docstring).
CPU_BF16_INFERENCE = False

_GPU_ACCELERATORS = ("auto", "gpu", "cuda")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (first ``flags`` line of ``cpuinfo``); empty where unreadable."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux, or no /proc
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """Those of :data:`BF16_CPU_FLAGS` the CPU has (``flags``: default :func:`cpu_flags`)."""
    have = cpu_flags() if flags is None else flags
    return [f for f in BF16_CPU_FLAGS if f in have]


def cpu_prefers_bf16(flags: frozenset[str] | None = None, *, inference: bool = False) -> bool:
    """bf16 on this CPU: native bf16 flags AND a measured win for training (or ``inference``)."""
    wanted = CPU_BF16_INFERENCE if inference else CPU_BF16_TRAINING
    return wanted and bool(cpu_bf16_flags(flags))


def auto_precision(accelerator: str = "auto", flags: frozenset[str] | None = None) -> str:
    """The Lightning precision ``auto`` means for ``accelerator`` on this machine."""
    if accelerator in _GPU_ACCELERATORS and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_prefers_bf16(flags):
        return "bf16-mixed"
    return "32-true"


def resolve_precision(cfg: ExperimentConfig) -> str:
    """``cfg.train.precision`` for Lightning's Trainer: an explicit value as given, ``auto``
    (or ``None``) resolved for ``cfg.train.accelerator`` by :func:`auto_precision`."""
    value = cfg.train.precision
    if value is None or value == "auto":
        return auto_precision(cfg.train.accelerator)
    return str(value)


def inference_dtype(device: torch.device | str, flags: frozenset[str] | None = None) -> torch.dtype:
    """The autocast dtype for torch inference on ``device`` (``torch.float32``: no autocast).

    Same rule as training: bf16 on CUDA GPUs with bf16, float16 on other CUDA GPUs, float32 on
    CPUs unless :data:`CPU_BF16_INFERENCE` (measured win) and the CPU has bf16 flags.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_prefers_bf16(flags, inference=True):
        return torch.bfloat16
    return torch.float32


def inference_autocast(
    device: torch.device | str, flags: frozenset[str] | None = None
) -> contextlib.AbstractContextManager:
    """A context for a forward pass on ``device`` in :func:`inference_dtype` (a no-op for fp32).

    Outputs may come back in bf16/fp16: callers convert with ``.float()``.
    """
    device = torch.device(device)
    dtype = inference_dtype(device, flags)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
