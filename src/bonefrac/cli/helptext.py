"""Help text that reads as sentences: a docstring's hard line breaks joined within paragraphs.

Typer's rich help keeps the single line breaks of a docstring in the command list and in every
paragraph after the first, so a sentence wrapped at the source's 100 columns came out broken
at that spot ("then fit / on val ..."). Every command's and option's help goes through
:func:`reflow` once, when the ``bonefrac`` group is built; rich then wraps it to the terminal.
A paragraph that starts with ``\\b`` (click's "keep as written" mark) is left alone.
"""

from __future__ import annotations

import inspect

import click


def reflow(text: str | None) -> str | None:
    """``text`` with each paragraph's lines joined by single spaces (paragraphs kept)."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs
    )


def reflow_commands(group: click.Group) -> None:
    """Reflow the help of every command, sub-group and parameter under ``group``, in place."""
    for command in group.commands.values():
        command.help = reflow(command.help)
        command.short_help = reflow(command.short_help)
        for param in command.params:
            if isinstance(param, click.Option | click.Argument) and getattr(param, "help", None):
                param.help = reflow(param.help)
        if isinstance(command, click.Group):
            reflow_commands(command)
