"""``bonefrac models``: the models shipped with the package, and each one's model card."""

from __future__ import annotations

import typer

from bonefrac.cli import render


def models(
    name: str = typer.Argument(
        None, help="A shipped model's name or alias: print its MODEL_CARD.md."
    ),
) -> None:
    """List the shipped models (name, aliases, architecture, size, test ROC-AUC, card); with
    NAME, print that model's card."""
    from bonefrac.errors import RunDirError
    from bonefrac.rundir import RunDir
    from bonefrac.rundir.shipped import aliases, names_line, shipped_models, shipped_path

    if name is None:
        render.shipped_models(render.console, shipped_models(), aliases())
        return
    folder = shipped_path(name)
    if folder is None:
        raise RunDirError(f"{name}: not a shipped model (shipped: {names_line()})")
    render.model_card(render.console, RunDir(folder))


COMMANDS = (models,)
