"""Seeded, stratified, grouped train/val/test split.

Duplicate groups are the unit: a group never straddles splits. Groups are stratified by
(source, label, region) -- region only where known -- so every source keeps its own class
balance in each split when collections are combined. Within a stratum, groups are visited in
a seeded random order; each goes to the split furthest below its target share of what has
been assigned so far. The same inputs and seed always give the same split (row order does
not matter: groups are ordered by their id before shuffling).

Freezing: rows whose SHA-1 or path appears in an older manifest keep that manifest's split
(the whole group follows them); only the remaining groups are split, filling the targets
computed over old + new rows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.data.schema import SPLITS, read_manifest
from bonefrac.errors import DataError

DEFAULT_RATIOS = (0.7, 0.15, 0.15)


@dataclass
class SplitResult:
    splits: list[str]
    stats: dict[str, Any] = field(default_factory=dict)


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise DataError(f"split ratios must be three non-negative numbers, got {list(ratios)}")
    total = float(sum(ratios))
    return tuple(float(r) / total for r in ratios)  # type: ignore[return-value]


def _most_common(counts: Counter[str]) -> str:
    """The most frequent value; ties go to the alphabetically first (deterministic)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def assign_splits(
    groups: Sequence[str],
    labels: Sequence[int],
    regions: Sequence[str] | None = None,
    *,
    sources: Sequence[str] | None = None,
    seed: int = 0,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    frozen: Mapping[int, str] | None = None,
    stratify_region: bool = True,
) -> SplitResult:
    """Split rows into train/val/test, keeping each group whole.

    ``frozen``: row index -> split for rows that must keep an earlier assignment; their groups
    follow (majority of the frozen members when a group mixes old splits).
    """
    n = len(groups)
    if (
        len(labels) != n
        or (regions is not None and len(regions) != n)
        or (sources is not None and len(sources) != n)
    ):
        raise ValueError("groups, labels, regions and sources must have the same length")
    target = np.asarray(check_ratios(ratios))
    regions = list(regions) if regions is not None else [""] * n
    sources = [str(x) for x in sources] if sources is not None else [""] * n
    frozen = dict(frozen or {})

    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[str(g)].append(i)

    def stratum(ix: list[int]) -> tuple[str, int, str]:
        source = _most_common(Counter(sources[i] for i in ix))
        label = Counter(int(labels[i]) for i in ix).most_common(1)[0][0]
        region = ""
        if stratify_region:
            known = Counter(regions[i] for i in ix if regions[i])
            if known:
                region = _most_common(known)
        return source, label, region

    strata: dict[tuple[str, int, str], list[str]] = defaultdict(list)
    for g in sorted(members):
        strata[stratum(members[g])].append(g)

    group_split: dict[str, str] = {}
    mixed_frozen = 0
    for g, ix in members.items():
        old = [frozen[i] for i in ix if i in frozen]
        if old:
            c = Counter(old)
            if len(c) > 1:
                mixed_frozen += 1
            group_split[g] = sorted(c.items(), key=lambda kv: (-kv[1], SPLITS.index(kv[0])))[0][0]

    rng = np.random.default_rng(seed)
    for key in sorted(strata):
        gs = strata[key]
        counts = np.zeros(3)
        for g in gs:
            if g in group_split:
                counts[SPLITS.index(group_split[g])] += len(members[g])
        todo = [g for g in gs if g not in group_split]
        perm = rng.permutation(len(todo))
        for k in perm:
            g = todo[k]
            size = len(members[g])
            deficit = target * (counts.sum() + size) - counts
            s = int(np.argmax(deficit))
            counts[s] += size
            group_split[g] = SPLITS[s]

    splits = [group_split[str(g)] for g in groups]
    stats = {
        "seed": seed,
        "ratios": dict(zip(SPLITS, target.round(4).tolist(), strict=True)),
        "strata": len(strata),
        "stratified_by": "source + label + region" if stratify_region else "source + label",
        "frozen_rows": len(frozen),
        "groups_with_mixed_frozen_splits": mixed_frozen,
        "counts": dict(Counter(splits)),
    }
    return SplitResult(splits=splits, stats=stats)


def frozen_assignments(
    old_manifest: str | Path, sha1s: Sequence[str], paths: Sequence[str]
) -> dict[int, str]:
    """Row index -> split taken from an older manifest, matched by SHA-1 (else by path)."""
    df = read_manifest(old_manifest, require_split=True)
    by_sha: dict[str, str] = {}
    if "sha1" in df.columns:
        by_sha = {str(s): str(sp) for s, sp in zip(df["sha1"], df["split"], strict=True) if s}
    by_path = {
        str(Path(p).resolve()): str(sp) for p, sp in zip(df["path"], df["split"], strict=True)
    }
    out: dict[int, str] = {}
    for i, (s, p) in enumerate(zip(sha1s, paths, strict=True)):
        hit = by_sha.get(s) or by_path.get(str(Path(p).resolve()))
        if hit:
            out[i] = hit
    return out
