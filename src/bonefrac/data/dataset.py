"""Torch datasets over a manifest split, an in-memory decode cache, and imbalance samplers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from bonefrac.data.transforms import MIN_BOX_PX, load_prepared
from bonefrac.errors import DataError, ImageDecodeError
from bonefrac.system import usable_cpus

log = logging.getLogger(__name__)


class PreparedImageCache:
    """Decoded, letterboxed uint8 images keyed by path: decode once, reuse every epoch."""

    def __init__(self, size: int, clahe: bool = False, keep: bool = True) -> None:
        self.size = size
        self.clahe = clahe
        self.keep = keep
        self._store: dict[str, np.ndarray] = {}
        self._sizes: dict[str, tuple[int, int]] = {}

    def get(self, path: str) -> np.ndarray:
        arr = self._store.get(path)
        if arr is None:
            arr = self.load(path)
            if self.keep:
                self._store[path] = arr
        return arr

    def load(self, path: str) -> np.ndarray:
        try:
            arr, original = load_prepared(path, self.size, clahe=self.clahe)
        except ImageDecodeError as exc:
            raise DataError(
                f"{path}: cannot load image ({exc.reason}: {exc.detail}); rebuild the manifest"
                " with 'bonefrac data build' so bad files are quarantined"
            ) from exc
        self._sizes[path] = original
        return arr

    def original_size(self, path: str) -> tuple[int, int]:
        """``(w, h)`` of the image before letterboxing (decodes it when not cached yet)."""
        if path not in self._sizes:
            self.get(path)
        return self._sizes[path]

    def fill(
        self,
        paths: list[str],
        description: str = "decoding images",
        progress: bool = True,
        threads: int | None = None,
    ) -> None:
        """Decode every path not yet cached (with a progress bar), on ``threads`` threads
        (default: one per usable CPU, at most 16; Pillow and OpenCV release the GIL)."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._store]
        if not todo or not self.keep:
            return
        threads = threads or min(16, usable_cpus())
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(description, total=len(todo))
            if threads <= 1 or len(todo) < 64:
                for path in todo:
                    self._store[path] = self.load(path)
                    bar.advance(task)
                return
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for path, arr in zip(todo, pool.map(self.load, todo), strict=True):
                    self._store[path] = arr
                    bar.advance(task)

    def __len__(self) -> int:
        return len(self._store)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._store.values())


class RadiographDataset(Dataset):
    """One manifest split: returns ``(uint8 tensor (1, S, S), float label)``.

    ``transform`` runs on the uint8 tensor (train augmentation); normalisation to the
    model's mean/std happens per batch (:func:`bonefrac.data.transforms.to_input`).

    With ``boxes=True`` (a localising model) items are ``(image, label, boxes, valid)``: the
    manifest's fracture boxes go through the letterbox and the same augmentation as the image
    (as points on each box's inscribed ellipse, :func:`~bonefrac.data.transforms.box_outlines`,
    so a rotation does not inflate them) and come as pixel XYXY rows padded to a fixed count
    (:func:`~bonefrac.data.transforms.box_targets`; ``min_box``: the thinnest target box in
    pixels, see :func:`~bonefrac.data.transforms.min_box_px`); ``valid`` is 0 for a fractured image
    without (visible) boxes, which then trains the fracture logit only, and 1 otherwise (a
    non-fractured image teaches "no box").
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        cache: PreparedImageCache,
        transform: Callable[..., Any] | None = None,
        boxes: bool = False,
        min_box: float = MIN_BOX_PX,
    ) -> None:
        self.frame = frame.reset_index(drop=True)
        self.paths = self.frame["path"].astype(str).tolist()
        self.labels = self.frame["label"].astype(int).to_numpy()
        self.cache = cache
        self.transform = transform
        self.with_boxes = boxes
        self.min_box = min_box
        self.boxes: list[list[list[float]]] = []
        if boxes:
            column = self.frame["boxes"] if "boxes" in self.frame.columns else [None] * len(self)
            self.boxes = [_clean_row_boxes(v, p) for v, p in zip(column, self.paths, strict=True)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        path = self.paths[index]
        arr = self.cache.get(path)
        x = torch.from_numpy(arr).unsqueeze(0)
        label = torch.tensor(float(self.labels[index]))
        if not self.with_boxes:
            if self.transform is not None:
                x = self.transform(x)
            return x, label
        from bonefrac.data.transforms import (
            box_outlines,
            box_targets,
            boxes_to_letterbox,
            outline_boxes,
        )

        boxes = boxes_to_letterbox(self.boxes[index], self.cache.original_size(path), arr.shape[-1])
        if self.transform is not None:  # the boxes travel as outline points (see box_outlines)
            x, points = self.transform(x, box_outlines(boxes))
            boxes = outline_boxes(points, x.shape[-1])
        target, count = box_targets(boxes, x.shape[-1], self.min_box)
        valid = 1.0 if self.labels[index] == 0 else float(count > 0)
        if self.labels[index] == 0:
            target.zero_()
        return x.as_subclass(Tensor), label, target, torch.tensor(valid)


def _clean_row_boxes(value: Any, path: str) -> list[list[float]]:
    """A manifest row's boxes, parsed and clipped to the image; unreadable ones are dropped
    with a warning (a bad row never stops training)."""
    from bonefrac.data.boxes import clean_boxes
    from bonefrac.data.schema import parse_boxes

    try:
        raw = parse_boxes(value)
    except DataError as exc:
        log.warning("%s: unreadable boxes %r (%s); its map is not trained", path, value, exc)
        return []
    kept, notes = clean_boxes(raw)
    for note in notes:
        log.warning("%s: %s", path, note)
    return [b[:4] for b in kept]


class _EpochSampler(DistributedSampler):
    """Base for samplers whose order depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before each epoch, so a resumed run draws exactly the
    batches an uninterrupted run would have drawn. With ``num_replicas`` > 1 (multi-process
    training) every rank draws the same epoch order and keeps every ``num_replicas``-th index
    from its ``rank``, padded by wrapping around so all ranks take the same number of steps.
    Being a ``DistributedSampler``, Lightning uses it as is instead of wrapping it in its own
    (which would never pass the epoch on, so every epoch would draw the same indices).
    """

    def __init__(
        self, labels: np.ndarray, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        self.labels = np.asarray(labels).astype(int)
        self._check()
        super().__init__(
            range(self.epoch_size()),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=False,
            seed=seed,
            drop_last=False,
        )

    def _check(self) -> None:
        """Raise when the labels cannot be sampled (called before anything else)."""

    def epoch_size(self) -> int:
        """Indices drawn per epoch over all ranks together."""
        return len(self.labels)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _epoch_indices(self) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        idx = self._epoch_indices()
        if self.num_replicas == 1:
            return iter(idx)
        while len(idx) < self.total_size:
            idx += idx[: self.total_size - len(idx)]
        return iter(idx[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class ShuffleSampler(_EpochSampler):
    """Plain shuffling (no rebalancing)."""

    def _epoch_indices(self) -> list[int]:
        return self._rng().permutation(len(self.labels)).tolist()


class WeightedSampler(_EpochSampler):
    """Draws ``len(labels)`` indices with replacement, weights = inverse class frequency."""

    def _check(self) -> None:
        weights = class_weights(self.labels)
        self.p = weights / weights.sum()

    def _epoch_indices(self) -> list[int]:
        n = len(self.labels)
        return self._rng().choice(n, size=n, replace=True, p=self.p).tolist()


class OversampleSampler(_EpochSampler):
    """Each epoch: every majority index once, minority indices repeated (then drawn without
    replacement for the remainder) until both classes have the same count; shuffled."""

    def _check(self) -> None:
        counts = np.bincount(self.labels, minlength=2)
        if (counts == 0).any():
            raise DataError("cannot oversample: one class has no training images")
        self.majority = int(np.argmax(counts))
        self.n_major = int(counts.max())

    def epoch_size(self) -> int:
        return 2 * self.n_major

    def _epoch_indices(self) -> list[int]:
        rng = self._rng()
        major = np.flatnonzero(self.labels == self.majority)
        minor = np.flatnonzero(self.labels != self.majority)
        reps = self.n_major // len(minor)
        extra = rng.choice(minor, size=self.n_major - reps * len(minor), replace=False)
        idx = np.concatenate([major, np.tile(minor, reps), extra])
        rng.shuffle(idx)
        return idx.tolist()


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights proportional to the inverse frequency of the sample's class."""
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2).astype(float)
    if (counts == 0).any():
        raise DataError("cannot balance classes: one class has no training images")
    return (1.0 / counts)[labels]


class SourceBalancedSampler(WeightedSampler):
    """Draws ``len(labels)`` indices with replacement so that each source weighs the same per
    epoch and, within a source, each of its classes the same: weight of an image = 1 / (number
    of sources x classes present in its source x images in its (source, label) cell). A site
    with more images then teaches no more than another one (issue 37's balanced sources)."""

    def __init__(
        self,
        labels: np.ndarray,
        sources: np.ndarray,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.sources = np.asarray(sources).astype(str)
        if len(self.sources) != len(labels):
            raise ValueError(f"{len(self.sources)} sources for {len(labels)} labels")
        super().__init__(labels, seed=seed, num_replicas=num_replicas, rank=rank)

    def _check(self) -> None:
        self.p = source_balanced_weights(self.labels, self.sources)


def source_balanced_weights(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Per-sample probabilities of :class:`SourceBalancedSampler` (they sum to 1)."""
    cells = pd.DataFrame({"source": np.asarray(sources).astype(str), "label": labels})
    if cells.empty:
        raise DataError("cannot balance sources: no training images")
    cell_size = cells.groupby(["source", "label"])["label"].transform("size")
    per_source = cells.groupby("source")["label"].transform("nunique")
    n_sources = cells["source"].nunique()
    return (1.0 / (n_sources * per_source * cell_size)).to_numpy(dtype=float)


SAMPLERS = {
    "none": ShuffleSampler,
    "weighted": WeightedSampler,
    "oversample": OversampleSampler,
    "source_balanced": SourceBalancedSampler,
}


def make_sampler(
    kind: str,
    labels: np.ndarray,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    sources: np.ndarray | None = None,
) -> _EpochSampler:
    """``none`` (plain shuffling), ``weighted`` (inverse class frequency), ``oversample`` or
    ``source_balanced`` (needs each image's ``sources``); ``rank`` of ``num_replicas``
    processes draws its share of each epoch."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}: use one of {', '.join(SAMPLERS)}")
    if kind == "source_balanced":
        if sources is None:
            raise DataError("sampler source_balanced needs each training image's source")
        return SourceBalancedSampler(
            labels, sources, seed=seed, num_replicas=num_replicas, rank=rank
        )
    return SAMPLERS[kind](labels, seed=seed, num_replicas=num_replicas, rank=rank)
