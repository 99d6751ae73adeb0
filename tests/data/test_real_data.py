"""Integration: real FracAtlas and FracAtlas + the Roboflow YOLO set (../shared/data).

Skipped when the data is absent. Each manifest is built once per module (~30-60 s each on
2 cores).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from bonefrac.config import DataBuildConfig
from bonefrac.data.manifest import build_manifest
from bonefrac.data.sources import roboflow_stem

pytestmark = pytest.mark.integration


def _data_dir() -> Path | None:
    env = os.environ.get("BONEFRAC_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    for path in candidates:
        if (path / "fracatlas" / "dataset.csv").is_file():
            return path
    return None


DATA = _data_dir()
needs_data = pytest.mark.skipif(
    DATA is None,
    reason="real data absent: set BONEFRAC_DATA or put fracatlas/ in ../shared/data",
)


def _load(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    q = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    return df, q


@pytest.fixture(scope="module")
def fracatlas_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    assert DATA is not None
    out = tmp_path_factory.mktemp("real_fracatlas")
    summary = build_manifest(
        DataBuildConfig(out=out, sources={"fracatlas": DATA / "fracatlas"}, seed=0, progress=False)
    )
    return (*_load(out), summary)


@pytest.fixture(scope="module")
def combined_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    assert DATA is not None
    if not (DATA / "bone_fracture_yolo" / "data.yaml").is_file():
        pytest.skip(f"{DATA / 'bone_fracture_yolo'} absent")
    out = tmp_path_factory.mktemp("real_combined")
    summary = build_manifest(
        DataBuildConfig(
            out=out,
            sources={"fracatlas": DATA / "fracatlas", "yolo": DATA / "bone_fracture_yolo"},
            seed=0,
            progress=False,
        )
    )
    return (*_load(out), summary)


@needs_data
def test_fracatlas_every_file_accounted_for(fracatlas_build: tuple) -> None:
    df, q, summary = fracatlas_build
    on_disk = {
        str(p.resolve())
        for p in (DATA / "fracatlas" / "images").rglob("*")
        if p.suffix.lower() == ".jpg"
    }
    assert len(on_disk) == 4083
    assert len(df) + len(q) == 4083
    assert set(df["path"]) | set(q["path"]) == on_disk
    assert not set(df["path"]) & set(q["path"])


@needs_data
def test_fracatlas_717_fractured(fracatlas_build: tuple) -> None:
    df, q, summary = fracatlas_build
    # 717 images sit in Fractured/ (label by folder, IMG0003298 included). The manifest holds
    # those that are neither label conflicts nor extra byte-identical copies.
    assert summary["sources"]["fracatlas"]["labels_found"] == {"1": 717, "0": 3366}
    fractured_in_q = q[q["label"].astype(int) == 1]
    assert int(df["label"].sum()) + len(fractured_in_q) == 717
    assert set(fractured_in_q["reason"]) <= {"label conflict", "exact duplicate"}
    assert summary["sources"]["fracatlas"]["report"]["boxes"] == 922


@needs_data
def test_fracatlas_59_truncated(fracatlas_build: tuple) -> None:
    df, q, summary = fracatlas_build
    trunc = q[q["reason"] == "truncated"]
    assert len(trunc) == 59
    assert all("/images/Non_fractured/" in p for p in trunc["path"])
    names = sorted(Path(p).name for p in trunc["path"])
    assert names[0] == "IMG0004028.jpg" and names[-1] == "IMG0004347.jpg"
    assert summary["quarantine_reasons"]["truncated"] == 59


@needs_data
def test_fracatlas_known_label_issues(fracatlas_build: tuple) -> None:
    df, q, summary = fracatlas_build
    rep = summary["sources"]["fracatlas"]["report"]
    assert [d["image_id"] for d in rep["label_disagreements"]] == ["IMG0003298.jpg"]
    assert summary["duplicates"]["exact_all_files"]["groups"] == 12
    assert summary["duplicates"]["exact_all_files"]["files"] == 27
    conflict = set(q[q["reason"] == "label conflict"]["image_id"])
    assert {"IMG0002886.jpg", "IMG0004243.jpg"} <= conflict
    # pixel confirmation keeps groups tiny: pHash alone would chain thousands of pairs
    assert summary["duplicates"]["near"]["phash_candidate_pairs"] > 2000
    assert summary["duplicates"]["groups"]["max_group_size"] <= 10


@needs_data
def test_fracatlas_split_grouped_and_stratified(fracatlas_build: tuple) -> None:
    df, q, summary = fracatlas_build
    assert (df.groupby("group")["split"].nunique() == 1).all()
    overall = df["label"].mean()
    for split, ratio in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        part = df[df["split"] == split]
        assert abs(part["label"].mean() - overall) <= 0.02
        assert abs(len(part) / len(df) - ratio) <= 0.02
    assert set(df["region"]) <= {"hand", "leg", "hip", "shoulder", "mixed", ""}
    assert set(df["hardware"].astype(int)) == {0, 1}


@needs_data
def test_combined_roboflow_siblings_never_straddle_splits(combined_build: tuple) -> None:
    df, q, summary = combined_build
    yolo = df[df["source"] == "yolo"].copy()
    yolo["stem"] = [roboflow_stem(p) for p in yolo["path"]]
    assert (yolo["stem"] != "").all()
    assert (yolo.groupby("stem")["split"].nunique() == 1).all()
    assert (yolo.groupby("stem")["group"].nunique() == 1).all()
    assert (df.groupby("group")["split"].nunique() == 1).all()
    # every YOLO image is in the manifest or the quarantine (all have label files)
    assert summary["sources"]["yolo"]["images_found"] == 4148
    assert (df["source"] == "yolo").sum() + (q["source"] == "yolo").sum() == 4148
    # a stem whose copies disagree on the label is a conflict: none of it stays
    q_yolo = q[q["source"] == "yolo"]
    assert set(q_yolo["reason"]) <= {"label conflict", "exact duplicate"}
    assert not {roboflow_stem(p) for p in q_yolo["path"]} & set(yolo["stem"])
    mapping = summary["sources"]["yolo"]["report"]["class_mapping"]
    assert [n for n, m in mapping.items() if not m["fracture"]] == ["humerus"]
    assert summary["duplicates"]["groups"]["max_group_size"] <= 20
    assert len(df) + len(q) == 4083 + 4148
