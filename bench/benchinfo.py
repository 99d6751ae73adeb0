"""What every bench records beside its numbers: the commit and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# the test inputs the benches share with the tests (tests/fixtures/) import from the checkout
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))


def git_commit() -> str:
    """HEAD's short hash, or ``$BENCH_COMMIT`` where the tree was copied without .git."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine() -> str:
    """GPU name (if any), CPU and the torch thread count."""
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    threads = f"{torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} + {cpu}, {threads}"
    return f"CPU only: {cpu}, {threads}"
