"""The FastAPI service with TestClient: happy paths, every limit -> 4xx, and it keeps serving."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bonefrac.config import ServeConfig
from bonefrac.inference.predictor import Predictor
from bonefrac.serving.app import create_app
from tests.inference.dicom_files import write_dicom


@pytest.fixture(scope="module")
def predictor(tiny_run: Path) -> Predictor:
    return Predictor.from_run(tiny_run)


@pytest.fixture(scope="module")
def client(tiny_run: Path, predictor: Predictor):
    app = create_app(tiny_run, ServeConfig(max_body_bytes=200_000), predictor=predictor)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def png_bytes(synthetic_manifest: Path) -> bytes:
    return sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[0].read_bytes()


def jpeg_bytes(png: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims ``width x height``; no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def post(client: TestClient, data: bytes, name: str = "x.png", **params):
    return client.post("/v1/predict", files={"file": (name, data)}, params=params)


def assert_ok(resp, expected: Predictor | None = None) -> dict:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert 0.0 <= body["probability"] <= 1.0
    assert body["decision"] in ("fracture", "no_fracture") and isinstance(body["threshold"], float)
    assert (body["decision"] == "fracture") == (body["probability"] >= body["threshold"])
    assert body["refer"] is False and body["out_of_scope"] is False and body["ood_score"] is None
    assert "ood_reason" in body and body["ood_reason"] is None
    assert isinstance(body["uncertainty"], float)
    assert body["model"] == "tiny"
    return body


def test_health_model_docs_and_page(client, tiny_run):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/v1/model").json()["architecture"] == "simple_cnn"
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "decision support, not a diagnosis" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # works offline: no CDN


def test_predict_png_matches_predictor(client, png_bytes, predictor):
    body = assert_ok(post(client, png_bytes))
    expected = predictor.predict(png_bytes)[0]
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["logit"] == pytest.approx(expected.logit, abs=1e-5)
    assert "heatmap_png" not in body


@pytest.mark.parametrize("how", ["query", "form"])
def test_predict_with_heatmap(client, png_bytes, how):
    if how == "query":
        resp = post(client, png_bytes, heatmap="true", image="true")
    else:
        resp = client.post(
            "/v1/predict", files={"file": ("x.png", png_bytes)}, data={"heatmap": "true"}
        )
    body = assert_ok(resp)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert overlay.format == "PNG" and overlay.size == (64, 64) and overlay.mode == "RGB"
    if how == "query":
        assert Image.open(io.BytesIO(base64.b64decode(body["image_png"]))).size == (64, 64)


def test_predict_jpeg_and_dicom(client, png_bytes, tmp_path):
    assert_ok(post(client, jpeg_bytes(png_bytes), "x.jpg"))
    arr = np.asarray(Image.open(io.BytesIO(png_bytes))).astype(np.uint16) * 16
    dcm = write_dicom(tmp_path / "x.dcm", arr, photometric="MONOCHROME1").read_bytes()
    assert_ok(post(client, dcm, "upload.bin"))  # DICM magic, whatever the name


def bad_inputs(png: bytes, tmp: Path) -> dict[str, tuple[bytes, str, int, str]]:
    jpg = jpeg_bytes(png)
    nopix = write_dicom(tmp / "nopix.dcm", None).read_bytes()
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    return {
        "non-image": (b"just some text, not an image", "a.png", 415, "unsupported type"),
        "gif": (gif.getvalue(), "a.gif", 415, "unsupported type"),
        "truncated jpeg": (jpg[: len(jpg) // 2], "a.jpg", 422, ""),
        "empty": (b"", "a.png", 400, "zero bytes"),
        "png bomb header": (png_header(30000, 30000), "bomb.png", 413, "too many pixels"),
        "dicom without pixels": (nopix, "a.dcm", 422, "no pixel data"),
        "corrupt png": (png[:40] + b"\0" * 40 + png[80:], "c.png", 422, ""),
    }


def test_colour_photo_and_ct_dicom_are_out_of_scope_with_their_reason(client, tmp_path):
    # the tiny run has no fitted out-of-scope detector: the scope rules apply anyway
    from tests.fixtures.ood_probes import colour_images

    photo = colour_images(np.random.default_rng(0), n=2)[0]
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG")
    arr = (np.random.default_rng(1).random((64, 64)) * 4000).astype(np.uint16)
    ct = write_dicom(tmp_path / "ct.dcm", arr, modality="CT").read_bytes()
    for data, name, reason in ((buf.getvalue(), "photo.jpg", "colour"), (ct, "ct.dcm", "modality")):
        resp = post(client, data, name)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["decision"], body["out_of_scope"], body["ood_reason"]) == (
            "out_of_scope", True, reason
        )  # fmt: skip
    assert_ok(post(client, write_dicom(tmp_path / "dx.dcm", arr).read_bytes(), "dx.dcm"))


@pytest.mark.parametrize(
    "case",
    ["non-image", "gif", "truncated jpeg", "empty", "png bomb header", "dicom without pixels",
     "corrupt png"],
)  # fmt: skip
def test_bad_input_is_4xx_and_server_keeps_serving(client, png_bytes, tmp_path, case):
    data, name, status, reason = bad_inputs(png_bytes, tmp_path)[case]
    start = time.perf_counter()
    resp = post(client, data, name)
    elapsed = time.perf_counter() - start
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body["detail"], str) and name in body["detail"]
    if reason:
        assert body["reason"] == reason
    if case == "png bomb header":
        assert elapsed < 2.0 and "900000000 pixels" in body["detail"]  # refused from the header
    assert_ok(post(client, png_bytes))  # the next request still succeeds


def test_missing_file_field_is_422(client, png_bytes):
    resp = client.post("/v1/predict", data={"other": "x"})
    assert resp.status_code == 422 and resp.json()["detail"]
    resp = client.post("/v1/predict")  # no body at all
    assert resp.status_code == 422
    assert_ok(post(client, png_bytes))


def test_oversize_body_by_content_length(client, png_bytes):
    resp = post(client, b"\xff\xd8\xff" + b"\0" * 300_000, "big.jpg")
    assert resp.status_code == 413 and "limit is 200000 bytes" in resp.json()["detail"]
    assert_ok(post(client, png_bytes))


def test_oversize_body_without_content_length_is_counted(client, png_bytes):
    boundary = "bf0123456789"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks():  # a generator body: sent chunked, no Content-Length header
        yield head + png_bytes
        for _ in range(40):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = client.post(
        "/v1/predict",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert resp.status_code == 413 and resp.json()["reason"] == "body too large"
    assert_ok(post(client, png_bytes))


def test_concurrent_requests_are_safe(tiny_run, predictor, png_bytes, synthetic_manifest):
    """16 requests at once (half with Grad-CAM) give the same answers as one at a time."""
    paths = sorted((synthetic_manifest.parent / "images").glob("val_*.png"))[:8]
    datas = [p.read_bytes() for p in paths] * 2
    expected = [p.probability for p in predictor.predict(datas)]
    app = create_app(tiny_run, predictor=predictor)

    async def run_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await asyncio.gather(
                *[
                    ac.post(
                        "/v1/predict",
                        files={"file": (f"{i}.png", d)},
                        params={"heatmap": "true"} if i % 2 else {},
                    )
                    for i, d in enumerate(datas)
                ]
            )

    responses = asyncio.run(run_all())
    assert [r.status_code for r in responses] == [200] * len(datas)
    got = [r.json()["probability"] for r in responses]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert all("heatmap_png" in r.json() for r in responses[1::2])


def test_onnx_backend_serves(tiny_run, png_bytes, tmp_path):
    from bonefrac.inference.onnx import export_onnx

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    export_onnx(run)
    with TestClient(create_app(run, ServeConfig(backend="onnx"))) as c:
        body = assert_ok(post(c, png_bytes, heatmap="true"))
        assert body["backend"] == "onnx" and body["heatmap_png"]
