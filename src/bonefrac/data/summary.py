"""summary.json of a manifest build: counts per label, split, source and region, the sources'
reports, duplicate and label-conflict statistics, split statistics, timing and warnings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from bonefrac.data.dedup import DUPLICATE_POLICY
from bonefrac.data.schema import MANIFEST_COLUMNS
from bonefrac.data.sources import Record, SourceScan


def counts(df: pd.DataFrame, col: str) -> dict[str, int]:
    """Value counts of ``df[col]`` as ``{str(value): n}``, sorted by value."""
    if not len(df):
        return {}
    return {str(k): int(v) for k, v in df[col].astype(str).value_counts().sort_index().items()}


def build_summary(
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
    warnings: list[str],
) -> dict[str, Any]:
    """The JSON-ready summary of one build: counts, per-source reports, duplicates, split."""
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
            "manifest_labels": counts(m, "label"),
            "quarantined": len(q),
            "quarantine_reasons": counts(q, "reason"),
            "report": scan.report,
        }
    split_label: dict[str, dict[str, int]] = {}
    split_region: dict[str, dict[str, int]] = {}
    if len(manifest):
        for split, g in manifest.groupby("split"):
            split_label[str(split)] = counts(g, "label")
            split_region[str(split)] = counts(
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
        "warnings": warnings,
        "counts": {
            "images_found": len(records),
            "manifest_rows": len(manifest),
            "quarantined": len(quarantine),
            "by_label": counts(manifest, "label"),
            "by_split": counts(manifest, "split"),
            "by_source": counts(manifest, "source"),
            "by_region": counts(
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
        "quarantine_reasons": counts(quarantine, "reason"),
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
