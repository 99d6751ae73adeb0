"""Command-line interface: one sub-command per stage. Parse, call the library, render.

One module per command group (:mod:`.data`, :mod:`.train`, :mod:`.evaluate`, :mod:`.explain`,
:mod:`.tune`, :mod:`.predict`, :mod:`.models`); the RUN argument they share (a run directory or
a shipped model's name, and ``--into``) is :mod:`.runarg`; what they print lives in
:mod:`.render`. This module holds the ``bonefrac`` app (the console-script entry point), the
error handling every command shares and the logging set-up.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
import typer
from typer.core import TyperGroup

from bonefrac.cli import (
    data,
    demo,
    evaluate,
    explain,
    models,
    node,
    predict,
    render,
    train,
    tune,
)
from bonefrac.cli.helptext import reflow_commands
from bonefrac.errors import BonefracError


class _FriendlyGroup(TyperGroup):
    """Every command: a known bad input (:class:`BonefracError`, an unreadable or unwritable
    file) is one red line naming the file and the fix, exit status 2, no traceback (``-v``
    shows it). Every command's help reads as sentences (:mod:`.helptext`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reflow_commands(self)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BonefracError, OSError) as exc:
            if isinstance(exc, OSError) and not exc.filename:
                raise  # not about a file the user named: a bug, show the traceback
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                render.err_console.print_exception()
            render.error(render.err_console, _describe(exc))
            raise typer.Exit(code=2) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, BonefracError):
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{where}: {exc.strerror or exc}; check the path and its permissions"
    return str(exc)


app = typer.Typer(
    cls=_FriendlyGroup,
    help="bonefrac: train, evaluate, explain and serve fracture classifiers for radiographs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(tune.app, name="tune")
for command in (
    *train.COMMANDS,
    *evaluate.COMMANDS,
    *explain.COMMANDS,
    *predict.COMMANDS,
    *models.COMMANDS,
    *node.COMMANDS,
    *demo.COMMANDS,
):  # the order of 'bonefrac --help'
    app.command()(command)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("PIL", "matplotlib", "fsspec", "urllib3", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Lightning prints through its own handler on the "lightning" logger; propagating to ours
    # as well showed every message twice. Its litlogger advertisement is dropped.
    logging.getLogger("lightning").propagate = False
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_tip)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)
