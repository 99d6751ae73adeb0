"""Duplicate groups (exact, near, Roboflow stems), label conflicts, and the grouped split."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bonefrac.config import DataBuildConfig
from bonefrac.data.dedup import DedupConfig, find_groups, phash_int, phash_pairs, thumbnail
from bonefrac.data.manifest import build_manifest
from bonefrac.data.split import assign_splits
from bonefrac.errors import DataError
from tests.data.test_sources import radiograph, save


def _reencode(arr: np.ndarray, path: Path, *, quality: int, scale: float = 1.0) -> Path:
    img = Image.fromarray(arr)
    if scale != 1.0:
        img = img.resize(
            (int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    path.write_bytes(buf.getvalue())
    return path


def _dataset(root: Path, n: int = 40, conflict: bool = False) -> Path:
    """``n`` distinct images in two classes + copies of one fractured radiograph."""
    for i in range(n):
        cls = "fractured" if i % 3 == 0 else "normal"
        save(radiograph(1000 + i, (160, 128)), root / cls / f"img{i:03d}.png")
    base = radiograph(7, (320, 256))
    save(base, root / "fractured" / "orig.png")
    _reencode(base, root / "fractured" / "copy_q60.jpg", quality=60)
    _reencode(
        base,
        root / ("normal" if conflict else "fractured") / "copy_half.jpg",
        quality=85,
        scale=0.5,
    )
    return root


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reencoded_and_resized_copies_share_one_group_and_split(tmp_path: Path, seed: int) -> None:
    src = _dataset(tmp_path / "src")
    summary = build_manifest(
        DataBuildConfig(out=tmp_path / "out", sources={"folder": [src]}, seed=seed, progress=False)
    )
    df = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    copies = df[
        df["image_id"].isin(
            ["fractured/orig.png", "fractured/copy_q60.jpg", "fractured/copy_half.jpg"]
        )
    ]
    assert len(copies) == 3
    assert copies["group"].nunique() == 1
    assert copies["split"].nunique() == 1
    # nothing else was grouped: the other 40 images are singletons
    sizes = df.groupby("group").size()
    assert sorted(sizes[sizes > 1].tolist()) == [3]
    assert summary["duplicates"]["near"]["confirmed_pairs"] == 3
    assert summary["duplicates"]["groups"]["max_group_size"] == 3
    assert summary["split"]["groups_straddling_splits"] == 0
    assert summary["label_conflicts"]["groups"] == 0


def test_label_conflict_quarantines_every_copy(tmp_path: Path) -> None:
    src = _dataset(tmp_path / "src", conflict=True)
    summary = build_manifest(
        DataBuildConfig(out=tmp_path / "out", sources={"folder": [src]}, progress=False)
    )
    q = pd.read_csv(tmp_path / "out" / "quarantine.csv", keep_default_na=False)
    assert sorted(Path(p).name for p in q["path"]) == ["copy_half.jpg", "copy_q60.jpg", "orig.png"]
    assert set(q["reason"]) == {"label conflict"}
    assert q["group"].nunique() == 1 and q["group"][0]
    assert "1 not" in q["detail"][0] and "2 labelled fractured" in q["detail"][0]
    df = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert len(df) == 40 and not set(df["path"]) & set(q["path"])
    lc = summary["label_conflicts"]
    assert (lc["groups"], lc["images"]) == (1, 3)
    assert sorted(m["label"] for m in lc["list"][0]["members"]) == [0, 1, 1]


def test_roboflow_siblings_grouped_and_conflicts(tmp_path: Path) -> None:
    # link keys join images no pixel check would (a flipped augmentation)
    arr = radiograph(3)
    imgs = [Image.fromarray(a) for a in (arr, arr[:, ::-1].copy(), radiograph(4))]
    thumbs = np.stack([thumbnail(i) for i in imgs])
    hashes = [phash_int(i) for i in imgs]
    sha = ["a" * 40, "b" * 40, "c" * 40]
    keys = ["rf:x", "rf:x", ""]
    res = find_groups(sha, hashes, thumbs, sources=["y"] * 3, link_keys=keys)
    assert res.group_ids[0] == res.group_ids[1] != res.group_ids[2]
    assert res.group_ids[0] == "g" + "a" * 12
    assert res.stats["link_keys"] == {"groups": 1, "files": 2}
    assert res.pixel_group_ids[0] != res.pixel_group_ids[1]  # not pixel-confirmed
    off = find_groups(sha, hashes, thumbs, link_keys=keys, config=DedupConfig(use_link_keys=False))
    assert len(set(off.group_ids)) == 3
    # the same key in two different sources is not a link
    res = find_groups(sha, hashes, thumbs, sources=["y", "z", "y"], link_keys=keys)
    assert len(set(res.group_ids)) == 3


def test_phash_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 50, dtype=np.uint64)
    # add near copies with 1..10 flipped bits
    near = [
        int(b) ^ sum(1 << int(k) for k in rng.choice(64, f, replace=False))
        for b, f in zip(base[:20], range(1, 21), strict=False)
    ]
    hashes = [int(b) for b in base] + near
    got = {tuple(p) for p in phash_pairs(hashes, 8).tolist()}
    want = {
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(hashes[i] ^ hashes[j]).count("1") <= 8
    }
    assert got == want and len(want) >= 8


def test_near_duplicates_need_pixel_confirmation() -> None:
    # identical pHash but different pixels -> candidate, rejected by the pixel check
    a, b = radiograph(10), radiograph(11)
    thumbs = np.stack([thumbnail(Image.fromarray(x)) for x in (a, b)])
    res = find_groups(["1" * 40, "2" * 40], [5, 5], thumbs)
    assert res.stats["near"]["phash_candidate_pairs"] == 1
    assert res.stats["near"]["confirmed_pairs"] == 0
    assert res.group_ids[0] != res.group_ids[1]
    loose = find_groups(
        ["1" * 40, "2" * 40], [5, 5], thumbs, config=DedupConfig(min_correlation=-1, max_mad=9)
    )
    assert loose.group_ids[0] == loose.group_ids[1]


# ----------------------------------------------------------------------------- split


def _synthetic_rows(n_groups: int = 1500, seed: int = 0) -> tuple[list[str], list[int], list[str]]:
    rng = np.random.default_rng(seed)
    groups, labels, regions = [], [], []
    for g in range(n_groups):
        size = int(rng.choice([1, 1, 1, 2, 3, 6]))
        label = int(rng.random() < 0.25)
        region = str(rng.choice(["hand", "leg", "hip", "shoulder", ""]))
        for _ in range(size):
            groups.append(f"g{g:05d}")
            labels.append(label)
            regions.append(region)
    return groups, labels, regions


def test_split_is_deterministic_and_order_free() -> None:
    groups, labels, regions = _synthetic_rows()
    a = assign_splits(groups, labels, regions, seed=5).splits
    assert a == assign_splits(groups, labels, regions, seed=5).splits
    assert a != assign_splits(groups, labels, regions, seed=6).splits
    perm = np.random.default_rng(1).permutation(len(groups))
    b = assign_splits(
        [groups[i] for i in perm], [labels[i] for i in perm], [regions[i] for i in perm], seed=5
    ).splits
    assert [b[k] for k in np.argsort(perm)] == a


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_stratified_grouped_and_sized(seed: int) -> None:
    groups, labels, regions = _synthetic_rows(seed=seed)
    res = assign_splits(groups, labels, regions, seed=seed)
    df = pd.DataFrame({"group": groups, "label": labels, "region": regions, "split": res.splits})
    assert (df.groupby("group")["split"].nunique() == 1).all()
    overall = df["label"].mean()
    share = df["split"].value_counts(normalize=True)
    for split, ratio in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        part = df[df["split"] == split]
        assert abs(part["label"].mean() - overall) <= 0.02, (split, part["label"].mean(), overall)
        assert abs(share[split] - ratio) <= 0.02
        for region in ("hand", "leg"):  # region strata keep their shares too
            sub = df[df["region"] == region]
            assert abs((sub["split"] == split).mean() - ratio) <= 0.03


def test_split_freeze_keeps_old_rows_and_splits_new_ones() -> None:
    groups, labels, regions = _synthetic_rows(600, seed=2)
    old = assign_splits(groups, labels, regions, seed=0).splits
    more_g, more_l, more_r = _synthetic_rows(300, seed=9)
    more_g = [f"new{g}" for g in more_g]
    frozen = dict(enumerate(old))
    res = assign_splits(groups + more_g, labels + more_l, regions + more_r, seed=123, frozen=frozen)
    assert res.splits[: len(old)] == old
    new = pd.Series(res.splits[len(old) :])
    assert set(new) == {"train", "val", "test"}
    assert abs((new == "train").mean() - 0.7) < 0.05
    assert res.stats["frozen_rows"] == len(old)


def test_bad_ratios_are_rejected() -> None:
    with pytest.raises(DataError):
        assign_splits(["a"], [0], seed=0, ratios=(0.5, 0.5))


def test_split_keeps_each_sources_class_balance() -> None:
    """Two sources with very different fractured rates: each keeps its own rate per split."""
    rng = np.random.default_rng(0)
    groups, labels, sources = [], [], []
    for source, n, rate in (("a", 900, 0.15), ("b", 900, 0.45)):
        for i in range(n):
            groups.append(f"{source}{i:04d}")
            labels.append(int(rng.random() < rate))
            sources.append(source)
    res = assign_splits(groups, labels, None, sources=sources, seed=3)
    df = pd.DataFrame({"label": labels, "source": sources, "split": res.splits})
    for source, part in df.groupby("source"):
        rate = part["label"].mean()
        for split in ("train", "val", "test"):
            got = part[part["split"] == split]["label"].mean()
            assert abs(got - rate) <= 0.015, (source, split, got, rate)
    assert res.stats["stratified_by"].startswith("source")


def test_one_source_splits_as_before_sources_were_stratified() -> None:
    groups, labels, regions = _synthetic_rows(seed=4)
    plain = assign_splits(groups, labels, regions, seed=4).splits
    named = assign_splits(groups, labels, regions, sources=["x"] * len(groups), seed=4).splits
    assert plain == named
