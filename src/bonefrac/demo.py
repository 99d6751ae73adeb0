"""``bonefrac demo``: the main job on the shipped model and the sample radiographs, no data needed.

The package carries five FracAtlas radiographs (``bonefrac/samples/``, CC BY 4.0, credited in
its README) and what the radiologists recorded for them (``samples.csv``: fractured or not, and
the fracture boxes). :func:`run_demo` wraps one of them as a CR DICOM file, then runs
``bonefrac predict`` on all six inputs with the shipped model (:func:`predict_job`: the
predictions CSV, a heatmap overlay per image, a DICOM Secondary Capture and Structured Report
for the DICOM input) and writes one HTML page of the results beside them (``index.html``,
relative links, so any static file server shows it). ``make demo`` without data runs it.

::

    OUT/
      index.html        one card per input: its decision, probability, boxes and overlay,
                        beside what the radiologists recorded
      predictions.csv   the predict CSV (+ its .meta.json)
      overlays/         the heatmap overlay of each input (PNG)
      inputs/           the CR DICOM made from a sample
      dicom/            the SC and SR written for it
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from bonefrac.batch_predict.job import predict_job
from bonefrac.batch_predict.sidecar import sidecar_path
from bonefrac.batch_predict.stream import read_rows
from bonefrac.config import PredictConfig
from bonefrac.csvpaths import decode_path
from bonefrac.data.schema import parse_boxes
from bonefrac.errors import ConfigError
from bonefrac.fileio import atomic_open
from bonefrac.rundir import DEFAULT_NAME, RunDir
from bonefrac.rundir.predictions import CAM_PATH, DECISION, ERROR, PATH, PRED_BOXES, PROB, THRESHOLD

#: The sample radiographs and their listing (package data).
SAMPLES = Path(str(files("bonefrac") / "samples"))
SAMPLES_CSV = SAMPLES / "samples.csv"
#: The sample wrapped as a CR DICOM file, so the demo writes an SC and SR.
DICOM_SAMPLE = "IMG0002472.jpg"
PAGE = "index.html"
CSV = "predictions.csv"
#: The folders :func:`run_demo` writes into its folder, beside the page and the CSV.
FOLDERS = ("overlays", "inputs", "dicom")

_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, for UIDs derived from names


@dataclass
class SampleResult:
    """One input's answer on the page, beside what the radiologists recorded."""

    name: str
    decision: str
    probability: float | None
    threshold: float | None
    boxes: list[list[float]]
    fractured: bool
    true_boxes: list[list[float]]
    overlay: str = ""  # relative to the page
    error: str = ""

    @property
    def best_iou(self) -> float | None:
        """IoU of the model's first (highest-scoring) box with the best-matching true box."""
        if not self.boxes or not self.true_boxes:
            return None
        return max(box_iou(self.boxes[0][:4], t) for t in self.true_boxes)


@dataclass
class DemoResult:
    """What :func:`run_demo` wrote."""

    out: Path
    model: str
    samples: list[SampleResult] = field(default_factory=list)
    dicom_files: list[Path] = field(default_factory=list)

    @property
    def page(self) -> Path:
        return self.out / PAGE


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two ``[cx, cy, w, h]`` boxes (normalised)."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def read_samples(listing: Path = SAMPLES_CSV) -> pd.DataFrame:
    """The sample listing: ``file``, ``fractured``, ``region``, ``view``, ``boxes``."""
    table = pd.read_csv(listing, dtype={"file": str}, keep_default_na=False)
    missing = [f for f in table["file"] if not (listing.parent / f).is_file()]
    if missing:
        raise ConfigError(f"{listing}: sample files missing beside it: {', '.join(missing)}")
    return table


def write_cr_dicom(image: Path, target: Path, region: str) -> Path:
    """``image`` as an 8-bit CR DICOM file with fixed, name-derived UIDs (the same each run)."""
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(image).convert("L"), dtype=np.uint8)

    def uid(kind: str) -> str:
        return generate_uid(_UID_ROOT, entropy_srcs=["bonefrac demo", image.name, kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(target), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = "CR"
    ds.PatientName = "Demo^Sample"
    ds.PatientID = "BONEFRAC-DEMO"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = region.upper()
    ds.StudyDescription = f"FracAtlas sample {image.name} (CC BY 4.0)"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(target, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
    return target


def run_demo(out: str | Path, model: str = DEFAULT_NAME, *, force: bool = False) -> DemoResult:
    """Predict the sample radiographs (and one as DICOM) with ``model`` into ``out``; write the
    page. An earlier demo's outputs in ``out`` are refused unless ``force`` (then replaced)."""
    out = Path(out).absolute()  # the CSV's paths and the page's links agree whatever the cwd
    written = [out / PAGE, out / CSV, sidecar_path(out / CSV), *(out / f for f in FOLDERS)]
    earlier = [path for path in written if path.exists()]
    if earlier and not force:
        raise ConfigError(f"{out}: holds an earlier demo ({earlier[0].name}); pass --force")
    for path in earlier:  # only what a demo writes: never the rest of the folder
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run = RunDir.open(model)
    samples = read_samples()
    by_name = {row.file: row for row in samples.itertuples(index=False)}
    dicom_row = by_name[DICOM_SAMPLE]
    dicom = write_cr_dicom(
        SAMPLES / DICOM_SAMPLE, out / "inputs" / f"{Path(DICOM_SAMPLE).stem}.dcm", dicom_row.region
    )
    inputs = [SAMPLES / f for f in samples["file"]] + [dicom]
    config = PredictConfig(
        cam_dir=out / "overlays", dicom_out=out / "dicom", workers=0, progress=False, force=True
    )
    predict_job(run.path, inputs, out / CSV, config)
    result = DemoResult(out=out, model=model)
    for row in read_rows(out / CSV):
        path = decode_path(row[PATH])
        listed = by_name[DICOM_SAMPLE if path.resolve() == dicom.resolve() else path.name]
        cam = row.get(CAM_PATH) or ""
        result.samples.append(
            SampleResult(
                name=path.name,
                decision=row[DECISION] or "error",
                probability=float(row[PROB]) if row[PROB] else None,
                threshold=float(row[THRESHOLD]) if row[THRESHOLD] else None,
                boxes=json.loads(row[PRED_BOXES]) if row.get(PRED_BOXES) else [],
                fractured=bool(int(listed.fractured)),
                true_boxes=parse_boxes(listed.boxes),
                overlay=decode_path(cam).resolve().relative_to(out.resolve()).as_posix()
                if cam
                else "",
                error=row[ERROR],
            )
        )
    dicom_dir = out / "dicom"
    result.dicom_files = sorted(p for p in dicom_dir.rglob("*") if p.is_file())
    with atomic_open(result.page, "w", encoding="utf-8") as fh:
        fh.write(results_page(result, run))
    return result


def _card(sample: SampleResult) -> str:
    prob = "–" if sample.probability is None else f"{sample.probability:.3f}"
    truth = "fractured" if sample.fractured else "no fracture"
    if sample.true_boxes:
        truth += f", {len(sample.true_boxes)} box" + ("es" if len(sample.true_boxes) > 1 else "")
    iou = sample.best_iou
    found = f"{len(sample.boxes)} box" + ("es" if len(sample.boxes) != 1 else "")
    if iou is not None:
        found += f"; the first overlaps the radiologists' box at IoU {iou:.2f}"
    img = (
        f'<img src="{html.escape(sample.overlay)}" alt="overlay of {html.escape(sample.name)}">'
        if sample.overlay
        else ""
    )
    error = f'<p class="error">{html.escape(sample.error)}</p>' if sample.error else ""
    return (
        f'<section class="card {html.escape(sample.decision)}">'
        f"<h2>{html.escape(sample.name)}</h2>"
        f'<p class="decision">{html.escape(sample.decision)}</p>'
        f"<p>probability {prob}"
        + (f" (threshold {sample.threshold:.3f})" if sample.threshold is not None else "")
        + f"; {found}</p>"
        f"<p>radiologists: {truth}</p>{error}{img}</section>"
    )


def results_page(result: DemoResult, run: RunDir) -> str:
    """One self-contained HTML page (links relative to ``result.out``)."""
    dicom = "".join(
        f'<li><a href="{html.escape(str(p.relative_to(result.out)))}">'
        f"{html.escape(str(p.relative_to(result.out)))}</a></li>"
        for p in result.dicom_files
    )
    cards = "".join(_card(s) for s in result.samples)
    name = html.escape(f"{result.model} ({run.path.name})")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>bonefrac demo: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 72rem; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr)); gap: 1rem; }}
.card {{ border: 1px solid #ccc; border-radius: 6px; padding: 0.75rem; }}
.card img {{ width: 100%; }}
.decision {{ font-size: 1.4rem; font-weight: bold; margin: 0.2rem 0; }}
.fracture .decision {{ color: #b00020; }} .no_fracture .decision {{ color: #1b5e20; }}
.refer .decision, .out_of_scope .decision {{ color: #8a5a00; }} .error {{ color: #b00020; }}
</style></head><body>
<h1>bonefrac demo: the shipped model {name} on {len(result.samples)} sample inputs</h1>
<p>Research software, not a medical device: every call is for a radiologist to check.
Samples: FracAtlas (CC BY 4.0), see bonefrac/samples/README.md; the last input is the same
radiograph as a CR DICOM file. Predictions: <a href="{CSV}">{CSV}</a>.</p>
<div class="cards">{cards}</div>
<h2>DICOM out</h2><p>Secondary Capture and Structured Report for the DICOM input:</p>
<ul>{dicom}</ul>
</body></html>
"""
