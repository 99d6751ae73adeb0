"""/v1/model names the safeguards a run lacks (the page's banner reads them)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from bonefrac.serving.app import create_app


def _model_info(run: Path) -> dict:
    with TestClient(create_app(run, warmup=False)) as client:
        resp = client.get("/v1/model")
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_v1_model_lists_missing_safeguards_of_a_bare_run(tiny_run: Path) -> None:
    info = _model_info(tiny_run)
    missing = info["missing_safeguards"]
    assert [m["name"] for m in missing] == ["threshold", "calibration", "ood", "refer"]
    for item in missing:
        assert set(item) == {"name", "detail", "command"} and item["detail"]
        assert item["command"].startswith("bonefrac ") and " RUN" in item["command"]
        assert str(tiny_run) not in item["command"]  # no filesystem paths in the API
    assert info["threshold_criterion"] == "default"  # existing fields keep their names


def test_v1_model_lists_none_for_a_run_with_all_four(ready_run: Path) -> None:
    info = _model_info(ready_run)
    assert info["missing_safeguards"] == []
    assert info["threshold_criterion"] == "specificity:0.95" and info["rule_out"] and info["ood"]


def test_page_has_the_banner(tiny_run: Path) -> None:
    with TestClient(create_app(tiny_run, warmup=False)) as client:
        page = client.get("/").text
        script = client.get("/static/app.js").text
    assert 'id="safeguards"' in page and "--no-deploy" in page
    assert "missing_safeguards" in script
