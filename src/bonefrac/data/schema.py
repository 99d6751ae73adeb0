"""The manifest schema (one row per image) and a validating reader."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import pandas as pd

from bonefrac.data.boxes import clean_boxes
from bonefrac.errors import DataError

log = logging.getLogger(__name__)

# --- the manifest's columns: spelled here only (the predictions CSVs carry some of them
# over; bonefrac.rundir.predictions takes these names from here) ---------------------------
IMAGE_ID = "image_id"
PATH = "path"
LABEL = "label"  # 1 = fractured
SOURCE = "source"  # the dataset an image came from (SOURCE_KINDS' name)
REGION = "region"
VIEW = "view"
SPLIT = "split"  # train | val | test
GROUP = "group"  # near-duplicate group (kept in one split)
WIDTH = "width"  # the image's size in pixels
HEIGHT = "height"
SHA1 = "sha1"
PHASH = "phash"
#: fracture boxes, JSON ``[[cx, cy, w, h], ...]`` normalised to the image (:func:`parse_boxes`)
BOXES = "boxes"
#: a descriptive column some sources add (the scanner), carried for subgroup analysis
HARDWARE = "hardware"

#: Columns every manifest has (DESIGN.md).
MANIFEST_COLUMNS = [
    IMAGE_ID,
    PATH,
    LABEL,
    SOURCE,
    REGION,
    VIEW,
    SPLIT,
    GROUP,
    WIDTH,
    HEIGHT,
    SHA1,
    PHASH,
    BOXES,
]
REQUIRED_COLUMNS = [PATH, LABEL]
SPLITS = ("train", "val", "test")
#: Optional descriptive columns that predictions carry along for subgroup analysis.
SUBGROUP_COLUMNS = (REGION, VIEW, SOURCE, HARDWARE)


def binary_labels(
    column: pd.Series, source: object, error: type[Exception] = DataError
) -> pd.Series:
    """``column`` as int 0/1; anything else raises ``error`` naming ``source``."""
    try:
        labels = pd.to_numeric(column, errors="raise").astype(int)
    except (ValueError, TypeError) as exc:
        raise error(f"{source}: column 'label' must be 0 or 1 ({exc})") from exc
    bad = sorted(set(labels.unique()) - {0, 1})
    if bad:
        raise error(f"{source}: column 'label' must be 0 or 1, found {bad}")
    return labels


def read_manifest(path: str | Path, *, require_split: bool = False) -> pd.DataFrame:
    """Read a manifest CSV (or any CSV with at least ``path,label``), checking its shape.

    Missing optional columns are filled (``image_id`` by :func:`path_image_ids`, ``boxes`` as
    "[]").
    Relative paths are resolved against the CSV's folder. Boxes reaching outside the image are
    clipped and boxes without area dropped, with a warning naming the image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (build one with 'bonefrac data build')")
    try:
        df = pd.read_csv(path, dtype={IMAGE_ID: str, BOXES: str, GROUP: str}, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; a manifest needs path,label"
        )
    if require_split and SPLIT not in df.columns:
        raise DataError(f"{path}: no 'split' column; build the manifest with 'bonefrac data build'")
    df[LABEL] = binary_labels(df[LABEL], path, DataError)
    base = path.resolve().parent
    df[PATH] = [str(p if Path(p).is_absolute() else (base / p)) for p in df[PATH].astype(str)]
    if IMAGE_ID not in df.columns:
        df[IMAGE_ID] = path_image_ids(df[PATH].tolist())
    df[IMAGE_ID] = df[IMAGE_ID].astype(str)
    if BOXES not in df.columns:
        df[BOXES] = "[]"
    df[BOXES] = _checked_boxes(df[BOXES].replace("", "[]"), df[PATH], path)
    if SPLIT in df.columns:
        bad_splits = sorted(set(df[SPLIT].astype(str)) - set(SPLITS))
        if bad_splits:
            raise DataError(f"{path}: column 'split' must be train/val/test, found {bad_splits}")
    return df


def path_image_ids(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Image ids for rows without one: each path relative to the deepest folder all of them
    share, with POSIX separators.

    Files that share a name in different folders (``test/fractured/0.png`` and
    ``val/fractured/0.png``) keep distinct ids, so predictions from a plain ``path,label`` CSV
    can be joined on ``image_id`` (``bonefrac compare``); files of one folder keep their bare
    names. Paths that share no root (absolute mixed with relative) keep their whole path.
    """
    pure = [PurePath(p) for p in paths]
    if not pure:
        return []
    try:
        root = os.path.commonpath([str(p.parent) for p in pure])
    except ValueError:
        return [p.as_posix() for p in pure]
    return [p.relative_to(root).as_posix() for p in pure]


def _checked_boxes(values: pd.Series, images: pd.Series, source: Path) -> list[str]:
    """The ``boxes`` cells, clipped by :func:`clean_boxes` where needed (a warning each);
    a cell that is not a JSON list raises DataError naming the manifest and the image."""
    out = []
    for value, image in zip(values, images, strict=True):
        try:
            boxes = json.loads(value)
        except (TypeError, ValueError) as exc:
            boxes, reason = None, str(exc)
        else:
            reason = f"got {type(boxes).__name__}"
        if not isinstance(boxes, list):
            raise DataError(
                f"{source}: row of {image}: column 'boxes' must be a JSON list such as "
                f"[[cx, cy, w, h]] normalised to [0, 1], found {value!r} ({reason}); fix that cell"
            )
        kept, notes = clean_boxes(boxes)
        if notes:
            log.warning("%s: %s: %s", source, image, "; ".join(notes))
            value = json.dumps(kept)
        out.append(value)
    return out


def parse_boxes(
    value: Any,
    n_values: int = 4,
    *,
    source: object = "boxes",
    image_id: str = "",
    column: str = BOXES,
) -> list[list[float]]:
    """The one parser of a boxes cell, the manifest's (``[[cx, cy, w, h], ...]``) and the
    predictions CSVs' (``n_values=5``: ``[[cx, cy, w, h, score], ...]``): the first
    ``n_values`` numbers of each box as floats; empty for None, NaN, ``''`` or ``[]``.

    A cell that is not JSON, or not a list of boxes of at least ``n_values`` finite numbers,
    raises :class:`DataError` naming ``source``, the image and the column.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    where = f"{source}: column '{column}'" + (f" of {image_id}" if image_id else "")
    data = value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            data = json.loads(text)
        except ValueError:
            raise DataError(
                f"{where} is not valid JSON ({text[:60]!r}); fix that cell or rewrite the file"
            ) from None
    ok = isinstance(data, list) and all(
        isinstance(b, list)
        and len(b) >= n_values
        and all(isinstance(v, int | float) and math.isfinite(v) for v in b[:n_values])
        for b in data
    )
    if not ok:
        shape = "[[cx, cy, w, h, score], ...]" if n_values == 5 else "[[cx, cy, w, h], ...]"
        raise DataError(
            f"{where} must be a JSON list {shape} of finite numbers, got {str(value)[:60]!r}; "
            "fix that cell or rewrite the file"
        )
    return [[float(v) for v in b[:n_values]] for b in data]
