"""'bonefrac --help' and every command's help read as sentences: no hard line break mid-sentence."""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.cli.helptext import reflow


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


ROOT = typer.main.get_command(app)
COMMANDS = _commands(ROOT)


def _lines(args: list[str], monkeypatch) -> list[str]:
    """The help's lines at a width no sentence needs wrapping at, box drawing and padding out."""
    monkeypatch.setenv("COLUMNS", "1000")
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return [
        re.sub(r"\s+", " ", line.strip(" │╭╮╰╯─")).strip() for line in result.output.splitlines()
    ]


def _command(path: tuple[str, ...]) -> click.Command:
    command = ROOT
    for name in path:
        command = command.commands[name]
    return command


def test_reflow_joins_lines_within_paragraphs_and_keeps_paragraphs() -> None:
    text = "First line goes\n  on here.\n\nSecond paragraph\nends.\n\n\bkept\nas is"
    assert reflow(text) == "First line goes on here.\n\nSecond paragraph ends.\n\n\bkept\nas is"


def test_the_command_list_shows_each_summary_on_one_line(monkeypatch) -> None:
    lines = _lines([], monkeypatch)
    for name, command in ROOT.commands.items():
        summary = command.help.split("\n\n")[0]
        assert "\n" not in summary
        assert any(line == f"{name} {summary}" for line in lines), (name, summary)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_paragraph_of_a_command_s_help_is_one_line(path, monkeypatch) -> None:
    lines = _lines(list(path), monkeypatch)
    for paragraph in (_command(path).help or "").split("\n\n"):
        if paragraph.startswith("\b"):
            continue
        assert "\n" not in paragraph, paragraph
        assert re.sub(r"\s+", " ", paragraph).strip() in lines, (path, paragraph)
