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
- ``appearance``: the input's intensity-histogram, edge and texture statistics lie further
  from the training radiographs' than the fitted cut-off (:mod:`bonefrac.inference.appearance`;
  only with an ``appearance`` record in model.json, which ``bonefrac ood`` and the deploy
  fits write): greyscale photographs, documents, screenshots, synthetic gradients and
  patterns, noise, CT / MR / US pixels saved as ordinary images. It does not depend on the
  model, so a weak run refuses them as a strong one does;
- ``features``: the fitted detector's score is above its cut-off (only with an ``ood``
  record in model.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: A source whose chroma (:mod:`bonefrac.data.chroma`: the 95th percentile of each pixel's
#: distance from the image's tint at its luminance, on a copy reduced to <= 256 px) is above
#: this is a colour image: out of scope whatever its score. Measured (``bench/chroma.py``):
#: 0 on every RGB-encoded radiograph of FracAtlas and bone_fracture_yolo (grey to the last
#: pixel); at most 4 on roboflow_sr2022's 1,023 (a teal-tinted MedPix film, red circles and
#: coloured frame lines drawn on radiographs: the tint is removed, the annotations cover under
#: 5 % of the image). The colour photographs of ``tests/fixtures/nonradiographs.py`` score
#: 10-50, except the Hubble deep field (5: black sky with a few galaxies), which the
#: appearance rule refuses. A tinted grey image (any tint strength) scores 1: it is judged by
#: its grey content, like a grey image. 8 sits twice the radiographs' maximum, below every
#: colour photograph but one.
MAX_CHROMA = 8.0

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

OOD_REASONS = ("modality", "colour", "blank", "appearance", "features")


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


def appearance_out_of_scope(scores: Any, cutoff: float) -> np.ndarray:
    """True where the appearance score is above the fitted cut-off (NaN: out of scope)."""
    return ~(np.asarray(scores, dtype=float) <= cutoff)


def ood_reasons(
    prepared: Sequence[Any], features: Any = None, appearance: Any = None
) -> list[str | None]:
    """The ``ood_reason`` of each prepared input (``None``: in scope).

    ``prepared``: objects with ``array`` (the letterboxed uint8 input), ``chroma`` and
    ``modality`` (:class:`~bonefrac.inference.predictor.PreparedInput`); ``features``: the
    fitted detector's out-of-scope flags, or ``None`` without a detector; ``appearance``: the
    appearance rule's flags (:func:`appearance_out_of_scope`), or ``None`` without one.
    """
    blank = blank_frames([p.array for p in prepared]) if prepared else np.zeros(0, bool)
    none = np.zeros(len(prepared), bool)
    flagged = none if features is None else np.asarray(features, bool)
    looks = none if appearance is None else np.asarray(appearance, bool)
    out: list[str | None] = []
    for i, p in enumerate(prepared):
        rules = (
            modality_out_of_scope(p.modality),
            is_colour(p.chroma),
            bool(blank[i]),
            bool(looks[i]),
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
