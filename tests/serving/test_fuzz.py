"""Seeded fuzz over one keep-alive connection: mutated DICOM/PNG/JPEG never give 5xx."""

from __future__ import annotations

import http.client
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bonefrac.inference.predictor import Predictor
from bonefrac.serving.app import create_app
from tests.inference.dicom_files import write_dicom
from tests.serving.live import HOST, post_file, thread_server

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on bad UIs
N_CASES = 300
EXPLICIT_LE = b"1.2.840.10008.1.2.1\0"


def bad_ts(dcm: bytes) -> bytes:
    """TransferSyntaxUID replaced by a UID that is not a transfer syntax (same length)."""
    return dcm.replace(EXPLICIT_LE, b"1.2.840.10008.5.1.4\0", 1)


def bad_vr(dcm: bytes) -> bytes:
    """Rows (0028,0010) with the unknown VR 'ZZ'."""
    i = dcm.index(b"\x28\x00\x10\x00US")
    return dcm[: i + 4] + b"ZZ" + dcm[i + 6 :]


def seeds(tmp: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arr8 = np.clip(rng.normal(100, 40, (48, 40)), 0, 255).astype(np.uint8)
    arr16 = arr8.astype(np.uint16) * 200
    out: dict[str, bytes] = {}
    for fmt, arr in (("png", arr8), ("jpg", arr8), ("png16", arr16)):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG" if fmt == "jpg" else "PNG")
        out[fmt] = buf.getvalue()
    dcm = write_dicom(tmp / "a.dcm", arr16, window=(10000, 20000)).read_bytes()
    out["dcm"] = dcm
    out["dcm-mono1"] = write_dicom(tmp / "b.dcm", arr16, photometric="MONOCHROME1").read_bytes()
    out["dcm-raw"] = write_dicom(tmp / "c.dcm", arr8, preamble=False).read_bytes()
    out["dcm-bad-ts"] = bad_ts(dcm)
    out["dcm-bad-vr"] = bad_vr(dcm)
    return out


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """One random mutation: flips, a header overwrite, truncation, insertion or duplication."""
    buf = bytearray(data)
    how = int(rng.integers(6))
    if how == 0:  # flip a few bytes anywhere
        for pos in rng.integers(0, len(buf), int(rng.integers(1, 9))):
            buf[pos] ^= int(rng.integers(1, 256))
    elif how == 1:  # flip bytes in the header (where the parsers make their decisions)
        for pos in rng.integers(0, min(len(buf), 400), int(rng.integers(1, 6))):
            buf[pos] = int(rng.integers(0, 256))
    elif how == 2:  # truncate
        del buf[int(rng.integers(1, len(buf))) :]
    elif how == 3:  # insert random bytes
        pos = int(rng.integers(0, len(buf)))
        buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64))).astype(np.uint8).tobytes()
    elif how == 4:  # duplicate a chunk
        a = int(rng.integers(0, len(buf)))
        buf[a:a] = buf[a : a + int(rng.integers(1, 200))]
    else:  # set a run to 0xFF (huge lengths and sizes)
        a = int(rng.integers(0, min(len(buf), 600)))
        buf[a : a + int(rng.integers(1, 5))] = b"\xff" * len(buf[a : a + 4])
    return bytes(buf)


@pytest.fixture(scope="module")
def live_port(tiny_run: Path):
    app = create_app(tiny_run, predictor=Predictor.from_run(tiny_run), warmup=False)
    with thread_server(app) as port:
        yield port


@pytest.mark.parametrize("case", ["dcm-bad-ts", "dcm-bad-vr"])
def test_malformed_dicom_is_422_and_connection_survives(live_port, tmp_path, case):
    data = seeds(tmp_path)
    conn = http.client.HTTPConnection(HOST, live_port, timeout=30)
    status, _, body = post_file(conn, data[case], "x.dcm")
    sock = conn.sock
    assert status == 422, body
    assert "undecodable" in json.loads(body)["detail"]
    status, _, body = post_file(conn, data["png"], "ok.png")
    assert status == 200, body
    assert conn.sock is sock  # the same keep-alive connection
    conn.close()


def test_fuzzed_uploads_never_5xx_on_one_connection(live_port, tmp_path):
    rng = np.random.default_rng(13)
    base = seeds(tmp_path)
    kinds = sorted(base)
    valid = base["png"]
    conn = http.client.HTTPConnection(HOST, live_port, timeout=30)
    post_file(conn, valid, "warm.png")
    sock = conn.sock
    statuses: dict[int, int] = {}
    for i in range(N_CASES):
        kind = kinds[i % len(kinds)]
        data = mutate(rng, base[kind])
        name = "f.dcm" if kind.startswith("dcm") else f"f.{kind[:3]}"
        status, headers, body = post_file(conn, data, name)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, f"case {i} ({kind}): {status} {body[:300]!r}"
        if status >= 400:
            assert isinstance(json.loads(body)["detail"], str)
        status, _, body = post_file(conn, valid, "ok.png")
        assert status == 200, f"after case {i} ({kind}): {status} {body[:300]!r}"
        assert conn.sock is sock, f"case {i} ({kind}) dropped the keep-alive connection"
    conn.close()
    assert sum(statuses.values()) == N_CASES and 422 in statuses  # the fuzz did reach decoders
