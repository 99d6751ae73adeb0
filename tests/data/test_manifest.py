"""Manifest build: counts, columns, quarantine of corrupt files, overwrite guard, report, CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.config import DataBuildConfig
from bonefrac.data.manifest import build_manifest
from bonefrac.data.probe import probe_image
from bonefrac.data.report import report
from bonefrac.data.schema import MANIFEST_COLUMNS, parse_boxes, path_image_ids, read_manifest
from bonefrac.errors import DataError
from tests.data.test_sources import make_folder, make_fracatlas, make_yolo, radiograph, save


def _corrupt_files(folder: Path) -> dict[str, str]:
    """Write one file per kind of corruption; returns file name -> expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(radiograph(900, (256, 256))).save(buf, "JPEG", quality=95)
    (folder / "IMG9000001.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "IMG9000002.jpg").write_bytes(b"")
    (folder / "IMG9000003.jpg").write_text("this is a text file, not a radiograph\n")
    buf = io.BytesIO()
    Image.fromarray(radiograph(901)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    idat = png.find(b"IDAT")
    length = int.from_bytes(png[idat - 4 : idat], "big")
    png[idat + 4 + length] ^= 0xFF  # flip a byte of the IDAT CRC (Pillow alone decodes it)
    (folder / "IMG9000004.png").write_bytes(bytes(png))
    return {
        "IMG9000001.jpg": "truncated",
        "IMG9000002.jpg": "zero bytes",
        "IMG9000003.jpg": "not an image",
        "IMG9000004.png": "bad checksum",
    }


@pytest.fixture(scope="module")
def combined(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, str]]:
    base = tmp_path_factory.mktemp("combined")
    fa = make_fracatlas(base / "fracatlas")
    corrupt = _corrupt_files(fa / "images" / "Non_fractured")
    yolo = make_yolo(base / "yolo")
    folder = make_folder(base / "mura")
    out = base / "out"
    summary = build_manifest(
        DataBuildConfig(
            out=out,
            sources={"fracatlas": fa, "yolo": yolo, "folder": [folder]},
            seed=3,
            progress=False,
        )
    )
    return out, summary, corrupt


def test_counts_labels_and_columns(combined: tuple[Path, dict, dict[str, str]]) -> None:
    out, summary, corrupt = combined
    df = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert list(df.columns) == MANIFEST_COLUMNS + ["hardware", "source_split"]
    read_manifest(out / "manifest.csv", require_split=True)  # the shared reader accepts it
    by_source = df.groupby("source")["label"].agg(["count", "sum"]).to_dict("index")
    assert by_source == {
        "fracatlas": {"count": 10, "sum": 4},
        "yolo": {"count": 6, "sum": 4},  # f_png has no label file: left out
        "folder:mura": {"count": 5, "sum": 2},
    }
    assert set(df["split"]) <= {"train", "val", "test"}
    assert set(df["label"]) == {0, 1}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df["group"].astype(str).str.len().gt(0).all()
    assert df["image_id"].is_unique
    assert (df["width"] > 0).all() and df["sha1"].str.len().eq(40).all()
    assert df["phash"].str.len().eq(16).all()

    fa = df[df.source == "fracatlas"].set_index("image_id")
    assert parse_boxes(fa.loc["IMG0000001.jpg", "boxes"]) == [
        [0.25, 0.5, 0.1, 0.2],
        [0.3, 0.3, 0.05, 0.05],
    ]
    assert parse_boxes(fa.loc["IMG0000005.jpg", "boxes"]) == []
    assert str(fa.loc["IMG0000000.jpg", "hardware"]) == "1"
    assert fa.loc["IMG0000001.jpg", "region"] == "mixed"
    yolo = df[df.source == "yolo"]
    assert (yolo["hardware"].astype(str) == "").all()
    assert (df[df.source == "fracatlas"]["source_split"].astype(str) == "").all()
    # the DICOM files were decoded and kept
    mura = df[df.source == "folder:mura"]
    assert {"normal/series/IM0001", "normal/z.dcm"} <= set(mura["image_id"])

    counts = summary["counts"]
    assert counts["images_found"] == 10 + 4 + 6 + 5
    assert counts["manifest_rows"] == len(df) == 21
    assert counts["quarantined"] == 4
    fa_rep = summary["sources"]["fracatlas"]["report"]
    assert fa_rep["n_label_disagreements"] == 1
    assert fa_rep["label_disagreements"][0]["image_id"] == "IMG0000000.jpg"
    yrep = summary["sources"]["yolo"]["report"]
    assert yrep["class_mapping"]["humerus"]["fracture"] is False
    assert yrep["n_unlabelled_left_out"] == 1
    assert summary["extra_columns"] == ["hardware", "source_split"]
    assert summary["timing"]["images_per_second"] > 0
    assert "policy" in summary["duplicates"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["counts"] == counts


def test_corrupt_files_are_quarantined_with_reason(
    combined: tuple[Path, dict, dict[str, str]],
) -> None:
    out, summary, corrupt = combined
    q = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    assert {"path", "reason", "detail", "source"} <= set(q.columns)
    got = {Path(p).name: r for p, r in zip(q["path"], q["reason"], strict=True)}
    assert got == corrupt
    assert set(q["source"]) == {"fracatlas"}
    assert summary["quarantine_reasons"] == {r: 1 for r in corrupt.values()}
    df = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert not set(q["path"]) & set(df["path"])
    # FracAtlas: manifest + quarantine hold every file of the source once
    fa_paths = set(df[df.source == "fracatlas"]["path"]) | set(q[q.source == "fracatlas"]["path"])
    assert len(fa_paths) == 14


def test_probe_image_reasons(tmp_path: Path) -> None:
    corrupt = _corrupt_files(tmp_path)
    for name, reason in corrupt.items():
        p = probe_image(tmp_path / name)
        assert not p.ok and p.reason == reason, (name, p)
    p = probe_image(tmp_path / "missing.jpg")
    assert (p.ok, p.reason) == (False, "unreadable")
    ok = probe_image(save(radiograph(1), tmp_path / "fine.png"))
    assert ok.ok and (ok.width, ok.height) == (96, 80) and ok.thumb is not None


def test_exact_duplicates_keep_one_copy(tmp_path: Path) -> None:
    arr = radiograph(42)
    a = save(arr, tmp_path / "src" / "normal" / "a.png")
    (tmp_path / "src" / "normal" / "b.png").write_bytes(a.read_bytes())
    save(radiograph(43), tmp_path / "src" / "fractured" / "c.png")
    summary = build_manifest(
        DataBuildConfig(
            out=tmp_path / "out", sources={"folder": [tmp_path / "src"]}, progress=False
        )
    )
    df = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    q = pd.read_csv(tmp_path / "out" / "quarantine.csv", keep_default_na=False)
    assert sorted(df["image_id"]) == ["fractured/c.png", "normal/a.png"]
    assert list(q["reason"]) == ["exact duplicate"]
    assert q["detail"][0] == f"duplicate of {a.resolve()}"
    assert q["group"][0] == df.set_index("image_id").loc["normal/a.png", "group"]
    assert summary["duplicates"]["exact"]["groups"] == 1
    assert summary["duplicates"]["exact_copies_quarantined"] == 1


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    make_folder(tmp_path / "src")
    build_manifest(
        DataBuildConfig(
            out=tmp_path / "out", sources={"folder": [tmp_path / "src"]}, progress=False
        )
    )
    with pytest.raises(DataError, match="--force"):
        build_manifest(
            DataBuildConfig(
                out=tmp_path / "out", sources={"folder": [tmp_path / "src"]}, progress=False
            )
        )
    build_manifest(
        DataBuildConfig(
            out=tmp_path / "out", sources={"folder": [tmp_path / "src"]}, progress=False, force=True
        )
    )
    with pytest.raises(DataError, match="no data source"):
        build_manifest(DataBuildConfig(out=tmp_path / "other", progress=False))


def test_pool_decoding_matches_in_process(tmp_path: Path) -> None:
    from bonefrac.data import probe as m

    paths = [save(radiograph(i, (40, 40)), tmp_path / f"{i}.png") for i in range(12)]
    paths.append(tmp_path / "bad.png")
    paths[-1].write_bytes(b"nope")
    one = m.probe_images(paths, workers=1, progress=False)
    old = m.POOL_MIN_IMAGES
    m.POOL_MIN_IMAGES = 1
    try:
        two = m.probe_images(paths, workers=2, progress=False)
    finally:
        m.POOL_MIN_IMAGES = old
    assert [(p.path, p.ok, p.sha1, p.phash, p.reason) for p in one] == [
        (p.path, p.ok, p.sha1, p.phash, p.reason) for p in two
    ]


def test_report_tables_and_png(combined: tuple[Path, dict, dict[str, str]]) -> None:
    out, _, _ = combined
    from rich.console import Console

    console = Console(record=True, width=140)
    res = report(out, console=console)
    text = console.export_text()
    assert "quarantine: 4 files" in text and "truncated" in text and "label" in text
    assert sum(sum(v.values()) for v in res["split_label"].values()) == 21
    assert res["groups"]["groups_straddling_splits"] == 0
    png = out / "class_balance.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report(out / "manifest.csv", console=console, plot=False)["plot"] is None
    with pytest.raises(DataError):
        report(out / "nowhere")


def test_cli_build_and_report(tmp_path: Path) -> None:
    fa = make_fracatlas(tmp_path / "fracatlas")
    yolo = make_yolo(tmp_path / "yolo")
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["data", "build", "--fracatlas", str(fa), "--yolo", str(yolo), "--seed", "1"]
    args += ["--unlabelled-negative", "--fracture-classes", "wrist positive,elbow positive"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert (df.source == "yolo").sum() == 7
    summary = json.loads((out / "summary.json").read_text())
    mapping = summary["sources"]["yolo"]["report"]["class_mapping"]
    assert [n for n, v in mapping.items() if v["fracture"]] == ["elbow positive", "wrist positive"]

    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output
    res = runner.invoke(
        app, [*args, "--out", str(out), "--force", "--freeze-split", str(out / "manifest.csv")]
    )
    assert res.exit_code == 0, res.output
    df2 = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert df2.set_index("path")["split"].to_dict() == df.set_index("path")["split"].to_dict()

    res = runner.invoke(app, ["data", "report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "class_balance.png").is_file()
    res = runner.invoke(app, ["data", "report", str(tmp_path / "missing")])
    assert res.exit_code == 2


def test_dicom_dir_option(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "mura")
    summary = build_manifest(
        DataBuildConfig(out=tmp_path / "out", sources={"dicom_dir": [folder]}, progress=False)
    )
    assert summary["counts"]["manifest_rows"] == 2
    assert summary["counts"]["by_source"] == {"dicom:mura": 2}


def test_synthetic_images_are_distinct() -> None:
    # radiograph() images of different seeds are not near duplicates of each other
    a, b = radiograph(1).astype(float), radiograph(2).astype(float)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.9


def test_path_image_ids_stay_unique_across_folders(tmp_path: Path) -> None:
    # the same base name in two folders: ids relative to the common root, POSIX separators
    assert path_image_ids(["/d/test/fractured/0.png", "/d/val/fractured/0.png"]) == [
        "test/fractured/0.png",
        "val/fractured/0.png",
    ]
    assert path_image_ids(["/d/a.png", "/d/b.png"]) == ["a.png", "b.png"]  # one folder: names
    assert path_image_ids(["/d/x/only.png"]) == ["only.png"]
    assert path_image_ids([]) == []
    csv = tmp_path / "plain.csv"
    pd.DataFrame({"path": ["test/f/0.png", "val/f/0.png"], "label": [1, 1]}).to_csv(
        csv, index=False
    )
    assert read_manifest(csv)["image_id"].tolist() == ["test/f/0.png", "val/f/0.png"]
