"""A real uvicorn server for tests: in a thread (shared predictor) or a child process (RSS)."""

from __future__ import annotations

import http.client
import io
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HOST = "127.0.0.1"
SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def thread_server(app: Any, **config: Any) -> Iterator[int]:
    """Run ``app`` with uvicorn on 127.0.0.1 in a daemon thread; yields the port."""
    import uvicorn

    port = free_port()
    cfg = uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="off", **config)
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one ``file`` field; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def post_file(
    conn: http.client.HTTPConnection, data: bytes, name: str, headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST /v1/predict on ``conn`` (keep-alive); returns (status, headers, body)."""
    body, ctype = multipart(data, name)
    conn.request(
        "POST", "/v1/predict", body=body, headers={"Content-Type": ctype, **(headers or {})}
    )
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def png16_zeros(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG of zeros: tiny on disk, ``width * height * 2`` bytes decoded."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


SERVER_CODE = """
import sys, uvicorn
from bonefrac.config import ServeConfig
from bonefrac.serving.app import create_app, limit_malloc_arenas
limit_malloc_arenas()
run, port, max_bytes, conc, queue = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
app = create_app(run, ServeConfig(max_image_bytes=max_bytes, max_concurrency=conc, queue=queue))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


@contextmanager
def child_server(
    run: Path, max_image_bytes: int, concurrency: int = 2, queue: int = 16
) -> Iterator[tuple[int, int]]:
    """``create_app(run, ...)`` under uvicorn in a child process; yields (port, pid)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-c", SERVER_CODE, str(run), str(port), str(max_image_bytes),
           str(concurrency), str(queue)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy in 120 s")
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
