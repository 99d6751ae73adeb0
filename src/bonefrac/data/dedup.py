"""Exact and near-duplicate groups.

Three kinds of link join two images into one group (union-find):

* **exact**: identical bytes (same SHA-1);
* **near**: perceptual hashes (pHash, 64 bit) within ``phash_distance`` bits *and* confirmed by
  pixel similarity of normalised thumbnails (z-scored, Pearson correlation >=
  ``min_correlation`` and mean absolute difference of the z-scores <= ``max_mad``). A pHash
  alone over-groups radiographs (similar anatomy on dark backgrounds), the pixel check keeps
  re-encoded / resized copies and drops look-alikes of different patients;
* **link key**: the same non-empty key within one source, e.g. Roboflow augmentation siblings
  ``<stem>.rf.<hash>.jpg`` of one source image (flips/rotations that no pixel check would see).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

#: Side of the greyscale thumbnail kept per image for the pixel check.
THUMB_SIZE = 64


@dataclass
class DedupConfig:
    """Thresholds of the near-duplicate search (all configurable)."""

    #: pHash Hamming distance (of 64 bits) at or below which a pair is a candidate.
    phash_distance: int = 8
    #: pixel check on THUMB_SIZE x THUMB_SIZE z-scored thumbnails. Measured on FracAtlas: of
    #: its 2,733 pHash<=8 pairs (not byte-identical), 95 correlate >= 0.99 (re-encoded copies,
    #: checked by eye) and none falls in 0.98-0.99; look-alikes of different patients reach
    #: 0.977 (mean abs diff >= 0.05).
    min_correlation: float = 0.98
    max_mad: float = 0.15
    #: group members of a Roboflow stem (or other link key) together
    use_link_keys: bool = True
    #: label conflicts are judged on the whole group (True, the default) or only on the
    #: pixel-confirmed part of it (exact + near duplicates). Roboflow stems are not unique:
    #: in the shared set one stem can cover several different radiographs (upload file names
    #: reused), so a stem-wide conflict may be two different images, not one mislabelled one.
    conflicts_include_link_keys: bool = True
    #: a group larger than this is reported as suspicious (likely over-grouping)
    warn_group_size: int = 20


def reduce_for_hashing(img: Image.Image, min_side: int = 2 * THUMB_SIZE) -> Image.Image:
    """Box-reduce by an integer factor while the short side stays >= ``min_side``.

    pHash (LANCZOS to 32 x 32) and the thumbnail are then computed from this small image: the
    same hashes up to a bit or two, at a fraction of the cost of resampling a full radiograph.
    """
    factor = max(1, min(img.size) // max(1, min_side))
    return img.reduce(factor) if factor > 1 else img


def phash_int(img: Image.Image) -> int:
    """64-bit perceptual hash (imagehash.phash) of a PIL image, as an int."""
    import imagehash

    h = imagehash.phash(img)
    bits = np.asarray(h.hash, dtype=np.uint8).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def thumbnail(img: Image.Image, size: int = THUMB_SIZE) -> np.ndarray:
    """``size`` x ``size`` uint8 greyscale thumbnail (aspect ratio ignored: resized copies match)."""
    return np.asarray(img.convert("L").resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def zscore(thumbs: np.ndarray) -> np.ndarray:
    """(n, h, w) uint8 thumbnails -> (n, h*w) float32 rows with mean 0 and std 1."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    std[std < 1e-6] = 1.0
    return x / std


def phash_pairs(hashes: Sequence[int] | np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i < j) whose 64-bit hashes differ in at most ``max_distance`` bits.

    Vectorised in row blocks: 8k x 8k comparisons take well under a second.
    """
    h = np.asarray([int(x) for x in hashes], dtype=np.uint64)
    n = len(h)
    out: list[np.ndarray] = []
    block = 1024
    for start in range(0, n, block):
        rows = h[start : start + block]
        dist = (
            np.bitwise_count(rows[:, None] ^ h[None, :])
            if hasattr(np, "bitwise_count")
            else (_popcount64(rows[:, None] ^ h[None, :]))
        )
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = ii < jj
        out.append(np.stack([ii[keep], jj[keep]], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def _popcount64(x: np.ndarray) -> np.ndarray:  # numpy < 2.0
    b = x.view(np.uint8).reshape(*x.shape, 8)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[b].sum(axis=-1)


def pixel_similarity(z: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correlation and mean absolute difference of z-scored thumbnails for each pair."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    a, b = z[pairs[:, 0]], z[pairs[:, 1]]
    corr = (a * b).mean(axis=1)
    mad = np.abs(a - b).mean(axis=1)
    return corr, mad


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> bool:
        ri, rj = self.find(i), self.find(j)
        if ri == rj:
            return False
        if rj < ri:
            ri, rj = rj, ri
        self.parent[rj] = ri
        return True


@dataclass
class DedupResult:
    """Per-item group ids plus statistics for summary.json."""

    group_ids: list[str]
    #: item index -> group index (0..n_groups-1)
    group_index: list[int]
    #: group ids from exact + near (pixel-confirmed) links only, without link keys
    pixel_group_ids: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    #: confirmed near-duplicate pairs (i, j, correlation, mad)
    near_pairs: list[tuple[int, int, float, float]] = field(default_factory=list)


def find_groups(
    sha1s: Sequence[str],
    phashes: Sequence[int],
    thumbs: np.ndarray,
    *,
    sources: Sequence[str] | None = None,
    link_keys: Sequence[str] | None = None,
    config: DedupConfig | None = None,
) -> DedupResult:
    """Group items that are exact duplicates, confirmed near duplicates or share a link key.

    Group ids are ``g<first 12 hex of the smallest member SHA-1>``: stable across builds and
    independent of file order (the split keys on them).
    """
    cfg = config or DedupConfig()
    n = len(sha1s)
    sources = list(sources) if sources is not None else [""] * n
    link_keys = list(link_keys) if link_keys is not None else [""] * n
    uf = UnionFind(n)

    # exact
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sha1s):
        by_sha[s].append(i)
    exact_groups = [ix for ix in by_sha.values() if len(ix) > 1]
    for ix in exact_groups:
        for j in ix[1:]:
            uf.union(ix[0], j)

    # near: pHash candidates confirmed by pixels
    cand = phash_pairs(phashes, cfg.phash_distance) if n > 1 else np.zeros((0, 2), np.int64)
    sha = np.asarray(sha1s, dtype=object)
    if len(cand):
        cand = cand[sha[cand[:, 0]] != sha[cand[:, 1]]]  # exact pairs counted above
    z = zscore(thumbs) if n else np.zeros((0, 0), np.float32)
    corr, mad = pixel_similarity(z, cand)
    ok = (corr >= cfg.min_correlation) & (mad <= cfg.max_mad)
    near = cand[ok]
    near_pairs = [
        (int(i), int(j), float(c), float(m))
        for (i, j), c, m in zip(near, corr[ok], mad[ok], strict=True)
    ]
    near_new = sum(uf.union(int(i), int(j)) for i, j in near)
    pixel_roots = [uf.find(i) for i in range(n)]
    pixel_group_ids = _root_names(pixel_roots, sha1s, "p")

    # link keys (per source)
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    if cfg.use_link_keys:
        for i, key in enumerate(link_keys):
            if key:
                by_key[(sources[i], key)].append(i)
    link_groups = [ix for ix in by_key.values() if len(ix) > 1]
    for ix in link_groups:
        for j in ix[1:]:
            uf.union(ix[0], j)

    roots = [uf.find(i) for i in range(n)]
    members: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(roots):
        members[r].append(i)
    root_to_gid = {r: "g" + min(sha1s[i] for i in ix)[:12] for r, ix in members.items()}
    # two different groups can't share the smallest SHA-1 (it would be one group), but guard
    # against a 12-hex prefix collision anyway
    seen: dict[str, int] = {}
    for r in sorted(root_to_gid, key=lambda r: (root_to_gid[r], min(sha1s[i] for i in members[r]))):
        gid = root_to_gid[r]
        if gid in seen:
            seen[gid] += 1
            root_to_gid[r] = f"{gid}-{seen[gid]}"
        else:
            seen[gid] = 0
    group_ids = [root_to_gid[r] for r in roots]
    order = {r: k for k, r in enumerate(sorted(members, key=lambda r: root_to_gid[r]))}
    group_index = [order[r] for r in roots]

    multi = [ix for ix in members.values() if len(ix) > 1]
    sizes = [len(ix) for ix in multi]

    def _across(groups: list[list[int]]) -> int:
        return sum(1 for ix in groups if len({sources[i] for i in ix}) > 1)

    stats: dict[str, Any] = {
        "config": asdict(cfg),
        "thumbnail_size": int(thumbs.shape[1]) if n else THUMB_SIZE,
        "exact": {
            "groups": len(exact_groups),
            "files": sum(len(ix) for ix in exact_groups),
            "groups_within_source": len(exact_groups) - _across(exact_groups),
            "groups_across_sources": _across(exact_groups),
        },
        "near": {
            "phash_candidate_pairs": int(len(cand)),
            "confirmed_pairs": len(near_pairs),
            "rejected_pairs": int(len(cand) - len(near_pairs)),
            "confirmed_pairs_across_sources": sum(
                1 for i, j, _, _ in near_pairs if sources[i] != sources[j]
            ),
            "pairs_that_joined_groups": int(near_new),
        },
        "link_keys": {
            "groups": len(link_groups),
            "files": sum(len(ix) for ix in link_groups),
        },
        "groups": {
            "images": n,
            "groups": len(members),
            "multi_member_groups": len(multi),
            "images_in_multi_member_groups": sum(sizes),
            "max_group_size": max(sizes, default=1),
            "size_histogram": {str(k): v for k, v in sorted(Counter(sizes).items())},
            "groups_within_source": len(multi) - _across(multi),
            "groups_across_sources": _across(multi),
            "oversized_groups": sum(1 for s in sizes if s > cfg.warn_group_size),
        },
    }
    return DedupResult(
        group_ids=group_ids,
        group_index=group_index,
        pixel_group_ids=pixel_group_ids,
        stats=stats,
        near_pairs=near_pairs,
    )


def _root_names(roots: list[int], sha1s: Sequence[str], prefix: str) -> list[str]:
    members: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(roots):
        members[r].append(i)
    names = {r: f"{prefix}{r}-" + min(sha1s[i] for i in ix)[:12] for r, ix in members.items()}
    return [names[r] for r in roots]


# ----------------------------------------------------------------------------- policy

DUPLICATE_POLICY = (
    "Byte-identical copies with the same label: the first path (sorted) stays in the manifest, "
    "the others go to quarantine.csv with reason 'exact duplicate' (detail names the kept copy). "
    "Near duplicates (re-encoded/resized, Roboflow siblings) with the same label all stay, "
    "sharing one group so they land in one split. Any group whose members disagree on the label "
    "is quarantined whole with reason 'label conflict'."
)


@dataclass
class DuplicateDecision:
    """Which items :func:`resolve_duplicates` leaves out, and why."""

    #: item index -> (quarantine reason, detail)
    drop: dict[int, tuple[str, str]]
    #: one JSON-ready entry per label-conflict group (summary.json)
    conflicts: list[dict[str, Any]]
    #: byte-identical copies left out (all but one per SHA-1)
    exact_removed: int


def resolve_duplicates(
    labels: Sequence[int],
    paths: Sequence[str],
    sources: Sequence[str],
    sha1s: Sequence[str],
    group_ids: Sequence[str],
    conflict_units: Sequence[str],
) -> DuplicateDecision:
    """Apply :data:`DUPLICATE_POLICY` to items already grouped by :func:`find_groups`.

    Every member of a ``conflict_units`` group whose labels disagree is dropped as a
    "label conflict"; of the remaining byte-identical copies (same SHA-1) all but the first
    path (sorted) are dropped as "exact duplicate". ``group_ids`` name the groups in details.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i, unit in enumerate(conflict_units):
        members[unit].append(i)
    drop: dict[int, tuple[str, str]] = {}
    conflicts: list[dict[str, Any]] = []
    for _, ix in sorted(members.items()):
        if len({labels[i] for i in ix}) < 2:
            continue
        gid = group_ids[ix[0]]
        conflicts.append(
            {
                "group": gid,
                "size": len(ix),
                "sources": sorted({sources[i] for i in ix}),
                "members": [{"path": paths[i], "label": labels[i]} for i in ix],
            }
        )
        n_pos = sum(labels[k] for k in ix)
        detail = f"group {gid}: {len(ix)} copies, {n_pos} labelled fractured, {len(ix) - n_pos} not"
        for i in ix:
            drop[i] = ("label conflict", detail)
    exact_removed = 0
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, sha in enumerate(sha1s):
        if i not in drop:
            by_sha[sha].append(i)
    for ix in by_sha.values():
        if len(ix) > 1:
            ix = sorted(ix, key=lambda i: paths[i])
            for i in ix[1:]:
                drop[i] = ("exact duplicate", f"duplicate of {paths[ix[0]]}")
                exact_removed += 1
    return DuplicateDecision(drop=drop, conflicts=conflicts, exact_removed=exact_removed)


def exact_file_stats(sha1s: Sequence[str], decodable: Sequence[bool]) -> dict[str, Any]:
    """Byte-identical files among all files found (``sha1`` '' = unread), for summary.json."""
    by_sha: dict[str, list[bool]] = defaultdict(list)
    for sha, ok in zip(sha1s, decodable, strict=True):
        if sha:
            by_sha[sha].append(ok)
    groups = [oks for oks in by_sha.values() if len(oks) > 1]
    return {
        "note": "byte-identical files among all files found, decodable or not",
        "groups": len(groups),
        "files": sum(len(oks) for oks in groups),
        "groups_of_undecodable_files": sum(1 for oks in groups if not any(oks)),
    }
