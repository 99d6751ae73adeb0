"""``bonefrac data build`` and ``data report``: dataset manifests.

``data build`` has one option per source kind of :data:`bonefrac.data.sources.SOURCE_KINDS`,
added from the registry, so a new kind needs no edit here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from bonefrac.cli import render
from bonefrac.config import DataBuildConfig
from bonefrac.data.sources import SOURCE_KINDS

app = typer.Typer(help="Build and inspect dataset manifests.", no_args_is_help=True)


def _with_source_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` (which takes the sources as ``**sources``) one option per registered
    source kind, right after its first parameter (``--out``)."""
    signature = inspect.signature(command)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    sources = [
        inspect.Parameter(
            kind.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, kind.option, help=kind.help),
            annotation=list[Path] | None if kind.repeatable else Path | None,
        )
        for kind in SOURCE_KINDS.values()
    ]
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[params[0], *sources, *params[1:]]
    )
    return command


@app.command("build")
@_with_source_options
def build(
    out: Path = typer.Option(
        ..., "--out", help="Folder for manifest.csv, quarantine.csv, summary.json."
    ),
    *,
    seed: int = typer.Option(
        DataBuildConfig.model_fields["seed"].default,
        "--seed",
        help="Seed of the train/val/test split.",
    ),
    unlabelled_negative: bool = typer.Option(
        False, "--unlabelled-negative", help="YOLO images without a label file count as label 0."
    ),
    fracture_classes: str | None = typer.Option(
        None, "--fracture-classes", help='YOLO class names that count as fracture, e.g. "a,b".'
    ),
    class_map: str | None = typer.Option(
        None, "--class-map", help='Extra folder class -> label pairs, e.g. "broken=1,intact=0".'
    ),
    freeze_split: Path | None = typer.Option(
        None, "--freeze-split", help="Older manifest.csv whose split assignments are kept."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Decode processes (default: CPUs)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing manifest."),
    **sources: Any,
) -> None:
    """Validate, de-duplicate and split the sources into DIR/manifest.csv."""
    from bonefrac.data.manifest import build_manifest

    config = DataBuildConfig(
        out=out, sources=sources, seed=seed, unlabelled_negative=unlabelled_negative,
        fracture_classes=fracture_classes, class_map=class_map, freeze_split=freeze_split,
        workers=workers, force=force, progress=True,
    )  # fmt: skip
    render.data_build(render.console, build_manifest(config), out)


@app.command("report")
def report(
    manifest: Path = typer.Argument(..., help="Manifest folder or manifest.csv."),
) -> None:
    """Counts per split x label x region, duplicate groups, quarantine reasons, bar chart."""
    from bonefrac.data.report import report as print_report

    print_report(manifest, console=render.console)
