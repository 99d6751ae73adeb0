"""Service hardening: fail closed on non-finite model output, headers, Host, token, docs, TIFF."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bonefrac.config import ServeConfig
from bonefrac.errors import ConfigError, ModelOutputError
from bonefrac.inference.predictor import Predictor
from bonefrac.inference.selfcheck import self_check
from bonefrac.serving.app import create_app
from bonefrac.serving.guards import default_allowed_hosts, read_token
from tests.serving.live import png16_zeros

TOKEN = "s3cret-token-0123456789"


@pytest.fixture()
def predictor(tiny_run: Path) -> Predictor:
    return Predictor.from_run(tiny_run)


@pytest.fixture(scope="module")
def png(synthetic_manifest: Path) -> bytes:
    return sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[0].read_bytes()


def post(client: TestClient, data: bytes, name: str = "x.png", **kw):
    return client.post("/v1/predict", files={"file": (name, data)}, **kw)


def nan_logits(arrays):
    return np.full(len(arrays), np.nan, np.float32)


def test_self_check_refuses_non_finite_model(tiny_run, predictor):
    assert np.all(np.isfinite(self_check(predictor)))
    predictor.logits = nan_logits
    with pytest.raises(ModelOutputError, match="self-check failed"):
        self_check(predictor)
    with pytest.raises(ModelOutputError):
        create_app(tiny_run, predictor=predictor)


def test_failed_self_check_health_503_and_no_prediction(tiny_run, predictor, png):
    predictor.logits = nan_logits
    app = create_app(tiny_run, predictor=predictor, require_self_check=False)
    with TestClient(app) as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        resp = post(c, png)
        assert resp.status_code == 503 and "self-check" in resp.json()["detail"]


@pytest.mark.parametrize("how", ["logit", "temperature"])
def test_non_finite_at_prediction_is_422_not_a_decision(tiny_run, predictor, png, how):
    app = create_app(tiny_run, predictor=predictor, warmup=False)
    if how == "logit":
        predictor.logits = nan_logits  # after the self-check passed
    else:
        # a model.json edited after loading; model_copy skips validation on purpose
        predictor.meta = predictor.meta.model_copy(update={"temperature": float("nan")})
    with TestClient(app) as c:
        resp = post(c, png)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert "cannot be trusted" in body["detail"] and "probability" not in body
    assert "decision" not in body


def test_security_headers_and_model_info_without_paths(tiny_run, predictor):
    with TestClient(create_app(tiny_run, predictor=predictor, warmup=False)) as c:
        for path in ("/", "/health", "/v1/model", "/static/app.js", "/docs"):
            resp = c.get(path)
            assert resp.status_code == 200, path
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
        info = c.get("/v1/model").json()
        assert info["architecture"] == "simple_cnn" and info["threshold"] == 0.5
        assert str(tiny_run.parent) not in json.dumps(info) and "manifest" not in info
        page = c.get("/").text
        assert "<script>" not in page and "<style>" not in page  # CSP: no inline code


def test_docs_assets_are_local(tiny_run, predictor):
    with TestClient(create_app(tiny_run, predictor=predictor, warmup=False)) as c:
        html = c.get("/docs").text
        assert "http://" not in html and "https://" not in html
        assert c.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert c.get("/redoc").status_code == 404
    with TestClient(
        create_app(tiny_run, ServeConfig(docs=False), predictor=predictor, warmup=False)
    ) as c:
        assert c.get("/docs").status_code == 404


def test_host_check(tiny_run, predictor):
    hosts = default_allowed_hosts("127.0.0.1")
    assert "localhost" in hosts and default_allowed_hosts("0.0.0.0") == ["*"]
    app = create_app(tiny_run, ServeConfig(allowed_hosts=hosts), predictor=predictor, warmup=False)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        resp = c.get("/health", headers={"host": "evil.example:8000"})
        assert resp.status_code == 400 and "--allowed-host" in resp.json()["detail"]
    app = create_app(
        tiny_run, ServeConfig(allowed_hosts=["*.lan"]), predictor=predictor, warmup=False
    )
    with TestClient(app, base_url="http://xray.lan") as c:
        assert c.get("/health").status_code == 200


def test_bearer_token(tiny_run, predictor, png, tmp_path):
    app = create_app(tiny_run, ServeConfig(token=TOKEN), predictor=predictor, warmup=False)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = post(c, png, headers=headers)
            assert resp.status_code == 401 and resp.json()["reason"] == "unauthorized"
            assert resp.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/v1/model").status_code == 401
        ok = post(c, png, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and 0 <= ok.json()["probability"] <= 1
    (tmp_path / "t").write_text(TOKEN + "\n")
    assert read_token(tmp_path / "t") == TOKEN
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ConfigError, match="at least 16"):
        read_token(tmp_path / "short")


def test_tiff_is_accepted(tiny_run, predictor, png):
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, format="TIFF")
    with TestClient(create_app(tiny_run, predictor=predictor, warmup=False)) as c:
        resp = post(c, buf.getvalue(), "x.tif")
    assert resp.status_code == 200, resp.text
    assert resp.json()["probability"] == pytest.approx(predictor.predict(png)[0].probability)


def test_byte_budget_from_header(tiny_run, predictor, png):
    bomb = png16_zeros(9999, 9999)  # 189 KiB on disk, 200 MB decoded
    assert len(bomb) < 300_000
    app = create_app(
        tiny_run, ServeConfig(max_image_bytes=1_000_000), predictor=predictor, warmup=False
    )
    with TestClient(app) as c:
        resp = post(c, bomb, "bomb.png")
        assert resp.status_code == 413 and resp.json()["reason"] == "too many pixels"
        resp = post(c, png16_zeros(800, 800), "b16.png")  # 640k px: under max_pixels
        assert resp.status_code == 413 and "1280000 decoded bytes" in resp.json()["detail"]
        assert post(c, png).status_code == 200


def test_queue_full_is_503_with_retry_after(tiny_run, predictor, png):
    app = create_app(
        tiny_run, ServeConfig(max_concurrency=1, queue=1), predictor=predictor, warmup=False
    )
    real = predictor.logits
    started = []

    def slow_logits(arrays):
        started.append(1)
        import time

        time.sleep(0.5)
        return real(arrays)

    predictor.logits = slow_logits

    async def run_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await asyncio.gather(
                *[ac.post("/v1/predict", files={"file": (f"{i}.png", png)}) for i in range(5)]
            )

    codes = sorted(r.status_code for r in asyncio.run(run_all()))
    assert codes == [200, 200, 503, 503, 503]
    busy = [r for r in asyncio.run(run_all()) if r.status_code == 503][0]
    assert busy.headers["retry-after"] == "2" and busy.json()["reason"] == "queue full"
