"""The operator endpoints of a Python worker, as the Go bus-worker serves them
(cmd/bus-worker/internal/worker/ops.go), on a tiny HTTP/1.1 server of
``asyncio.start_server`` (no framework):

- ``GET /healthz``: 200 ``ok`` (the process answers).
- ``GET /readyz``: 200 ``ready``, or 503 ``not ready: <reason>`` when the
  ``ready`` check says so, fails, or takes longer than ``ready_timeout``
  (2 s, as Go's).
- ``GET /stats``: 200, the ``stats()`` dict as JSON (dataclasses become
  objects), ``application/json``; 500 when ``stats`` fails.
- ``GET /metrics``: 200, the Prometheus exposition of ``metrics``
  (:class:`mycelium.metrics.Metrics`); 404 when ``metrics`` is None.

HEAD is answered as GET without the body (Go's ``GET /path`` patterns
match HEAD too). Another method on one of those paths is 405 with
``Allow: GET, HEAD``; any other path 404 (``404 page not found``, Go's
text). Every answer carries Content-Length and ``Connection: close``, and
the connection is closed after it. A request head is read up to 8 KiB
(more: 431), within ``client_timeout`` (5 s, Go's ReadHeaderTimeout; a
slower client is disconnected without an answer); a request line that is
not HTTP/1.x is 400. At most ``max_connections`` (128) connections are
served at once; more are closed at once.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import contextlib
import dataclasses
import inspect
import json
import weakref
from typing import Any, Awaitable, Callable, Union, cast

from .metrics import Metrics

__all__ = ["serve_ops", "close_ops", "ReadyCheck", "MAX_HEAD", "CLIENT_TIMEOUT", "READY_TIMEOUT"]

MAX_HEAD = 8 << 10
CLIENT_TIMEOUT = 5.0
READY_TIMEOUT = 2.0
MAX_CONNECTIONS = 128
PATHS = ("/healthz", "/readyz", "/stats", "/metrics")
TEXT = "text/plain; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}

#: The readiness check: (ready, reason), returned or awaited.
ReadyCheck = Union[Callable[[], Awaitable[tuple[bool, str]]], Callable[[], tuple[bool, str]]]


class _TooLarge(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The request head (up to the blank line), at most MAX_HEAD bytes."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            end = buf.find(b"\n\n")
        if end >= 0:
            if end > MAX_HEAD:
                raise _TooLarge
            return buf[:end]
        if len(buf) > MAX_HEAD:
            raise _TooLarge
        chunk = await reader.read(MAX_HEAD + 4 - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


class _Ops:
    def __init__(self, ready: ReadyCheck, stats: Callable[[], Any], metrics: Metrics | None,
                 client_timeout: float, ready_timeout: float, max_connections: int) -> None:
        self.ready, self.stats, self.metrics = ready, stats, metrics
        self.client_timeout, self.ready_timeout = client_timeout, ready_timeout
        self.max_connections = max_connections
        self.active = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            if self.active > self.max_connections:
                return
            try:
                head = await asyncio.wait_for(_read_head(reader), self.client_timeout)
            except _TooLarge:
                await self._send(writer, 431, TEXT, b"431 Request Header Fields Too Large\n", True)
                return
            except (asyncio.TimeoutError, EOFError, ConnectionError, OSError):
                return  # a slow or vanished client: no answer
            status, ctype, body, extra = await self._answer(head)
            method = head.split(b" ", 1)[0]
            await self._send(writer, status, ctype, body, method != b"HEAD", extra)
        except Exception:  # never let one connection's failure surface in the event loop's log
            pass
        finally:
            self.active -= 1
            if task is not None:
                self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes, with_body: bool,
                    extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)), "Connection": "close",
                   "X-Content-Type-Options": "nosniff", **(extra or {})}
        out = f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n".encode()
        out += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"
        writer.write(out + body if with_body else out)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), self.client_timeout)

    async def _answer(self, head: bytes) -> tuple[int, str, bytes, dict[str, str] | None]:
        line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[0].isalpha() or not parts[1].startswith(b"/"):
            return 400, TEXT, b"400 Bad Request\n", None
        method, target = parts[0].decode("ascii", "replace"), parts[1].decode("utf-8", "replace")
        path = target.split("?", 1)[0].split("#", 1)[0]
        if path not in PATHS:
            return 404, TEXT, b"404 page not found\n", None
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"Method Not Allowed\n", {"Allow": "GET, HEAD"}
        if path == "/healthz":
            return 200, TEXT, b"ok\n", None
        if path == "/readyz":
            ok, why = await self._ready()
            if ok:
                return 200, TEXT, b"ready\n", None
            return 503, TEXT, ("not ready: " + " ".join(why.split())).encode() + b"\n", None
        if path == "/stats":
            try:
                body = json.dumps(self.stats(), default=_json_default).encode() + b"\n"
            except Exception as e:
                return 500, TEXT, f"stats: {type(e).__name__}: {e}\n".encode(), None
            return 200, "application/json", body, None
        if self.metrics is None:
            return 404, TEXT, b"404 page not found\n", None
        try:
            return 200, self.metrics.content_type, self.metrics.exposition(), None
        except Exception as e:
            return 500, TEXT, f"metrics: {type(e).__name__}: {e}\n".encode(), None

    async def _ready(self) -> tuple[bool, str]:
        try:
            res = self.ready()
            if inspect.isawaitable(res):
                res = await asyncio.wait_for(res, self.ready_timeout)
            ok, why = cast("tuple[bool, str]", res)
            return bool(ok), str(why or "")
        except asyncio.TimeoutError:
            return False, f"readiness check took longer than {self.ready_timeout:g}s"
        except Exception as e:
            return False, f"readiness check failed: {type(e).__name__}: {e}"


async def serve_ops(
    host: str,
    port: int,
    *,
    ready: ReadyCheck,
    stats: Callable[[], dict[str, Any]],
    metrics: Metrics | None,
    client_timeout: float = CLIENT_TIMEOUT,
    ready_timeout: float = READY_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> asyncio.base_events.Server:
    """Serves /healthz, /readyz, /stats and /metrics (see the module doc) on
    ``host``:``port`` (0: any free port; read it from
    ``server.sockets[0].getsockname()``). ``ready`` returns or awaits
    ``(ready, reason)``; a synchronous one runs on the event loop, so keep
    it quick. Stop it with :func:`close_ops` (or ``server.close()``, which
    on Python 3.11 leaves answers in progress running)."""
    ops = _Ops(ready, stats, metrics, client_timeout, ready_timeout, max_connections)
    server = await asyncio.start_server(ops.handle, host, port)
    _OPS[server] = ops
    return server


_OPS: weakref.WeakKeyDictionary[asyncio.base_events.Server, _Ops] = weakref.WeakKeyDictionary()


async def close_ops(server: asyncio.base_events.Server, timeout: float = 5.0) -> None:
    """Stops ``server``: no new connections; answers in progress get
    ``timeout`` seconds to finish, then are cancelled. (Python 3.11's
    ``Server.wait_closed`` returns at once after ``close``.)"""
    server.close()
    await server.wait_closed()
    ops = _OPS.pop(server, None)
    if ops is None or not ops.tasks:
        return
    tasks = list(ops.tasks)
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
