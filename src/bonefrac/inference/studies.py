"""Study-level decisions: the images of one study (e.g. the 2-3 views of a wrist) -> one answer.

Aggregation of the image probabilities (``--study-agg``):

- ``max`` (default): the study's probability is its most suspicious view. A fracture is often
  visible on one view only, so averaging would dilute it; and with ``max`` the study decision at
  the run's threshold is exactly "any image is at or above the threshold", the same rule a
  reader applies. It does not grow with the number of views and is robust to views that add
  nothing (a normal lateral next to a positive AP).
- ``mean``: the average view; smoother, but one clear view among normal ones is diluted.
- ``noisy_or``: ``1 - prod(1 - p)``, the probability that at least one view is positive *if the
  views were independent*. They are not (same bone, same patient), so it inflates with the
  number of views and is miscalibrated at the image threshold; offered for comparison.

Images whose decision is ``out_of_scope`` take no part in the study probability; a study whose
usable images are all out of scope is ``out_of_scope``. Otherwise the study is ``fracture``
when its probability reaches the threshold, else ``refer`` when any image is ``refer``, else
``no_fracture``. Error rows (undecodable files) are counted, not aggregated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.errors import DataError
from bonefrac.rundir.predictions import LABEL, PATH, PROB, THRESHOLD

AGGREGATIONS = ("max", "mean", "noisy_or")
DEFAULT_AGGREGATION = "max"
STUDY_BY = ("folder",)
STUDY_COLUMNS = [
    "study", "prob", "decision", "aggregation", "threshold", "n_images", "n_failed", "images",
    "image_probs",
]  # fmt: skip
#: Image decisions that count as positive / negative in a predict CSV (0/1 or words).
POSITIVE = {"1", "fracture", "true"}


def check_aggregation(how: str) -> str:
    if how not in AGGREGATIONS:
        raise DataError(f"--study-agg {how}: choose one of {', '.join(AGGREGATIONS)}")
    return how


def aggregate(probs: Iterable[float], how: str = DEFAULT_AGGREGATION) -> float:
    """One study probability from its image probabilities (see the module text)."""
    p = np.asarray(list(probs), dtype=float)
    if p.size == 0:
        return float("nan")
    if how == "max":
        return float(p.max())
    if how == "mean":
        return float(p.mean())
    if how == "noisy_or":
        return float(1.0 - np.prod(1.0 - np.clip(p, 0.0, 1.0)))
    raise DataError(f"--study-agg {how}: choose one of {', '.join(AGGREGATIONS)}")


def aggregate_frame(
    frame: pd.DataFrame, study: str, prob: str, how: str = DEFAULT_AGGREGATION
) -> pd.DataFrame:
    """``frame`` grouped by ``study``: one row per study with the aggregated ``prob``,
    ``n_images`` and, when ``frame`` has a ``label``, the study label (positive if any image
    is)."""
    check_aggregation(how)
    grouped = frame.groupby(study, sort=True)
    out = pd.DataFrame(
        {
            "prob": grouped[prob].agg(lambda s: aggregate(s, how)),
            "n_images": grouped.size(),
        }
    )
    if LABEL in frame.columns:
        out[LABEL] = grouped[LABEL].max().astype(int)
    return out.reset_index().rename(columns={study: "study"})


# --- where the study ids come from -------------------------------------------------------


def read_path_list(csv_path: Path, study_column: str) -> tuple[list[Path], dict[Path, str]]:
    """A CSV list of images with a ``path`` column and ``study_column``: the paths (relative
    ones against the CSV's folder) and ``{absolute path: study id}``."""
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any parser failure is this file's
        raise DataError(f"{csv_path}: not a readable CSV ({exc}); give a path,study list") from None
    missing = [c for c in ("path", study_column) if c not in df.columns]
    if missing:
        raise DataError(
            f"{csv_path}: no column {', '.join(missing)}; --study-column needs a CSV with "
            f"'path' and '{study_column}' columns (columns found: {', '.join(df.columns)})"
        )
    blank = df.index[df[study_column].str.strip() == ""].tolist()
    if blank:
        raise DataError(
            f"{csv_path}: {len(blank)} row(s) without a {study_column} (first: line "
            f"{blank[0] + 2}); fill it in or drop the row"
        )
    base = csv_path.resolve().parent
    studies: dict[Path, str] = {}
    for p, s in zip(df[PATH], df[study_column], strict=True):
        path = Path(p).expanduser()
        studies[(path if path.is_absolute() else base / path).absolute()] = s.strip()
    return list(studies), studies


def folder_study(path: Path) -> str:
    """``--study-by folder``: the study of an image is its parent folder."""
    return str(path.parent)


# --- the predict CSV -> the study CSV ----------------------------------------------------


def studies_path(out: Path) -> Path:
    """``preds.csv`` -> ``preds.studies.csv``."""
    return out.with_name(f"{out.stem if out.suffix == '.csv' else out.name}.studies.csv")


def _decision(value: str) -> str:
    value = str(value).strip().lower()
    if value in POSITIVE:
        return "fracture"
    if value in ("refer", "out_of_scope"):
        return value
    return "no_fracture"


def study_rows(
    rows: Iterable[Mapping[str, str]],
    study_of: Mapping[Path, str] | None,
    how: str = DEFAULT_AGGREGATION,
) -> list[dict[str, Any]]:
    """Predict-CSV rows (``path`` still encoded) -> one row per study (:data:`STUDY_COLUMNS`).

    ``study_of``: ``{path: study}`` (paths not in it are left out); ``None``: group by folder.
    """
    from bonefrac.csvpaths import decode_path

    check_aggregation(how)
    groups: dict[str, list[Mapping[str, str]]] = {}
    for row in rows:
        path = decode_path(row[PATH])
        study = folder_study(path) if study_of is None else study_of.get(path)
        if study is not None:
            groups.setdefault(study, []).append(row)
    out = []
    for study in sorted(groups):
        members = groups[study]
        good = [r for r in members if not r.get("error") and r.get("prob") not in ("", None)]
        decisions = [_decision(r.get("decision", "")) for r in good]
        in_scope = [r for r, d in zip(good, decisions, strict=True) if d != "out_of_scope"]
        prob = aggregate((float(r[PROB]) for r in in_scope), how)
        thresholds = [float(r[THRESHOLD]) for r in members if r.get(THRESHOLD)]
        threshold = thresholds[0] if thresholds else float("nan")
        if not good:
            decision = ""  # every image failed: no answer for the study
        elif not in_scope:
            decision = "out_of_scope"
        elif prob >= threshold:
            decision = "fracture"
        elif "refer" in decisions:
            decision = "refer"
        else:
            decision = "no_fracture"
        out.append(
            {
                "study": study,
                "prob": f"{prob:.6f}" if in_scope else "",
                "decision": decision,
                "aggregation": how,
                "threshold": f"{threshold:.6g}",
                "n_images": len(members),
                "n_failed": len(members) - len(good),
                "images": json.dumps([r[PATH] for r in members], ensure_ascii=False),
                "image_probs": json.dumps([r.get("prob", "") for r in members]),
            }
        )
    return out


def write_studies(
    out: Path,
    rows: Sequence[Mapping[str, str]],
    study_of: Mapping[Path, str] | None,
    how: str = DEFAULT_AGGREGATION,
) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``<out>.studies.csv`` (atomically) from the predict CSV's rows."""
    import csv

    from bonefrac.fileio import atomic_open

    studies = study_rows(rows, study_of, how)
    target = studies_path(out)
    with atomic_open(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=STUDY_COLUMNS)
        writer.writeheader()
        writer.writerows(studies)
    return target, studies


def study_inputs(
    paths: Sequence[Path], study_column: str | None, study_by: str | None
) -> tuple[list[Path], dict[Path, str] | None]:
    """``bonefrac predict``'s inputs and study map for ``--study-column`` / ``--study-by``.

    ``--study-column COL``: ``paths`` is one CSV list (``path`` + COL); returns its image
    paths and their studies. ``--study-by folder``: ``paths`` as given, studies by folder
    (``None`` map). Neither: ``paths`` unchanged and ``None``.
    """
    if study_column and study_by:
        raise DataError("--study-column and --study-by exclude each other; choose one")
    if study_by is not None and study_by not in STUDY_BY:
        raise DataError(f"--study-by {study_by}: choose one of {', '.join(STUDY_BY)}")
    if not study_column:
        return list(paths), None
    if len(paths) != 1 or not Path(paths[0]).is_file():
        raise DataError(
            f"--study-column {study_column}: give exactly one CSV list of images (columns "
            f"'path' and '{study_column}') instead of {len(paths)} path(s)"
        )
    return read_path_list(Path(paths[0]), study_column)
