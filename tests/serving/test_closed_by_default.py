"""Closed by default: 'bonefrac serve' on a non-loopback address wants a token or --allow-open."""

from __future__ import annotations

import logging
import time

import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.config import ServeConfig
from bonefrac.errors import ConfigError
from bonefrac.serving.app import check_open


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_serve_on_a_non_loopback_host_without_a_token_exits_with_a_clear_message(host) -> None:
    start = time.monotonic()
    result = CliRunner().invoke(app, ["serve", "--host", host, "--port", "1"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"refusing to serve on {host} without --token-file" in text
    assert "--allow-open" in text and "127.0.0.1" in text
    assert time.monotonic() - start < 20  # refused before any model loads or port opens


def test_the_refusal_is_the_library_s_and_the_opt_out_is_explicit(caplog) -> None:
    assert ServeConfig().allow_open is False
    with pytest.raises(ConfigError, match="without --token-file"):
        check_open("10.0.0.5", None, allow_open=False)
    check_open("127.0.0.1", None, allow_open=False)  # loopback: nobody else can reach it
    check_open("localhost", None, allow_open=False)
    check_open("0.0.0.0", "s3cret-token-0123456789", allow_open=False)  # a token closes it
    with caplog.at_level(logging.WARNING, logger="bonefrac.serving.app"):
        check_open("0.0.0.0", None, allow_open=True)
    assert "--allow-open" in caplog.text


def test_serve_help_names_the_opt_out() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--allow-open" in result.output
