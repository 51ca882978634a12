"""Writes of concurrent tasks sharing round trips: the first command of an
event-loop turn schedules a flush at the end of the turn, and every command
queued until then goes in one pipelined write (the way the Go packages'
flat combiner gathers concurrent writes). While ``max_flights`` writes are
on the wire, new commands wait and go in the next one, so the batch grows
with the load and the connections used stay bounded."""

from __future__ import annotations

import asyncio

from redis.exceptions import ResponseError
from typing import Any, Callable, Collection, Sequence

Command = Sequence[Any]


def _pack(c: Command) -> bytes:
    """One command in RESP: an array of bulk strings (bytes, str as UTF-8,
    int in decimal)."""
    parts = [b"*%d\r\n" % len(c)]
    for a in c:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, (bytearray, memoryview)):
            b = bytes(a)
        elif isinstance(a, int) and not isinstance(a, bool):
            b = b"%d" % a
        else:
            raise TypeError(f"command argument of type {type(a).__name__}")
        parts.append(b"$%d\r\n" % len(b))
        parts.append(b)
        parts.append(b"\r\n")
    return b"".join(parts)


class Op:
    """One caller's commands in a shared write: ``fut`` gets the replies.
    ``res`` holds them too once the write landed, even when the caller
    stopped waiting (its task was cancelled: ``fut`` then is), and
    ``after`` (if set) is called with them then."""

    __slots__ = ("cmds", "fut", "res", "err", "after")

    def __init__(self, cmds: Sequence[Command], fut: asyncio.Future[list[Any]]) -> None:
        self.cmds, self.fut = cmds, fut
        self.res: list[Any] | None = None
        self.err: BaseException | None = None
        self.after: Callable[[list[Any]], None] | None = None


class Batcher:
    """Pipelines the command groups of concurrent callers. Each caller's
    group is contiguous in the pipeline and gets its own replies (raw, as
    Redis sent them: no redis-py response callbacks; an error reply is an
    exception object in the list). A failure of the whole write (connection
    lost) raises in every caller of that write."""

    def __init__(self, client: Any, max_flights: int = 2) -> None:
        self._r = client
        self._queue: list[Op] = []
        self._scheduled = False
        self._flights = 0
        self._max = max_flights
        self.writes = 0  # pipelines sent
        self.commands = 0  # commands sent
        self._cluster = hasattr(client, "get_node_from_key")
        self._idle: list[Any] = []  # connections kept between writes (one server only)
        self._closed = False
        self._tasks: set[asyncio.Future[None]] = set()  # writes in flight

    def submit(self, cmds: Sequence[Command]) -> Op:
        """Queues cmds for the next shared write; await ``op.fut`` (awaiting
        it directly: a cancelled caller cancels only its own wait)."""
        op = Op(cmds, asyncio.get_running_loop().create_future())
        self._queue.append(op)
        if not self._scheduled and self._flights < self._max:
            self._start()
        return op

    def _start(self) -> None:
        # The write's task takes what is queued when it first runs, at the
        # end of this event-loop turn: every caller of the turn shares it.
        self._scheduled = True
        self._flights += 1
        t = asyncio.ensure_future(self._flight())
        self._tasks.add(t)  # owned: close waits for the writes on the wire
        t.add_done_callback(self._tasks.discard)

    async def run(self, cmds: Sequence[Command]) -> list[Any]:
        return await asyncio.shield(self.submit(cmds).fut)

    async def _flight(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        try:
            if batch:
                await self._write(batch)
        finally:
            self._flights -= 1
            if self._queue and not self._scheduled and self._flights < self._max:
                self._start()

    async def _pipeline(self, batch: list[Op], n: int) -> list[Any]:
        """One write of every command of batch, then their n replies: on one
        server, packed here and sent on one connection of the client's pool
        (redis-py's pipeline packs each command through its generic encoder,
        ~20 us a command); on a cluster, through its pipeline (commands go
        to their slots' servers)."""
        if self._cluster:
            pipe = self._r.pipeline(transaction=False)
            for op in batch:
                for c in op.cmds:
                    pipe.execute_command(*c)
            return list(await pipe.execute(raise_on_error=False))
        out: list[bytes] = []
        for op in batch:
            for c in op.cmds:
                out.append(c if isinstance(c, bytes) else _pack(c))  # bytes: packed by the caller
        # A connection of its own per write in flight, kept from write to
        # write (taking one from the pool costs a readiness poll each time).
        conn = self._idle.pop() if self._idle else await self._r.connection_pool.get_connection("_")
        try:
            await conn.send_packed_command(out, check_health=False)
            res: list[Any] = []
            for _ in range(n):
                try:
                    res.append(await conn.read_response())
                except ResponseError as e:
                    res.append(e)
        except BaseException:
            await conn.disconnect()  # replies may be left unread: it reconnects on its next write
            raise
        finally:
            if self._closed:
                await self._r.connection_pool.release(conn)
            else:
                self._idle.append(conn)
        return res

    async def close(self) -> None:
        """Lets the writes on the wire end (at most 5 s: their callers get
        their replies or errors), then gives the connections it kept back to
        the client's pool."""
        self._closed = True
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        idle, self._idle = self._idle, []
        for c in idle:
            try:
                await self._r.connection_pool.release(c)
            except Exception:  # noqa: BLE001 - closing
                pass

    async def _write(self, batch: list[Op]) -> None:
        n = sum(len(op.cmds) for op in batch)
        self.writes += 1
        self.commands += n
        try:
            res = await self._pipeline(batch, n)
        except BaseException as e:  # noqa: BLE001 - handed to every caller
            err = e if isinstance(e, Exception) else ConnectionError(str(e))
            for op in batch:
                op.err = err
                if not op.fut.done():
                    op.fut.set_exception(err)
                    op.fut.exception()  # retrieved here too: a caller that left does not log it
            if not isinstance(e, Exception):
                raise
            return
        at = 0
        for op in batch:
            op.res = list(res[at : at + len(op.cmds)])
            at += len(op.cmds)
            if not op.fut.done():
                op.fut.set_result(op.res)
            elif op.after is not None:
                op.after(op.res)


class NodeTx:
    """Transactions (MULTI/EXEC) on a client: through a Batcher's shared
    write on one server; on a cluster, on the server owning the key's slot,
    over a small connection pool of its own (redis-py 4.3's asyncio cluster
    client runs no transactions). Every key of a transaction shares a hash
    tag, so one slot holds them all."""

    def __init__(self, client: Any, batch: Batcher) -> None:
        self._r, self._b = client, batch
        self._cluster = hasattr(client, "get_node_from_key")
        self._nodes: dict[str, Any] = {}

    async def run(self, key: str, cmds: Sequence[Command]) -> Any:
        """EXEC's reply (a list of replies, exceptions for failed commands),
        or the exception that failed the transaction."""
        if not self._cluster:
            res = await self._b.run([("MULTI",), *cmds, ("EXEC",)])
            for r in res:
                if isinstance(r, Exception):
                    return r
            return res[-1]
        node = self._node(key)
        pipe = node.pipeline(transaction=True)
        pipe.response_callbacks = {}
        for c in cmds:
            pipe.execute_command(*c)
        try:
            return await pipe.execute(raise_on_error=False)
        except Exception as e:  # noqa: BLE001 - MOVED, EXECABORT, a lost connection: the caller decides
            return e

    def _node(self, key: str) -> Any:
        import redis.asyncio as aioredis

        n = self._r.get_node_from_key(key)
        c = self._nodes.get(n.name)
        if c is None:
            kw = {k: v for k, v in self._r.connection_kwargs.items()
                  if k in ("username", "password", "client_name", "socket_connect_timeout", "socket_keepalive", "ssl",
                           "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")}
            pool = aioredis.BlockingConnectionPool(max_connections=2, timeout=None, host=n.host, port=n.port,
                                                   decode_responses=False, **kw)
            c = self._nodes[n.name] = aioredis.Redis(connection_pool=pool)
        return c

    async def close(self) -> None:
        for c in self._nodes.values():
            try:
                await c.close(close_connection_pool=True)
            except Exception:  # noqa: BLE001 - closing
                pass
        self._nodes.clear()


async def stop_tasks(tasks: "Collection[asyncio.Future[Any]]", within: float) -> None:
    """Cancels tasks and waits at most ``within`` seconds for them to end,
    cancelling again every 0.1 s: redis-py 4.3 can turn a cancellation that
    lands in its connection checks into a timeout the loop then retries
    (the loops also check their stop flag). The caller's own cancellation is
    never swallowed."""
    loop = asyncio.get_running_loop()
    pending = {t for t in tasks if not t.done()}
    deadline = loop.time() + within
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.1, left))
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: nothing logged at exit
