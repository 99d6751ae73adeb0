"""The one batch loop: a DataLoader of decoded, prepared inputs -> per-image model outputs.

Everything that runs a model over many images goes through :func:`batches`: training's val/test
predictions (:class:`CachedInputs`: the images training decoded), ``evaluate --manifest`` and the
out-of-scope fit (:class:`FileInputs`, decoded in this process) and ``bonefrac predict``
(:class:`FileInputs`, decoded in DataLoader workers when ``workers > 0``).

A :class:`Batch` holds up to ``batch_size`` inputs that decoded, in source order, and the inputs
met on the way that did not, with the reason: one bad file never stops a job, and the model is
always given full batches. What is computed per batch is one of :data:`KINDS`:

- ``logits``: the logits (``tta``: the mean with the mirror image) and, for a localising run,
  the head's output ``(B, C, h, w)`` (of the plain image);
- ``predictions``: a :class:`~bonefrac.inference.predictor.Prediction` per input (``None`` where
  the model's output is not finite); a batch whose whole answer cannot be trusted carries
  ``error`` instead;
- ``features``: penultimate features and logits (the out-of-scope statistics);
- ``tta``: the logits of every test-time view ``(B, V)`` (the refer rule's ``tta_std``).

:func:`collect` concatenates the batches of a whole data set (for the predictions CSVs, whose
table :func:`bonefrac.inference.run_predictions.predictions_table` builds).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from bonefrac.errors import ImageDecodeError, ModelOutputError
from bonefrac.inference.predictor import Prediction, PreparedInput, prepare_input
from bonefrac.rundir import check_finite

#: What :func:`batches` computes per batch (see the module text).
KINDS = ("logits", "predictions", "features", "tta")

Size = tuple[int, int]


@dataclass
class Decoded:
    """One input as a dataset hands it over: prepared, or the reason it could not be."""

    index: int
    prepared: PreparedInput | None
    reason: str = ""
    #: the original ``(w, h)``, before any JPEG draft (``None`` when not asked for)
    size: Size | None = None


class FileInputs(Dataset):
    """Image files decoded and letterboxed as the Predictor does (picklable: runs in DataLoader
    workers). Failures travel back as text, so one bad file never stops a job; anything that is
    not a regular file (FIFO, device, socket, folder) fails without being opened."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        size: int,
        clahe: bool = False,
        *,
        dicom_frame: int | None = None,
        keep_display: bool = False,
        original_size: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.size = size
        self.clahe = clahe
        self.dicom_frame = dicom_frame
        self.keep_display = keep_display
        self.original_size = original_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        path = self.paths[i]
        special = _not_regular(path)
        if special:  # opening a FIFO or a device could block for ever
            return Decoded(i, None, f"not a regular file: {special}")
        try:
            prepared = prepare_input(
                path,
                self.size,
                clahe=self.clahe,
                name=str(path),
                dicom_frame=self.dicom_frame,
                keep_display=self.keep_display,
            )
        except ImageDecodeError as exc:
            return Decoded(i, None, f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason)
        except Exception as exc:  # noqa: BLE001 - any failure of one file is that file's row
            return Decoded(i, None, f"{type(exc).__name__}: {exc}")
        size = _original_size(path, prepared.decoded_size) if self.original_size else None
        return Decoded(i, prepared, size=size)


class CachedInputs(Dataset):
    """A :class:`~bonefrac.data.dataset.RadiographDataset`'s images from its decode cache
    (training's val/test), with their original sizes."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Decoded:
        path = self.dataset.paths[i]
        array = self.dataset.cache.get(path)
        size = self.dataset.cache.original_size(path)
        # the cache keeps no drafted size: training has always cropped maps at the original one
        return Decoded(i, PreparedInput(array, size, path), size=size)


def _not_regular(path: str | os.PathLike) -> str:
    """'' for a regular file (or one that cannot be stat'ed: decoding reports that)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if stat.S_ISREG(mode):
        return ""
    kinds = {
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
        stat.S_ISDIR: "a directory",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a plain file")


def _original_size(path: str | os.PathLike, decoded: Size) -> Size:
    """``(w, h)`` from the file's header (the size before a JPEG draft, as the training cache
    records it); the decoded size where Pillow cannot read the header (DICOM)."""
    from PIL import Image

    try:
        with Image.open(Path(path)) as img:
            return int(img.size[0]), int(img.size[1])
    except Exception:  # noqa: BLE001 - not a Pillow format: no draft either
        return decoded


@dataclass
class Batch:
    """Up to ``batch_size`` decoded inputs (in source order), the failures met on the way, and
    what the model made of the inputs (the fields of its :data:`KINDS`)."""

    indices: list[int] = field(default_factory=list)
    inputs: list[PreparedInput] = field(default_factory=list)
    sizes: list[Size | None] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    logits: np.ndarray | None = None  # (B,)
    head: np.ndarray | None = None  # (B, C, h, w): a localising run's head output
    features: np.ndarray | None = None  # (B, D)
    tta: np.ndarray | None = None  # (B, V): the logit of each test-time view
    predictions: list[Prediction | None] | None = None
    error: str = ""  # the model's answer for the whole batch cannot be trusted

    @property
    def count(self) -> int:
        """Sources this batch accounts for (decoded or not)."""
        return len(self.indices) + len(self.skipped)


def _as_list(items: list[Decoded]) -> list[Decoded]:
    return items


def _grouped(loader: Iterable[list[Decoded]], batch_size: int) -> Iterator[Batch]:
    """Loader items -> batches of ``batch_size`` decoded inputs, failures riding along: the
    model sees the batches ``evaluate --manifest`` always gave it, whatever fails to decode."""
    batch = Batch()
    for items in loader:
        for item in items:
            if item.prepared is None:
                batch.skipped.append((item.index, item.reason))
                continue
            batch.indices.append(item.index)
            batch.inputs.append(item.prepared)
            batch.sizes.append(item.size)
            if len(batch.inputs) >= batch_size:
                yield batch
                batch = Batch()
    if batch.count:
        yield batch


def run_batch(
    predictor: Any, batch: Batch, kind: str = "logits", *, tta: bool = False, heatmap: bool = False
) -> None:
    """Fill ``batch``'s outputs of ``kind`` (``heatmap``: predictions carry their map)."""
    if not batch.inputs:
        return
    arrays = [p.array for p in batch.inputs]
    if kind == "features":
        batch.features, batch.logits = predictor.features(arrays)
    elif kind == "tta":
        batch.tta = predictor.tta_logits(arrays)
        batch.logits = batch.tta[:, 0]  # the first view is the image itself
    elif kind == "predictions":
        try:
            batch.predictions = predictor.predict_prepared(
                batch.inputs, heatmap=heatmap, strict=False
            )
        except ModelOutputError as exc:
            batch.error = str(exc)
    elif predictor.localizes:
        batch.logits, batch.head = predictor.logits_and_map_logits(arrays)
        if tta:  # the map stays the plain image's
            batch.logits = predictor.logits(arrays, tta=True)
    else:
        batch.logits = predictor.logits(arrays, tta=tta)


def batches(
    predictor: Any,
    inputs: Dataset,
    kind: str = "logits",
    *,
    batch_size: int = 32,
    workers: int = 0,
    tta: bool = False,
    heatmap: bool = False,
) -> Iterator[Batch]:
    """The loop: ``inputs`` decoded (in ``workers`` processes; 0: this one), grouped into
    batches and run through ``predictor`` (see the module text)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    loader = DataLoader(
        inputs,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        persistent_workers=False,
    )
    for batch in _grouped(loader, batch_size):
        run_batch(predictor, batch, kind, tta=tta, heatmap=heatmap)
        yield batch


@dataclass
class Outputs:
    """A whole data set's batches, concatenated in source order (decoded inputs only)."""

    indices: list[int]
    decoded_sizes: list[Size]  # the letterbox geometry of each input
    sizes: list[Size | None]  # original sizes (when the inputs give them)
    logits: np.ndarray
    head: np.ndarray | None = None
    features: np.ndarray | None = None
    tta: np.ndarray | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)


def collect(
    predictor: Any,
    inputs: Dataset,
    kind: str = "logits",
    *,
    batch_size: int = 32,
    workers: int = 0,
    tta: bool = False,
    progress: bool = True,
    description: str = "predicting",
) -> Outputs:
    """:func:`batches` of ``kind`` ``logits``, ``features`` or ``tta`` over all of ``inputs``,
    concatenated (predictions stream: use :func:`batches`); a non-finite logit is a
    :class:`ModelOutputError`."""
    from rich.progress import Progress

    if kind == "predictions":
        raise ValueError("collect gathers logits or features; stream predictions with batches")

    out = Outputs([], [], [], np.zeros(0, dtype=np.float32))
    logits: list[np.ndarray] = []
    heads: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    views: list[np.ndarray] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(inputs))
        for batch in batches(
            predictor, inputs, kind, batch_size=batch_size, workers=workers, tta=tta
        ):
            out.indices += batch.indices
            out.decoded_sizes += [p.decoded_size for p in batch.inputs]
            out.sizes += batch.sizes
            out.skipped += batch.skipped
            if batch.logits is not None:
                logits.append(batch.logits)
            if batch.head is not None:
                heads.append(batch.head)
            if batch.features is not None:
                feats.append(batch.features)
            if batch.tta is not None:
                views.append(batch.tta)
            bar.advance(task, batch.count)
    if logits:
        out.logits = np.concatenate(logits)
    if kind in ("logits", "tta"):
        check_finite(out.logits, f"{predictor.name or predictor.architecture}: {description}")
    if heads:
        out.head = np.concatenate(heads)
    if feats:
        out.features = np.concatenate(feats)
    if views:
        out.tta = np.concatenate(views)
    return out
