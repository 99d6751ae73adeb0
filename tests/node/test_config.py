"""``bonefrac node``'s options: YAML file, then --set, then the command line; clear errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.config import NodeConfig, load_node_config
from bonefrac.errors import ConfigError


def test_yaml_then_set_then_options(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(
        "ae_title: FRACNODE\nport: 11200\nallow: [CR1, PACS]\nsend_to: [PACS@10.0.0.5:104]\n"
        "spool: /var/spool/bonefrac\nstudy_quiet_s: 120\n"
    )
    cfg = load_node_config(path, ["port=11300", "retry_attempts=5"], port=None, allow=["DX1"])
    assert (cfg.ae_title, cfg.port, cfg.retry_attempts) == ("FRACNODE", 11300, 5)
    assert cfg.allow == ["DX1"] and cfg.send_to == ["PACS@10.0.0.5:104"]
    assert cfg.study_quiet_s == 120 and cfg.run == "default"
    cfg.check_ready()
    assert load_node_config(path, None, port=11400).port == 11400


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"send_to": ["PACS:104"]}, "expected AE@HOST:PORT"),
        ({"send_to": ["PACS@host:0"]}, "expected AE@HOST:PORT"),
        ({"allow": ["A" * 17]}, "1-16 printable ASCII"),
        ({"stow_to": ["pacs:8042/dicom-web"]}, "http://"),
        ({"tls_cert": "/x.pem"}, "tls_cert and tls_key go together"),
        ({"port": 0}, "--port"),
    ],
)
def test_bad_values_name_the_option(values, message):
    with pytest.raises(ConfigError, match=message):
        NodeConfig(**values)


def test_missing_parts_and_unknown_keys():
    with pytest.raises(ConfigError, match=r"--spool DIR.*--allow.*--send-to"):
        NodeConfig().check_ready()
    with pytest.raises(ConfigError, match="did you mean 'study_quiet_s'"):
        load_node_config(None, ["study_quiet=3"])


def test_cli_help_and_refusal_without_destination(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["node", "--help"])
    assert res.exit_code == 0
    for option in ("--port", "--ae-title", "--allow", "--send-to", "--stow-to", "--spool",
                   "--config", "--set"):  # fmt: skip
        assert option in res.output
    res = runner.invoke(app, ["node", "--allow", "CR1", "--spool", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--send-to AE@HOST:PORT or --stow-to URL" in res.output
