"""mycelium.health: the operator endpoints over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from mycelium import producer
from mycelium.health import close_ops, serve_ops

try:
    from mycelium.metrics import Metrics

    Metrics()  # prometheus_client installed
    HAVE_PROM = True
except Exception:
    HAVE_PROM = False


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw(port: int, data: bytes) -> bytes:
    """Sends data, reads until the server closes the connection (b"" when
    it hung up without answering, possibly resetting the connection)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(data)
        await w.drain()
        return await asyncio.wait_for(r.read(), 10)
    except ConnectionResetError:
        return b""
    finally:
        w.close()
        try:
            await w.wait_closed()
        except ConnectionResetError:
            pass


def parse(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {k.lower(): v for k, v in (ln.split(": ", 1) for ln in lines[1:])}
    return Response(int(status), headers, body)


async def get(port: int, path: str, method: str = "GET", version: str = "HTTP/1.1") -> Response:
    resp = parse(await raw(port, f"{method} {path} {version}\r\nHost: x\r\nUser-Agent: test\r\n\r\n".encode()))
    assert resp.headers["connection"] == "close"
    if method != "HEAD":
        assert int(resp.headers["content-length"]) == len(resp.body)
    return resp


class State:
    def __init__(self) -> None:
        self.ready: tuple[bool, str] = (True, "")
        self.stats: dict[str, Any] = {"received": 3, "handled": 2}


Server = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Server]:
    servers: list[asyncio.base_events.Server] = []

    async def start(**kw: Any) -> int:
        st = State()
        kw.setdefault("ready", lambda: st.ready)
        kw.setdefault("stats", lambda: st.stats)
        kw.setdefault("metrics", None)
        srv = await serve_ops("127.0.0.1", 0, **kw)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield start
    for srv in servers:
        await close_ops(srv)


async def test_healthz(serve: Server) -> None:
    port = await serve()
    r = await get(port, "/healthz")
    assert (r.status, r.body) == (200, b"ok\n")
    assert r.headers["content-type"].startswith("text/plain")
    r = await get(port, "/healthz?verbose=1", version="HTTP/1.0")
    assert (r.status, r.body) == (200, b"ok\n")


async def test_readyz(serve: Server) -> None:
    state = {"v": (True, "")}
    port = await serve(ready=lambda: state["v"])
    r = await get(port, "/readyz")
    assert (r.status, r.body) == (200, b"ready\n")
    state["v"] = (False, "not joined\nthe group yet")
    r = await get(port, "/readyz")
    assert (r.status, r.body) == (503, b"not ready: not joined the group yet\n")  # one line


async def test_readyz_async_failing_and_slow(serve: Server) -> None:
    answers = iter([(True, ""), (False, "redis unreachable")])

    async def check() -> tuple[bool, str]:
        return next(answers)

    port = await serve(ready=check)
    assert (await get(port, "/readyz")).status == 200
    r = await get(port, "/readyz")
    assert (r.status, r.body) == (503, b"not ready: redis unreachable\n")

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    port = await serve(ready=broken)
    r = await get(port, "/readyz")
    assert r.status == 503 and b"RuntimeError: boom" in r.body

    never = asyncio.Event()

    async def hangs() -> tuple[bool, str]:
        await never.wait()
        return True, ""

    port = await serve(ready=hangs, ready_timeout=0.2)
    start = time.monotonic()
    r = await get(port, "/readyz")
    assert r.status == 503 and b"longer than 0.2s" in r.body and time.monotonic() - start < 2


async def test_stats_json(serve: Server) -> None:
    port = await serve(stats=lambda: {"topics": {"a": producer.Stats(published=2)}, "n": 1})
    r = await get(port, "/stats")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    assert json.loads(r.body)["topics"]["a"]["published"] == 2 and r.body.endswith(b"\n")

    def broken() -> dict[str, Any]:
        raise KeyError("x")

    port = await serve(stats=broken)
    assert (await get(port, "/stats")).status == 500


@pytest.mark.skipif(not HAVE_PROM, reason="python3-prometheus-client not installed")
async def test_metrics(serve: Server) -> None:
    m = Metrics()

    class P:
        id = "p9"
        stats = producer.Stats(published=5)

    m.watch_producer(P())
    port = await serve(metrics=m)
    r = await get(port, "/metrics")
    assert r.status == 200 and r.headers["content-type"] == m.content_type
    assert b'mycelium_producer_published_total{producer="p9"} 5.0' in r.body
    port = await serve(metrics=None)
    assert (await get(port, "/metrics")).status == 404


async def test_not_found_methods_and_head(serve: Server) -> None:
    port = await serve()
    r = await get(port, "/nope")
    assert (r.status, r.body) == (404, b"404 page not found\n")
    assert (await get(port, "/")).status == 404
    r = await get(port, "/healthz", method="POST")
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
    assert (await get(port, "/nope", method="DELETE")).status == 404
    r = await get(port, "/healthz", method="HEAD")
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "3"


async def test_bad_requests(serve: Server) -> None:
    port = await serve()
    assert parse(await raw(port, b"hello\r\n\r\n")).status == 400
    assert parse(await raw(port, b"GET /healthz SPDY/3\r\n\r\n")).status == 400
    big = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (9 << 10) + b"\r\n\r\n"
    assert parse(await raw(port, big)).status == 431
    # a head of just under 8 KiB is fine
    ok = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (7 << 10) + b"\r\n\r\n"
    assert parse(await raw(port, ok)).status == 200


async def test_slow_client_is_disconnected(serve: Server) -> None:
    port = await serve(client_timeout=0.3)
    start = time.monotonic()
    # half a request head, then nothing: the server hangs up without answering
    assert await raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") == b""
    assert 0.2 < time.monotonic() - start < 3
    r = await get(port, "/healthz")  # others are still served
    assert r.status == 200


async def test_connection_limit(serve: Server) -> None:
    port = await serve(max_connections=2, client_timeout=5)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        for r, w in held:  # the server accepted both (a byte of the head each)
            w.write(b"G")
            await w.drain()
        assert await raw(port, b"GET /healthz HTTP/1.1\r\n\r\n") == b""  # a third: closed at once
    finally:
        for r, w in held:
            w.close()
            await w.wait_closed()
