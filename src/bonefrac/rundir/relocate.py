"""Point a run directory at a moved copy of its images.

A run records absolute paths from the machine that trained it: ``predictions/*.csv`` image
paths, ``model.json``'s ``manifest`` and ``config.yaml``'s ``data.manifest``. After copying a
run (say, from a GPU machine) next to a manifest of the same images at other paths,
:func:`relocate_run` rewrites those paths so ``explain``, ``evaluate`` and ``train --resume``
work again. Rows are matched by ``(source, image_id)`` and must keep their labels; if any row
does not match, nothing is written.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from bonefrac.data.schema import read_manifest
from bonefrac.errors import RunDirError
from bonefrac.fileio import file_sha1


def _keys(df: pd.DataFrame, with_source: bool) -> pd.Series:
    ids = df["image_id"].astype(str)
    return df["source"].astype(str) + "/" + ids if with_source else ids


def relocate_run(run: Any, manifest: str | Path) -> dict[str, Any]:
    """Rewrite the run's image and manifest paths to ``manifest``'s; return a summary.

    ``run`` is a :class:`~bonefrac.rundir.layout.RunDir` (``RunDir.relocate`` calls this).
    """
    manifest = Path(manifest).resolve()
    new = read_manifest(manifest)
    names = run.available_predictions()
    if not names:
        raise RunDirError(f"{run.predictions_dir}: no prediction CSVs to relocate")
    lookups: dict[bool, pd.DataFrame] = {}  # keyed by "match on source too"
    rewritten: dict[str, pd.DataFrame] = {}
    for name in names:
        path = run.prediction_path(name)
        df = run.read_predictions_raw(name)
        if "image_id" not in df.columns:
            raise RunDirError(f"{path}: no image_id column, so rows cannot be matched")
        with_source = "source" in df.columns and "source" in new.columns
        if with_source not in lookups:
            keyed = new.assign(_key=_keys(new, with_source))
            lookups[with_source] = keyed.drop_duplicates("_key", keep=False).set_index("_key")
        lookup = lookups[with_source]
        keys = _keys(df, with_source)
        missing = keys[~keys.isin(lookup.index)]
        if len(missing):
            raise RunDirError(
                f"{path}: {len(missing)} of {len(df)} rows have no single match in {manifest}"
                f" (e.g. {', '.join(missing.head(3))}); nothing was changed"
            )
        matched = lookup.loc[keys]
        if "label" in df.columns:
            differ = (matched["label"].to_numpy() != df["label"].astype(int).to_numpy()).sum()
            if differ:
                raise RunDirError(
                    f"{path}: {differ} matched rows have another label in {manifest}; "
                    "is it the same data set? Nothing was changed"
                )
        out = df.copy()
        out["path"] = matched["path"].to_numpy()
        rewritten[name] = out
    for name, df in rewritten.items():
        run.write_predictions(name, df)
    old = run.raw_meta().get("manifest")
    moved = {"from": old, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    run.update_meta(manifest=str(manifest), manifest_sha1=file_sha1(manifest), relocated=moved)
    if run.config_path.is_file():
        cfg = run.config()
        cfg.data.manifest = str(manifest)
        run.write_config(cfg)
    return {
        "run": str(run.path),
        "manifest": str(manifest),
        "previous_manifest": old,
        "files": {run.prediction_path(n).name: len(df) for n, df in rewritten.items()},
    }


def unroot_run(run: Any, data_root: str | Path) -> dict[str, Any]:
    """Make the run hold no path of this machine (a shipped model): image paths become
    relative to ``data_root`` (``fracatlas/images/...``), model.json's ``manifest`` and
    config.yaml's ``data.manifest`` the manifest's file name. ``bonefrac relocate`` points a
    copy back at a local manifest (rows match by source and image_id)."""
    root = Path(data_root).resolve()
    for name in run.available_predictions():
        df = run.read_predictions_raw(name)
        paths = df["path"].astype(str)
        outside = [p for p in paths if not Path(p).resolve().is_relative_to(root)]
        if outside:
            raise RunDirError(
                f"{run.prediction_path(name)}: {len(outside)} image paths lie outside {root} "
                f"(e.g. {outside[0]}); nothing was changed"
            )
        run.write_predictions(
            name, df.assign(path=[Path(p).resolve().relative_to(root).as_posix() for p in paths])
        )
    manifest = run.raw_meta().get("manifest")
    short = Path(manifest).name if manifest else None
    run.update_meta(manifest=short, relocated=None)
    if run.config_path.is_file():
        cfg = run.config()
        cfg.data.manifest = short
        run.write_config(cfg)
    return {"run": str(run.path), "data_root": str(root), "manifest": short}
