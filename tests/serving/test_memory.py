"""The decompression bomb under the concurrency cap: the server's peak RSS stays bounded."""

from __future__ import annotations

import http.client
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bonefrac.system import process_status_kb
from tests.serving.live import HOST, child_server, png16_zeros, post_file

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the server's RSS from /proc (Linux)"
)

BUDGET = 8 * 1024 * 1024  # decoded bytes admitted per image in this test
CONCURRENCY = 2


def upload_all(port: int, data: bytes, n: int) -> list[int]:
    def one(_: int) -> int:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        try:
            return post_file(conn, data, "bomb.png")[0]
        finally:
            conn.close()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_bomb_under_cap_has_bounded_rss(tiny_run: Path):
    big = png16_zeros(9999, 9999)  # 189 KiB; 200 MB decoded: refused from its header
    fits = png16_zeros(2040, 2040)  # 8.3 MB decoded: admitted, decoded under the cap
    with child_server(tiny_run, BUDGET, concurrency=CONCURRENCY) as (port, pid):
        upload_all(port, fits, 1)  # first decode: warm the allocator
        base = process_status_kb(pid, "VmHWM")
        assert upload_all(port, big, 8) == [413] * 8
        after_big = process_status_kb(pid, "VmHWM")
        assert upload_all(port, fits, 8) == [200] * 8
        after_fits = process_status_kb(pid, "VmHWM")
    grow_big = (after_big - base) / 1024
    grow_fits = (after_fits - base) / 1024
    # 8 uploads of 200 MB images used to cost about 0.8 GB each; refused now from the header
    assert grow_big < 50, f"peak RSS grew {grow_big:.0f} MiB on refused bombs"
    # each admitted decode holds about 5 x its budget at most (16-bit image, float32 working
    # copy, output); only CONCURRENCY of them at once, not 8
    bound = CONCURRENCY * 5 * BUDGET / 2**20 + 40
    assert grow_fits < bound, f"peak RSS grew {grow_fits:.0f} MiB (bound {bound:.0f} MiB)"
