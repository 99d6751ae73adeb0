"""``bonefrac node``: the DICOM node (:mod:`bonefrac.node`), options in one
:class:`~bonefrac.config.NodeConfig` from ``--config FILE``, ``--set key=value`` and the
options below (in that order, the later winning)."""

from __future__ import annotations

from pathlib import Path

import typer

from bonefrac.cli import render
from bonefrac.cli.runarg import RUN_HELP
from bonefrac.config import NodeConfig

_NODE = NodeConfig.model_fields


def node(
    run: str | None = typer.Argument(
        None, help=f"{RUN_HELP} Default: the default shipped model.", show_default=False
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML file of node options (docs/node.md)."
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Set a node option, e.g. --set study_quiet_s=60 (repeatable)."
    ),
    port: int | None = typer.Option(
        None, "--port", help=f"DICOM port. Default {_NODE['port'].default}.", show_default=False
    ),
    ae_title: str | None = typer.Option(
        None,
        "--ae-title",
        help=f"The node's AE title. Default {_NODE['ae_title'].default}.",
        show_default=False,
    ),  # fmt: skip
    host: str | None = typer.Option(
        None,
        "--host",
        help=f"Address to listen on. Default {_NODE['host'].default}.",
        show_default=False,
    ),  # fmt: skip
    allow: list[str] | None = typer.Option(
        None, "--allow", metavar="CALLING_AE", help="Calling AE title accepted (repeatable)."
    ),
    send_to: list[str] | None = typer.Option(
        None, "--send-to", metavar="AE@HOST:PORT", help="C-STORE results here (repeatable)."
    ),
    stow_to: list[str] | None = typer.Option(
        None, "--stow-to", metavar="URL", help="STOW-RS results to this DICOMweb base URL."
    ),
    spool: Path | None = typer.Option(
        None, "--spool", metavar="DIR", help="Spool folder (received, outbox, dead, audit)."
    ),
) -> None:
    """Run a DICOM node: receive radiographs (C-STORE), send back an SR and an SC per image.

    Every instance is spooled before its success status, predicted one at a time, and its
    results are sent to every --send-to / --stow-to with retries; a study quiet for
    study_quiet_s also gets a study SR. C-ECHO answers; a calling AE not in --allow is
    rejected. Stops on SIGTERM or Ctrl-C (what is queued stays in the spool).
    """
    from bonefrac.config import load_node_config
    from bonefrac.node.service import Node

    cfg = load_node_config(
        config, overrides, run=run, port=port, ae_title=ae_title, host=host, allow=allow,
        send_to=send_to, stow_to=stow_to, spool=spool,
    )  # fmt: skip
    cfg.check_ready()
    service = Node(cfg)
    console = render.console
    console.print(
        f"bonefrac node {cfg.ae_title} on {cfg.host}:{cfg.port} (run {cfg.run}); accepts "
        f"{', '.join(cfg.allow)}; sends to {', '.join([*cfg.send_to, *cfg.stow_to])}; "
        f"spool {cfg.spool}",
        highlight=False,
    )
    service.serve_forever()


COMMANDS = (node,)
