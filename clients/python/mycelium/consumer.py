"""The worker's side: serve a topic as a member of a consumer group, with
the Go consumer's delivery rules (docs/wire.md, "Serving a topic")."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from . import codec
from .errors import CODE_HANDLER, InvalidConfig, MalformedError, RemoteError
from .keys import DEFAULT_PREFIX, Keys, partition, validate_name
from .producer import FIELD, _unavailable, connect_url

log = logging.getLogger("mycelium.consumer")

MAX_CORRELATION_ID = 128
PRESENCE_EVERY = 5.0
PRESENCE_PRUNE_MS = 3_600_000
CONTROL_WINDOW_MS = 600_000
#: cancelled requests a worker remembers (by token); a flood of notices
#: evicts the oldest first, at O(1) a notice
MAX_CANCELLED = 100_000
#: notices read per round trip when a worker catches up on the control
#: stream at start (a flood of 200,000 is 49 reads, not 391)
CONTROL_CATCH_UP = 4096


@dataclass
class Message:
    """One entry handed to a handler."""

    id: str  # stream entry id
    topic: str
    partition: int
    payload: bytes
    headers: dict[str, str]
    attempt: int  # deliveries of this entry to the group, from 1
    deadline: float | None  # unix seconds when the caller gives up; None: none
    request: bool  # a request (the result is sent back) or an event
    sent: float  # unix seconds when the producer encoded it


Handler = Callable[[Message], Awaitable["bytes | None"]]


@dataclass
class Stats:
    """Counters of one consumer."""

    received: int = 0
    handled: int = 0
    failed: int = 0
    replied: int = 0
    reply_dropped: int = 0
    acked: int = 0
    expired: int = 0
    dead_lettered: int = 0
    retried: int = 0
    reclaimed: int = 0
    heartbeats: int = 0
    cancelled: int = 0
    control_malformed: int = 0  # cancel notices without a valid token (forged or foreign), skipped
    write_errors: int = 0  # replies, acks or dead letters Redis did not take (the entry stays pending)


@dataclass
class _Running:
    key: str
    task: asyncio.Task[Any]
    started: float
    token: bytes = b""  # a request's cancel token (b"": an event, or none)


class Consumer:
    """Runs an async handler over one topic as a member of a consumer group.

    ``await consumer.run()`` serves until its task is cancelled, then stops
    reading, lets running handlers finish within ``shutdown_timeout``
    (then cancels them: their entries stay pending for another worker),
    leaves the group and re-raises the cancellation.

    The handler gets a :class:`Message` and returns the reply's bytes (for
    a request; ignored for an event) or raises: a :class:`RemoteError`
    chooses the code the caller sees, any other exception arrives as
    ``handler_error``. A failed event is delivered again after
    ``claim_idle``, up to ``max_deliveries``, then dead-lettered."""

    def __init__(
        self,
        url: str,
        topic: str,
        handler: Handler,
        *,
        group: str = "workers",
        name: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        concurrency: int = 64,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        block: float = 2.0,
        max_entry_size: int = 8 << 20,
        reply_max_len: int = 10_000,
        dead_letter_max_len: int = 100_000,
        shutdown_timeout: float = 30.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        validate_name("topic", topic)
        validate_name("group", group)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        validate_name("consumer", self.name)
        if concurrency < 1 or max_deliveries < 1 or claim_idle <= 0 or block <= 0 or max_entry_size < 1 or shutdown_timeout < 0:
            raise InvalidConfig("concurrency, max_deliveries, claim_idle, block and max_entry_size must be positive")
        if claim_idle < 2 * block:
            raise InvalidConfig(f"claim_idle ({claim_idle}) must be at least twice block ({block})")
        self.topic, self.group = topic, group
        self._h = handler
        self._keys = Keys(prefix)
        self._url = url
        self._own_client = client is None
        self._r = client
        self.concurrency = concurrency
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self._block_ms = int(block * 1000)
        self.max_entry_size = max_entry_size
        self._reply_cap = reply_max_len
        self._dlq_cap = dead_letter_max_len
        self.shutdown_timeout = shutdown_timeout
        self._member = f"{group} {self.name}"
        self._parts: list[str] = []  # stream keys read, partition i at index i
        self._slots: asyncio.Semaphore | None = None  # one per handler that may run; FIFO for waiters
        self._running: dict[str, _Running] = {}  # entry id (per partition key) -> its handler
        # cancel token -> until (unix ms), oldest notice first; at most
        # MAX_CANCELLED (a flood of notices evicts the oldest, O(1) each)
        self._cancelled: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._by_token: dict[bytes, _Running] = {}  # cancel token -> the handler running it
        self.stats = Stats()
        self.serving = asyncio.Event()

    @property
    def redis(self) -> aioredis.Redis:
        assert self._r is not None
        return self._r

    # -- run -----------------------------------------------------------

    async def run(self) -> None:
        """Serves until cancelled (see the class)."""
        if self._r is None:
            self._r = connect_url(self._url)
        loops: list[asyncio.Task[Any]] = []
        self._slots = asyncio.Semaphore(self.concurrency)
        try:
            try:
                await self._join()
            except (RedisError, OSError) as e:
                raise _unavailable(e) from None  # a wrong password, NOPERM, or Redis down: a MyceliumError
            await self._catch_up_control()
            self.serving.set()
            loops = [asyncio.ensure_future(c) for c in (self._read_loop(), self._reclaim_loop(), self._heartbeat_loop(),
                                                         self._presence_loop(), self._control_loop())]
            await asyncio.gather(*loops)
        finally:
            for t in loops:
                t.cancel()
            for t in loops:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self._drain()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._leave())
            if self._own_client and self._r is not None:
                with contextlib.suppress(Exception):
                    await self._r.close()
                    await self._r.connection_pool.disconnect()
                self._r = None

    async def _drain(self) -> None:
        tasks = [r.task for r in self._running.values()]
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
        for t in pending:
            t.cancel()  # their entries stay pending for another worker
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _join(self) -> None:
        r = self.redis
        meta = await r.hmget(self._keys.meta(self.topic), ["partitions", "drain"])
        n = _count(meta[1]) or _count(meta[0]) or 1
        self._parts = [self._keys.topic(partition(self.topic, i)) for i in range(n)]
        for key in self._parts:
            await self._create_group(key)
        await self._beat()

    async def _create_group(self, key: str) -> None:
        r = self.redis
        try:
            await r.xgroup_create(key, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        await r.execute_command("XGROUP", "CREATECONSUMER", key, self.group, self.name)

    async def _beat(self) -> None:
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self._keys.workers(self.topic), {self._member: now})
        pipe.zremrangebyscore(self._keys.workers(self.topic), "-inf", f"({now - PRESENCE_PRUNE_MS}")
        await pipe.execute()

    async def _leave(self) -> None:
        r = self.redis
        with contextlib.suppress(RedisError, OSError):
            await r.zrem(self._keys.workers(self.topic), self._member)
            for key in self._parts:
                pend = await r.xpending_range(key, self.group, "-", "+", 1, consumername=self.name)
                if not pend:
                    await r.execute_command("XGROUP", "DELCONSUMER", key, self.group, self.name)

    # -- loops ---------------------------------------------------------

    async def _presence_loop(self) -> None:
        last_parts = time.monotonic()
        while True:
            await asyncio.sleep(PRESENCE_EVERY / 2.5)
            with contextlib.suppress(RedisError, OSError):
                await self._beat()
                if time.monotonic() - last_parts >= 2:
                    last_parts = time.monotonic()
                    meta = await self.redis.hmget(self._keys.meta(self.topic), ["partitions", "drain"])
                    n = _count(meta[1]) or _count(meta[0]) or 1
                    for i in range(len(self._parts), n):  # partitions added: read from their first entry
                        key = self._keys.topic(partition(self.topic, i))
                        await self._create_group(key)
                        self._parts.append(key)

    async def _take_slots(self) -> int:
        """One slot (waiting for it), then any others free now; a waiting
        reclaim goes first (the semaphore serves waiters in order)."""
        assert self._slots is not None
        await self._slots.acquire()
        n = 1
        while n < self.concurrency and not self._slots.locked():
            await self._slots.acquire()
            n += 1
        return n

    def _give_slots(self, n: int) -> None:
        assert self._slots is not None
        for _ in range(n):
            self._slots.release()

    async def _read_loop(self) -> None:
        backoff = 0.05
        while True:
            n = await self._take_slots()
            try:
                res = await self.redis.xreadgroup(self.group, self.name, {k: ">" for k in self._parts}, count=n, block=self._block_ms)
                backoff = 0.05
            except ResponseError as e:
                self._give_slots(n)
                if "NOGROUP" in str(e):  # Redis restarted or was flushed
                    with contextlib.suppress(RedisError, OSError):
                        for key in self._parts:
                            await self._create_group(key)
                    continue
                raise
            except (RedisError, OSError):
                self._give_slots(n)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            got = 0
            for rkey, entries in res or []:
                key = rkey.decode() if isinstance(rkey, bytes) else str(rkey)
                for eid, fields in entries:
                    got += 1
                    self._start(key, eid.decode() if isinstance(eid, bytes) else str(eid), fields, 1)
            self._give_slots(n - got)

    async def _reclaim_loop(self) -> None:
        cursors = {k: "0-0" for k in self._parts}
        every = min(self.claim_idle / 2, 5.0)
        while True:
            await asyncio.sleep(every)
            for key in list(self._parts):
                with contextlib.suppress(RedisError, OSError):
                    await self._reclaim(key, cursors)

    async def _reclaim(self, key: str, cursors: dict[str, str]) -> None:
        n = self.concurrency - len(self._running)
        if n <= 0:
            return
        res = await self.redis.xautoclaim(key, self.group, self.name, int(self.claim_idle * 1000),
                                          cursors.get(key, "0-0"), count=n)  # type: ignore[arg-type] # any stream id goes
        cursors[key] = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        entries = [e for e in res[1] if e and e[0]]
        if not entries:
            return
        ids = [e[0].decode() if isinstance(e[0], bytes) else str(e[0]) for e in entries]
        order = sorted(ids, key=_id_order)
        pend = await self.redis.xpending_range(key, self.group, order[0], order[-1], len(ids), consumername=self.name)
        counts = {(p["message_id"].decode() if isinstance(p["message_id"], bytes) else p["message_id"]): p["times_delivered"] for p in pend}
        for eid, (_, fields) in zip(ids, entries):
            n = await self._take_one()
            self.stats.reclaimed += 1
            attempt = int(counts.get(eid, 1))
            if attempt > self.max_deliveries:
                self._give_slots(n)
                await self._dead(key, eid, fields, attempt - 1, "max_deliveries",
                                 f"not completed after {attempt - 1} deliveries (MaxDeliveries {self.max_deliveries})")
                continue
            self._start(key, eid, fields, attempt, slot_taken=True)

    async def _take_one(self) -> int:
        assert self._slots is not None
        await self._slots.acquire()
        return 1

    async def _heartbeat_loop(self) -> None:
        every = self.claim_idle / 3
        while True:
            await asyncio.sleep(every)
            old = time.monotonic() - every
            by_key: dict[str, list[str]] = {}
            for eid, run in list(self._running.items()):
                if run.started < old:
                    by_key.setdefault(run.key, []).append(eid.split("|", 1)[1])
            for key, ids in by_key.items():
                with contextlib.suppress(RedisError, OSError):
                    await self.redis.xclaim(key, self.group, self.name, int(self.claim_idle * 1000 / 6), ids, justid=True)
                    self.stats.heartbeats += len(ids)

    async def _catch_up_control(self) -> None:
        self._ctl_last = f"{int(time.time() * 1000) - CONTROL_WINDOW_MS}-0"
        with contextlib.suppress(RedisError, OSError):
            while True:
                res = await self.redis.xread({self._keys.control(self.topic): self._ctl_last}, count=CONTROL_CATCH_UP)
                n = self._control(res)
                if n < CONTROL_CATCH_UP:
                    return

    async def _control_loop(self) -> None:
        backoff = 0.05
        while True:
            try:
                res = await self.redis.xread({self._keys.control(self.topic): self._ctl_last}, count=512, block=self._block_ms)
                backoff = 0.05
            except (RedisError, OSError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self._control(res)

    def _control(self, res: Any) -> int:
        """Applies cancel notices (docs/wire.md, "Control stream"); returns
        how many entries it read."""
        n = 0
        now = int(time.time() * 1000)
        for _, entries in res or []:
            for eid, fields in entries:
                n += 1
                self._ctl_last = eid.decode() if isinstance(eid, bytes) else eid
                f = dict(fields or {})
                tok = f.get(b"tok", b"")
                # A notice must present the request's token: its ids alone
                # are no proof (anyone who saw them could cancel).
                if f.get(b"op") != b"cancel" or len(tok) != codec.TOKEN_SIZE or tok == bytes(codec.TOKEN_SIZE):
                    self.stats.control_malformed += f.get(b"op") == b"cancel"
                    continue
                try:
                    until = int(f.get(b"until", b""))
                except ValueError:
                    self.stats.control_malformed += 1
                    continue
                if until and until < now:
                    continue
                self._cancelled.pop(tok, None)
                self._cancelled[tok] = min(until or now + CONTROL_WINDOW_MS, now + CONTROL_WINDOW_MS)
                while len(self._cancelled) > MAX_CANCELLED:
                    self._cancelled.popitem(last=False)
                run = self._by_token.get(tok)
                if run is not None and not run.task.done():
                    run.task.cancel()
        # The oldest notices first: drop those whose deadline passed.
        while self._cancelled:
            tok, until = next(iter(self._cancelled.items()))
            if until >= now:
                break
            self._cancelled.popitem(last=False)
        return n

    # -- one entry -----------------------------------------------------

    def _start(self, key: str, eid: str, fields: Mapping[bytes, bytes] | None, attempt: int, *, slot_taken: bool = True) -> None:
        self.stats.received += 1
        rid = key + "|" + eid
        task = asyncio.ensure_future(self._handle_safely(key, eid, fields, attempt))
        self._running[rid] = _Running(key, task, time.monotonic())

        def done(_: asyncio.Task[Any]) -> None:
            run = self._running.pop(rid, None)
            if run is not None and run.token:
                self._by_token.pop(run.token, None)
            self._give_slots(1)

        task.add_done_callback(done)

    async def _handle_safely(self, key: str, eid: str, fields: Mapping[bytes, bytes] | None, attempt: int) -> None:
        try:
            await self._handle(key, eid, fields, attempt)
        except (RedisError, OSError) as e:
            # The reply, ack or dead letter did not land: the entry stays
            # pending and is reclaimed after claim_idle (at least once).
            self.stats.write_errors += 1
            log.warning("cannot finish entry %s on %s (it stays pending): %s", eid, key, e)

    async def _handle(self, key: str, eid: str, fields: Mapping[bytes, bytes] | None, attempt: int) -> None:
        r = self.redis
        if fields is None:  # deleted while pending
            await self._ack(key, eid)
            return
        data = fields.get(FIELD)
        if data is None:
            await self._dead(key, eid, fields, attempt, "malformed", 'entry has no "m" field')
            return
        if len(data) > self.max_entry_size:
            await self._dead(key, eid, fields, attempt, "malformed", f"entry of {len(data)} bytes exceeds MaxEntrySize {self.max_entry_size}", oversized=True)
            return
        try:
            env = codec.decode(data)
        except MalformedError as e:
            await self._dead(key, eid, fields, attempt, "malformed", str(e))
            return
        if env.kind not in (codec.EVENT, codec.REQUEST):
            await self._dead(key, eid, fields, attempt, "malformed", f"envelope kind {env.kind} on a topic stream")
            return
        req = env.kind == codec.REQUEST
        if req:
            if self._keys.parse_reply(env.reply_to) is None:
                await self._dead(key, eid, fields, attempt, "malformed", f"reply_to {env.reply_to[:200]!r} is not a reply stream of this bus")
                return
            n = len(env.id.encode("utf-8", "surrogateescape"))
            if not 1 <= n <= MAX_CORRELATION_ID:
                await self._dead(key, eid, fields, attempt, "malformed", f"request id of {n} bytes: want 1 to {MAX_CORRELATION_ID}")
                return
        now_ns = time.time_ns()
        if env.deadline and now_ns >= env.deadline:
            self.stats.expired += 1
            await self._ack(key, eid)
            return
        if req and env.token and env.token in self._cancelled:
            self.stats.cancelled += 1
            await self._ack(key, eid)
            return
        run = self._running.get(key + "|" + eid)
        if run is not None and req and env.token:
            run.token = env.token
            self._by_token[env.token] = run
        msg = Message(id=eid, topic=self.topic, partition=self._parts.index(key) if key in self._parts else 0,
                      payload=env.payload, headers=env.headers or {}, attempt=attempt,
                      deadline=env.deadline / 1e9 if env.deadline else None, request=req, sent=env.sent / 1e9)
        started = time.monotonic()
        out: bytes | None = None
        err: BaseException | None = None
        try:
            if env.deadline:
                out = await asyncio.wait_for(self._h(msg), max((env.deadline - time.time_ns()) / 1e9, 0))
            else:
                out = await self._h(msg)
        except asyncio.CancelledError:
            if req and env.token and env.token in self._cancelled:
                self.stats.cancelled += 1  # the caller gave up: no reply
                await asyncio.shield(self._ack(key, eid))
                return
            raise  # shutdown: the entry stays pending
        except asyncio.TimeoutError:
            err = RemoteError(CODE_HANDLER, "context deadline exceeded")
        except Exception as e:  # noqa: BLE001 - a handler's failure becomes the caller's remote error
            err = e
        if err is None and out is not None and not isinstance(out, (bytes, bytearray, memoryview)):
            err = RemoteError(CODE_HANDLER, f"handler returned {type(out).__name__}, not bytes")
        if err is not None:
            log.warning("handler failed on entry %s (attempt %d, %s): %s", eid, attempt, "request" if req else "event", err)
        handled_ns = int((time.monotonic() - started) * 1e9)
        self.stats.handled += 1
        if err is not None:
            self.stats.failed += 1
        if req:
            reply = codec.Envelope(kind=codec.REPLY, id=env.id, sent=time.time_ns(), payload=bytes(out or b""),
                                   queue_wait=_queue_wait(eid, env.sent, now_ns), handler=handled_ns,
                                   request_entry=eid, attempt=min(attempt, (1 << 32) - 1),
                                   cache_key=env.cache_key)  # names the cache entry it answers (not stored: cache_ttl 0)
            if err is not None:
                reply.payload = b""
                if isinstance(err, RemoteError):
                    reply.err_code, reply.err_msg = err.code or CODE_HANDLER, err.message
                else:
                    reply.err_code, reply.err_msg = CODE_HANDLER, str(err) or type(err).__name__
            pipe = r.pipeline(transaction=False)
            pipe.xadd(env.reply_to, {FIELD: codec.encode(reply)}, maxlen=self._reply_cap, approximate=True, nomkstream=True)
            pipe.xack(key, self.group, eid)
            res = await asyncio.shield(pipe.execute(raise_on_error=False))
            if isinstance(res[0], Exception) or res[0] is None:
                self.stats.reply_dropped += 1  # the caller's reply stream is gone
            else:
                self.stats.replied += 1
            if not isinstance(res[1], Exception):
                self.stats.acked += int(res[1] or 0)
            return
        if err is None:
            await self._ack(key, eid)
            return
        if attempt >= self.max_deliveries:
            await self._dead(key, eid, fields, attempt, "max_deliveries",
                             f"failed {attempt} times (MaxDeliveries {self.max_deliveries}); last error: {err}")
            return
        self.stats.retried += 1  # left pending: delivered again after claim_idle

    async def _ack(self, key: str, eid: str) -> None:
        n = await self.redis.xack(key, self.group, eid)
        self.stats.acked += int(n or 0)

    async def _dead(self, key: str, eid: str, fields: Mapping[bytes, bytes], attempt: int, reason: str, why: str, *, oversized: bool = False) -> None:
        """Stores a dead letter (docs/wire.md) and acknowledges the entry, in
        one transaction."""
        dl: dict[Any, Any] = {
            "id": eid, "topic": self.topic, "group": self.group, "consumer": self.name, "reason": reason, "error": why,
            "attempts": str(attempt),
            "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        data = fields.get(FIELD)
        if oversized and data is not None:
            dl["size"], dl["prefix"] = str(len(data)), data[:1024]
        elif data is not None:
            dl["m"] = data
        else:
            for k, v in fields.items():
                dl[b"f." + k] = v
        dlq = key + ":dlq"
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(dlq, dl, maxlen=self._dlq_cap, approximate=True)
        pipe.xack(key, self.group, eid)
        await asyncio.shield(pipe.execute())
        self.stats.dead_lettered += 1
        self.stats.acked += 1
        log.warning("entry %s of %s dead-lettered (%s): %s", eid, key, reason, why[:200])


def _id_order(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def _count(v: Any) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError):
        return 0
    return n if 1 <= n <= 1024 else 0


def _queue_wait(eid: str, sent_ns: int, read_ns: int) -> int:
    start = sent_ns
    try:
        ms = int(eid.split("-", 1)[0])
        start = max(start, ms * 1_000_000)
    except ValueError:
        pass
    return read_ns - start if start and read_ns >= start else 0


__all__ = ["Consumer", "Handler", "Message", "Stats"]
