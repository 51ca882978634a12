"""Writes of concurrent tasks sharing round trips: the first command of an
event-loop turn schedules a flush at the end of the turn, and every command
queued until then goes in one pipelined write (the way the Go packages'
flat combiner gathers concurrent writes). While ``max_flights`` writes are
on the wire, new commands wait and go in the next one, so the batch grows
with the load and the connections used stay bounded."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

Command = Sequence[Any]


class Batcher:
    """Pipelines the command groups of concurrent callers. Each caller's
    group is contiguous in the pipeline and gets its own replies (raw, as
    Redis sent them: no redis-py response callbacks; an error reply is an
    exception object in the list). A failure of the whole write (connection
    lost) raises in every caller of that write."""

    def __init__(self, client: Any, max_flights: int = 2) -> None:
        self._r = client
        self._queue: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._scheduled = False
        self._flights = 0
        self._max = max_flights
        self.writes = 0  # pipelines sent
        self.commands = 0  # commands sent

    async def run(self, cmds: list[Command]) -> list[Any]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((cmds, fut))
        if not self._scheduled and self._flights < self._max:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await asyncio.shield(fut)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue or self._flights >= self._max:
            return
        batch, self._queue = self._queue, []
        self._flights += 1
        t = asyncio.ensure_future(self._write(batch))
        t.add_done_callback(self._done)

    def _done(self, _: asyncio.Future[None]) -> None:
        self._flights -= 1
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _write(self, batch: list[tuple[list[Command], asyncio.Future[list[Any]]]]) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.response_callbacks = {}  # raw replies: MULTI's QUEUED must not meet DEL's int()
        n = 0
        for cmds, _ in batch:
            for c in cmds:
                pipe.execute_command(*c)
                n += 1
        self.writes += 1
        self.commands += n
        try:
            res = await pipe.execute(raise_on_error=False)
        except BaseException as e:  # noqa: BLE001 - handed to every caller
            for _, f in batch:
                if not f.done():
                    f.set_exception(e if isinstance(e, Exception) else ConnectionError(str(e)))
                    f.exception()  # retrieved here too: a caller that left does not log it
            if not isinstance(e, Exception):
                raise
            return
        at = 0
        for cmds, f in batch:
            if not f.done():
                f.set_result(list(res[at : at + len(cmds)]))
            at += len(cmds)


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

    async def run(self, key: str, cmds: list[Command]) -> Any:
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
