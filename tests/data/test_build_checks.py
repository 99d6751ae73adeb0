"""data build: warnings, unwritable --out, all-bad builds, box clipping, the duplicate policy."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.config import DataBuildConfig
from bonefrac.data.boxes import clean_boxes
from bonefrac.data.dedup import resolve_duplicates
from bonefrac.data.manifest import build_manifest
from bonefrac.data.schema import parse_boxes, read_manifest
from bonefrac.errors import DataError
from bonefrac.system import usable_cpus
from tests.data.test_sources import make_fracatlas, radiograph, save


def _two_class_folder(root: Path, seed0: int = 700) -> Path:
    save(radiograph(seed0), root / "fractured" / "a.png")
    save(radiograph(seed0 + 1), root / "fractured" / "b.png")
    save(radiograph(seed0 + 2), root / "normal" / "c.png")
    save(radiograph(seed0 + 3), root / "normal" / "d.png")
    return root


# ----------------------------------------------------------------------------- boxes


def test_clean_boxes_keeps_inside_clips_outside_drops_empty() -> None:
    inside = [0.5, 0.5, 0.2, 0.4]
    edge = [0.7, 0.5, 0.6, 1.0]  # touches x = 1 and y = 0, 1 (float rounding tolerated)
    boxes, notes = clean_boxes([inside, edge])
    assert boxes == [inside, edge] and notes == []

    boxes, notes = clean_boxes([[0.95, 0.5, 0.2, 0.2], [-0.1, -0.1, 0.4, 0.4]])
    assert boxes == [[0.925, 0.5, 0.15, 0.2], [0.05, 0.05, 0.1, 0.1]]
    assert len(notes) == 2 and all("clipped" in n for n in notes)

    bad = [[0.5, 0.5, 0.0, 0.2], [0.5, 0.5, 0.2, -0.1], [1.5, 0.5, 0.2, 0.2]]
    bad += [[0.5, float("nan"), 0.1, 0.1], [0.5, 0.5], "box", [0.5, 0.5, "w", 0.1]]
    boxes, notes = clean_boxes(bad)
    assert boxes == [] and len(notes) == len(bad) and all("dropped" in n for n in notes)
    # extra values after [cx, cy, w, h] (e.g. a score) survive clipping
    assert clean_boxes([[1.0, 0.5, 0.2, 0.2, 0.9]])[0] == [[0.95, 0.5, 0.1, 0.2, 0.9]]


def test_build_clips_source_boxes_with_a_warning(tmp_path: Path) -> None:
    fa = make_fracatlas(tmp_path / "fracatlas")
    ann = fa / "Annotations" / "YOLO"
    (ann / "IMG0000002.txt").write_text("0 0.95 0.5 0.2 0.2\n")  # reaches past the right edge
    (ann / "IMG0000003.txt").write_text("0 0.5 0.5 0.0 0.2\n0 0.4 0.4 0.1 0.1\n")  # zero area
    summary = build_manifest(
        DataBuildConfig(out=tmp_path / "out", sources={"fracatlas": fa}, progress=False)
    )
    df = read_manifest(tmp_path / "out" / "manifest.csv").set_index("image_id")
    assert parse_boxes(df.loc["IMG0000002.jpg", "boxes"]) == [[0.925, 0.5, 0.15, 0.2]]
    assert parse_boxes(df.loc["IMG0000003.jpg", "boxes"]) == [[0.4, 0.4, 0.1, 0.1]]
    box_warnings = [w for w in summary["warnings"] if "box" in w]
    assert len(box_warnings) == 2
    assert "IMG0000002.jpg" in box_warnings[0] and "clipped" in box_warnings[0]
    assert "IMG0000003.jpg" in box_warnings[1] and "zero area" in box_warnings[1]


def test_read_manifest_clips_bad_boxes_and_refuses_bad_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = tmp_path / "m.csv"
    rows = {
        "path": ["a.png", "b.png", "c.png", "d.png"],
        "label": [1, 1, 0, 1],
        "boxes": ["[[1.1, 0.5, 0.4, 0.2]]", "[[0.5, 0.5, 0, 0.3]]", "", "[[0.5,0.5,1,1]]"],
    }
    pd.DataFrame(rows).to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="bonefrac.data.schema"):
        df = read_manifest(csv)
    assert [parse_boxes(v) for v in df["boxes"]] == [
        [[0.95, 0.5, 0.1, 0.2]],
        [],
        [],
        [[0.5] * 2 + [1] * 2],
    ]
    assert df["boxes"][3] == "[[0.5,0.5,1,1]]"  # untouched cells keep their text
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "a.png" in messages[0] and "b.png" in messages[1]

    rows["boxes"][2] = "[[0.5, 0.5"
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"m\.csv: row of .*c\.png: column 'boxes'"):
        read_manifest(csv)
    rows["boxes"][2] = "0.5"
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(DataError, match="JSON list"):
        read_manifest(csv)


# ----------------------------------------------------------------------------- warnings


def test_empty_class_folder_and_one_class_result_warn(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(radiograph(1), src / "fractured" / "a.png")
    save(radiograph(2), src / "fractured" / "b.png")
    (src / "normal").mkdir()
    summary = build_manifest(
        DataBuildConfig(out=tmp_path / "out", sources={"folder": [src]}, progress=False)
    )
    warnings = summary["warnings"]
    assert len(warnings) == 2
    assert str(src / "normal") in warnings[0] and "no images" in warnings[0]
    assert "every image is labelled 1" in warnings[1]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["warnings"] == warnings
    assert summary["sources"]["folder:src"]["report"]["empty_class_folders"] == ["normal"]


def test_a_clean_two_class_build_has_no_warnings(tmp_path: Path) -> None:
    src = _two_class_folder(tmp_path / "src")
    assert (
        build_manifest(
            DataBuildConfig(out=tmp_path / "out", sources={"folder": [src]}, progress=False)
        )["warnings"]
        == []
    )


def test_source_with_every_image_quarantined_warns(tmp_path: Path) -> None:
    good = _two_class_folder(tmp_path / "good")
    bad = tmp_path / "bad"
    (bad / "fractured").mkdir(parents=True)
    (bad / "fractured" / "x.png").write_bytes(b"not a png")
    (bad / "normal").mkdir()
    (bad / "normal" / "y.jpg").write_bytes(b"")
    summary = build_manifest(
        DataBuildConfig(out=tmp_path / "out", sources={"folder": [good, bad]}, progress=False)
    )
    [warning] = [w for w in summary["warnings"] if "quarantined" in w]
    assert warning.startswith(f"{bad}: all 2 images of source 'folder:bad'")
    assert summary["counts"]["manifest_rows"] == 4


def test_all_bad_build_fails_clearly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "fractured").mkdir(parents=True)
    (src / "fractured" / "x.png").write_bytes(b"not a png")
    (src / "normal").mkdir()
    (src / "normal" / "y.jpg").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="none of the 2 images is usable") as info:
        build_manifest(DataBuildConfig(out=out, sources={"folder": [src]}, progress=False))
    assert str(out / "quarantine.csv") in str(info.value)
    assert len(pd.read_csv(out / "quarantine.csv")) == 2
    assert not (out / "manifest.csv").exists()

    res = CliRunner().invoke(app, ["data", "build", "--folder", str(src), "--out", str(out)])
    assert res.exit_code == 2 and "none of the 2 images is usable" in res.output
    assert "Traceback" not in res.output


def test_cli_unwritable_out_is_one_line_exit_2(tmp_path: Path) -> None:
    src = _two_class_folder(tmp_path / "src")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    targets = [blocker / "out"]  # a file as parent: fails even for root
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        targets.append(locked / "out")
    for out in targets:
        res = CliRunner().invoke(app, ["data", "build", "--folder", str(src), "--out", str(out)])
        assert res.exit_code == 2, res.output
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(out) in errors[0] and "--out" in errors[0]
        assert "Traceback" not in res.output


def test_cli_prints_warning_count(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(radiograph(1), src / "fractured" / "a.png")
    res = CliRunner().invoke(app, ["data", "build", "--folder", str(src), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "1 warning(s)" in res.output


# ----------------------------------------------------------------------------- policy, CPUs


def test_resolve_duplicates_policy() -> None:
    # 0,1: byte-identical, same label -> keep the first path; 2,3: one group, labels differ
    decision = resolve_duplicates(
        labels=[0, 0, 1, 0, 1],
        paths=["/b.png", "/a.png", "/c.png", "/d.png", "/e.png"],
        sources=["s", "s", "s", "t", "s"],
        sha1s=["x", "x", "y", "z", "w"],
        group_ids=["g1", "g1", "g2", "g2", "g3"],
        conflict_units=["g1", "g1", "g2", "g2", "g3"],
    )
    assert decision.drop == {
        0: ("exact duplicate", "duplicate of /a.png"),
        2: ("label conflict", "group g2: 2 copies, 1 labelled fractured, 1 not"),
        3: ("label conflict", "group g2: 2 copies, 1 labelled fractured, 1 not"),
    }
    assert decision.exact_removed == 1
    assert decision.conflicts == [
        {
            "group": "g2",
            "size": 2,
            "sources": ["s", "t"],
            "members": [{"path": "/c.png", "label": 1}, {"path": "/d.png", "label": 0}],
        }
    ]


def test_usable_cpus_is_the_affinity_mask() -> None:
    n = usable_cpus()
    assert n >= 1
    if hasattr(os, "sched_getaffinity"):
        assert n == len(os.sched_getaffinity(0))
