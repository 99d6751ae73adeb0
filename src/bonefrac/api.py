"""The public Python API: ``bonefrac.load(PATH)`` -> :class:`Run`, ``run.predict(source)``.

::

    import bonefrac

    run = bonefrac.load("runs/lite0")
    pred = run.predict("scan.dcm")  # pred.probability, .decision, .pred_boxes, .heatmap

A :class:`Run` is a thin front over :class:`~bonefrac.inference.predictor.Predictor`, the one
door from an image to a decision, so a script gets exactly the answers of ``bonefrac predict``
and ``bonefrac serve``; loading fails closed like they do (model.json of another
``format_version``, weights whose SHA-256 differs, a model whose output is not finite).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import overload

from bonefrac.inference.predictor import Prediction, Predictor, Source
from bonefrac.rundir import ModelMeta


class Run:
    """A loaded run: :meth:`predict` plus its validated :attr:`meta` (model.json) and the
    :attr:`predictor` underneath (batches, prepared inputs, maps, features)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def meta(self) -> ModelMeta:
        """The run's validated ``model.json`` (threshold, temperature, safeguards...)."""
        return self.predictor.meta

    @property
    def path(self) -> Path | None:
        """The run directory (``None`` for a predictor built from a model in memory)."""
        return self.predictor.run.path if self.predictor.run is not None else None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, architecture={self.meta.architecture!r})"

    @overload
    def predict(self, source: Source, *, heatmap: bool = True) -> Prediction: ...

    @overload
    def predict(
        self, source: list[Source] | tuple[Source, ...], *, heatmap: bool = True
    ) -> list[Prediction]: ...

    def predict(
        self, source: Source | list[Source] | tuple[Source, ...], *, heatmap: bool = True
    ) -> Prediction | list[Prediction]:
        """One :class:`Prediction` for a path, encoded bytes, a numpy array or a PIL image; a
        list of them for a list (or tuple) of sources.

        ``heatmap``: also compute the map shown on the page (a localising run's learned map,
        else Grad-CAM of the fracture logit), with the greyscale image it is aligned to. A file
        that cannot be decoded raises :class:`~bonefrac.errors.ImageDecodeError`.
        """
        if isinstance(source, (list, tuple)):
            return self.predictor.predict(list(source), heatmap)
        (prediction,) = self.predictor.predict(source, heatmap)
        return prediction


def load(path: str | os.PathLike[str], *, backend: str = "torch") -> Run:
    """Load the run directory at ``path`` for ``backend`` ``torch`` (the safetensors weights)
    or ``onnx`` (``RUN/model.onnx`` from ``bonefrac export RUN --onnx``).

    Any problem with the run (a missing directory, model.json of another format version,
    corrupt weights, non-finite output) is a :class:`~bonefrac.errors.RunDirError` or another
    :class:`~bonefrac.errors.BonefracError` naming the file and the fix.
    """
    run_dir = Path(path)
    # Shipped model names (``bonefrac.load("default")``) resolve to their run directory here,
    # before loading, so they get the same fail-closed checks as a run on disk.
    return Run(Predictor.from_run(run_dir, backend))
