"""Manifest build: sources -> validated, de-duplicated, leakage-free manifest.

This module only orchestrates. Steps: read the sources (:mod:`bonefrac.data.sources`); clip
boxes that reach outside the image (:mod:`bonefrac.data.boxes`); fully decode every image once
(:mod:`bonefrac.data.probe`), quarantining the files that fail; group exact and near duplicates
and apply the duplicate / label-conflict policy (:mod:`bonefrac.data.dedup`); split the rest by
group (:mod:`bonefrac.data.split`); write ``manifest.csv``, ``quarantine.csv`` and
``summary.json`` atomically. Problems a user should see (an empty class folder, a one-class
result, a source whose images were all quarantined, clipped boxes) are logged and listed under
``warnings`` in summary.json (:mod:`bonefrac.data.summary`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.config import DataBuildConfig
from bonefrac.data.boxes import clean_boxes
from bonefrac.data.dedup import (
    THUMB_SIZE,
    DedupConfig,
    exact_file_stats,
    find_groups,
    resolve_duplicates,
)
from bonefrac.data.probe import Probe, pool_workers, probe_images
from bonefrac.data.schema import MANIFEST_COLUMNS
from bonefrac.data.sources import Record, SourceScan, scan_sources
from bonefrac.data.split import DEFAULT_RATIOS, assign_splits, check_ratios, frozen_assignments
from bonefrac.data.summary import build_summary
from bonefrac.errors import DataError
from bonefrac.fileio import write_csv, write_json

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["path", "reason", "detail", "source", "image_id", "label", "group"]


# ----------------------------------------------------------------------------- build


def build_manifest(config: DataBuildConfig, *, dedup: DedupConfig | None = None) -> dict[str, Any]:
    """Build ``manifest.csv``, ``quarantine.csv`` and ``summary.json`` in ``config.out``.

    Returns the summary dict (also written to summary.json). Refuses to overwrite an existing
    manifest unless ``config.force``. Bad image files are quarantined, never fatal. ``dedup``:
    the near-duplicate thresholds (measured on FracAtlas, not a user option).
    """
    t0 = time.perf_counter()
    out = Path(config.out)
    seed, freeze_split, workers = config.seed, config.freeze_split, config.workers
    manifest_path = out / "manifest.csv"
    if manifest_path.exists() and not config.force:
        raise DataError(f"{manifest_path}: already exists; pass --force to overwrite it")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    ratios = check_ratios(config.ratios or DEFAULT_RATIOS)
    cfg = dedup or DedupConfig()
    if freeze_split is not None and not Path(freeze_split).is_file():
        raise DataError(f"{freeze_split}: --freeze-split manifest not found")

    scans = scan_sources(config)
    warnings = [w for scan in scans for w in scan.warnings]
    records, listed_twice = _collect_records(scans)
    if not records:
        raise DataError("the sources hold no images; check the folders passed to 'data build'")
    warnings += _clip_boxes(records)
    _check_writable(out)
    t_scan = time.perf_counter()

    probes = probe_images([r.path for r in records], workers=workers, progress=config.progress)
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
    decision = resolve_duplicates(
        labels=[r.label for r, _ in good],
        paths=[str(r.path) for r, _ in good],
        sources=[r.source for r, _ in good],
        sha1s=[p.sha1 for _, p in good],
        group_ids=dd.group_ids,
        conflict_units=dd.group_ids if cfg.conflicts_include_link_keys else dd.pixel_group_ids,
    )
    kept = [i for i in range(len(good)) if i not in decision.drop]
    for i in sorted(decision.drop):
        quarantine.append(_qrow(good[i][0], *decision.drop[i], group=dd.group_ids[i]))
    qdf = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)
    if not kept:
        _write(out / "quarantine.csv", lambda p: write_csv(p, qdf))
        raise DataError(
            f"{out / 'quarantine.csv'}: none of the {len(records)} images is usable "
            f"({_reasons(qdf)}); fix or replace the files listed there and run 'data build' again"
        )

    # split
    frozen: dict[int, str] = {}
    if freeze_split is not None:
        frozen = frozen_assignments(
            freeze_split, [good[i][1].sha1 for i in kept], [str(good[i][0].path) for i in kept]
        )
    sp = assign_splits(
        [dd.group_ids[i] for i in kept],
        [good[i][0].label for i in kept],
        [good[i][0].region for i in kept],
        sources=[good[i][0].source for i in kept],
        seed=seed,
        ratios=ratios,
        frozen=frozen,
        stratify_region=config.stratify_region,
    )
    manifest, extra_cols = _manifest_frame(
        [good[i] for i in kept], [dd.group_ids[i] for i in kept], sp.splits, scans
    )
    t_end = time.perf_counter()

    dd.stats["exact_all_files"] = exact_file_stats([p.sha1 for p in probes], [p.ok for p in probes])
    warnings += _result_warnings(scans, manifest, qdf, manifest_path)
    summary = build_summary(
        scans=scans,
        records=records,
        manifest=manifest,
        quarantine=qdf,
        dd_stats=dd.stats,
        conflicts=decision.conflicts,
        exact_removed=decision.exact_removed,
        split_stats=sp.stats,
        listed_twice=listed_twice,
        timing={
            "scan_seconds": round(t_scan - t0, 3),
            "decode_seconds": round(t_decode - t_scan, 3),
            "build_seconds": round(t_end - t0, 3),
            "images_per_second": round(len(records) / max(t_end - t0, 1e-9), 1),
            "decode_images_per_second": round(len(records) / max(t_decode - t_scan, 1e-9), 1),
            "workers": pool_workers(len(records), workers),
        },
        seed=seed,
        freeze_split=str(freeze_split) if freeze_split else None,
        extra_cols=extra_cols,
        out=out,
        warnings=warnings,
    )
    _write(out / "quarantine.csv", lambda p: write_csv(p, qdf))
    _write(out / "summary.json", lambda p: write_json(p, summary))
    _write(manifest_path, lambda p: write_csv(p, manifest))
    size = summary["duplicates"]["groups"]["max_group_size"]
    if size > cfg.warn_group_size:
        log.warning(
            "largest duplicate group has %d images (> %d): the near-duplicate thresholds may be"
            " too loose (see summary.json 'duplicates')",
            size,
            cfg.warn_group_size,
        )
    return summary


def _collect_records(scans: list[SourceScan]) -> tuple[list[Record], list[str]]:
    """Every source's records, each path once (image ids made unique), plus the paths that
    more than one source listed."""
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
    return records, listed_twice


def _clip_boxes(records: list[Record]) -> list[str]:
    """Clip every record's boxes to the image (dropping empty ones); one warning per file."""
    warnings = []
    for r in records:
        boxes, notes = clean_boxes(r.boxes)
        if notes:
            r.boxes = boxes
            msg = f"{r.path}: " + "; ".join(notes)
            log.warning("%s", msg)
            warnings.append(msg)
    return warnings


def _check_writable(out: Path) -> None:
    """Create ``out`` and try a file in it, so a bad ``--out`` fails before the decode."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise DataError(
            f"{out}: cannot write the manifest there ({exc.strerror or exc}); "
            "pass a writable folder as --out"
        ) from None


def _write(path: Path, writer: Any) -> None:
    """Run ``writer(path)``; an OS failure becomes a DataError naming the file."""
    try:
        writer(path)
    except OSError as exc:
        raise DataError(
            f"{path}: could not be written ({exc.strerror or exc}); free space or pass another"
            " --out"
        ) from None


def _manifest_frame(
    items: list[tuple[Record, Probe]],
    group_ids: list[str],
    splits: Sequence[str],
    scans: list[SourceScan],
) -> tuple[pd.DataFrame, list[str]]:
    """Manifest rows (schema columns, then the sources' extra columns) sorted by source order
    and image id; returns the frame and the extra column names."""
    rows = []
    extra_cols: list[str] = []
    for (r, p), group, split in zip(items, group_ids, splits, strict=True):
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
                "split": split,
                "group": group,
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
    return manifest, extra_cols


def _result_warnings(
    scans: list[SourceScan], manifest: pd.DataFrame, quarantine: pd.DataFrame, manifest_path: Path
) -> list[str]:
    """Warnings about the outcome: a source that kept no image, a manifest of one class."""
    warnings = []
    for scan in scans:
        if not scan.records:
            warnings.append(f"{scan.root}: source '{scan.name}' holds no images")
        elif not (manifest["source"] == scan.name).any():
            q = quarantine[quarantine["source"] == scan.name]
            warnings.append(
                f"{scan.root}: all {len(scan.records)} images of source '{scan.name}' were"
                f" quarantined ({_reasons(q)}); see quarantine.csv"
            )
    labels = sorted(set(manifest["label"]))
    if len(labels) == 1:
        name = "fractured" if labels[0] == 1 else "not fractured"
        other = "not fractured (0)" if labels[0] == 1 else "fractured (1)"
        warnings.append(
            f"{manifest_path}: every image is labelled {labels[0]} ({name}); a classifier needs"
            f" both classes: add images labelled {other}"
        )
    for msg in warnings:
        log.warning("%s", msg)
    return warnings


def _reasons(quarantine: pd.DataFrame) -> str:
    """``'truncated': 3, 'label conflict': 2`` style counts of quarantine reasons."""
    counts = Counter(quarantine["reason"])
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common()) or "none"


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
