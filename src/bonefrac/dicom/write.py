"""Results a PACS can show: a DICOM Secondary Capture and a Structured Report per DICOM input.

For one DICOM input and its :class:`~bonefrac.inference.predictor.Prediction`:

- **Secondary Capture** (RGB): the Predictor's map overlay (the learned fracture map of a
  localising run, Grad-CAM otherwise), the boxes when the prediction has them,
  and a banner with the finding burned in (probability, decision, model, a decision-support
  caveat). No patient data is burned in (``BurnedInAnnotation`` ``NO``). A ``fracture`` call
  is a firm finding and its boxes are drawn SOLID; ``refer`` is a doubt and its boxes are
  drawn DASHED under the words "doubt: look here" (:func:`shown_boxes`: the boxes above the
  run's box threshold, else the detector's best box for these two calls).
- **Comprehensive SR** holding a TID 1500 measurement report: one image-level group (finding
  type SNOMED CT 125605004 "Fracture of bone") with the fracture probability (DCM 122157
  "Probability"), the presence of a fracture (DCM 121052 "Presence of property": Present /
  Absent / Presence Undetermined, for an input in scope) and bonefrac's decision in its own
  words (the one private code, :data:`CODING_SCHEME`: no standard code says "refer"), and one
  planar ROI group per shown box (a closed POLYLINE SCOORD in the source image's pixel grid,
  with the box score as DCM 111012 "Certainty of Finding").
- **Study-level SR** (:func:`build_study_report`, the DICOM node): the same report for a whole
  study, its probability aggregated over the images as ``predict --study-column`` does.

All go into the input's Study (StudyInstanceUID, patient and accession attributes copied by
highdicom from the input) with new Series and SOP Instance UIDs. The Series UIDs are derived
from the Study UID and the model, so every result of one model in one study lands in the same
series (captures, reports, study reports), also across resumed jobs. The SOP Instance UIDs
are derived from the input's SOP Instance UID and the model's settings: predicting one input
again (a resumed job, a node restarted after a crash) gives the same instances, which a PACS
stores once. The SC and SR pass dicom3tools' ``dciodvfy`` without errors (tests/node).
Manufacturer is ``bonefrac``; ManufacturerModelName and SoftwareVersions name the model.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bonefrac.errors import BonefracError
from bonefrac.fileio import atomic_path
from bonefrac.version import __version__

log = logging.getLogger(__name__)

#: Series numbers of the outputs (high, so they sort after the acquired series).
SC_SERIES_NUMBER = 9101
SR_SERIES_NUMBER = 9102
STUDY_SR_SERIES_NUMBER = 9103
#: Narrowest Secondary Capture: small images are padded so the burned-in text stays readable.
MIN_CAPTURE_WIDTH = 512
#: Local coding scheme for concepts that have no standard code.
CODING_SCHEME = "99BONEFRAC"
CAVEAT = "Decision support only, not a diagnosis."
#: The decision in words: burned into the capture and the meaning of the SR's decision code
#: (at most 64 characters, a DICOM code meaning). ``fracture`` is a firm finding, ``refer``
#: a doubt that points at where to look.
DECISION_TEXT = {
    "fracture": "fracture (firm finding)",
    "no_fracture": "no fracture found",
    "refer": "doubt: look here, refer to a radiologist",
    "out_of_scope": "does not look like a limb radiograph: no fracture call",
}
#: Box outlines: SOLID for a firm finding, DASHED for a doubt.
SOLID, DASHED = "solid", "dashed"
BOX_STYLE = {"fracture": SOLID, "refer": DASHED, "no_fracture": SOLID}
#: Dashed outline: ``DASH_ON`` pixels drawn, ``DASH_OFF`` left out, per unit of line width.
DASH_ON, DASH_OFF = 4, 3
#: Outline colours (the banner's first line shares them).
DECISION_COLOUR = {"fracture": (255, 80, 80), "refer": (255, 200, 0)}


class DicomOutError(BonefracError):
    """The DICOM results for one input could not be made (the prediction itself stands)."""


@dataclass
class ModelInfo:
    """What the outputs say about the model that made them."""

    name: str
    architecture: str
    weights_sha256: str = ""
    learned_map: bool = False
    """The heatmap is the model's own fracture map (a localising run), not Grad-CAM."""
    settings: str = ""
    """A digest of the model's settings (model.json: threshold, calibration, safeguards):
    with the weights, what makes its answer for one input the same answer."""

    @classmethod
    def of(cls, predictor: Any) -> ModelInfo:
        """From a :class:`~bonefrac.inference.predictor.Predictor` (run name, architecture)."""
        sha = str(predictor.meta.get("weights_sha256") or "")
        name = str(predictor.name or predictor.architecture)
        dump = predictor.meta.model_dump_json().encode()
        settings = hashlib.sha256(dump).hexdigest()[:16]
        return cls(name, predictor.architecture, sha, bool(predictor.localizes), settings)

    @property
    def map_description(self) -> str:
        if self.learned_map:
            return "learned fracture map (trained on radiologists' fracture boxes) over the input"
        return "Grad-CAM heatmap of the fracture logit over the input image"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.architecture})" if self.name != self.architecture else self.name

    @property
    def software_versions(self) -> list[str]:
        versions = [f"bonefrac {__version__}", f"model {self.label}"[:64]]
        if self.weights_sha256:
            versions.append(f"weights sha256 {self.weights_sha256[:16]}")
        return versions


@dataclass
class DicomOutputs:
    """The two result objects for one input."""

    capture: Any | None  # highdicom.sc.SCImage; None: a report alone (an input out of scope)
    report: Any  # highdicom.sr.ComprehensiveSR

    @property
    def datasets(self) -> list[Any]:
        """The objects to store, capture first (the report references it)."""
        return [ds for ds in (self.capture, self.report) if ds is not None]


def decision_label(pred: Any) -> str:
    """The prediction's decision in the shared vocabulary (``fracture`` / ``no_fracture`` /
    ``refer`` / ``out_of_scope``), whether ``decision`` is already a word or a bool."""
    decision = pred.decision
    if isinstance(decision, str) and decision in DECISION_TEXT:
        return decision
    if getattr(pred, "out_of_scope", False):
        return "out_of_scope"
    if getattr(pred, "refer", False):
        return "refer"
    return "fracture" if decision else "no_fracture"


def prediction_boxes(pred: Any) -> list[list[float]]:
    """Boxes ``[cx, cy, w, h, score]`` (normalised to the image) when the prediction has
    them; ``[]`` otherwise (a model without a box head)."""
    boxes = pred.pred_boxes
    if boxes is None:
        return []
    out = []
    for box in boxes:
        values = [float(v) for v in box]
        if len(values) >= 4 and all(np.isfinite(values[:4])):
            out.append(values[:4] + [values[4] if len(values) > 4 else float("nan")])
    return out


def shown_boxes(pred: Any) -> list[list[float]]:
    """The boxes the capture draws and the report records: :func:`prediction_boxes`; for a
    ``fracture`` or ``refer`` call without one, the detector's best box ("look here")."""
    boxes = prediction_boxes(pred)
    best = getattr(pred, "best_box", None)
    if not boxes and best is not None and decision_label(pred) in ("fracture", "refer"):
        values = [float(v) for v in best]
        if len(values) >= 4 and all(np.isfinite(values[:4])):
            boxes = [values[:4] + [values[4] if len(values) > 4 else float("nan")]]
    return boxes


def finding_lines(pred: Any, model: ModelInfo) -> list[str]:
    """The text burned into the capture (and repeated as its ImageComments)."""
    decision = decision_label(pred)
    first = DECISION_TEXT.get(decision, decision)
    if decision != "out_of_scope":
        first += f" - fracture probability {pred.probability:.2f} (threshold {pred.threshold:.2f})"
    elif getattr(pred, "ood_reason", None):
        first += f" ({pred.ood_reason})"  # modality | colour | blank | features
    return [first, f"bonefrac {__version__}, model {model.label}", CAVEAT]


# --- reading the input ------------------------------------------------------------------


def read_header(source: str | os.PathLike | bytes, name: str = "") -> Any:
    """The input's DICOM attributes without pixel data; refuses one that cannot carry results
    into its study (no Study, Series or SOP Instance UID, or no SOP Class UID)."""
    import pydicom

    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - any parser failure is this file's
        raise DicomOutError(f"{label}: cannot read its DICOM header ({exc})") from None
    required = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    missing = [k for k in required if k not in ds]
    if missing:
        raise DicomOutError(
            f"{label}: no {', '.join(missing)}, so the results cannot join its study; "
            "fix the file's header (e.g. re-export it from the PACS)"
        )
    return ds


# --- the pictures -----------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _dashed_line(draw: ImageDraw.ImageDraw, a: tuple[int, int], b: tuple[int, int], lw: int,
                 colour: tuple[int, int, int]) -> None:  # fmt: skip
    """A horizontal or vertical dashed line from ``a`` to ``b`` (inclusive), ``lw`` wide."""
    on, off = DASH_ON * lw, DASH_OFF * lw
    horizontal = a[1] == b[1]
    start, end = (a[0], b[0]) if horizontal else (a[1], b[1])
    pos = start
    while pos <= end:
        stop = min(pos + on - 1, end)
        if horizontal:
            draw.rectangle([pos, a[1], stop, a[1] + lw - 1], fill=colour)
        else:
            draw.rectangle([a[0], pos, a[0] + lw - 1, stop], fill=colour)
        pos += on + off


def _dashed_rectangle(draw: ImageDraw.ImageDraw, xy: list[int], lw: int,
                      colour: tuple[int, int, int]) -> None:  # fmt: skip
    x0, y0, x1, y1 = xy
    for a, b in (((x0, y0), (x1, y0)), ((x0, y1 - lw + 1), (x1, y1 - lw + 1)),
                 ((x0, y0), (x0, y1)), ((x1 - lw + 1, y0), (x1 - lw + 1, y1))):  # fmt: skip
        _dashed_line(draw, a, b, lw, colour)


def draw_decision_boxes(img: Image.Image, boxes: Sequence[Sequence[float]], style: str,
                        colour: tuple[int, int, int]) -> None:  # fmt: skip
    """Boxes ``[cx, cy, w, h, ...]`` on ``img`` in place, just outside each box (as
    :func:`bonefrac.maps.overlay.draw_boxes`): ``SOLID`` rectangles, or ``DASHED`` ones whose
    outline has gaps (black under-stroke and colour alike), so a doubt never reads as a
    firm finding even in greyscale."""
    from bonefrac.maps.overlay import draw_boxes
    from bonefrac.maps.pointing_game import boxes_to_pixels

    if style == SOLID:
        draw_boxes(img, boxes, colour)
        return
    width, height = img.size
    lw = max(1, round(min(width, height) / 250))
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in boxes_to_pixels(boxes, width, height):
        inner = [round(x0), round(y0), max(round(x0), round(x1) - 1), max(round(y0), round(y1) - 1)]
        white = [inner[0] - lw, inner[1] - lw, inner[2] + lw, inner[3] + lw]
        black = [white[0] - lw, white[1] - lw, white[2] + lw, white[3] + lw]
        _dashed_rectangle(draw, black, lw, (0, 0, 0))
        _dashed_rectangle(draw, white, lw, colour)


def render_capture(pred: Any, model: ModelInfo) -> np.ndarray:
    """The overlay (heatmap, boxes) over a banner with the finding: uint8 ``(H, W, 3)``."""
    from bonefrac.maps.overlay import PRED_COLOR, render_overlay

    if pred.heatmap is None or pred.display is None:
        raise DicomOutError(f"{pred.name}: no heatmap to draw; predict with heatmap=True")
    decision = decision_label(pred)
    picture = render_overlay(pred.display, pred.heatmap)
    boxes = [b[:4] for b in shown_boxes(pred)]
    if boxes:
        colour = DECISION_COLOUR.get(decision, PRED_COLOR)
        draw_decision_boxes(picture, boxes, BOX_STYLE.get(decision, SOLID), colour)
    width = max(picture.width, MIN_CAPTURE_WIDTH)
    size = max(12, width // 40)
    font = _font(size)
    lines = finding_lines(pred, model)
    line_h = int(size * 1.4)
    banner = line_h * len(lines) + size
    canvas = Image.new("RGB", (width, picture.height + banner), (0, 0, 0))
    canvas.paste(picture, ((width - picture.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    colour = DECISION_COLOUR.get(decision, (255, 255, 255))
    for i, line in enumerate(lines):
        y = picture.height + size // 2 + i * line_h
        draw.text((size // 2, y), line, fill=colour if i == 0 else (220, 220, 220), font=font)
    return np.asarray(canvas, dtype=np.uint8)


# --- the DICOM objects ------------------------------------------------------------------


def _series_uid(source: Any, model: ModelInfo, kind: str) -> str:
    from pydicom.uid import generate_uid

    seed = [str(source.StudyInstanceUID), model.name, model.weights_sha256, kind]
    return str(generate_uid(entropy_srcs=seed))


def _instance_uid(key: Sequence[str], model: ModelInfo, kind: str) -> str:
    """The SOP Instance UID of one result: the same input (``key``: its SOP Instance UID, or
    a study's) and model give the same UID, so a repeated prediction replaces, never adds."""
    from pydicom.uid import generate_uid

    seed = [*key, model.name, model.weights_sha256, model.settings, kind, __version__]
    return str(generate_uid(entropy_srcs=seed))


def _sct(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)


FRACTURE_OF_BONE = ("125605004", "Fracture of bone")
RADIOGRAPHY = ("363680008", "Radiographic imaging procedure")


def _code(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=meaning)


def build_outputs(
    source: Any, pred: Any, model: ModelInfo, *, capture: bool = True
) -> DicomOutputs:
    """The Secondary Capture and the SR for ``pred`` on the input whose header is ``source``;
    ``capture=False``: the report alone (it then references the input only)."""
    import highdicom as hd

    source = _with_type2(source)
    try:
        sc = _build_capture(source, pred, model, hd) if capture else None
        report = _build_report(source, sc, pred, model, hd)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:  # highdicom
        raise DicomOutError(
            f"{pred.name or '<input>'}: cannot build the DICOM results ({exc}); "
            "check the input's header"
        ) from None
    return DicomOutputs(sc, report)


#: Patient and study attributes that DICOM requires present (maybe empty) in every object.
TYPE2_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName",
)  # fmt: skip


def _with_type2(source: Any) -> Any:
    """A copy of the header with the type 2 patient/study attributes present (empty where the
    input lacks them), as highdicom copies them into the outputs."""
    import copy

    ds = copy.deepcopy(source)
    for keyword in TYPE2_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _build_capture(source: Any, pred: Any, model: ModelInfo, hd: Any) -> Any:
    pixels = render_capture(pred, model)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=_series_uid(source, model, "capture"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=_instance_uid([str(source.SOPInstanceUID)], model, "capture"),
        instance_number=int(getattr(source, "InstanceNumber", None) or 1),
        manufacturer="bonefrac",
        patient_orientation=("L", "F"),  # placeholder highdicom requires; replaced below
        transfer_syntax_uid="1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    )
    # the input's orientation as it is (or empty, type 2): the capture shows the same view
    sc.PatientOrientation = source.get("PatientOrientation", None) or ""
    # General Series Laterality (type 2C: a limb is a paired structure and the capture has no
    # Image Laterality): the input's, else empty (unknown), never guessed
    sc.Laterality = _laterality(source)
    sc.ManufacturerModelName = model.label[:64]
    sc.SoftwareVersions = model.software_versions
    sc.SeriesDescription = f"bonefrac {model.name} heatmap"[:64]
    sc.BurnedInAnnotation = "NO"  # the finding is burned in, nothing that identifies the patient
    sc.ImageComments = " ".join(finding_lines(pred, model))[:10240]
    sc.DerivationDescription = model.map_description
    sc.SourceImageSequence = [_reference(source)]
    if "AccessionNumber" in source:
        sc.AccessionNumber = source.AccessionNumber
    return sc


def _laterality(source: Any) -> str:
    """``R`` or ``L`` from the input's Laterality, else its Image Laterality; ``""`` else."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in ("R", "L"):
            return value
    return ""


def _reference(source: Any) -> Any:
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def _box_polyline(box: Sequence[float], cols: int, rows: int) -> np.ndarray:
    """Normalised ``[cx, cy, w, h]`` -> a closed rectangle in (column, row) pixel coordinates."""
    cx, cy, w, h = box[:4]
    x0, x1 = np.clip([(cx - w / 2) * cols, (cx + w / 2) * cols], 0, cols)
    y0, y1 = np.clip([(cy - h / 2) * rows, (cy + h / 2) * rows], 0, rows)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


#: Presence of a fracture (DCM 121052 "Presence of property") per in-scope decision.
PRESENCE = {"fracture": "Present", "no_fracture": "Absent", "refer": "PresenceUndetermined"}


def _context(model: ModelInfo, hd: Any) -> Any:
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_instance_uid([model.name], model, "device"), name=f"bonefrac {model.name}"[:64],
        manufacturer_name="bonefrac", model_name=model.label[:64],
    )  # fmt: skip
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _finding_items(
    decision: str, probability: float, algorithm: Any, hd: Any
) -> tuple[list[Any], list[Any]]:
    """The measurements (the probability, in scope only) and the qualitative evaluations
    (presence of a fracture, in scope only; the decision in its words) of one finding."""
    from pydicom.sr.codedict import codes

    measurements, evaluations = [], []
    if decision != "out_of_scope":
        measurements.append(
            hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=float(probability),
                unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
                algorithm_id=algorithm,
            )
        )
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=codes.DCM.PresenceOfProperty, value=getattr(codes.DCM, PRESENCE[decision])
            )
        )
    evaluations.append(
        hd.sr.QualitativeEvaluation(
            name=_code("decision", "bonefrac decision"),
            value=_code(decision, DECISION_TEXT.get(decision, decision)[:64]),
        )
    )
    return measurements, evaluations


def _build_report(source: Any, capture: Any, pred: Any, model: ModelInfo, hd: Any) -> Any:
    from pydicom.sr.codedict import codes

    decision = decision_label(pred)
    algorithm = hd.sr.AlgorithmIdentification(name="bonefrac", version=__version__)
    context = _context(model, hd)
    measurements, evaluations = _finding_items(decision, pred.probability, algorithm, hd)
    image_ref = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
    )
    groups: list[Any] = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=hd.UID(), identifier="image-level fracture finding"
            ),
            finding_type=_sct(*FRACTURE_OF_BONE),
            algorithm_id=algorithm,
            measurements=measurements or None,
            qualitative_evaluations=evaluations,
            source_images=[image_ref],
        )
    ]
    rows, cols = int(source.get("Rows", 0) or 0), int(source.get("Columns", 0) or 0)
    boxes = shown_boxes(pred) if rows and cols and decision != "out_of_scope" else []
    for i, box in enumerate(boxes, 1):
        score = []
        if np.isfinite(box[4]):
            score.append(
                hd.sr.Measurement(
                    name=codes.DCM.CertaintyOfFinding,
                    value=float(box[4]),
                    unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
                    algorithm_id=algorithm,
                )
            )
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_box_polyline(box, cols, rows),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
            ),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"box {i}"),
                referenced_region=region,
                finding_type=_sct(*FRACTURE_OF_BONE),
                algorithm_id=algorithm,
                measurements=score or None,
            )
        )
    content = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_sct(*RADIOGRAPHY),
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source] if capture is None else [source, capture],
        content=content[0],
        series_instance_uid=_series_uid(source, model, "report"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_instance_uid([str(source.SOPInstanceUID)], model, "report"),
        instance_number=int(getattr(source, "InstanceNumber", None) or 1),
        manufacturer="bonefrac",
        is_complete=True,
    )
    sr.ManufacturerModelName = model.label[:64]
    sr.SoftwareVersions = model.software_versions
    sr.SeriesDescription = f"bonefrac {model.name} report"[:64]
    return sr


def build_study_report(
    images: Sequence[Any],
    decision: str,
    probability: float,
    aggregation: str,
    model: ModelInfo,
    previous: Sequence[Any] = (),
) -> Any:
    """One study's SR: its aggregated probability and decision (``decision`` and
    ``probability`` from :func:`bonefrac.inference.studies.study_rows`) over ``images``, the
    headers of its images (the first gives the patient and study attributes).

    ``previous``: the study's earlier study reports (a study that received more images after
    its report), referenced as predecessors. The SOP Instance UID follows from the study's
    image UIDs and the model, so the same images give the same report."""
    import highdicom as hd

    if not images:
        raise DicomOutError("a study report needs at least one image")
    sources = [_with_type2(ds) for ds in images]
    first = sources[0]
    keys = sorted(str(ds.SOPInstanceUID) for ds in sources)
    algorithm = hd.sr.AlgorithmIdentification(name="bonefrac", version=__version__)
    try:
        measurements, evaluations = _finding_items(decision, probability, algorithm, hd)
        label = f"study-level fracture finding ({aggregation} of {len(sources)} images)"
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label[:64]),
            finding_type=_sct(*FRACTURE_OF_BONE),
            algorithm_id=algorithm,
            measurements=measurements or None,
            qualitative_evaluations=evaluations,
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=ds.SOPClassUID,
                    referenced_sop_instance_uid=ds.SOPInstanceUID,
                )
                for ds in sources
            ],
        )
        content = hd.sr.MeasurementReport(
            observation_context=_context(model, hd),
            procedure_reported=_sct(*RADIOGRAPHY),
            imaging_measurements=[group],
        )
        sr = hd.sr.ComprehensiveSR(
            evidence=sources,
            content=content[0],
            series_instance_uid=_series_uid(first, model, "study-report"),
            series_number=STUDY_SR_SERIES_NUMBER,
            sop_instance_uid=_instance_uid(
                [str(first.StudyInstanceUID), *keys], model, "study-report"
            ),
            instance_number=1 + len(previous),
            manufacturer="bonefrac",
            is_complete=True,
            previous_versions=list(previous) or None,
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:  # highdicom
        raise DicomOutError(
            f"study {first.get('StudyInstanceUID', '?')}: cannot build the study report ({exc})"
        ) from None
    sr.ManufacturerModelName = model.label[:64]
    sr.SoftwareVersions = model.software_versions
    sr.SeriesDescription = f"bonefrac {model.name} study report"[:64]
    return sr


# --- writing ----------------------------------------------------------------------------


def output_stem(path: Path) -> str:
    """A file-name stem unique per input path: ``<stem>-<sha1 of the path, 8 hex>``."""
    from bonefrac.csvpaths import encode_path

    digest = hashlib.sha1(os.fsencode(path)).hexdigest()[:8]
    return f"{encode_path(path.stem)}-{digest}"


def dataset_bytes(ds: Any) -> bytes:
    """``ds`` as a DICOM file (preamble, file meta), what a destination is sent."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_outputs(outputs: DicomOutputs, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>_sc.dcm`` and ``<stem>_sr.dcm`` into ``out_dir`` (each atomically)."""
    paths = (out_dir / f"{stem}_sc.dcm", out_dir / f"{stem}_sr.dcm")
    for ds, path in zip((outputs.capture, outputs.report), paths, strict=True):
        data = dataset_bytes(ds)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return paths


def outputs_zip(outputs: DicomOutputs, stem: str = "result") -> bytes:
    """The capture and the report as one zip (``<stem>_sc.dcm``, ``<stem>_sr.dcm``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{stem}_sc.dcm", dataset_bytes(outputs.capture))
        zf.writestr(f"{stem}_sr.dcm", dataset_bytes(outputs.report))
    return buf.getvalue()


def with_heatmap(pred: Any) -> Any:
    """``pred``, checked to carry the Predictor's heatmap and display image. A prediction made
    without them is refused rather than given another map here: every output of one image
    shows :meth:`~bonefrac.inference.predictor.Predictor.heatmaps` (the learned map of a
    localising run, Grad-CAM otherwise)."""
    if pred.heatmap is None:
        raise DicomOutError(
            f"{pred.name}: predicted without a heatmap; DICOM output needs "
            "predict_prepared(..., heatmap=True)"
        )
    if pred.display is None:
        raise DicomOutError(f"{pred.name}: the decoded image was not kept (keep_display=True)")
    return pred


def dicom_out_for_file(predictor: Any, pred: Any, path: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write the capture and report of one DICOM input file into ``out_dir``."""
    source = read_header(path)
    outputs = build_outputs(source, with_heatmap(pred), ModelInfo.of(predictor))
    return write_outputs(outputs, out_dir, output_stem(path))


@dataclass
class DicomOutCounts:
    """What ``--dicom-out`` did in one prediction job."""

    written: int = 0  # inputs with a capture and a report written
    not_dicom: int = 0  # inputs that are not DICOM: no DICOM out for them (not an error)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def add(self, other: DicomOutCounts) -> None:
        self.written += other.written
        self.not_dicom += other.not_dicom
        self.failures += other.failures


def is_dicom_input(path: Path) -> bool:
    """A ``.dcm``/``.dicom`` name or the DICM magic."""
    from bonefrac.data.imageio import DICOM_SUFFIXES, is_dicom_file

    return path.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(path)


def write_dicom_out(
    predictor: Any, pred: Any, path: Path, out_dir: Path, counts: DicomOutCounts
) -> None:
    """The batch job's hook: results for a DICOM input, a count (and a log line) otherwise.

    A file whose results cannot be built (e.g. a header without a Study UID) is counted in
    ``counts.failures`` and logged; its prediction row stands. Unwritable ``out_dir`` raises.
    """
    from bonefrac.csvpaths import printable

    if not is_dicom_input(path):
        counts.not_dicom += 1
        log.info("%s: not a DICOM input, so no DICOM out for it", printable(str(path)))
        return
    try:
        dicom_out_for_file(predictor, pred, path, out_dir)
    except DicomOutError as exc:
        counts.failures.append((str(path), str(exc)))
        log.warning("DICOM out: %s", printable(str(exc)))
        return
    counts.written += 1


def dicom_out_zip(predictor: Any, pred: Any, data: bytes) -> bytes:
    """The service's ``?dicom=true``: the capture and report of an uploaded DICOM, zipped."""
    source = read_header(data, pred.name)
    outputs = build_outputs(source, with_heatmap(pred), ModelInfo.of(predictor))
    return outputs_zip(outputs, "bonefrac")
