"""bonefrac: fracture classifiers for limb radiographs, from manifest to served model.

The public Python API (:mod:`bonefrac.api`)::

    import bonefrac

    run = bonefrac.load("runs/lite0")
    pred = run.predict("scan.dcm")  # probability, decision, pred_boxes, heatmap
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bonefrac.version import __version__

__all__ = ["Run", "__version__", "load"]

if TYPE_CHECKING:
    from bonefrac.api import Run, load


def __getattr__(name: str) -> Any:
    """``load`` and ``Run`` import :mod:`bonefrac.api` (and torch) on first use, so ``import
    bonefrac`` (the CLI's start, ``__version__``) stays cheap."""
    if name in ("Run", "load"):
        from bonefrac import api

        return getattr(api, name)
    raise AttributeError(f"module 'bonefrac' has no attribute {name!r}")
