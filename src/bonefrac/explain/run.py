"""``explain_run``: heatmap overlays (and the localisation score) for a run directory.

Which images (``split`` mode, the default ``test``):

* overlays for ``n`` images: about three quarters positives (label 1), those with fracture boxes
  first, then by predicted probability, highest first (what the model finds, and whether the
  map points at the annotated fracture); the remaining quarter are the negatives with the
  HIGHEST probability (the false-positive candidates: what fools the model). If one side runs
  short the other fills the gap. Ties are broken by image id, so the choice is reproducible.
* with ``score=True``: every image of the split that has fracture boxes is scored (not only
  the ``n`` overlaid), boxes coming from the run's manifest (``model.json``'s ``manifest``).

``images`` mode: the given files (folders are expanded); label and boxes are looked up in the
run's manifest by path when the file is there, otherwise the label shows as ``?``.

Outputs (``out_dir`` defaults to ``RUN/explain``)::

    <out>/<method>/<stem>.png        one overlay per image, at the original resolution
                                     (stem: :func:`bonefrac.rundir.overlay_stem` of its id)
    <out>/<method>/grid.png          captioned grid (id, probability, label)
    <out>/grid.png                   copy of the latest grid
    <out>/localization.json          with score=True (also copied to <out>/<method>/)

Re-running overwrites these derived files (there is nothing to lose: they are recomputed from
the run). Probabilities in captions are calibrated: ``sigmoid(logit / temperature)`` with the
run's temperature, like the threshold stored in ``model.json``.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bonefrac.data.schema import BOXES
from bonefrac.data.transforms import heatmap_to_original
from bonefrac.errors import ConfigError, DataError
from bonefrac.fileio import atomic_path, write_json
from bonefrac.maps.cam import CAM_METHODS, MODEL_METHOD, check_method, explainer, resolve_layer
from bonefrac.maps.pointing_game import (
    DEFAULT_TOLERANCE,
    score_image,
    summarise,
)
from bonefrac.rundir import RunDir, overlay_stem
from bonefrac.rundir.predictions import IMAGE_ID, LABEL, LOGIT, PATH, TRUE_BOXES, parse_boxes

if TYPE_CHECKING:
    from bonefrac.inference.predictor import Predictor

log = logging.getLogger(__name__)

NEGATIVE_SHARE = 0.25
BAR_LABELS = {
    "saliency": "|gradient| of the fracture logit (relative)",
    "smoothgrad": "SmoothGrad |gradient| (relative)",
    "eigencam": "first principal component of the layer (relative)",
    "model": "learned fracture map (probability)",
}


@dataclass
class Item:
    """One image to explain."""

    image_id: str
    path: str
    label: int | None = None
    logit: float | None = None
    boxes: list[list[float]] = field(default_factory=list)
    overlay: bool = False
    score: bool = False


def explain_run(
    run_dir: str | Path,
    split: str = "test",
    images: Sequence[str | Path] | None = None,
    method: str | None = None,
    n: int = 16,
    layer: str | None = None,
    score: bool = False,
    out_dir: str | Path | None = None,
    *,
    batch_size: int = 16,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: bool = False,
) -> dict[str, Any]:
    """Write overlays (and ``localization.json`` when ``score``) for a run; return a summary.

    Returns ``{"out_dir", "method", "layer", "overlays": [paths], "grid", "localization"
    (the localization.json document, or None), "localization_path", "n_processed"}``.
    ``method`` ``None``: ``model`` (the learned map) for a localising run, else ``gradcam``.
    """
    from bonefrac.inference.predictor import Predictor

    method = check_method(method) if method is not None else None
    if n < 0:
        raise ConfigError(f"--n must be >= 0, got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    predictor = Predictor.from_run(run_dir)
    run = predictor.run
    assert run is not None
    if method is None:
        method = MODEL_METHOD if predictor.localizes else "gradcam"
    if out_dir is None:  # a shipped model is read-only: its overlays go to --out
        run.require_writable()
    out = Path(out_dir) if out_dir is not None else run.explain_dir
    manifest = _run_manifest(predictor.meta.get("manifest"), required=score)

    if images:
        items = _image_items(images, manifest)
        for item in items[:n]:
            item.overlay = True
        source = "images"
    else:
        items = _split_items(run, split, manifest)
        for item in select_for_overlay(items, n):
            item.overlay = True
        source = f"split {split}"
    if score:
        for item in items:
            item.score = bool(item.boxes)
    todo = [it for it in items if it.overlay] + [it for it in items if it.score and not it.overlay]
    if not todo:
        raise DataError(
            f"{run.path}: nothing to explain ({len(items)} images, n={n}, score={score})"
        )

    method_dir = out / method.replace("/", "_")
    overlays: list[Path] = []
    panels: list[Any] = []
    scored: list[dict[str, Any]] = []
    from rich.progress import Progress

    with (
        _heat_source(predictor, method, layer) as (heat_of, layer_name),
        Progress(disable=not progress, transient=True) as bar,
    ):
        task = bar.add_task(f"explain ({method})", total=len(todo))
        for chunk in _batched(todo, batch_size):
            prepared = [predictor.prepare(item.path, name=item.path) for item in chunk]
            arrays = [p.array for p in prepared]
            heats = heat_of(arrays)
            if any(item.logit is None for item in chunk):  # not in the predictions CSV
                for item, logit in zip(chunk, predictor.logits(arrays), strict=True):
                    if item.logit is None:
                        item.logit = float(logit)
            for item, heat, prep in zip(chunk, heats, prepared, strict=True):
                prob = float(predictor.probabilities(item.logit))
                _handle_item(
                    item, heat, prep.decoded_size, prob, method, method_dir, tolerance,
                    overlays, panels, scored,
                )  # fmt: skip
            bar.advance(task, len(chunk))

    grid = None
    if panels:
        from bonefrac.maps.overlay import save_grid

        title = f"{method}" + (f" @ {layer_name}" if layer_name else "") + f" - {source}"
        grid = save_grid(
            panels,
            method_dir / "grid.png",
            title=title,
            bar_label=BAR_LABELS.get(method, "evidence for fracture (relative)"),
        )
        _copy(grid, out / "grid.png")

    loc = loc_path = None
    if score:
        loc = summarise(
            scored,
            method=method,
            layer=layer_name,
            tolerance=tolerance,
            source=source,
            run=str(run.path),
            image_size=predictor.image_size,
        )
        if not scored:
            loc["note"] = f"no {source} image has fracture boxes in the manifest; nothing scored"
            log.warning(loc["note"])
        write_json(method_dir / "localization.json", loc)
        loc_path = out / "localization.json"
        write_json(loc_path, loc)
    return {
        "out_dir": out,
        "method": method,
        "layer": layer_name,
        "overlays": overlays,
        "grid": grid,
        "localization": loc,
        "localization_path": loc_path,
        "n_processed": len(todo),
    }


# --- selection ----------------------------------------------------------------------------


def select_for_overlay(items: Sequence[Item], n: int) -> list[Item]:
    """Positives (boxed first, then most probable) and the most fracture-like negatives."""
    if n <= 0:
        return []

    def key_pos(it: Item) -> tuple:
        return (not it.boxes, -(it.logit if it.logit is not None else -math.inf), it.image_id)

    def key_neg(it: Item) -> tuple:
        return (-(it.logit if it.logit is not None else -math.inf), it.image_id)

    pos = sorted((it for it in items if it.label == 1), key=key_pos)
    neg = sorted((it for it in items if it.label == 0), key=key_neg)
    other = sorted((it for it in items if it.label not in (0, 1)), key=key_neg)
    n_neg = min(len(neg), max(1 if n > 1 else 0, round(n * NEGATIVE_SHARE)))
    n_pos = min(len(pos), n - n_neg)
    n_neg = min(len(neg), n - n_pos)
    chosen = pos[:n_pos] + neg[:n_neg]
    return chosen + other[: n - len(chosen)]


# --- records ------------------------------------------------------------------------------


def _run_manifest(path: str | None, required: bool) -> pd.DataFrame | None:
    from bonefrac.data.schema import read_manifest

    if path and Path(path).is_file():
        return read_manifest(path)
    msg = f"the run's recorded manifest {path!r} is not there, so fracture boxes are unknown"
    if required:
        raise DataError(msg + "; --score needs them: restore the manifest at that path")
    log.warning("%s; overlays are drawn without boxes", msg)
    return None


def _split_items(run: RunDir, split: str, manifest: pd.DataFrame | None) -> list[Item]:
    source = run.prediction_path(split)
    df = run.predictions(split)
    boxes_by_id: dict[str, Any] = {}
    if TRUE_BOXES in df.columns:
        boxes_by_id = dict(zip(df[IMAGE_ID], df[TRUE_BOXES], strict=True))
    elif manifest is not None:
        source = "the run's manifest"
        boxes_by_id = dict(zip(manifest[IMAGE_ID], manifest[BOXES], strict=False))
    return [
        Item(
            image_id=image_id,
            path=str(path),
            label=int(label),
            logit=float(logit),
            boxes=parse_boxes(boxes_by_id.get(image_id), source=source, image_id=image_id),
        )
        for image_id, path, label, logit in zip(
            df[IMAGE_ID], df[PATH], df[LABEL], df[LOGIT], strict=True
        )
    ]


def _image_items(images: Sequence[str | Path], manifest: pd.DataFrame | None) -> list[Item]:
    from bonefrac.data.imageio import is_candidate_image

    paths: list[Path] = []
    for p in map(Path, images):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_candidate_image(q))
            if not found:
                raise DataError(f"{p}: folder holds no images (jpg, png, dcm, ...)")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"{p}: no such image file or folder")
    by_path: dict[str, dict[str, Any]] = {}
    if manifest is not None:
        for row in manifest.to_dict("records"):
            by_path[str(Path(row[PATH]).resolve())] = row
    items = []
    for p in paths:
        row = by_path.get(str(p.resolve()))
        if row is not None:
            image_id = str(row[IMAGE_ID])
            boxes = parse_boxes(row[BOXES], source="the run's manifest", image_id=image_id)
            items.append(Item(image_id, str(p), int(row[LABEL]), None, boxes))
        else:
            items.append(Item(p.name, str(p)))
    return items


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


# --- processing ---------------------------------------------------------------------------


@contextmanager
def _heat_source(
    predictor: Predictor, method: str, layer: str | None
) -> Iterator[tuple[Callable[[list[np.ndarray]], np.ndarray], str | None]]:
    """``(arrays -> heatmaps (B, S, S), CAM layer name)`` for ``method``.

    The run's own heatmap (the learned map of a localising run, Grad-CAM at the model's CAM
    layer otherwise) and plain Grad-CAM come from the Predictor, so the overlays show what
    predict, serve and DICOM output show; the other methods (or another ``layer``) run their
    explainer over the Predictor's model and input.
    """
    own = MODEL_METHOD if predictor.localizes else "gradcam"
    if method == own and (layer is None or method == MODEL_METHOD):
        yield predictor.heatmaps, (_cam_layer(predictor) if method in CAM_METHODS else None)
    elif method == "gradcam" and layer is None:
        yield predictor.cams, _cam_layer(predictor)
    else:
        with explainer(predictor.torch_model, method, layer) as ex:

            def heat_of(arrays: list[np.ndarray]) -> np.ndarray:
                return ex(predictor.input_tensor(arrays)).heat

            yield heat_of, (ex.layer_name if method in CAM_METHODS else None)


def _cam_layer(predictor: Predictor) -> str:
    return resolve_layer(predictor.torch_model)[1]


def _batched(items: Sequence[Item], size: int) -> Iterable[list[Item]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _handle_item(
    item: Item,
    heat: np.ndarray,
    decoded_size: tuple[int, int],
    prob: float | None,
    method: str,
    method_dir: Path,
    tolerance: float,
    overlays: list[Path],
    panels: list[Any],
    scored: list[dict[str, Any]],
) -> None:
    from bonefrac.maps.overlay import Panel, caption, render_overlay, save_png, thumbnail

    size = decoded_size
    if item.overlay:
        from bonefrac.data.imageio import load_grayscale

        base = load_grayscale(item.path, name=item.path)  # full resolution, no JPEG draft
        size = base.size
    full = heatmap_to_original(heat, size, decoded_size)
    if item.overlay:
        img = render_overlay(base, full, item.boxes)
        path = save_png(img, method_dir / f"{overlay_stem(item.image_id)}.png")
        overlays.append(path)
        panels.append(Panel(thumbnail(img), caption(item.image_id, prob, item.label)))
    if item.score and item.boxes:
        res = score_image(full, item.boxes, tolerance)
        scored.append({"image_id": item.image_id, "label": item.label, "prob": prob, **res})


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
