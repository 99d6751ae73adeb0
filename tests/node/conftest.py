"""Fixtures of the node's tests: a Node over the session's tiny run, an Orthanc per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.helpers import Orthanc, free_port, need_tools

MODALITY = "MODALITY"


@pytest.fixture(scope="module")
def tiny_predictor(tiny_run: Path) -> Any:
    from bonefrac.inference.predictor import Predictor

    return Predictor.from_run(tiny_run)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    need_tools("Orthanc")
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        yield pacs
    finally:
        pacs.stop(graceful=False)


@pytest.fixture
def make_node(tmp_path: Path, tiny_predictor: Any) -> Iterator[Any]:
    """``make_node(**options)``: a started Node on a free port (stopped at the end)."""
    from bonefrac.config import NodeConfig
    from bonefrac.node.service import Node

    started: list[Node] = []

    def make(**options: Any) -> Node:
        options.setdefault("allow", [MODALITY])
        options.setdefault("spool", tmp_path / "spool")
        options.setdefault("port", free_port())
        options.setdefault("study_quiet_s", None)
        node = Node(NodeConfig(**options), predictor=tiny_predictor)
        node.start()
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()
