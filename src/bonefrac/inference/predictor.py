"""Run directory -> :class:`Predictor`: probabilities, decisions and heatmaps for new images.

Preprocessing comes from ``model.json`` only (input size, CLAHE, mean/std) and goes through the
very functions training and evaluation use (:func:`bonefrac.data.imageio.load_grayscale` with
the JPEG draft at the input size, :func:`bonefrac.data.transforms.prepare_image`,
:func:`bonefrac.data.transforms.to_input`), so a run predicts exactly as it was evaluated.
The probability is ``sigmoid(logit / temperature)`` and the decision ``probability >= threshold``
with the run's stored calibration and threshold.

Backends: ``torch`` (the safetensors weights) or ``onnx`` (``RUN/model.onnx`` from
``bonefrac export RUN --onnx``, ONNX Runtime on CPU). Heatmaps (Grad-CAM on the fracture logit)
always use the PyTorch model, loaded on first use with the ONNX backend.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bonefrac.data.imageio import MAX_PIXELS, _to_l, _window_to_uint8, load_grayscale
from bonefrac.data.transforms import prepare_image, to_input
from bonefrac.errors import ImageDecodeError, RunDirError
from bonefrac.fileio import file_sha256
from bonefrac.models.runio import RunMetaView

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
ONNX_FILE = "model.onnx"
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


@dataclass
class Prediction:
    """The model's answer for one image."""

    probability: float  # calibrated: sigmoid(logit / temperature)
    logit: float  # raw model output
    decision: bool  # probability >= threshold
    threshold: float
    name: str = ""
    #: float32 (h, w) in [0, 1], aligned with ``display`` (letterbox padding removed)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    display: Image.Image | None = field(default=None, repr=False)

    def overlay(self) -> Image.Image:
        """The heatmap blended onto the greyscale image (RGB), as the page and --cam-dir show it."""
        if self.heatmap is None or self.display is None:
            raise ValueError("no heatmap: call predict(..., heatmap=True)")
        from bonefrac.explain.overlay import render_overlay

        return render_overlay(self.display, self.heatmap)

    def as_dict(self) -> dict[str, Any]:
        return {
            "probability": self.probability,
            "logit": self.logit,
            "decision": self.decision,
            "threshold": self.threshold,
        }


def default_threads() -> int:
    """CPU threads for one inference call: the CPUs this process may use, at most 8."""
    from bonefrac.system import usable_cpus

    return max(1, min(8, usable_cpus()))


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
        img = _array_to_l(source)
        label = name or "<array>"
    elif isinstance(source, Image.Image):
        img = _to_l(source)
        label = name or "<image>"
    else:
        label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
        img = load_grayscale(
            source if isinstance(source, bytes) else Path(source),
            draft_size=size,
            max_pixels=max_pixels,
            dicom_frame=dicom_frame,
            name=label,
        )
    w, h = img.size
    if w * h > max_pixels:  # arrays / PIL images given directly
        raise ImageDecodeError(label, "too many pixels", f"{w}x{h} exceeds {max_pixels} pixels")
    display = None
    if keep_display:
        display = img.copy()
        if max(w, h) > DISPLAY_MAX_SIDE:
            display.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.BILINEAR)
    return PreparedInput(prepare_image(img, size, clahe=clahe), (w, h), label, display)


def _array_to_l(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if rgb.dtype != np.uint8:
            rgb = _window_to_uint8(rgb.astype(np.float32))
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("L")
    if arr.ndim != 2:
        raise ImageDecodeError(
            "<array>", "not an image", f"expected (H, W) or (H, W, 3), got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr), "L")
    if arr.dtype == np.bool_:
        return Image.fromarray(arr.astype(np.uint8) * 255, "L")
    return Image.fromarray(_window_to_uint8(arr.astype(np.float32)), "L")


def heatmap_for_display(cam: np.ndarray, prepared: PreparedInput) -> np.ndarray:
    """Letterboxed ``(S, S)`` CAM -> ``(h, w)`` over ``prepared.display`` (padding cut off)."""
    from bonefrac.explain.localization import heatmap_to_original

    target = prepared.display.size if prepared.display is not None else prepared.decoded_size
    return np.clip(heatmap_to_original(cam, target, prepared.decoded_size), 0.0, 1.0)


class Predictor(RunMetaView):
    """A run's model ready to predict. Thread-safe: model calls are serialised by a lock."""

    def __init__(
        self,
        run_dir: Path,
        meta: dict[str, Any],
        backend: str,
        *,
        model: torch.nn.Module | None = None,
        session: Any = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.backend = backend
        self._model = model
        self._session = session
        self._lock = threading.Lock()  # torch forward, Grad-CAM hooks and ORT calls
        self._load_lock = threading.Lock()

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_run(
        cls, run_dir: str | Path, backend: str = "torch", threads: int | None = None
    ) -> Predictor:
        """Load ``run_dir`` for ``backend`` ``torch`` or ``onnx`` (``RUN/model.onnx``)."""
        from bonefrac.models.runio import load_run, read_model_json

        run_dir = Path(run_dir)
        if backend not in BACKENDS:
            raise RunDirError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "torch":
            run = load_run(run_dir)
            return cls(run_dir, run.meta, backend, model=run.model)
        meta = read_model_json(run_dir)
        session = open_onnx_session(run_dir, meta, threads=threads)
        return cls(run_dir, meta, backend, session=session)

    # --- settings from model.json ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def architecture(self) -> str:
        return str(self.meta.get("architecture", ""))

    @property
    def torch_model(self) -> torch.nn.Module:
        """The PyTorch model (loaded on first use with the ONNX backend, for heatmaps)."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    from bonefrac.models.runio import load_run

                    self._model = load_run(self.run_dir).model
        return self._model

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

    def _input(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(arrays))[:, None]
        return to_input(batch, self.mean, self.std).contiguous()

    def logits(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Raw logits ``(B,)`` for letterboxed uint8 ``(S, S)`` arrays."""
        if len(arrays) == 0:
            return np.zeros(0, dtype=np.float32)
        x = self._input(arrays)
        with self._lock:
            if self.backend == "onnx":
                out = self._session.run(None, {self._session.get_inputs()[0].name: x.numpy()})[0]
                return np.asarray(out, dtype=np.float32).reshape(len(arrays), -1)[:, 0]
            with torch.inference_mode():
                return self._model(x).float().reshape(len(arrays), -1)[:, 0].numpy()

    def cams(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Grad-CAM of the fracture logit, ``(B, S, S)`` in ``[0, 1]`` (PyTorch model)."""
        from bonefrac.explain.cam import explainer

        model = self.torch_model
        x = self._input(arrays)
        with self._lock, explainer(model, "gradcam") as ex:
            return ex(x).heat

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        return 1.0 / (1.0 + np.exp(-z))

    def predict_prepared(
        self, prepared: Sequence[PreparedInput], heatmap: bool = False
    ) -> list[Prediction]:
        arrays = [p.array for p in prepared]
        logits = self.logits(arrays)
        probs = self.probabilities(logits)
        heats = self.cams(arrays) if heatmap and arrays else None
        out = []
        thr = self.threshold
        for i, p in enumerate(prepared):
            pred = Prediction(
                probability=float(probs[i]),
                logit=float(logits[i]),
                decision=bool(probs[i] >= thr),
                threshold=thr,
                name=p.name,
            )
            if heats is not None:
                pred.heatmap = heatmap_for_display(heats[i], p)
                pred.display = p.display if p.display is not None else None
            out.append(pred)
        return out

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
        rows over many files use :func:`bonefrac.inference.batch.predict_to_csv`.
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


def open_onnx_session(run_dir: Path, meta: dict[str, Any], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``RUN/model.onnx``; refuses a stale export."""
    import onnxruntime as ort

    path = run_dir / ONNX_FILE
    if not path.is_file():
        raise RunDirError(f"{path}: not found; run 'bonefrac export {run_dir} --onnx' first")
    record = meta.get("onnx") or {}
    weights = run_dir / "model.safetensors"
    if record.get("weights_sha256") and weights.is_file():
        if file_sha256(weights) != record["weights_sha256"]:
            raise RunDirError(
                f"{path}: exported from other weights than {weights}; "
                f"re-run 'bonefrac export {run_dir} --onnx'"
            )
    else:
        log.warning("%s: no export record in model.json; cannot check it is up to date", path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
