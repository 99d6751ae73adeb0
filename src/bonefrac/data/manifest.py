"""Manifest build: sources -> validated, de-duplicated, leakage-free manifest.

Steps: read the sources (:mod:`bonefrac.data.sources`); fully decode every image once
(width, height, SHA-1 of the bytes, pHash, a small thumbnail), quarantining the files that fail;
group exact and near duplicates (:mod:`bonefrac.data.dedup`); quarantine every member of a group
whose labels disagree ("label conflict") and all but one copy of byte-identical files ("exact
duplicate", so training never counts one file twice); split the rest by group
(:mod:`bonefrac.data.split`); write ``manifest.csv``, ``quarantine.csv`` and ``summary.json``
atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.data.dedup import (
    THUMB_SIZE,
    DedupConfig,
    find_groups,
    phash_int,
    reduce_for_hashing,
    thumbnail,
)
from bonefrac.data.imageio import DICOM_SUFFIXES, load_grayscale
from bonefrac.data.schema import MANIFEST_COLUMNS
from bonefrac.data.sources import (
    Record,
    SourceScan,
    read_dicom_dir,
    read_folder,
    read_fracatlas,
    read_yolo,
)
from bonefrac.data.split import DEFAULT_RATIOS, assign_splits, check_ratios, frozen_assignments
from bonefrac.errors import DataError, ImageDecodeError
from bonefrac.fileio import write_csv, write_json

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["path", "reason", "detail", "source", "image_id", "label", "group"]
#: below this many images the decode runs in-process (a pool costs more than it saves)
POOL_MIN_IMAGES = 200

DUPLICATE_POLICY = (
    "Byte-identical copies with the same label: the first path (sorted) stays in the manifest, "
    "the others go to quarantine.csv with reason 'exact duplicate' (detail names the kept copy). "
    "Near duplicates (re-encoded/resized, Roboflow siblings) with the same label all stay, "
    "sharing one group so they land in one split. Any group whose members disagree on the label "
    "is quarantined whole with reason 'label conflict'."
)


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


def _pool_context() -> mp.context.BaseContext:
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def probe_images(
    paths: Sequence[str | Path],
    *,
    workers: int | None = None,
    progress: bool = True,
    thumb_size: int = THUMB_SIZE,
) -> list[Probe]:
    """Probe every file (in order), in a process pool when there are enough of them."""
    paths = [str(p) for p in paths]
    n_workers = default_workers() if workers is None else max(1, int(workers))
    if len(paths) < POOL_MIN_IMAGES:
        n_workers = 1
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


def _probe_star(args: tuple[str, int]) -> Probe:
    return probe_image(*args)


def default_workers() -> int:
    """Worker processes for decoding: the usable CPUs, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


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


# ----------------------------------------------------------------------------- sources


def _as_list(value: str | Path | Iterable[str | Path] | None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def scan_sources(
    *,
    fracatlas: str | Path | None = None,
    yolo: str | Path | Iterable[str | Path] | None = None,
    folders: str | Path | Iterable[str | Path] | None = None,
    dicom_dirs: str | Path | Iterable[str | Path] | None = None,
    fracture_classes: Sequence[str] | None = None,
    unlabelled_negative: bool = False,
    class_map: str | dict[str, int] | None = None,
) -> list[SourceScan]:
    """Read every requested source (no decoding yet). Source names are made unique."""
    scans: list[SourceScan] = []
    if fracatlas:
        scans.append(read_fracatlas(fracatlas))
    for i, y in enumerate(_as_list(yolo)):
        scans.append(
            read_yolo(
                y,
                fracture_classes=list(fracture_classes) if fracture_classes else None,
                unlabelled_negative=unlabelled_negative,
                source="yolo" if i == 0 else f"yolo{i + 1}",
            )
        )
    for f in _as_list(folders):
        scans.append(read_folder(f, class_map=class_map))
    for d in _as_list(dicom_dirs):
        scans.append(read_dicom_dir(d, class_map=class_map))
    if not scans:
        raise DataError("no data source given: pass --fracatlas, --yolo, --folder or --dicom-dir")
    names: Counter[str] = Counter()
    for scan in scans:
        names[scan.name] += 1
        if names[scan.name] > 1:
            new = f"{scan.name}-{names[scan.name]}"
            for r in scan.records:
                r.source = new
            scan.name = new
    return scans


# ----------------------------------------------------------------------------- build


def build_manifest(
    *,
    out: str | Path,
    fracatlas: str | Path | None = None,
    yolo: str | Path | Iterable[str | Path] | None = None,
    folders: str | Path | Iterable[str | Path] | None = None,
    dicom_dirs: str | Path | Iterable[str | Path] | None = None,
    seed: int = 0,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    unlabelled_negative: bool = False,
    fracture_classes: Sequence[str] | None = None,
    class_map: str | dict[str, int] | None = None,
    freeze_split: str | Path | None = None,
    force: bool = False,
    workers: int | None = None,
    dedup: DedupConfig | None = None,
    stratify_region: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Build ``out/manifest.csv``, ``out/quarantine.csv`` and ``out/summary.json``.

    Returns the summary dict (also written to summary.json). Refuses to overwrite an existing
    manifest unless ``force``. Bad image files are quarantined, never fatal.
    """
    t0 = time.perf_counter()
    out = Path(out)
    manifest_path = out / "manifest.csv"
    if manifest_path.exists() and not force:
        raise DataError(f"{manifest_path}: already exists; pass --force to overwrite it")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    ratios = check_ratios(ratios)
    cfg = dedup or DedupConfig()
    if freeze_split is not None and not Path(freeze_split).is_file():
        raise DataError(f"{freeze_split}: --freeze-split manifest not found")

    scans = scan_sources(
        fracatlas=fracatlas,
        yolo=yolo,
        folders=folders,
        dicom_dirs=dicom_dirs,
        fracture_classes=fracture_classes,
        unlabelled_negative=unlabelled_negative,
        class_map=class_map,
    )
    records: list[Record] = []
    seen_paths: dict[Path, str] = {}
    listed_twice: list[str] = []
    for scan in scans:
        for r in scan.records:
            if r.path in seen_paths:
                listed_twice.append(f"{r.path} ({seen_paths[r.path]} and {r.source})")
                continue
            seen_paths[r.path] = r.source
            records.append(r)
    _unique_image_ids(records)
    if not records:
        raise DataError("the sources hold no images; check the folders passed to 'data build'")
    t_scan = time.perf_counter()

    probes = probe_images([r.path for r in records], workers=workers, progress=progress)
    t_decode = time.perf_counter()

    quarantine: list[dict[str, Any]] = []
    good: list[tuple[Record, Probe]] = []
    for r, p in zip(records, probes, strict=True):
        if p.ok:
            good.append((r, p))
        else:
            quarantine.append(_qrow(r, p.reason, p.detail))

    # duplicates
    thumbs = (
        np.stack([p.thumb for _, p in good])
        if good
        else np.zeros((0, THUMB_SIZE, THUMB_SIZE), np.uint8)
    )
    dd = find_groups(
        [p.sha1 for _, p in good],
        [p.phash for _, p in good],
        thumbs,
        sources=[r.source for r, _ in good],
        link_keys=[r.link_key for r, _ in good],
        config=cfg,
    )
    members: dict[str, list[int]] = defaultdict(list)
    conflict_units = dd.group_ids if cfg.conflicts_include_link_keys else dd.pixel_group_ids
    for i, g in enumerate(conflict_units):
        members[g].append(i)

    drop: dict[int, tuple[str, str]] = {}
    conflicts: list[dict[str, Any]] = []
    for _, ix in sorted(members.items()):
        labels = {good[i][0].label for i in ix}
        if len(labels) > 1:
            gid = dd.group_ids[ix[0]]
            conflicts.append(
                {
                    "group": gid,
                    "size": len(ix),
                    "sources": sorted({good[i][0].source for i in ix}),
                    "members": [
                        {"path": str(good[i][0].path), "label": good[i][0].label} for i in ix
                    ],
                }
            )
            for i in ix:
                detail = (
                    f"group {gid}: {len(ix)} copies, "
                    f"{sum(good[k][0].label for k in ix)} labelled fractured, "
                    f"{sum(1 - good[k][0].label for k in ix)} not"
                )
                drop[i] = ("label conflict", detail)
    exact_removed = 0
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, (_, p) in enumerate(good):
        if i not in drop:
            by_sha[p.sha1].append(i)
    for ix in by_sha.values():
        if len(ix) > 1:
            ix = sorted(ix, key=lambda i: str(good[i][0].path))
            keep = good[ix[0]][0].path
            for i in ix[1:]:
                drop[i] = ("exact duplicate", f"duplicate of {keep}")
                exact_removed += 1
    kept = [i for i in range(len(good)) if i not in drop]
    for i in sorted(drop):
        r, _ = good[i]
        quarantine.append(_qrow(r, *drop[i], group=dd.group_ids[i]))

    # split
    frozen: dict[int, str] = {}
    if freeze_split is not None:
        frozen_all = frozen_assignments(
            freeze_split, [good[i][1].sha1 for i in kept], [str(good[i][0].path) for i in kept]
        )
        frozen = frozen_all
    sp = assign_splits(
        [dd.group_ids[i] for i in kept],
        [good[i][0].label for i in kept],
        [good[i][0].region for i in kept],
        sources=[good[i][0].source for i in kept],
        seed=seed,
        ratios=ratios,
        frozen=frozen,
        stratify_region=stratify_region,
    )

    rows = []
    extra_cols: list[str] = []
    for k, i in enumerate(kept):
        r, p = good[i]
        for c in r.extra:
            if c not in extra_cols and c not in MANIFEST_COLUMNS:
                extra_cols.append(c)
        rows.append(
            {
                "image_id": r.image_id,
                "path": str(r.path),
                "label": r.label,
                "source": r.source,
                "region": r.region,
                "view": r.view,
                "split": sp.splits[k],
                "group": dd.group_ids[i],
                "width": p.width,
                "height": p.height,
                "sha1": p.sha1,
                "phash": f"{p.phash:016x}",
                "boxes": json.dumps(r.boxes),
                **r.extra,
            }
        )
    for row in rows:  # fill before building the frame, so ints don't turn into floats
        for c in extra_cols:
            row.setdefault(c, "")
    source_order = {s.name: k for k, s in enumerate(scans)}
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS + extra_cols)
    if len(manifest):
        manifest = manifest.sort_values(
            ["source", "image_id"], key=lambda c: c.map(source_order) if c.name == "source" else c
        ).reset_index(drop=True)
    qdf = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)
    t_end = time.perf_counter()

    all_sha: dict[str, list[Probe]] = defaultdict(list)
    for p in probes:
        if p.sha1:
            all_sha[p.sha1].append(p)
    exact_all = [ps for ps in all_sha.values() if len(ps) > 1]
    dd.stats["exact_all_files"] = {
        "note": "byte-identical files among all files found, decodable or not",
        "groups": len(exact_all),
        "files": sum(len(ps) for ps in exact_all),
        "groups_of_undecodable_files": sum(1 for ps in exact_all if not any(p.ok for p in ps)),
    }
    summary = _summary(
        scans=scans,
        records=records,
        manifest=manifest,
        quarantine=qdf,
        dd_stats=dd.stats,
        conflicts=conflicts,
        exact_removed=exact_removed,
        split_stats=sp.stats,
        listed_twice=listed_twice,
        timing={
            "scan_seconds": round(t_scan - t0, 3),
            "decode_seconds": round(t_decode - t_scan, 3),
            "build_seconds": round(t_end - t0, 3),
            "images_per_second": round(len(records) / max(t_end - t0, 1e-9), 1),
            "decode_images_per_second": round(len(records) / max(t_decode - t_scan, 1e-9), 1),
            "workers": 1
            if len(records) < POOL_MIN_IMAGES
            else (default_workers() if workers is None else workers),
        },
        seed=seed,
        freeze_split=str(freeze_split) if freeze_split else None,
        extra_cols=extra_cols,
        out=out,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "quarantine.csv", qdf)
    write_json(out / "summary.json", summary)
    write_csv(manifest_path, manifest)
    size = summary["duplicates"]["groups"]["max_group_size"]
    if size > cfg.warn_group_size:
        log.warning(
            "largest duplicate group has %d images (> %d): the near-duplicate thresholds may be"
            " too loose (see summary.json 'duplicates')",
            size,
            cfg.warn_group_size,
        )
    return summary


def _qrow(r: Record, reason: str, detail: str, group: str = "") -> dict[str, Any]:
    return {
        "path": str(r.path),
        "reason": reason,
        "detail": detail,
        "source": r.source,
        "image_id": r.image_id,
        "label": r.label,
        "group": group,
    }


def _unique_image_ids(records: list[Record]) -> None:
    counts = Counter(r.image_id for r in records)
    for r in records:
        if counts[r.image_id] > 1:
            r.image_id = f"{r.source}/{r.image_id}"
    counts = Counter(r.image_id for r in records)
    for r in records:
        if counts[r.image_id] > 1:
            r.image_id = str(r.path)


def _counts(df: pd.DataFrame, col: str) -> dict[str, int]:
    if not len(df):
        return {}
    return {str(k): int(v) for k, v in df[col].astype(str).value_counts().sort_index().items()}


def _summary(
    *,
    scans: list[SourceScan],
    records: list[Record],
    manifest: pd.DataFrame,
    quarantine: pd.DataFrame,
    dd_stats: dict[str, Any],
    conflicts: list[dict[str, Any]],
    exact_removed: int,
    split_stats: dict[str, Any],
    listed_twice: list[str],
    timing: dict[str, Any],
    seed: int,
    freeze_split: str | None,
    extra_cols: list[str],
    out: Path,
) -> dict[str, Any]:
    per_source: dict[str, Any] = {}
    for scan in scans:
        m = manifest[manifest["source"] == scan.name] if len(manifest) else manifest
        q = quarantine[quarantine["source"] == scan.name] if len(quarantine) else quarantine
        per_source[scan.name] = {
            "kind": scan.kind,
            "root": str(scan.root),
            "images_found": len(scan.records),
            "labels_found": {
                "1": sum(r.label for r in scan.records),
                "0": sum(1 - r.label for r in scan.records),
            },
            "manifest_rows": len(m),
            "manifest_labels": _counts(m, "label"),
            "quarantined": len(q),
            "quarantine_reasons": _counts(q, "reason"),
            "report": scan.report,
        }
    split_label: dict[str, dict[str, int]] = {}
    split_region: dict[str, dict[str, int]] = {}
    if len(manifest):
        for split, g in manifest.groupby("split"):
            split_label[str(split)] = _counts(g, "label")
            split_region[str(split)] = _counts(
                g.assign(region=g["region"].replace("", "unknown")), "region"
            )
    fractured_share = {}
    if len(manifest):
        overall = float(manifest["label"].mean())
        fractured_share["all"] = round(overall, 4)
        for split, g in manifest.groupby("split"):
            fractured_share[str(split)] = round(float(g["label"].mean()), 4)
    straddling = 0
    if len(manifest):
        straddling = int((manifest.groupby("group")["split"].nunique() > 1).sum())
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "out": str(out.resolve()),
        "seed": seed,
        "freeze_split": freeze_split,
        "manifest_columns": MANIFEST_COLUMNS + extra_cols,
        "extra_columns": extra_cols,
        "counts": {
            "images_found": len(records),
            "manifest_rows": len(manifest),
            "quarantined": len(quarantine),
            "by_label": _counts(manifest, "label"),
            "by_split": _counts(manifest, "split"),
            "by_source": _counts(manifest, "source"),
            "by_region": _counts(
                manifest.assign(region=manifest["region"].replace("", "unknown"))
                if len(manifest)
                else manifest,
                "region",
            ),
            "by_split_label": split_label,
            "by_split_region": split_region,
            "fractured_share": fractured_share,
        },
        "sources": per_source,
        "paths_listed_twice": listed_twice,
        "quarantine_reasons": _counts(quarantine, "reason"),
        "label_conflicts": {
            "groups": len(conflicts),
            "images": sum(c["size"] for c in conflicts),
            "groups_across_sources": sum(1 for c in conflicts if len(c["sources"]) > 1),
            "list": conflicts,
        },
        "duplicates": {
            **dd_stats,
            "policy": DUPLICATE_POLICY,
            "exact_copies_quarantined": exact_removed,
        },
        "split": {**split_stats, "groups_straddling_splits": straddling},
        "timing": timing,
    }
