"""``bonefrac explain``: heatmap overlays and the localisation score against boxes."""

from __future__ import annotations

from pathlib import Path

import typer

from bonefrac.cli import render
from bonefrac.cli.runarg import RUN_HELP, into_option, run_arg


def explain(
    run: Path = typer.Argument(..., help=RUN_HELP),
    more_images: list[Path] = typer.Argument(
        None,
        hidden=True,
        metavar="IMAGES",
        help="Extra --images paths (so '--images dir/*.png' works).",
    ),
    split: str = typer.Option(
        "test", "--split", help="Explain the images of these predictions (val, test or a name)."
    ),
    images: list[Path] = typer.Option(
        None, "--images", help="Image files or folders instead of a split (repeatable)."
    ),
    method: str = typer.Option(
        None,
        "--method",
        help="model | gradcam | gradcam++ | eigencam | saliency | smoothgrad (default: model, "
        "the learned map, for a run trained with model.localize: true; else gradcam)",
    ),
    n: int = typer.Option(16, "--n", help="How many images get an overlay (and the grid)."),
    layer: str = typer.Option(
        None, "--layer", help="CAM target layer, a dotted module path, e.g. backbone.stages.3."
    ),
    score: bool = typer.Option(
        False, "--score", help="Score every image with fracture boxes: localization.json."
    ),
    out: Path = typer.Option(
        None, "--out", help="Output folder (default: RUN/explain; needed for a shipped model)."
    ),
    into: Path | None = into_option(),
) -> None:
    """Heatmap overlays for the fracture logit; with --score, a localisation score vs boxes."""
    from bonefrac.errors import ConfigError
    from bonefrac.explain.run import explain_run

    if more_images and not images:
        raise ConfigError(
            f"unexpected argument(s) {' '.join(map(str, more_images))}; "
            "to explain image files use --images PATH..."
        )
    paths = [*(images or []), *(more_images or [])]
    run = run_arg(run, into)
    res = explain_run(
        run, split=split, images=paths or None, method=method, n=n, layer=layer, score=score,
        out_dir=out, progress=True,
    )  # fmt: skip
    render.explanation(render.console, res, run)


COMMANDS = (explain,)
