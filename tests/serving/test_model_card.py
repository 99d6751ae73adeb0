"""/v1/model carries the run's model card (MODEL_CARD.md) and shipped name; the page shows it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bonefrac.rundir import shipped
from bonefrac.serving.app import create_app

CARD = """# Model card: tiny-test

A tiny model for tests, **never a diagnosis**.

## Intended use
- Second reader: `fracture` / `no_fracture`.

| source | images |
|---|---|
| synthetic | 30 |
"""


def _model_info(run: Path) -> dict:
    with TestClient(create_app(run, warmup=False)) as client:
        resp = client.get("/v1/model")
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture()
def card_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "carded"
    shutil.copytree(tiny_run, run)
    (run / "MODEL_CARD.md").write_text(CARD, encoding="utf-8")
    return run


def test_a_run_without_a_card_has_card_and_shipped_null(tiny_run: Path) -> None:
    info = _model_info(tiny_run)
    assert "card" in info and info["card"] is None
    assert "shipped" in info and info["shipped"] is None
    assert info["architecture"] == "simple_cnn" and info["missing_safeguards"]  # rest kept


def test_v1_model_returns_the_card_read_once_at_app_creation(card_run: Path) -> None:
    with TestClient(create_app(card_run, warmup=False)) as client:
        (card_run / "MODEL_CARD.md").unlink()  # read at creation: later requests don't re-read
        info = client.get("/v1/model").json()
    assert info["card"] == CARD
    assert info["shipped"] is None  # a copy keeps the card but is not the shipped model
    assert str(card_run.parent) not in json.dumps(info)  # no filesystem paths


def test_a_shipped_model_names_itself(
    card_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "shipped"
    root.mkdir()
    model = root / "tiny-1"
    shutil.copytree(card_run, model)
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", root)
    info = _model_info(model)
    assert info["shipped"] == "tiny-1" and info["card"] == CARD
    assert str(root) not in json.dumps(info)


def test_page_has_the_card_section_rendered_without_inner_html(tiny_run: Path) -> None:
    with TestClient(create_app(tiny_run, warmup=False)) as client:
        page = client.get("/").text
        script = client.get("/static/app.js").text
    assert '<details id="model-card" hidden>' in page and "Model card" in page
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "m.card" in script and "m.shipped" in script
