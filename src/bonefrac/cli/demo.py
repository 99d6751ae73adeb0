"""``bonefrac demo``: the shipped model on the bundled sample radiographs (no data needed)."""

from __future__ import annotations

from pathlib import Path

import typer

from bonefrac.cli import render


def demo(
    out: Path = typer.Option(Path("demo/samples"), "--out", "-o", help="Folder to write into."),
    model: str = typer.Option("default", "--model", help="Shipped model name or run directory."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier demo in --out."),
) -> None:
    """Predict the bundled FracAtlas sample radiographs (and one as a CR DICOM file) with the
    shipped model: a predictions CSV, heatmap overlays, a DICOM SC + SR and one HTML page."""
    from bonefrac.demo import run_demo

    result = run_demo(out, model, force=force)
    console = render.console
    for s in result.samples:
        prob = "error" if s.probability is None else f"probability {s.probability:.3f}"
        truth = "fractured" if s.fractured else "no fracture"
        console.print(f"{s.name}: {s.decision}  {prob}  (radiologists: {truth})", markup=False)
    console.print(f"Page: {result.page}", markup=False)
    console.print(
        f"Serve it: python3 -m http.server 8000 --bind 127.0.0.1 --directory {result.out}, "
        "then open http://127.0.0.1:8000/",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        "The live page and API: bonefrac serve, then open http://127.0.0.1:8000", markup=False
    )


COMMANDS = (demo,)
