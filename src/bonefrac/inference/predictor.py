"""Run directory -> :class:`Predictor`: probabilities, decisions and heatmaps for new images.

Preprocessing comes from ``model.json`` only (input size, CLAHE, mean/std) and goes through the
very functions training and evaluation use (:func:`bonefrac.data.imageio.load_grayscale` with
the JPEG draft at the input size, :func:`bonefrac.data.transforms.prepare_image`,
:func:`bonefrac.data.transforms.to_input`), so a run predicts exactly as it was evaluated.
The probability is ``sigmoid(logit / temperature)`` and the fracture call ``probability >=
threshold`` with the run's stored calibration and threshold. The decision a clinician sees is
one of ``fracture`` / ``no_fracture`` / ``refer`` / ``out_of_scope``
(:meth:`bonefrac.rundir.ModelMeta.decisions`): ``refer`` when the run has a refer rule
(``bonefrac threshold RUN --refer-coverage X``) and the image's uncertainty is above its cut-off,
``out_of_scope`` when a rule of :mod:`bonefrac.inference.scope` applies (a DICOM file of another
modality, a colour image, a blank frame: always, with or without a fitted detector) or the run
has an out-of-scope detector (``bonefrac ood RUN``) and the input's score is above its cut-off;
:attr:`Prediction.ood_reason` says which (``modality`` / ``colour`` / ``blank`` / ``features``).

Backends: ``torch`` (the safetensors weights, :class:`bonefrac.inference.backend.TorchBackend`)
or ``onnx`` (``RUN/model.onnx`` from ``bonefrac export RUN --onnx``, ONNX Runtime on CPU,
:class:`bonefrac.inference.onnx.OnnxBackend`). Every forward pass goes through one method,
``Predictor._run``, over the predictor's backend; Grad-CAM and the out-of-scope features need
the PyTorch model, loaded on first use with the ONNX backend and fed the same input.

A localising run (``model.json`` ``localize: true``) also returns its learned map (both
backends: the ONNX graph's second output) and the boxes decoded from it
(:attr:`Prediction.pred_boxes`, see :mod:`bonefrac.inference.box_decoding`). The heatmap of an image
(:meth:`Predictor.heatmaps`) is that learned map for a localising run, Grad-CAM of the fracture
logit otherwise; predict ``--cam-dir``, the API, ``bonefrac explain``'s default and DICOM output
all show it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bonefrac.data.imageio import MAX_PIXELS, decode_array, decode_image, decode_pil_image
from bonefrac.data.transforms import prepare_image
from bonefrac.errors import ImageDecodeError, ModelError, ModelOutputError, RunDirError
from bonefrac.inference.backend import Backend, Forward, Output, TorchBackend
from bonefrac.inference.onnx import OnnxBackend, open_onnx_session
from bonefrac.inference.scope import is_colour, ood_reasons
from bonefrac.rundir import (
    FRACTURE,
    REFER,
    ModelMeta,
    RunDir,
    check_finite,
    error_probability,
    margin_uncertainty,
)

BACKENDS = ("torch", "onnx")
#: The best box of a localising run is looked for down to this detection score.
BEST_BOX_FLOOR = 1e-4
#: Long side of the greyscale image kept for overlays (heatmap=True).
DISPLAY_MAX_SIDE = 1024

Source = str | os.PathLike | bytes | np.ndarray | Image.Image


@dataclass
class PreparedInput:
    """One decoded, letterboxed image ready for the model."""

    array: np.ndarray  # uint8 (S, S): what the model sees
    decoded_size: tuple[int, int]  # (w, h) of the decoded image the letterbox was made from
    name: str = ""
    display: Image.Image | None = None  # greyscale, long side <= DISPLAY_MAX_SIDE (for overlays)
    #: the source's chroma measured before the grey conversion (:mod:`bonefrac.data.chroma`)
    chroma: float = 0.0
    modality: str | None = None  # a DICOM file's Modality (None: not DICOM, or none given)

    @property
    def colour(self) -> bool:
        """The source is a colour image (:func:`bonefrac.inference.scope.is_colour`)."""
        return is_colour(self.chroma)


@dataclass
class Prediction:
    """The model's answer for one image."""

    probability: float  # calibrated: sigmoid(logit / temperature)
    logit: float  # raw model output
    decision: str  # fracture | no_fracture | refer | out_of_scope
    threshold: float
    name: str = ""
    uncertainty: float | None = None  # the refer rule's score (margin without a rule)
    refer: bool = False  # uncertainty above the refer rule's cut-off
    out_of_scope: bool = False  # a scope rule applies or ood_score is above its cut-off
    ood_score: float | None = None  # None when the run has no out-of-scope detector
    #: why the input is out of scope: modality | colour | blank | features (None: in scope)
    ood_reason: str | None = None
    #: float32 (h, w) in [0, 1], aligned with ``display`` (letterbox padding removed)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    display: Image.Image | None = field(default=None, repr=False)
    #: a localising run's boxes ``[[cx, cy, w, h, score], ...]`` normalised to the input image;
    #: ``None`` for a model without a localisation head
    pred_boxes: list[list[float]] | None = None
    #: a localising run's best box at any score ``[cx, cy, w, h, score]`` (what the page shows,
    #: marked low-confidence, for a fractured call with no box above the box threshold); None
    #: without a detector, for an input out of scope, or when the detector finds nothing
    best_box: list[float] | None = None

    def overlay(self) -> Image.Image:
        """The heatmap blended onto the greyscale image (RGB), as the page and --cam-dir show it."""
        if self.heatmap is None or self.display is None:
            raise ValueError("no heatmap: call predict(..., heatmap=True)")
        from bonefrac.maps.overlay import render_overlay

        return render_overlay(self.display, self.heatmap)

    @property
    def fracture(self) -> bool:
        """The decision is ``fracture`` (not referred, in scope, at or above the threshold)."""
        return self.decision == FRACTURE


def prepare_input(
    source: Source,
    size: int,
    *,
    clahe: bool = False,
    name: str | None = None,
    dicom_frame: int | None = None,
    max_pixels: int = MAX_PIXELS,
    keep_display: bool = False,
) -> PreparedInput:
    """Decode and letterbox one input exactly as evaluation does (module-level: picklable).

    ``source``: a path, encoded bytes (JPEG/PNG/DICOM...), a numpy array (greyscale ``(H, W)``
    of any numeric type, or ``(H, W, 3|4)`` colour) or a PIL image.
    """
    if isinstance(source, np.ndarray):
        label = name or "<array>"
        decoded = decode_array(source, label)
    elif isinstance(source, Image.Image):
        decoded = decode_pil_image(source)
        label = name or "<image>"
    else:
        label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
        decoded = decode_image(
            source if isinstance(source, bytes) else Path(source),
            draft_size=size,
            max_pixels=max_pixels,
            dicom_frame=dicom_frame,
            name=label,
        )
    img = decoded.image
    w, h = img.size
    if w * h > max_pixels:  # arrays / PIL images given directly
        raise ImageDecodeError(label, "too many pixels", f"{w}x{h} exceeds {max_pixels} pixels")
    display = None
    if keep_display:
        display = img.copy()
        if max(w, h) > DISPLAY_MAX_SIDE:
            display.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.BILINEAR)
    return PreparedInput(
        prepare_image(img, size, clahe=clahe),
        (w, h),
        label,
        display,
        chroma=decoded.chroma,
        modality=decoded.modality,
    )


def heatmap_for_display(cam: np.ndarray, prepared: PreparedInput) -> np.ndarray:
    """Letterboxed ``(S, S)`` CAM -> ``(h, w)`` over ``prepared.display`` (padding cut off)."""
    from bonefrac.data.transforms import heatmap_to_original

    target = prepared.display.size if prepared.display is not None else prepared.decoded_size
    return np.clip(heatmap_to_original(cam, target, prepared.decoded_size), 0.0, 1.0)


class Predictor:
    """A model ready to predict: the one door from image to logit, probability and decision.

    Built from a run directory (:meth:`from_run`, what predict / serve / explain / evaluate
    use) or from a model in memory (:meth:`from_model`, what training uses for its val/test
    predictions). Thread-safe: model calls are serialised by a lock.
    """

    def __init__(self, meta: ModelMeta, backend: Backend, *, run: RunDir | None = None) -> None:
        self.meta = meta
        self.run = run
        self._backend = backend
        #: the PyTorch backend for what the ONNX backend cannot give (Grad-CAM, features)
        self._torch: TorchBackend | None = backend if isinstance(backend, TorchBackend) else None
        self._lock = threading.Lock()  # torch forward, Grad-CAM hooks and ORT calls
        self._load_lock = threading.Lock()
        self._ood_stats: Any = None
        self._appearance_stats: Any = None

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_run(
        cls,
        run_dir: str | Path | RunDir,
        backend: str = "torch",
        threads: int | None = None,
        *,
        check: bool = True,
    ) -> Predictor:
        """Load a run for ``backend`` ``torch`` or ``onnx`` (``RUN/model.onnx``).

        Fails closed: invalid model.json, weights that do not match their recorded SHA-256,
        an unreadable model file, or (``check``) a model whose output on fixed inputs is not
        finite is a :class:`BonefracError`, never a predictor that answers anyway.
        """
        from bonefrac.models.runio import load_model

        if backend not in BACKENDS:
            raise RunDirError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
        meta = run.meta()
        if backend == "torch":
            predictor = cls(meta, TorchBackend(load_model(run, meta)), run=run)
        else:
            session = open_onnx_session(run, meta, threads=threads)
            predictor = cls(meta, OnnxBackend(session), run=run)
        if check:
            predictor.self_check()
        return predictor

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, meta: ModelMeta, device: str | torch.device = "cpu"
    ) -> Predictor:
        """A predictor over a model in memory (moved to ``device``, eval mode)."""
        return cls(meta, TorchBackend(model.to(device).eval(), device))

    def to(self, device: str | torch.device) -> Predictor:
        """The same run's PyTorch model on ``device`` (e.g. ``cuda:1``) as a new predictor."""
        if self.backend != "torch":
            raise RunDirError("only the PyTorch backend runs on another device")
        return Predictor(self.meta, TorchBackend(self.torch_model.to(device), device), run=self.run)

    # --- settings from model.json ---------------------------------------------------------
    @property
    def backend(self) -> str:
        """``torch`` or ``onnx``."""
        return self._backend.kind

    @property
    def device(self) -> torch.device:
        return self._backend.device

    @property
    def name(self) -> str:
        return self.run.name if self.run is not None else str(self.meta.get("name") or "")

    @property
    def architecture(self) -> str:
        return self.meta.architecture

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta.std)

    @property
    def clahe(self) -> bool:
        return self.meta.clahe

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def temperature(self) -> float:
        return self.meta.temperature

    @property
    def localizes(self) -> bool:
        """True for a run whose model has a localisation head (``model.json`` ``localize``)."""
        return self.meta.localize

    @property
    def box_threshold(self) -> float:
        return self.meta.box_threshold

    @property
    def torch_model(self) -> torch.nn.Module:
        """The PyTorch model (loaded on first use with the ONNX backend, for heatmaps)."""
        return self._torch_backend().model

    def _torch_backend(self) -> TorchBackend:
        if self._torch is None:
            with self._load_lock:
                if self._torch is None:
                    from bonefrac.models.runio import load_model

                    if self.run is None:
                        raise RunDirError("this predictor has no PyTorch model to explain with")
                    self._torch = TorchBackend(load_model(self.run, self.meta), self.device)
        return self._torch

    # --- steps ----------------------------------------------------------------------------
    def prepare(
        self,
        source: Source,
        *,
        name: str | None = None,
        dicom_frame: int | None = None,
        max_pixels: int = MAX_PIXELS,
        keep_display: bool = False,
    ) -> PreparedInput:
        return prepare_input(
            source,
            self.image_size,
            clahe=self.clahe,
            name=name,
            dicom_frame=dicom_frame,
            max_pixels=max_pixels,
            keep_display=keep_display,
        )

    def input_tensor(self, arrays: Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
        """Letterboxed uint8 ``(S, S)`` arrays (or a ``(B, 1, S, S)`` uint8 tensor) -> the
        normalised float batch the backend takes (the one input conversion)."""
        if isinstance(arrays, torch.Tensor):
            batch = arrays
        else:
            batch = torch.from_numpy(np.stack(arrays))[:, None]
        return self._backend.input(batch, self.mean, self.std)

    def _run(self, x: torch.Tensor, output: Output = "logits") -> Forward:
        """THE forward pass: every model output of this predictor comes from here. ``x`` from
        :meth:`input_tensor`; what the ONNX backend cannot give (Grad-CAM, features) runs on
        the PyTorch model."""
        backend = self._backend if output in self._backend.outputs else self._torch_backend()
        with self._lock:
            return backend.run(x, output)

    def logits_and_map_logits(
        self, arrays: Sequence[np.ndarray] | torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """A localising run's logits ``(B,)`` and packed detector output ``(B, A, 6)`` (see
        :mod:`bonefrac.models.detector`)."""
        if not self.localizes:
            raise ModelError(
                f"{self.name or self.architecture}: the model has no localisation head "
                "(model.localize: false); use Grad-CAM (cams) instead"
            )
        if len(arrays) == 0:
            return np.zeros(0, dtype=np.float32), np.zeros((0, 0, 6), dtype=np.float32)
        out = self._run(self.input_tensor(arrays), "head")
        return out.logits, out.head  # type: ignore[return-value]

    def maps(self, arrays: Sequence[np.ndarray] | torch.Tensor) -> np.ndarray:
        """A localising run's learned map, ``(B, S, S)`` probabilities in ``[0, 1]``."""
        from bonefrac.maps.learned import detector_maps

        _, head = self.logits_and_map_logits(arrays)
        return detector_maps(head, self.image_size, self.meta.loc_levels)

    def heatmaps(
        self, arrays: Sequence[np.ndarray], *, maps: np.ndarray | None = None
    ) -> np.ndarray:
        """THE heatmap of each image, ``(B, S, S)`` in ``[0, 1]``: the learned map of a
        localising run, Grad-CAM of the fracture logit otherwise. Every output of one image
        (predict --cam-dir, the API, DICOM, ``bonefrac explain``'s default) shows this map.
        ``maps``: a localising run's :meth:`maps` of ``arrays``, already computed."""
        if not self.localizes:
            return self.cams(arrays)
        return self.maps(arrays) if maps is None else maps

    def logits(self, arrays: Sequence[np.ndarray] | torch.Tensor, tta: bool = False) -> np.ndarray:
        """Raw logits ``(B,)``; ``tta``: the mean logit of each image and its mirror image."""
        if len(arrays) == 0:
            return np.zeros(0, dtype=np.float32)
        x = self.input_tensor(arrays)
        out = self._run(x).logits
        if tta:
            out = 0.5 * (out + self._run(torch.flip(x, dims=[3])).logits)
        return out

    def tta_logits(self, arrays: Sequence[np.ndarray] | torch.Tensor) -> np.ndarray:
        """Logits ``(B, V)`` of each image under the test-time augmentations
        :data:`bonefrac.inference.tta.TTA_VIEWS` (the first view is the image itself)."""
        from bonefrac.inference.tta import tta_batches

        if len(arrays) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        if isinstance(arrays, torch.Tensor):
            batch = arrays
        else:
            batch = torch.from_numpy(np.stack(arrays))[:, None]
        views = [self._run(self.input_tensor(v)).logits for v in tta_batches(batch)]
        return np.stack(views, axis=1)

    def features(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate (pooled backbone) features ``(B, D)`` and the class head's logits
        ``(B,)`` on them, from the PyTorch model (loaded on first use with the ONNX backend)."""
        out = self._run(self.input_tensor(arrays), "features")
        return out.features, out.logits  # type: ignore[return-value]

    def ood_scores(
        self, arrays: Sequence[np.ndarray], logits: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Out-of-scope scores (higher = less like the training data); ``None`` when the run
        has no out-of-scope detector."""
        from bonefrac.inference import ood_stats as ood

        record = self.meta.ood
        if record is None:
            return None
        if record.method == "energy":
            return ood.energy_score(self.logits(arrays) if logits is None else logits)
        if self._ood_stats is None:
            with self._load_lock:
                if self._ood_stats is None:
                    if self.run is None:
                        raise RunDirError("out-of-scope statistics need a run directory")
                    self._ood_stats = ood.load_stats(self.run, record)
        feats, _ = self.features(arrays)
        return self._ood_stats.score(feats)

    def appearance_flags(self, prepared: Sequence[PreparedInput]) -> np.ndarray | None:
        """True where the appearance rule (:mod:`bonefrac.inference.appearance`) puts the input
        out of scope; ``None`` when the run has no fitted rule."""
        from bonefrac.inference import appearance
        from bonefrac.inference.scope import appearance_out_of_scope

        record = self.meta.appearance
        if record is None or not prepared:
            return None
        if self._appearance_stats is None:
            with self._load_lock:
                if self._appearance_stats is None:
                    if self.run is None:
                        raise RunDirError("appearance statistics need a run directory")
                    self._appearance_stats = appearance.load_stats(self.run, record)
        scores = self._appearance_stats.score(appearance.appearance_features(prepared))
        return appearance_out_of_scope(scores, record.cutoff)

    def uncertainties(self, arrays: Sequence[np.ndarray], probs: np.ndarray) -> np.ndarray:
        """The refer rule's uncertainty score (``margin`` without a rule; ``tta_std`` runs the
        test-time augmentations)."""
        from bonefrac.inference.tta import tta_std

        rule = self.meta.refer
        if rule is not None and rule.score == "tta_std":
            return tta_std(self.tta_logits(arrays))
        if rule is not None and rule.score == "p_error":
            return error_probability(probs, self.threshold)
        return margin_uncertainty(probs, self.threshold)

    def cams(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Grad-CAM of the fracture logit, ``(B, S, S)`` in ``[0, 1]`` (PyTorch model)."""
        return self._run(self.input_tensor(arrays), "cam").cam  # type: ignore[return-value]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated ``sigmoid(logit / temperature)``; a probability that cannot be computed
        or is not finite is a :class:`ModelOutputError`."""
        probs = self._probabilities(logits)
        return check_finite(probs, f"{self.name or self.architecture}: probabilities")

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.meta.probability(logits), dtype=float)
        except ValueError as exc:  # a temperature that is not a positive number
            raise ModelOutputError(
                f"{self.name or self.architecture}: {exc}, so the output cannot be trusted"
            ) from None

    def self_check(self) -> np.ndarray:
        """Run the model on fixed inputs; a non-finite output is a :class:`ModelOutputError`
        (a model that cannot be trusted refuses to start instead of answering)."""
        from bonefrac.inference.selfcheck import self_check

        return self_check(self)

    def predict_prepared(
        self, prepared: Sequence[PreparedInput], heatmap: bool = False, *, strict: bool = True
    ) -> list[Prediction]:
        """Predictions for decoded inputs. A non-finite logit or probability is never a
        decision: with ``strict`` it raises :class:`ModelOutputError` for the batch; without,
        that input's entry is ``None`` (batch prediction turns it into an error row)."""
        arrays = [p.array for p in prepared]
        map_probs = None
        if self.localizes:
            from bonefrac.maps.learned import detector_maps

            raw_logits, head = self.logits_and_map_logits(arrays)
            raw = np.asarray(raw_logits, dtype=float)
            map_probs = detector_maps(head, self.image_size, self.meta.loc_levels)
        else:
            raw = np.asarray(self.logits(arrays), dtype=float)
        probs = self._probabilities(np.where(np.isfinite(raw), raw, 0.0))
        uncertainty = np.asarray(self.uncertainties(arrays, probs), dtype=float)
        usable = np.isfinite(raw) & np.isfinite(probs) & np.isfinite(uncertainty)
        if strict and not usable.all():
            names = ", ".join(p.name for p, ok in zip(prepared, usable, strict=True) if not ok)
            check_finite(np.where(usable, raw, np.nan), names[:300] or "batch")
        logits = np.where(usable, raw, 0.0)
        uncertainty = np.where(usable, uncertainty, 0.0)
        ood_scores = self.ood_scores(arrays, logits) if arrays else None
        by_score = self.meta.out_of_scope(ood_scores) if ood_scores is not None else None
        # the scope rules (modality, colour, blank) apply with or without a fitted detector
        reasons = ood_reasons(prepared, by_score, self.appearance_flags(prepared))
        oos = np.array([r is not None for r in reasons], dtype=bool)
        decisions = self.meta.decisions(probs, uncertainty, flagged=oos)
        refer = np.array([d == REFER for d in decisions], dtype=bool)
        heats = None
        if heatmap and arrays and usable.any():
            heats = self.heatmaps(arrays, maps=map_probs)
        out: list[Prediction | None] = []
        for i, p in enumerate(prepared):
            if not usable[i]:
                out.append(None)
                continue
            pred = Prediction(
                probability=float(probs[i]),
                logit=float(raw[i]),
                decision=decisions[i],
                threshold=self.threshold,
                name=p.name,
                uncertainty=float(uncertainty[i]),
                refer=bool(refer[i]),
                out_of_scope=bool(oos[i]),
                ood_score=float(ood_scores[i]) if ood_scores is not None else None,
                ood_reason=reasons[i],
            )
            if map_probs is not None:  # no boxes for an input declined as out of scope
                from bonefrac.inference.box_decoding import MAX_BOXES, decode_box_sets

                if not pred.out_of_scope:
                    args = (head[i], p.decoded_size, self.image_size, self.meta.loc_levels)
                    cuts = [(self.box_threshold, MAX_BOXES), (BEST_BOX_FLOOR, 1)]
                    pred.pred_boxes, best = decode_box_sets(*args, cuts)
                    pred.best_box = best[0] if best else None
                else:
                    pred.pred_boxes = []
            if heats is not None:
                pred.heatmap = heatmap_for_display(heats[i], p)
                pred.display = p.display if p.display is not None else None
            out.append(pred)
        return out  # type: ignore[return-value]

    def predict(
        self,
        inputs: Source | Iterable[Source],
        heatmap: bool = False,
        *,
        batch_size: int = 16,
        dicom_frame: int | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> list[Prediction]:
        """Predict paths, encoded bytes, numpy arrays or PIL images (one or an iterable).

        A file that cannot be decoded raises :class:`ImageDecodeError`; for per-file error
        rows over many files use :func:`bonefrac.batch_predict.job.predict_to_csv`.
        """
        if isinstance(inputs, (str, os.PathLike, bytes, np.ndarray, Image.Image)):
            inputs = [inputs]
        results: list[Prediction] = []
        chunk: list[PreparedInput] = []
        for src in inputs:
            chunk.append(
                self.prepare(
                    src, dicom_frame=dicom_frame, max_pixels=max_pixels, keep_display=heatmap
                )
            )
            if len(chunk) >= batch_size:
                results += self.predict_prepared(chunk, heatmap)
                chunk = []
        if chunk:
            results += self.predict_prepared(chunk, heatmap)
        return results
