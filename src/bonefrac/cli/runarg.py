"""The RUN argument every run command shares: a run directory or a shipped model's name, and
``--into DIR`` for the commands that write into the run (a shipped model is never changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bonefrac.cli import render

RUN_HELP = "Run directory, or the name of a shipped model ('bonefrac models')."


def into_option() -> Any:
    """The ``--into DIR`` option of a command that writes into RUN."""
    return typer.Option(
        None,
        "--into",
        metavar="DIR",
        help="Work on a copy of RUN at DIR (needed for a shipped model, which is never "
        "changed); DIR must not exist or be empty.",
    )


def run_arg(run: Path, into: Path | None = None) -> Path:
    """The folder the command works on: RUN (a shipped name resolved to its folder), or with
    ``--into`` a copy of it at ``into`` (checkpoints left out), said in one line."""
    from bonefrac.rundir import copy_run, resolve_run

    source = resolve_run(run)
    if into is None:
        return source
    copy = copy_run(source, into)
    render.copied_run(render.console, source, copy)
    return copy
