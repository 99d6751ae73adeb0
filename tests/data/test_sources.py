"""Data sources: FracAtlas, YOLO detection folders, image folders, DICOM.

Also home of the synthetic-source builders the other data tests import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bonefrac.data.sources import (
    parse_class_map,
    parse_yolo_line,
    read_dicom_dir,
    read_folder,
    read_fracatlas,
    read_yolo,
    region_from_class_name,
    roboflow_stem,
)
from bonefrac.errors import DataError

# ----------------------------------------------------------------------------- builders


def radiograph(seed: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A distinct smooth 'radiograph' per seed (uint8 HxW): no two seeds look alike."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8))
    w, h = size
    img = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(arr: np.ndarray, path: Path, *, rgb: bool = False, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if rgb:
        img = img.convert("RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=quality)
    else:
        img.save(path)
    return path


FRACATLAS_HEADER = (
    "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,"
    "frontal,lateral,oblique"
)


def make_fracatlas(root: Path, n_fractured: int = 4, n_normal: int = 6, seed0: int = 0) -> Path:
    """A FracAtlas-shaped folder.

    IMG0000000 (fractured): hand, frontal, hardware, one box; dataset.csv says fractured=0
    (the IMG0003298 case). IMG0000001 (fractured): hand+leg -> 'mixed', frontal+lateral,
    two boxes. Other fractured: leg, lateral, one box. Normals alternate hand/leg, oblique,
    with empty label files.
    """
    rows = [FRACATLAS_HEADER]
    ann = root / "Annotations" / "YOLO"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "labels.txt").write_text("fractured\n")
    for i in range(n_fractured + n_normal):
        fractured = i < n_fractured
        name = f"IMG{i:07d}.jpg"
        folder = "Fractured" if fractured else "Non_fractured"
        save(radiograph(seed0 + i), root / "images" / folder / name, rgb=i % 2 == 0)
        hand, leg, mixed, hw, front, lat, obl = 0, 1, 0, 0, 0, 1, 0
        lines = []
        if fractured:
            lines = [f"0 0.{i + 1}5 0.5 0.1 0.2"]
        if i == 0:
            hand, leg, hw, front, lat = 1, 0, 1, 1, 0
        elif i == 1:
            hand, leg, mixed, front, lat = 1, 1, 1, 1, 1
            lines.append("0 0.3 0.3 0.05 0.05")
        elif not fractured:
            hand, leg, front, lat, obl = i % 2, 1 - i % 2, 0, 0, 1
        csv_fractured = 0 if i == 0 else int(fractured)
        rows.append(
            f"{name},{hand},{leg},0,0,{mixed},{hw},0,{csv_fractured},{len(lines)},"
            f"{front},{lat},{obl}"
        )
        (ann / f"IMG{i:07d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    (root / "dataset.csv").write_text("\n".join(rows) + "\n")
    return root


YOLO_NAMES = [
    "elbow positive",
    "fingers positive",
    "forearm fracture",
    "humerus fracture",
    "humerus",
    "shoulder fracture",
    "wrist positive",
]

#: (split dir, file stem, label-file content or None for no label file)
YOLO_FILES: list[tuple[str, str, str | None]] = [
    # box line, wrist positive -> fractured, region wrist
    ("train", "a_jpg.rf.0123456789abcdef0123456789abcdef", "6 0.5 0.5 0.2 0.2\n"),
    # polygon, elbow positive -> fractured, region elbow; sibling of the one above? no: stem b
    ("train", "b_png.rf.11111111111111111111111111111111", "0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n"),
    # 'humerus' only (not a fracture class) -> not fractured, region humerus, no boxes
    ("train", "c_png.rf.22222222222222222222222222222222", "4 0.5 0.5 0.4 0.4\n"),
    # empty label file -> not fractured
    ("valid", "d_png.rf.33333333333333333333333333333333", ""),
    # two classes: forearm fracture + humerus -> fractured, region mixed, one box
    (
        "valid",
        "e_png.rf.44444444444444444444444444444444",
        "2 0.5 0.5 0.2 0.2\n4 0.2 0.2 0.1 0.1\n",
    ),
    # no label file -> left out unless --unlabelled-negative
    ("test", "f_png.rf.55555555555555555555555555555555", None),
    # Roboflow sibling of a_jpg in another split (same source stem)
    ("test", "a_jpg.rf.66666666666666666666666666666666", "6 0.52 0.5 0.2 0.2\n"),
]


def make_yolo(root: Path, seed0: int = 100, valid_name: str = "valid") -> Path:
    """A YOLO-shaped folder (Roboflow style) whose yaml ``path:`` points nowhere."""
    root.mkdir(parents=True, exist_ok=True)
    names = ", ".join(f"'{n}'" for n in YOLO_NAMES)
    (root / "data.yaml").write_text(
        "path: /nonexistent/machine/BoneFractureYolo8\n"
        f"train: ../train/images\nval: ../{valid_name}/images\ntest: test/images\n"
        f"nc: {len(YOLO_NAMES)}\nnames: [{names}]\n"
    )
    for k, (split, stem, content) in enumerate(YOLO_FILES):
        split = valid_name if split == "valid" else split
        seed = seed0 if stem.startswith("a_jpg") else seed0 + k
        arr = radiograph(seed)
        if k == len(YOLO_FILES) - 1:
            arr = np.ascontiguousarray(arr[:, ::-1])  # augmentation: flipped copy
        save(arr, root / split / "images" / f"{stem}.jpg")
        if content is not None:
            label = root / split / "labels" / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(content)
    return root


# ----------------------------------------------------------------------------- FracAtlas


def test_fracatlas_labels_regions_boxes_and_disagreement(tmp_path: Path) -> None:
    root = make_fracatlas(tmp_path / "fracatlas")
    scan = read_fracatlas(root)
    recs = {r.image_id: r for r in scan.records}
    assert len(recs) == 10
    assert sum(r.label for r in recs.values()) == 4
    assert all(r.source == "fracatlas" for r in recs.values())
    assert all(r.path.is_absolute() for r in recs.values())

    r0, r1, r2, r5 = (recs[f"IMG000000{i}.jpg"] for i in (0, 1, 2, 5))
    assert (r0.label, r0.region, r0.view, r0.extra["hardware"]) == (1, "hand", "frontal", 1)
    assert r0.boxes == [[0.15, 0.5, 0.1, 0.2]]
    assert (r1.region, r1.view, len(r1.boxes)) == ("mixed", "frontal+lateral", 2)
    assert (r2.region, r2.view, r2.extra["hardware"]) == ("leg", "lateral", 0)
    assert (r5.label, r5.region, r5.view, r5.boxes) == (0, "hand", "oblique", [])

    rep = scan.report
    assert rep["n_label_disagreements"] == 1
    (d,) = rep["label_disagreements"]
    assert d["image_id"] == "IMG0000000.jpg"
    assert (d["folder_label"], d["csv_fractured"], d["n_boxes"], d["label_used"]) == (1, 0, 1, 1)
    assert rep["boxes"] == 5
    assert rep["box_label_mismatches"] == []


def test_fracatlas_missing_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="figshare"):
        read_fracatlas(tmp_path)


# ----------------------------------------------------------------------------- YOLO


def test_parse_yolo_box_and_polygon() -> None:
    assert parse_yolo_line("3 0.5 0.4 0.2 0.1") == (3, [0.5, 0.4, 0.2, 0.1])
    cls, box = parse_yolo_line("1 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6")
    assert cls == 1
    assert box == pytest.approx([0.2, 0.4, 0.2, 0.4])
    assert parse_yolo_line("   ") is None
    with pytest.raises(ValueError):
        parse_yolo_line("0 0.1 0.2 0.3")


@pytest.mark.parametrize("valid_name", ["valid", "val"])
def test_yolo_labels_boxes_regions_and_mapping(tmp_path: Path, valid_name: str) -> None:
    root = make_yolo(tmp_path / "yolo", valid_name=valid_name)
    scan = read_yolo(root)
    recs = {
        Path(r.image_id).name.split(".rf.")[0] + "/" + r.image_id.split("/")[0]: r
        for r in scan.records
    }
    assert len(scan.records) == 6  # f has no label file: left out
    assert sorted(recs) == [
        "a_jpg/test",
        "a_jpg/train",
        "b_png/train",
        "c_png/train",
        f"d_png/{valid_name}",
        f"e_png/{valid_name}",
    ]
    a, b, c = recs["a_jpg/train"], recs["b_png/train"], recs["c_png/train"]
    d, e = recs[f"d_png/{valid_name}"], recs[f"e_png/{valid_name}"]
    assert (a.label, a.region, a.boxes) == (1, "wrist", [[0.5, 0.5, 0.2, 0.2]])
    assert (b.label, b.region) == (1, "elbow")
    assert b.boxes == [pytest.approx([0.2, 0.4, 0.2, 0.4])]
    assert (c.label, c.region, c.boxes) == (0, "humerus", [])
    assert (d.label, d.region, d.boxes) == (0, "", [])
    assert (e.label, e.region, len(e.boxes)) == (1, "mixed", 1)
    assert a.link_key == recs["a_jpg/test"].link_key == "rf:a_jpg"
    assert a.extra["source_split"] == "train" and d.extra["source_split"] == "val"

    rep = scan.report
    mapping = rep["class_mapping"]
    assert [n for n, m in mapping.items() if m["fracture"]] == [
        n for n in YOLO_NAMES if n != "humerus"
    ]
    assert mapping["humerus"]["fracture"] is False
    assert mapping["fingers positive"]["region"] == "hand"
    assert "fracture" in rep["fracture_rule"] and "positive" in rep["fracture_rule"]
    assert rep["n_unlabelled_left_out"] == 1
    assert rep["unlabelled_left_out"][0].endswith("f_png.rf.55555555555555555555555555555555.jpg")
    assert rep["object_counts"]["humerus"] == 2


def test_yolo_unlabelled_negative_and_custom_classes(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "yolo")
    scan = read_yolo(root, unlabelled_negative=True, fracture_classes=["humerus"])
    assert len(scan.records) == 7
    labels = {r.path.name.split(".rf.")[0]: r.label for r in scan.records}
    # only 'humerus' counts now: c and e are fractured, a/b are not
    assert labels == {"a_jpg": 0, "b_png": 0, "c_png": 1, "d_png": 0, "e_png": 1, "f_png": 0}
    assert scan.report["class_mapping"]["humerus"]["fracture"] is True
    assert scan.report["unlabelled_policy"] == "negative"
    with pytest.raises(DataError, match="not in the yaml"):
        read_yolo(root, fracture_classes=["tibia fracture"])


def test_yolo_without_yaml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.yaml"):
        read_yolo(tmp_path)


def test_region_and_stem_helpers() -> None:
    assert region_from_class_name("wrist positive") == "wrist"
    assert region_from_class_name("fingers positive") == "hand"
    assert region_from_class_name("something") == ""
    assert roboflow_stem("x/IMG_1_jpg.rf.0123456789abcdef0123456789abcdef.jpg") == "IMG_1_jpg"
    assert roboflow_stem("IMG0000001.jpg") == ""


# ----------------------------------------------------------------------------- folders + DICOM


def write_dicom(path: Path, arr: np.ndarray, suffix_less: bool = False) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (arr.astype(np.uint16) * 16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_folder(root: Path, seed0: int = 500) -> Path:
    save(radiograph(seed0), root / "fractured" / "x1.png")
    save(radiograph(seed0 + 1), root / "fractured" / "x2.jpg")
    save(radiograph(seed0 + 2), root / "Not Fractured" / "y1.png")
    write_dicom(root / "normal" / "series" / "IM0001", radiograph(seed0 + 3))  # DICM magic only
    write_dicom(root / "normal" / "z.dcm", radiograph(seed0 + 4))
    (root / "normal" / "notes.txt").write_text("not an image and not a candidate")
    return root


def test_folder_source_default_map_and_dicom(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mura")
    scan = read_folder(root)
    labels = {r.image_id: r.label for r in scan.records}
    assert labels == {
        "Not Fractured/y1.png": 0,
        "fractured/x1.png": 1,
        "fractured/x2.jpg": 1,
        "normal/series/IM0001": 0,
        "normal/z.dcm": 0,
    }
    assert scan.name == "folder:mura"
    assert scan.report["class_mapping"] == {"Not Fractured": 0, "fractured": 1, "normal": 0}
    assert scan.report["dicom_files"] == 2

    dicom = read_dicom_dir(root)
    assert sorted(r.image_id for r in dicom.records) == ["normal/series/IM0001", "normal/z.dcm"]


def test_folder_unknown_class_needs_a_map(tmp_path: Path) -> None:
    save(radiograph(1), tmp_path / "broken" / "a.png")
    save(radiograph(2), tmp_path / "intact" / "b.png")
    with pytest.raises(DataError, match="broken"):
        read_folder(tmp_path)
    scan = read_folder(tmp_path, class_map="broken=1,intact=0")
    assert {r.image_id: r.label for r in scan.records} == {"broken/a.png": 1, "intact/b.png": 0}
    with pytest.raises(DataError):
        parse_class_map("broken=2")
