"""Rules that put an input out of scope whatever the model's score, and the reason reported.

The Predictor applies them to every input, whether or not the run has a fitted out-of-scope
detector (``bonefrac ood RUN``): a freshly trained run refuses a colour photograph too. Each
out-of-scope input gets one ``ood_reason``, the first rule that applies in this order
(:data:`OOD_REASONS`):

- ``modality``: a DICOM file whose Modality is not a projection radiograph (CT, MR, US...):
  the file says what it is, which no pixel statistic can overrule;
- ``colour``: the source's chroma, measured at decode time before the grey conversion
  (:mod:`bonefrac.data.chroma`), is above :data:`MAX_CHROMA`: radiographs are grey;
- ``blank``: the letterboxed input has (almost) no contrast (:data:`MIN_CONTRAST`);
- ``features``: the fitted detector's score is above its cut-off (only with an ``ood``
  record in model.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: A source whose chroma (99th percentile of per-pixel max(|Cb-128|, |Cr-128|) on a copy
#: reduced to <= 256 px, JPEG draft at 224: ``bench/chroma.py``) is above this is a colour
#: image: out of scope whatever its score. Measured on every decodable image of the shared
#: data: 0.0 on all 8,172 (FracAtlas 605 greyscale + 3,419 RGB-encoded JPEGs, Roboflow 4,148
#: RGB-encoded JPEGs; 59 truncated FracAtlas files left out): the RGB-encoded radiographs are
#: grey to the last pixel (the largest single-pixel chroma is 0 in every one of them). Colour
#: probes: 24-30 for tinted greyscale photos, 29-84 for colour photographs. 12 sits 12 levels
#: (of 128) above the radiographs' maximum, where JPEG rounding of a near-grey source (1-2)
#: never reaches, and at half the faintest tinted probe; a 5 % colour cast (chroma 8) passes,
#: a 10 % one (15) does not.
MAX_CHROMA = 12.0

#: A letterboxed input whose grey levels span less than this is a blank frame: out of scope
#: whatever its score (measured: a black frame's features sit close to the train mean, so the
#: Mahalanobis distance alone lets it through).
MIN_CONTRAST = 8

#: DICOM Modalities of projection radiographs that can show a limb: in scope (the pixel and
#: feature rules still judge them). CR computed radiography, DX digital radiography, DR its
#: retired predecessor (older devices still write it), RG film/screen radiographs (film
#: digitisers), RF fluoroscopy and XA angiography (C-arm systems store orthopaedic fluoroscopy
#: spot images of limbs as either). Every other value is out of scope: cross-sectional and
#: non-X-ray modalities (CT, MR, US, NM, PT...), projection X-rays that are never limb
#: radiographs (MG mammography, IO / PX dental, BMD densitometry, RTIMAGE portal images), and
#: non-images (SR, SEG, PR, KO, DOC...).
PROJECTION_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "RF", "XA"})

#: Modality values that say nothing about the image: in scope, the pixels decide. ``OT``
#: (other) and an empty or missing Modality are what film scanners, JPEG-to-DICOM converters
#: and PACS import tools write for secondary captures of radiographs; refusing them would
#: refuse valid radiographs, while the colour, blank and feature rules still apply.
UNSTATED_MODALITIES = frozenset({"", "OT"})

OOD_REASONS = ("modality", "colour", "blank", "features")


def is_colour(chroma: float) -> bool:
    """True for a source whose chroma is above :data:`MAX_CHROMA` (NaN counts as colour)."""
    return not chroma <= MAX_CHROMA


def blank_frames(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """True for inputs with (almost) no contrast: max - min grey level below MIN_CONTRAST."""
    return np.array([int(a.max()) - int(a.min()) < MIN_CONTRAST for a in arrays], dtype=bool)


def modality_out_of_scope(modality: str | None) -> bool:
    """True for a DICOM Modality that is neither a projection radiograph nor unstated."""
    if modality is None:
        return False
    value = modality.strip().upper()
    return value not in PROJECTION_MODALITIES and value not in UNSTATED_MODALITIES


def ood_reasons(prepared: Sequence[Any], features: Any = None) -> list[str | None]:
    """The ``ood_reason`` of each prepared input (``None``: in scope).

    ``prepared``: objects with ``array`` (the letterboxed uint8 input), ``chroma`` and
    ``modality`` (:class:`~bonefrac.inference.predictor.PreparedInput`); ``features``: the
    fitted detector's out-of-scope flags, or ``None`` without a detector.
    """
    blank = blank_frames([p.array for p in prepared]) if prepared else np.zeros(0, bool)
    flagged = np.zeros(len(prepared), bool) if features is None else np.asarray(features, bool)
    out: list[str | None] = []
    for i, p in enumerate(prepared):
        rules = (
            modality_out_of_scope(p.modality),
            is_colour(p.chroma),
            bool(blank[i]),
            bool(flagged[i]),
        )
        out.append(next((r for r, hit in zip(OOD_REASONS, rules, strict=True) if hit), None))
    return out


def rules_record() -> dict[str, Any]:
    """The rules' settings, for records that must change when they do (predict sidecars)."""
    return {
        "max_chroma": MAX_CHROMA,
        "min_contrast": MIN_CONTRAST,
        "modalities": sorted(PROJECTION_MODALITIES | UNSTATED_MODALITIES),
    }
