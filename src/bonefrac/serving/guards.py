"""Pure-ASGI guards of the service: security headers, Host check, bearer token, admission.

Every refusal is a JSON ``{"detail": ..., "reason": ...}`` answered before the request body
is read.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bonefrac.errors import ConfigError

#: Host names that always reach a loopback-bound server.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: The page and its scripts come from this server only; images are data: URLs.
CSP_PAGE = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Swagger UI sets inline styles on its elements.
CSP_DOCS = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


async def send_json(
    send: Any,
    status: int,
    payload: dict,
    headers: Iterable[tuple[bytes, bytes]] = (),
    close: bool = True,
) -> None:
    """A complete JSON response; ``close``: end the connection (the body was not read)."""
    body = json.dumps(payload).encode("utf-8")
    closing = [(b"connection", b"close")] if close else []
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *closing,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def drain(receive: Any, limit: int, timeout_s: float) -> bool:
    """Read and discard the request body (at most ``limit`` bytes); True when all was read.

    Answering before the body is read and then closing makes the kernel reset the connection,
    so the client sees a broken connection instead of the answer.
    """
    total = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), timeout_s)
        except asyncio.TimeoutError:
            return False
        if message["type"] == "http.disconnect":
            return False
        total += len(message.get("body", b""))
        if total > limit:
            return False
        if not message.get("more_body", False):
            return True


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Loopback names plus the bound address (a wildcard bind admits any Host)."""
    if bind_host in ("0.0.0.0", "::", ""):
        return ["*"]
    hosts = list(LOOPBACK_HOSTS)
    if bind_host.strip("[]").lower() not in hosts:
        hosts.append(bind_host.strip("[]").lower())
    return hosts


def read_token(path: str | Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped; must not be empty)."""
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read the token file ({exc}); check --token-file"
        ) from exc
    if len(token) < 16:
        raise ConfigError(
            f"{path}: the token must be at least 16 characters; write a random one, e.g. "
            "'python -c \"import secrets; print(secrets.token_urlsafe(32))\" > FILE'"
        )
    return token


def _host_name(value: bytes) -> str:
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SecurityHeaders:
    """Adds nosniff, a CSP with ``frame-ancestors 'none'``, no-referrer to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        csp = CSP_DOCS if path == "/docs" else CSP_PAGE
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", csp.encode()),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
        ]

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in extra if k not in names
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


class HostCheck:
    """Refuses a ``Host`` header outside ``allowed`` (DNS rebinding) with 400 JSON.

    Entries: exact names, ``*.example.org`` suffixes, or ``*`` for any host.
    """

    def __init__(self, app: Any, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = [h.strip().lower().strip("[]") for h in allowed if h.strip()]

    def admits(self, host: str) -> bool:
        for pattern in self.allowed:
            if pattern == "*" or host == pattern:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = dict(scope.get("headers") or []).get(b"host", b"")
        host = _host_name(value)
        if not self.admits(host):
            await send_json(
                send,
                400,
                {
                    "detail": f"Host {host!r} is not served here; start the server with "
                    f"--allowed-host {host or 'NAME'} to admit it",
                    "reason": "host not allowed",
                },
            )
            return
        await self.app(scope, receive, send)


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` on ``/v1/...`` (constant-time compare).

    The page, its static files, ``/docs``, ``/openapi.json`` and ``/health`` stay open: they
    carry no patient data; the page asks for the token when the API answers 401.
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            await send_json(
                send,
                401,
                {
                    "detail": "missing or wrong bearer token: send 'Authorization: Bearer "
                    "<token>' with the token from the server's --token-file",
                    "reason": "unauthorized",
                },
                [(b"www-authenticate", b'Bearer realm="bonefrac"')],
            )
            return
        await self.app(scope, receive, send)


class Gate:
    """Bounds prediction work: ``slots`` run decode + inference, ``queue`` more may wait."""

    def __init__(self, concurrency: int, queue: int, retry_after_s: int = 2) -> None:
        if concurrency < 1 or queue < 0:
            raise ConfigError(
                f"--max-concurrency must be >= 1 and --queue >= 0 (got {concurrency}, {queue})"
            )
        self.concurrency = concurrency
        self.queue = queue
        self.retry_after_s = retry_after_s
        self.admitted = 0
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def slots(self) -> asyncio.Semaphore:
        """The decode + inference semaphore of the running event loop (one per loop)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots, self._loop = asyncio.Semaphore(self.concurrency), loop
        return self._slots

    @property
    def capacity(self) -> int:
        return self.concurrency + self.queue


class Admission:
    """Admits at most ``gate.capacity`` ``POST /v1/predict`` at once, before the body is read.

    Over that: 503 JSON with ``Retry-After``. The admitted ones take a ``gate.slots`` slot for
    decode and inference in the endpoint, so at most ``gate.queue`` bodies wait in memory.
    """

    def __init__(self, app: Any, gate: Gate, drain_limit: int, drain_timeout_s: float) -> None:
        self.app = app
        self.gate = gate
        self.drain_limit = drain_limit
        self.drain_timeout_s = drain_timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate.admitted >= gate.capacity:
            drained = await drain(receive, self.drain_limit, self.drain_timeout_s)
            await send_json(
                send,
                503,
                {
                    "detail": f"busy: {gate.concurrency} predictions running and {gate.queue} "
                    f"waiting; retry in {gate.retry_after_s} s",
                    "reason": "queue full",
                },
                [(b"retry-after", str(gate.retry_after_s).encode())],
                close=not drained,
            )
            return
        gate.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gate.admitted -= 1
