"""Data sources: every source yields :class:`Record` objects of one shape.

Supported sources:

1. FracAtlas (``dataset.csv`` + ``images/Fractured`` / ``images/Non_fractured`` +
   ``Annotations/YOLO/*.txt``): label by folder, cross-checked against the csv.
2. A YOLO detection folder (``data.yaml`` + ``<split>/images`` + ``<split>/labels``): an image is
   fractured when its label file holds an object of a fracture class (box or polygon lines).
3. Plain image folders ``root/<class>/**`` with a class -> label map.
4. DICOM files (``.dcm`` or the ``DICM`` magic) anywhere inside the above.

Each reader returns a :class:`SourceScan`: the records plus a JSON-ready ``report`` (label
disagreements, class mapping, files left out) that the manifest build puts in summary.json,
and ``warnings`` (already logged) for the summary's warning list. :data:`SOURCE_KINDS` is the
registry (one entry per kind: option, help, reader); :func:`scan_sources` reads every source a
build's :class:`~bonefrac.config.DataBuildConfig` names.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bonefrac.data.imageio import is_candidate_image, is_dicom_file
from bonefrac.errors import ConfigError, DataError

if TYPE_CHECKING:
    from bonefrac.config import DataBuildConfig

log = logging.getLogger(__name__)

#: Roboflow names augmented copies ``<source stem>.rf.<hash>.<ext>``.
ROBOFLOW_RE = re.compile(r"^(?P<stem>.+)\.rf\.[0-9a-fA-F]{8,}$")

#: Default: a YOLO class counts as a fracture when its name contains one of these words.
DEFAULT_FRACTURE_WORDS = ("fracture", "positive")

#: Folder class name -> label defaults for plain image folders (compared case-insensitively,
#: with '-' and ' ' read as '_').
DEFAULT_CLASS_MAP: dict[str, int] = {
    "fractured": 1,
    "fracture": 1,
    "fractures": 1,
    "positive": 1,
    "abnormal": 1,
    "yes": 1,
    "1": 1,
    "not_fractured": 0,
    "non_fractured": 0,
    "nonfractured": 0,
    "unfractured": 0,
    "no_fracture": 0,
    "normal": 0,
    "negative": 0,
    "no": 0,
    "0": 0,
}

#: Words in a YOLO class name -> anatomical region (first match wins, in this order).
REGION_WORDS: tuple[tuple[str, str], ...] = (
    ("finger", "hand"),
    ("hand", "hand"),
    ("wrist", "wrist"),
    ("forearm", "forearm"),
    ("elbow", "elbow"),
    ("humerus", "humerus"),
    ("shoulder", "shoulder"),
    ("clavicle", "shoulder"),
    ("hip", "hip"),
    ("pelvis", "hip"),
    ("femur", "leg"),
    ("knee", "leg"),
    ("tibia", "leg"),
    ("fibula", "leg"),
    ("ankle", "leg"),
    ("foot", "leg"),
    ("leg", "leg"),
)

FRACATLAS_REGIONS = ("hand", "leg", "hip", "shoulder")
FRACATLAS_VIEWS = ("frontal", "lateral", "oblique")
YOLO_SPLIT_NAMES = ("train", "valid", "val", "test")


@dataclass
class Record:
    """One image from one source, before validation."""

    path: Path
    label: int
    source: str
    region: str = ""
    view: str = ""
    #: fracture boxes, normalised [cx, cy, w, h]
    boxes: list[list[float]] = field(default_factory=list)
    image_id: str = ""
    #: extra manifest columns (e.g. ``hardware`` for FracAtlas)
    extra: dict[str, Any] = field(default_factory=dict)
    #: records sharing a non-empty ``link_key`` (within one source) are one duplicate group,
    #: e.g. Roboflow augmentation siblings of one source image
    link_key: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path).resolve()
        self.label = int(self.label)
        if self.label not in (0, 1):
            raise ValueError(f"{self.path}: label must be 0 or 1, got {self.label}")
        if not self.image_id:
            self.image_id = self.path.name


@dataclass
class SourceScan:
    """What one source reader found: records plus a JSON-ready report for summary.json."""

    name: str
    kind: str
    root: Path
    records: list[Record]
    report: dict[str, Any] = field(default_factory=dict)
    #: problems worth a user's look (each already logged), e.g. an empty class folder
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def roboflow_stem(path: str | Path) -> str:
    """``foo_jpg.rf.0123abcd.jpg`` -> ``foo_jpg``; '' for names that are not Roboflow copies."""
    m = ROBOFLOW_RE.match(Path(path).stem)
    return m.group("stem") if m else ""


def parse_yolo_line(line: str) -> tuple[int, list[float]] | None:
    """One YOLO label line -> (class id, [cx, cy, w, h]); polygons become their bounding box.

    ``class cx cy w h`` is a box; ``class x1 y1 x2 y2 ...`` (3+ points) a polygon. Blank lines
    give ``None``; malformed lines raise ``ValueError``.
    """
    parts = line.split()
    if not parts:
        return None
    cls = int(float(parts[0]))
    vals = [float(v) for v in parts[1:]]
    if len(vals) == 4:
        cx, cy, w, h = vals
    elif len(vals) >= 6 and len(vals) % 2 == 0:
        xs, ys = vals[0::2], vals[1::2]
        x0, x1 = max(0.0, min(xs)), min(1.0, max(xs))
        y0, y1 = max(0.0, min(ys)), min(1.0, max(ys))
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    else:
        raise ValueError(f"expected 'class cx cy w h' or a polygon, got {len(vals)} numbers")
    return cls, [round(v, 6) for v in (cx, cy, w, h)]


def read_yolo_labels(path: str | Path) -> list[tuple[int, list[float]]]:
    """All objects of one YOLO label file (empty list for an empty file)."""
    path = Path(path)
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            obj = parse_yolo_line(line)
        except ValueError as exc:
            raise DataError(f"{path}:{i}: bad YOLO label line ({exc})") from exc
        if obj is not None:
            out.append(obj)
    return out


def scan_images(root: Path) -> list[Path]:
    """Candidate image files (known suffixes or DICOM) under ``root``, sorted, hidden skipped."""
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and is_candidate_image(p)
    ]
    return sorted(files)


def _norm_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def region_from_class_name(name: str) -> str:
    """Anatomical region read off a class name ('wrist positive' -> 'wrist'), '' if none."""
    low = name.lower()
    for word, region in REGION_WORDS:
        if word in low:
            return region
    return ""


# ----------------------------------------------------------------------------- FracAtlas


def read_fracatlas(root: str | Path, *, source: str = "fracatlas") -> SourceScan:
    """FracAtlas: label by folder, every disagreement with ``dataset.csv`` reported.

    Region comes from the hand/leg/hip/shoulder flags ('mixed' when the ``mixed`` flag or
    several region flags are set), view from frontal/lateral/oblique (joined with '+' for
    multi-view scans), boxes from ``Annotations/YOLO/<stem>.txt``; ``hardware`` becomes an
    extra manifest column.
    """
    root = Path(root).resolve()
    images = root / "images"
    folders = {"Fractured": 1, "Non_fractured": 0}
    if not images.is_dir() or not any((images / f).is_dir() for f in folders):
        raise DataError(
            f"{root}: not a FracAtlas folder (expected images/Fractured and images/Non_fractured);"
            " download it from figshare doi:10.6084/m9.figshare.22363012 and pass its root"
        )
    csv_path = root / "dataset.csv"
    meta: dict[str, dict[str, Any]] = {}
    if csv_path.is_file():
        import pandas as pd  # here, not at the top: the CLI imports the registry to parse

        df = pd.read_csv(csv_path)
        if "image_id" not in df.columns:
            raise DataError(f"{csv_path}: no 'image_id' column; is this FracAtlas's dataset.csv?")
        meta = {str(r["image_id"]): r for r in df.to_dict("records")}
    else:
        log.warning("%s: no dataset.csv; region/view/hardware unknown", root)
    yolo_dir = root / "Annotations" / "YOLO"

    records: list[Record] = []
    disagreements: list[dict[str, Any]] = []
    box_mismatch: list[dict[str, Any]] = []
    not_in_csv: list[str] = []
    seen_ids: set[str] = set()
    warnings: list[str] = []
    for folder, label in folders.items():
        d = images / folder
        found = scan_images(d) if d.is_dir() else []
        if not found:
            warnings.append(_warn_empty_class(d, label, missing=not d.is_dir()))
        for path in found:
            image_id = path.name
            seen_ids.add(image_id)
            row = meta.get(image_id)
            boxes: list[list[float]] = []
            label_file = yolo_dir / f"{path.stem}.txt"
            if label_file.is_file():
                boxes = [box for _, box in read_yolo_labels(label_file)]
            region = view = ""
            extra: dict[str, Any] = {"hardware": ""}
            if row is None:
                if meta:
                    not_in_csv.append(image_id)
            else:
                flags = [r for r in FRACATLAS_REGIONS if _flag(row.get(r))]
                if _flag(row.get("mixed")) or len(flags) > 1:
                    region = "mixed"
                elif flags:
                    region = flags[0]
                view = "+".join(v for v in FRACATLAS_VIEWS if _flag(row.get(v)))
                extra["hardware"] = int(_flag(row.get("hardware")))
                csv_label = int(_flag(row.get("fractured")))
                count = row.get("fracture_count")
                if csv_label != label:
                    disagreements.append(
                        {
                            "image_id": image_id,
                            "folder": folder,
                            "folder_label": label,
                            "csv_fractured": csv_label,
                            "csv_fracture_count": _int_or_none(count),
                            "n_boxes": len(boxes),
                            "label_used": label,
                        }
                    )
                if bool(boxes) != bool(label):
                    box_mismatch.append(
                        {"image_id": image_id, "folder_label": label, "n_boxes": len(boxes)}
                    )
            records.append(
                Record(
                    path=path,
                    label=label,
                    source=source,
                    region=region,
                    view=view,
                    boxes=boxes,
                    image_id=image_id,
                    extra=extra,
                )
            )
    missing_files = sorted(set(meta) - seen_ids)
    counts = Counter(r.label for r in records)
    report = {
        "kind": "fracatlas",
        "root": str(root),
        "images": len(records),
        "by_folder_label": {"1": counts.get(1, 0), "0": counts.get(0, 0)},
        "label_source": "folder (Fractured/ = 1, Non_fractured/ = 0)",
        "label_disagreements": disagreements,
        "n_label_disagreements": len(disagreements),
        "box_label_mismatches": box_mismatch,
        "images_not_in_csv": not_in_csv,
        "csv_rows_without_image": missing_files,
        "boxes": sum(len(r.boxes) for r in records),
    }
    for d in disagreements:
        log.warning(
            "FracAtlas label disagreement: %s is in %s/ but dataset.csv says fractured=%s",
            d["image_id"],
            d["folder"],
            d["csv_fractured"],
        )
    return SourceScan(
        name=source, kind="fracatlas", root=root, records=records, report=report, warnings=warnings
    )


def _warn_empty_class(
    folder: Path, label: int, *, missing: bool = False, what: str = "images"
) -> str:
    """Log and return the warning for a class folder without images."""
    state = "is missing" if missing else f"holds no {what}"
    msg = (
        f"{folder}: class folder (label {label}) {state}; add its images or check the source's"
        " layout"
    )
    log.warning("%s", msg)
    return msg


def _flag(value: Any) -> bool:
    try:
        return int(float(value)) == 1
    except (TypeError, ValueError):
        return False


def _int_or_none(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- YOLO


def _find_yaml(root: Path) -> Path:
    if root.is_file():
        return root
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("*.y*ml"))
    if found:
        return found[0]
    raise DataError(f"{root}: no data.yaml; a YOLO folder needs data.yaml with 'names'")


def _class_names(data: dict[str, Any], yaml_path: Path) -> dict[int, str]:
    names = data.get("names")
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    raise DataError(f"{yaml_path}: 'names' must be a list or a mapping of class names")


def _resolve_split_dir(base: Path, value: Any, split: str) -> Path | None:
    """Split image folder, relative to the yaml's folder whatever its ``path:`` says."""
    candidates: list[Path] = []
    if isinstance(value, str) and value:
        rel = Path(value)
        if not rel.is_absolute():
            candidates.append(base / rel)
            # Roboflow writes '../train/images' although the folder sits beside the yaml
            parts = [p for p in rel.parts if p not in ("..", ".")]
            if parts:
                candidates.append(base.joinpath(*parts))
        else:
            candidates.append(rel)
            candidates.append(base.joinpath(*rel.parts[-2:]))
    candidates.append(base / split / "images")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def _label_path(image: Path, images_dir: Path) -> Path:
    """YOLO convention: .../images/x.jpg -> .../labels/x.txt (last 'images' component)."""
    rel = image.relative_to(images_dir).with_suffix(".txt")
    if images_dir.name == "images":
        return images_dir.parent / "labels" / rel
    return images_dir / rel  # labels beside the images


def read_yolo(
    root: str | Path,
    *,
    fracture_classes: list[str] | None = None,
    unlabelled_negative: bool = False,
    source: str = "yolo",
) -> SourceScan:
    """A YOLO detection folder -> records (label 1 when a fracture-class object is present).

    ``fracture_classes``: class names (or ids) that count as fracture; default: names
    containing "fracture" or "positive". Images without a label file are left out and reported
    unless ``unlabelled_negative``. Boxes are those of fracture-class objects; region comes from
    the class names present (e.g. 'wrist positive' -> wrist; several -> 'mixed').
    """
    root = Path(root).resolve()
    if not root.exists():
        raise DataError(f"{root}: YOLO folder not found")
    yaml_path = _find_yaml(root)
    base = yaml_path.parent
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{yaml_path}: not valid YAML ({exc})") from exc
    names = _class_names(data, yaml_path)
    if fracture_classes:
        wanted = {c.strip().lower() for c in fracture_classes if c.strip()}
        known = {n.lower() for n in names.values()} | {str(i) for i in names}
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(
                f"{yaml_path}: --fracture-classes names {unknown} not in the yaml's classes "
                f"{list(names.values())}"
            )
        is_fracture = {i: (n.lower() in wanted or str(i) in wanted) for i, n in names.items()}
        rule = f"user list: {sorted(wanted)}"
    else:
        is_fracture = {
            i: any(w in n.lower() for w in DEFAULT_FRACTURE_WORDS) for i, n in names.items()
        }
        rule = "default: class name contains " + " or ".join(
            f"'{w}'" for w in DEFAULT_FRACTURE_WORDS
        )
    if not any(is_fracture.values()):
        raise DataError(
            f"{yaml_path}: no class counts as a fracture under {rule}; classes are "
            f"{list(names.values())} (choose them with --fracture-classes)"
        )
    class_region = {i: region_from_class_name(n) for i, n in names.items()}

    split_dirs: dict[str, Path] = {}
    for split in YOLO_SPLIT_NAMES:
        if split not in data and not (base / split / "images").is_dir():
            continue
        d = _resolve_split_dir(base, data.get(split), split)
        if d is None:
            log.warning("%s: split %r (%s) not found; skipped", yaml_path, split, data.get(split))
            continue
        if d in split_dirs.values():
            continue
        split_dirs["val" if split == "valid" else split] = d
    if not split_dirs:
        raise DataError(f"{yaml_path}: no split folder found (looked for train/valid/val/test)")

    records: list[Record] = []
    unlabelled: list[str] = []
    object_counts: Counter[str] = Counter()
    unknown_class_ids: Counter[int] = Counter()
    per_split: dict[str, dict[str, int]] = {}
    for split, images_dir in split_dirs.items():
        counts = {"images": 0, "fractured": 0, "not_fractured": 0, "unlabelled": 0}
        for path in scan_images(images_dir):
            counts["images"] += 1
            label_file = _label_path(path, images_dir)
            if not label_file.is_file():
                counts["unlabelled"] += 1
                if not unlabelled_negative:
                    unlabelled.append(str(path))
                    continue
                objects = []
            else:
                objects = read_yolo_labels(label_file)
            boxes, regions = [], set()
            for cls, box in objects:
                if cls not in names:
                    unknown_class_ids[cls] += 1
                    continue
                object_counts[names[cls]] += 1
                if class_region[cls]:
                    regions.add(class_region[cls])
                if is_fracture[cls]:
                    boxes.append(box)
            label = int(bool(boxes))
            counts["fractured" if label else "not_fractured"] += 1
            region = regions.pop() if len(regions) == 1 else ("mixed" if regions else "")
            stem = roboflow_stem(path)
            records.append(
                Record(
                    path=path,
                    label=label,
                    source=source,
                    region=region,
                    boxes=boxes,
                    image_id=path.relative_to(base).as_posix(),
                    extra={"source_split": split},
                    link_key=f"rf:{stem}" if stem else "",
                )
            )
        per_split[split] = counts
    report = {
        "kind": "yolo",
        "root": str(root),
        "yaml": str(yaml_path),
        "split_dirs": {k: str(v) for k, v in split_dirs.items()},
        "class_mapping": {
            names[i]: {"id": i, "fracture": bool(is_fracture[i]), "region": class_region[i]}
            for i in sorted(names)
        },
        "fracture_rule": rule,
        "object_counts": dict(object_counts),
        "unknown_class_ids": {str(k): v for k, v in unknown_class_ids.items()},
        "per_split": per_split,
        "images": len(records),
        "unlabelled_policy": "negative" if unlabelled_negative else "left out",
        "n_unlabelled_left_out": len(unlabelled),
        "unlabelled_left_out": unlabelled,
        "roboflow_source_stems": len({r.link_key for r in records if r.link_key}),
    }
    if unlabelled:
        log.warning(
            "%s: %d images have no label file and were left out (use --unlabelled-negative to"
            " count them as not fractured)",
            root,
            len(unlabelled),
        )
    return SourceScan(name=source, kind="yolo", root=root, records=records, report=report)


# ----------------------------------------------------------------------------- image folders


def parse_class_map(spec: str | dict[str, int] | None) -> dict[str, int]:
    """``"fractured=1,normal=0"`` (or a dict) merged over :data:`DEFAULT_CLASS_MAP`."""
    out = dict(DEFAULT_CLASS_MAP)
    if not spec:
        return out
    items = spec.items() if isinstance(spec, dict) else _split_pairs(spec)
    for name, value in items:
        try:
            label = int(value)
        except (TypeError, ValueError):
            label = -1
        if label not in (0, 1):
            raise DataError(f"class map: {name}={value}; labels must be 0 or 1")
        out[_norm_name(str(name))] = label
    return out


def _split_pairs(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise DataError(f"class map: '{item}' should look like 'name=0' or 'name=1'")
        k, v = item.split("=", 1)
        pairs.append((k.strip(), v.strip()))
    return pairs


def read_folder(
    root: str | Path,
    *,
    class_map: str | dict[str, int] | None = None,
    source: str | None = None,
    dicom_only: bool = False,
) -> SourceScan:
    """``root/<class>/**`` image files (PNG/JPEG/DICOM...) labelled by the class folder name.

    Class folders whose name is not in the map raise :class:`DataError` naming them (extend
    the map, e.g. ``"broken=1,intact=0"``). ``dicom_only`` keeps DICOM files only.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    source = source or f"folder:{root.name}"
    cmap = parse_class_map(class_map)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: expected class sub-folders (root/<class>/*.png|jpg|dcm)")
    unknown = [d.name for d in class_dirs if _norm_name(d.name) not in cmap]
    if unknown:
        raise DataError(
            f"{root}: class folder(s) {unknown} have no label; known names: "
            f"{sorted(k for k in cmap if not k.isdigit())} (map others with a class map such as "
            f"'{unknown[0]}=1')"
        )
    records: list[Record] = []
    mapping: dict[str, int] = {}
    counts: Counter[str] = Counter()
    warnings: list[str] = []
    for d in class_dirs:
        label = cmap[_norm_name(d.name)]
        mapping[d.name] = label
        found = [p for p in scan_images(d) if not dicom_only or is_dicom_file(p)]
        if not found:
            warnings.append(
                _warn_empty_class(d, label, what="DICOM files" if dicom_only else "images")
            )
        for path in found:
            counts[d.name] += 1
            stem = roboflow_stem(path)
            records.append(
                Record(
                    path=path,
                    label=label,
                    source=source,
                    image_id=path.relative_to(root).as_posix(),
                    link_key=f"rf:{stem}" if stem else "",
                )
            )
    report = {
        "kind": "dicom" if dicom_only else "folder",
        "root": str(root),
        "class_mapping": mapping,
        "images_per_class": dict(counts),
        "images": len(records),
        "dicom_files": sum(1 for r in records if is_dicom_file(r.path)),
        "empty_class_folders": [d.name for d in class_dirs if not counts[d.name]],
    }
    return SourceScan(
        name=source,
        kind=report["kind"],
        root=root,
        records=records,
        report=report,
        warnings=warnings,
    )


def read_dicom_dir(
    root: str | Path, *, class_map: str | dict[str, int] | None = None
) -> SourceScan:
    """DICOM files laid out as ``root/<class>/**`` (other files ignored)."""
    root = Path(root).resolve()
    return read_folder(root, class_map=class_map, source=f"dicom:{root.name}", dicom_only=True)


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class SourceKind:
    """One kind of data source: the ``data build`` option naming its roots and its reader.

    ``read(root, index, config)`` reads one root; ``index`` counts the roots of this kind
    before it (the second YOLO folder is source ``yolo2``). ``repeatable``: the option may be
    given several times on the command line.
    """

    name: str
    option: str
    help: str
    repeatable: bool
    read: Callable[[Path, int, DataBuildConfig], SourceScan]


def _fracatlas(root: Path, index: int, config: DataBuildConfig) -> SourceScan:
    return read_fracatlas(root)


def _yolo(root: Path, index: int, config: DataBuildConfig) -> SourceScan:
    return read_yolo(
        root,
        fracture_classes=config.fracture_classes,
        unlabelled_negative=config.unlabelled_negative,
        source="yolo" if index == 0 else f"yolo{index + 1}",
    )


def _folder(root: Path, index: int, config: DataBuildConfig) -> SourceScan:
    return read_folder(root, class_map=config.class_map)


def _dicom_dir(root: Path, index: int, config: DataBuildConfig) -> SourceScan:
    return read_dicom_dir(root, class_map=config.class_map)


#: Every source kind, in the order a build reads them (which orders the manifest's rows);
#: a new kind is one entry here (the CLI and :class:`DataBuildConfig` follow).
SOURCE_KINDS: dict[str, SourceKind] = {
    kind.name: kind
    for kind in (
        SourceKind("fracatlas", "--fracatlas", "FracAtlas root folder.", False, _fracatlas),
        SourceKind("yolo", "--yolo", "YOLO detection folder (data.yaml).", False, _yolo),
        SourceKind("folder", "--folder", "Image folder root/<class>/*; repeatable.", True, _folder),
        SourceKind(
            "dicom_dir",
            "--dicom-dir",
            "DICOM files as root/<class>/**; repeatable.",
            True,
            _dicom_dir,
        ),
    )
}


def scan_sources(config: DataBuildConfig) -> list[SourceScan]:
    """Read every source ``config`` names (no decoding yet). Source names are made unique."""
    unknown = sorted(set(config.sources) - set(SOURCE_KINDS))
    if unknown:
        raise ConfigError(
            f"unknown source kind(s) {unknown}; choose from {', '.join(SOURCE_KINDS)}"
        )
    scans: list[SourceScan] = []
    for kind in SOURCE_KINDS.values():
        for index, root in enumerate(config.sources.get(kind.name, [])):
            scans.append(kind.read(Path(root), index, config))
    if not scans:
        options = [kind.option for kind in SOURCE_KINDS.values()]
        raise DataError(f"no data source given: pass {', '.join(options[:-1])} or {options[-1]}")
    names: Counter[str] = Counter()
    for scan in scans:
        names[scan.name] += 1
        if names[scan.name] > 1:
            new = f"{scan.name}-{names[scan.name]}"
            for r in scan.records:
                r.source = new
            scan.name = new
    return scans
