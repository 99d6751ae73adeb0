"""The manifest schema (one row per image) and a validating reader."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path, PurePath

import pandas as pd

from bonefrac.data.boxes import clean_boxes
from bonefrac.errors import DataError

log = logging.getLogger(__name__)

#: Columns every manifest has (DESIGN.md). ``boxes`` is JSON: [[cx, cy, w, h], ...] normalised.
MANIFEST_COLUMNS = [
    "image_id",
    "path",
    "label",
    "source",
    "region",
    "view",
    "split",
    "group",
    "width",
    "height",
    "sha1",
    "phash",
    "boxes",
]
REQUIRED_COLUMNS = ["path", "label"]
SPLITS = ("train", "val", "test")
#: Optional descriptive columns that predictions carry along for subgroup analysis.
SUBGROUP_COLUMNS = ("region", "view", "source", "hardware")


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
        df = pd.read_csv(
            path, dtype={"image_id": str, "boxes": str, "group": str}, keep_default_na=False
        )
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; a manifest needs path,label"
        )
    if require_split and "split" not in df.columns:
        raise DataError(f"{path}: no 'split' column; build the manifest with 'bonefrac data build'")
    df["label"] = binary_labels(df["label"], path, DataError)
    base = path.resolve().parent
    df["path"] = [str(p if Path(p).is_absolute() else (base / p)) for p in df["path"].astype(str)]
    if "image_id" not in df.columns:
        df["image_id"] = path_image_ids(df["path"].tolist())
    df["image_id"] = df["image_id"].astype(str)
    if "boxes" not in df.columns:
        df["boxes"] = "[]"
    df["boxes"] = _checked_boxes(df["boxes"].replace("", "[]"), df["path"], path)
    if "split" in df.columns:
        bad_splits = sorted(set(df["split"].astype(str)) - set(SPLITS))
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


def parse_boxes(value: str | float | None) -> list[list[float]]:
    """Boxes JSON -> list of [cx, cy, w, h] (normalised); empty for '', NaN or '[]'."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return []
    boxes = json.loads(value) if isinstance(value, str) else value
    return [[float(v) for v in box[:4]] for box in boxes]
