"""Validation decode: read and fully decode every file once, in a process pool.

Each file gives a :class:`Probe` (width, height, SHA-1 of the bytes, pHash and a small
thumbnail for the duplicate search), or ``ok=False`` with a reason; a bad file never raises.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.data.dedup import THUMB_SIZE, phash_int, reduce_for_hashing, thumbnail
from bonefrac.data.imageio import DICOM_SUFFIXES, load_grayscale
from bonefrac.errors import ImageDecodeError
from bonefrac.system import usable_cpus

#: below this many images the decode runs in-process (a pool costs more than it saves)
POOL_MIN_IMAGES = 200


@dataclass
class Probe:
    """What the validation decode learned about one file."""

    path: str
    ok: bool
    sha1: str = ""
    width: int = 0
    height: int = 0
    phash: int = 0
    thumb: np.ndarray | None = None
    reason: str = ""
    detail: str = ""


def probe_image(path: str | Path, thumb_size: int = THUMB_SIZE) -> Probe:
    """Read and fully decode one file; never raises for a bad image (``ok=False`` + reason)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Probe(path, False, reason="unreadable", detail=str(exc))
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        source: str | bytes = path if Path(path).suffix.lower() in DICOM_SUFFIXES else data
        img = load_grayscale(source, name=path)
    except ImageDecodeError as exc:
        return Probe(path, False, sha1=sha1, reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the build
        return Probe(
            path, False, sha1=sha1, reason="undecodable", detail=f"{type(exc).__name__}: {exc}"
        )
    w, h = img.size
    try:
        small = reduce_for_hashing(img, 2 * thumb_size)
        return Probe(path, True, sha1, w, h, phash_int(small), thumbnail(small, thumb_size))
    except Exception as exc:  # noqa: BLE001
        return Probe(path, False, sha1=sha1, reason="undecodable", detail=f"hashing failed: {exc}")


def default_workers() -> int:
    """Worker processes for decoding: the usable CPUs, at most 8."""
    return max(1, min(8, usable_cpus()))


def pool_workers(n_images: int, workers: int | None = None) -> int:
    """Processes that decode ``n_images`` files: 1 below :data:`POOL_MIN_IMAGES`, else
    ``workers`` (at least 1) or :func:`default_workers`."""
    if n_images < POOL_MIN_IMAGES:
        return 1
    return default_workers() if workers is None else max(1, int(workers))


def probe_images(
    paths: Sequence[str | Path],
    *,
    workers: int | None = None,
    progress: bool = True,
    thumb_size: int = THUMB_SIZE,
) -> list[Probe]:
    """Probe every file (in order), in a process pool when there are enough of them."""
    paths = [str(p) for p in paths]
    n_workers = pool_workers(len(paths), workers)
    results: list[Probe] = []
    with _progress(progress, len(paths), f"decoding {len(paths)} images") as advance:
        if n_workers == 1:
            for p in paths:
                results.append(probe_image(p, thumb_size))
                advance()
        else:
            with _pool_context().Pool(n_workers) as pool:
                args = [(p, thumb_size) for p in paths]
                for r in pool.imap(_probe_star, args, chunksize=16):
                    results.append(r)
                    advance()
    return results


def _pool_context() -> mp.context.BaseContext:
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _probe_star(args: tuple[str, int]) -> Probe:
    return probe_image(*args)


class _progress:
    """A rich progress bar (or nothing) yielding an ``advance()`` callable."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled, total, description
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
