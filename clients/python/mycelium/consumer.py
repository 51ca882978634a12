"""The worker's side: serve a topic as a member of a consumer group, with
the Go consumer's delivery rules (docs/wire.md, "Serving a topic")."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import inspect
import logging
import os
import random
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Union

from redis.exceptions import RedisError, ResponseError

from . import codec
from ._batch import Batcher, NodeTx, stop_tasks
from ._limits import Grant, Limiter, estimated_cost
from ._log import WarnLimiter
from .errors import (
    CODE_HANDLER,
    CallerGone,
    Closed,
    InvalidConfig,
    MalformedError,
    MyceliumError,
    NotStreaming,
    RemoteError,
    RetryAfter,
)
from .keys import DEFAULT_PREFIX, Keys, partition, validate_name
from .connect import check_client, close_client, is_cluster, open_client, xinfo
from .producer import FIELD, _apart, _unavailable
from .scripts import Scripts

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
#: the longest a cached answer is stored, whatever the caller asks
#: (Go: consumer.DefaultCacheMaxTTL)
CACHE_MAX_TTL = 24 * 3600.0
#: waiters taken from one flight marker at most (Go: redisx.MaxFlightWaiters)
MAX_FLIGHT_WAITERS = 10_000
#: a worker runs the due script at least this often, woken or not
DUE_EVERY = 10.0
#: delayed events moved to the stream per partition per pass
DUE_LIMIT = 100
#: how long after a partition count was lowered the removed partitions
#: may be forgotten (Go: consumer forgetGrace)
FORGET_GRACE = 15.0
#: how often a worker puts its group's overcounted lag right (Go: the janitor's pass)
LAG_REPAIR_EVERY = 10.0
#: how long a limited worker's read waits for a new entry holding no
#: permit (Go: consumer timedWait)
TIMED_WAIT_MS = 250
#: priority levels at most (Go: bus.MaxPriorities)
MAX_LEVELS = 10
_CACHE_ID = re.compile(r"(0|[1-9][0-9]{0,19}):[0-9a-f]{32}")


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
    streaming: bool = False  # the caller reads a streamed reply: send() works
    #: the message's cost in tokens: the caller's estimate (header myc-cost),
    #: or what the handler reported (report_cost)
    cost: int = 0
    _chunks: "_Chunks | None" = field(default=None, repr=False, compare=False)

    def report_cost(self, n: int) -> None:
        """Reports what this message really cost (tokens a model
        provider counted): a topic with a token budget corrects the
        caller's estimate by it when the handler returns (Go:
        Message.ReportCost)."""
        self.cost = min(max(int(n), 0), 1 << 40)  # at most what the limiter counts (Go: redisx.MaxLimit)

    async def send(self, chunk: bytes | str) -> None:
        """Sends one chunk of a streamed reply (``str`` as UTF-8); returns
        once Redis stored it, so chunks arrive in the order sent. Raises
        :class:`NotStreaming` when the caller reads a whole reply (or for
        an event: ``streaming`` tells), :class:`CallerGone` when the
        caller's reply stream is gone, :class:`Unavailable` when Redis is
        down."""
        if self._chunks is None or not self.streaming:
            raise NotStreaming("the caller does not read a stream")
        await self._chunks.send(_as_bytes(chunk, "chunk"))


#: A handler: an ``async def`` returning the reply (bytes, or str sent as
#: UTF-8; None for an empty reply; ignored for events), or an async
#: generator whose yields are the chunks of a streamed reply (joined into
#: one reply for a caller that does not stream).
Handler = Callable[[Message], Union[Awaitable[Union[bytes, str, None]], AsyncIterator[Union[bytes, str]]]]


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
    retries_scheduled: int = 0  # RetryAfter: waiting in the retry set
    delayed_promoted: int = 0  # delayed events this worker moved to the stream
    reclaimed: int = 0
    heartbeats: int = 0
    cancelled: int = 0
    chunks: int = 0
    cache_stores: int = 0
    coalesced_replies: int = 0  # answers written to requests that joined a cached one
    control_malformed: int = 0  # cancel notices without a valid token (forged or foreign), skipped
    write_errors: int = 0  # replies, acks or dead letters Redis did not take (the entry stays pending)
    permits_granted: int = 0  # permits a limited topic granted (docs/flow-control.md)
    permit_waits: int = 0  # times a read waited for permits or for a pause to end
    permit_wait_seconds: float = 0.0  # time spent so
    lag_repaired: int = 0  # times the group's overcounted lag was put right (Redis 7, after a trim)
    pauses: int = 0  # times a handler paused the topic for the fleet (RetryAfter(pause=True), pause_on_retry_after)


class _LevelSched:
    """Stride scheduling over priority levels (Go: consumer levelSched):
    each level has a pass, raised by entries read over its weight; a read
    tries the levels by ascending pass (strict: in level order); a level
    found empty is raised to the pass of the level read then, so an idle
    level banks no credit."""

    def __init__(self) -> None:
        self.passes: list[float] = []

    def next(self, levels: int, strict: bool) -> list[int]:
        if len(self.passes) != levels:
            self.passes = [0.0] * levels
        order = list(range(levels))
        if not strict:
            order.sort(key=lambda lv: self.passes[lv])  # stable: ties in level order
        return order

    def idle(self) -> None:
        if self.passes:
            top = max(self.passes)
            self.passes = [top] * len(self.passes)

    def read(self, level: int, n: int, weights: list[int], tried: list[int]) -> None:
        if level >= len(self.passes):
            return
        for e in tried:
            self.passes[e] = max(self.passes[e], self.passes[level])
        w = max(weights[level], 1) if level < len(weights) else 1
        self.passes[level] += n / w


@dataclass
class _Running:
    key: str
    task: asyncio.Task[Any]
    started: float
    token: bytes = b""  # a request's cancel token (b"": an event, or none)


class _Chunks:
    """The chunks one handler sends to its caller."""

    def __init__(self, c: "Consumer", env: codec.Envelope, eid: str, attempt: int) -> None:
        self._c, self._env, self._eid, self._attempt = c, env, eid, attempt
        self.n = 0

    async def send(self, chunk: bytes) -> None:
        c = self._c
        e = codec.Envelope(kind=codec.CHUNK, id=self._env.id, sent=time.time_ns(), payload=chunk, request_entry=self._eid,
                           attempt=min(self._attempt, (1 << 32) - 1), seq=self.n)
        try:
            res = await c._batch.run([_xadd(self._env.reply_to, codec.encode(e), c._reply_cap, nomkstream=True)])
        except (RedisError, OSError) as err:
            raise _unavailable(err) from None
        if isinstance(res[0], Exception):
            raise _unavailable(res[0])
        if res[0] is None:
            raise CallerGone("the caller's reply stream is gone")
        self.n += 1
        c.stats.chunks += 1


class Serving:
    """Set once a worker joined its group (callers see it from then on).
    ``await serving.wait()`` returns then, or raises what stopped the worker
    before it got there (a wrong password, Redis unreachable,
    :class:`Closed`): it is never waited on in vain."""

    def __init__(self) -> None:
        self._ev = asyncio.Event()
        self._err: BaseException | None = None

    def is_set(self) -> bool:
        return self._ev.is_set() and self._err is None

    def set(self) -> None:
        self._ev.set()

    def fail(self, err: BaseException) -> None:
        if not self._ev.is_set():
            self._err = err
            self._ev.set()

    async def wait(self) -> bool:
        await self._ev.wait()
        if self._err is not None:
            raise self._err
        return True


class Consumer:
    """Runs an async handler over one topic as a member of a consumer group.

    Use it as ``async with Consumer(...) as worker:`` (joined and serving
    inside the block; leaving it drains), or ``await worker.start()`` then
    ``await worker.stop()``, or ``await worker.run()`` (serves until its task
    is cancelled). ``start`` raises on a bad URL, a wrong password or an
    unreachable Redis. Stopping stops reading, lets running handlers finish
    within ``shutdown_timeout`` (then cancels them: their entries stay
    pending for another worker), and leaves the group.

    The handler gets a :class:`Message` and returns the reply (bytes, str
    as UTF-8, None for empty; ignored for an event), yields chunks (an
    async generator: a streamed reply) or raises: a :class:`RemoteError`
    chooses the code the caller sees, :class:`RetryAfter` asks for a later
    delivery, any other exception arrives as ``handler_error``. A failed
    event is delivered again after ``claim_idle``, up to ``max_deliveries``,
    then dead-lettered."""

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
        stream_max_len: int = 100_000,
        shutdown_timeout: float = 30.0,
        cache_ttl: float | None = None,
        cache_max_value: int = 1 << 20,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 300.0,
        pause_on_retry_after: bool = False,
        password: str | None = None,
        password_file: str | None = None,
        cluster: bool = False,
        master_set: str | None = None,
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
        sentinel_password_file: str | None = None,
        max_connections: int = 8,
        connect_timeout: float = 5.0,
        metrics: Any = None,
        client: Any = None,
    ) -> None:
        validate_name("topic", topic)
        validate_name("group", group)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        validate_name("consumer", self.name)
        if concurrency < 1 or max_deliveries < 1 or claim_idle <= 0 or block <= 0 or max_entry_size < 1 or shutdown_timeout < 0:
            raise InvalidConfig("concurrency, max_deliveries, claim_idle, block and max_entry_size must be positive")
        if claim_idle < 2 * block:
            raise InvalidConfig(f"claim_idle ({claim_idle}) must be at least twice block ({block})")
        if retry_backoff < 0 or retry_backoff_max < retry_backoff or cache_max_value < 0 or stream_max_len < 0:
            raise InvalidConfig("retry_backoff must be at most retry_backoff_max, cache_max_value and stream_max_len not negative")
        if not callable(handler):
            raise InvalidConfig("handler must be an async function or an async generator function")
        if client is not None:
            check_client(client)
        if max_connections < 4:
            raise InvalidConfig("max_connections must be at least 4 (reads of the topic and of its control stream block on two)")
        self._conn: dict[str, Any] = dict(password=password, password_file=password_file, cluster=cluster, master_set=master_set,
                          sentinel_username=sentinel_username, sentinel_password=sentinel_password,
                          sentinel_password_file=sentinel_password_file, max_connections=max_connections,
                          connect_timeout=connect_timeout)
        self._cluster = False
        self._readers: dict[str, asyncio.Task[Any]] = {}  # on a cluster: one read loop per partition
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
        self._stream_cap = stream_max_len
        self.shutdown_timeout = shutdown_timeout
        self.cache_ttl = cache_ttl
        self.cache_max_value = cache_max_value
        self.retry_backoff, self.retry_backoff_max = retry_backoff, retry_backoff_max
        self.pause_on_retry_after = pause_on_retry_after
        self._lim: Limiter | None = None  # the topic's fleet-wide limits (made at start)
        self._lim_task: asyncio.Task[Any] | None = None  # its flusher: stopped after the drain
        self._rot = 0  # where a read of fewer permits than partitions starts
        self._member = f"{group} {self.name}"
        self._pnames: list[str] = []  # partition names read, partition i at index i
        self._parts: list[str] = []  # their stream keys
        self._slots: asyncio.Semaphore | None = None  # one per handler that may run; FIFO for waiters
        self._running: dict[str, _Running] = {}  # entry id (per partition key) -> its handler
        # entries waiting for a delayed retry: "<key>|<id>" -> due (unix ms)
        self._waiting: dict[str, int] = {}
        # cancel token -> until (unix ms), oldest notice first; at most
        # MAX_CANCELLED (a flood of notices evicts the oldest, O(1) each)
        self._cancelled: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._by_token: dict[bytes, _Running] = {}  # cancel token -> the handler running it
        self._next_due = 0  # unix ms (Redis's clock) of the earliest due retry or delayed event known; 0: none
        self._clock_skew = 0  # Redis's clock minus ours, ms, as the due script saw it
        self._due_wake: asyncio.Event | None = None
        self._loops: list[asyncio.Task[Any]] = []
        self._main: asyncio.Future[Any] | None = None
        self._stopping = False
        self._warn = WarnLimiter(log)
        # Priority levels (docs/scheduling.md): the topic's level count,
        # weights and mode, each partition's level streams (level 1 up, by
        # its level-0 key), and what a level stream belongs to.
        self._levels, self._weights, self._strict = 1, [1], False
        self._lkeys: dict[str, list[str]] = {}
        self._lkey_of: dict[str, tuple[str, int]] = {}  # level stream -> (its partition's key, its level)
        self._sched = _LevelSched()
        self._metrics = metrics  # a mycelium.metrics.Metrics: counters and stage timings under the Go names
        self.stats = Stats()
        self.serving = Serving()

    @property
    def redis(self) -> Any:
        if self._r is None:
            raise Closed("consumer not started (use async with, or await start())")
        return self._r

    # -- lifecycle -----------------------------------------------------

    async def __aenter__(self) -> "Consumer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connects, joins the group and starts serving; returns once callers
        see this worker. Raises :class:`InvalidConfig` (a bad URL),
        :class:`PermissionDenied` (a wrong password, a refused command) or
        :class:`Unavailable` (Redis unreachable); ``serving.wait()`` raises
        the same."""
        if self._main is not None:
            raise InvalidConfig("consumer already started")
        try:
            if self._r is None:
                self._r = await _apart(open_client(self._url, **self._conn))  # MyceliumErrors: InvalidConfig, PermissionDenied, Unavailable
            self._cluster = is_cluster(self._r)
            if self._metrics is not None:
                self._metrics.watch_consumer(self)
            self._batch = Batcher(self._r)
            self._tx = NodeTx(self._r, self._batch)
            self._scripts = Scripts(self._r)
            self._lim = Limiter(self._r, self._scripts, self._keys, self.topic, self.name, self.claim_idle,
                                lambda: len(self._running), self._warn, self.stats)
            self._slots = asyncio.Semaphore(self.concurrency)
            self._due_wake = asyncio.Event()
            try:
                await asyncio.wait_for(_apart(self._join()), max(10.0, self.claim_idle))
            except asyncio.TimeoutError:
                raise _unavailable(OSError("redis did not answer within the time to join")) from None
            except (RedisError, OSError) as e:
                raise _unavailable(e) from None  # a wrong password, NOPERM, or Redis down: a MyceliumError
            await _apart(self._catch_up_control())
        except BaseException as e:
            self.serving.fail(e if isinstance(e, Exception) else Closed("start cancelled"))
            await self._close_client()
            raise
        self.serving.set()
        assert self._lim is not None
        loops = [self._reclaim_loop(), self._heartbeat_loop(), self._presence_loop(), self._control_loop(), self._due_loop()]
        # The limiter's flusher outlives the loops until the handlers are
        # drained: their leases go back and are renewed meanwhile.
        self._lim_task = asyncio.ensure_future(self._lim.run(lambda: False))
        if not self._cluster:
            loops.append(self._read_loop(None))  # one read of every partition
        self._loops = [asyncio.ensure_future(c) for c in loops]
        if self._cluster:  # partitions live on other slots: a read each
            for key in self._parts:
                self._start_reader(key)
        self._main = asyncio.ensure_future(asyncio.gather(*self._loops))
        self._main.add_done_callback(self._main_ended)

    def _main_ended(self, t: asyncio.Future[Any]) -> None:
        if t.cancelled():
            return
        e = t.exception()  # retrieved even when stopping (asyncio logs an exception nobody retrieved)
        if self._stopping:
            return
        if e is not None and not isinstance(e, asyncio.CancelledError):  # a loop cancelled by the event loop's end is no failure
            log.error("worker of %s stopped: %s", self.topic, e, exc_info=e)

    async def stop(self) -> None:
        """Stops reading, drains running handlers (see the class), leaves the
        group and closes the connection it made. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self.serving.fail(Closed("consumer stopped before it served"))
        if self._running:
            log.info("worker of %s stopping: draining %d running handlers (at most %gs)", self.topic, len(self._running), self.shutdown_timeout)
        await stop_tasks(self._loops, self._block_ms / 1000 + 2)
        if self._main is not None:
            await asyncio.wait([self._main], timeout=1)
        await self._drain()
        if self._lim_task is not None:
            await stop_tasks([self._lim_task], 2)
        if self._lim is not None and self._r is not None:
            await self._lim.close()  # the leases of the handlers that ran go back now, not after claim_idle
        if self._r is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wait_for(self._leave(), 5))
            log.info("worker of %s left group %s and stopped (handled %d)", self.topic, self.group, self.stats.handled)
        await self._close_client()

    def _time(self, stage: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_stage(stage, seconds, role="consumer", topic=self.topic)

    async def _close_client(self) -> None:
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                self._metrics.unwatch(self)
        if hasattr(self, "_tx"):
            await self._tx.close()
            await self._batch.close()
        if self._own_client and self._r is not None:
            await close_client(self._r)
            self._r = None

    def _start_reader(self, key: str) -> None:
        """A cluster's read loop of one partition; its blocked read holds a
        connection of its own beyond the client's bound."""
        slots = getattr(self._r, "_slots", None)
        if isinstance(slots, asyncio.Semaphore):
            slots.release()  # one more command may run at once: this loop's blocked read
        t = asyncio.ensure_future(self._read_loop(key))
        self._readers[key] = t
        self._loops.append(t)

    async def run(self) -> None:
        """Serves until cancelled, then stops (see the class) and re-raises
        the cancellation. A loop that fails for good (the group's stream
        replaced by another type, say) stops it with that error."""
        try:
            await self.start()
            assert self._main is not None
            await asyncio.shield(self._main)
        finally:
            await asyncio.shield(self.stop())

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
        await r.ping()
        meta = await r.hmget(self._keys.meta(self.topic), ["partitions", "drain", "priorities", "priority_weights", "priority_strict"])
        n = _count(meta[1]) or _count(meta[0]) or 1
        self._note_levels(meta[2], meta[3], meta[4])
        for i in range(n):
            await self._add_partition(i)
        await self._beat()

    def _note_levels(self, v: Any, weights: Any, strict: Any) -> None:
        """Takes the topic's priority levels, weights and mode from its meta
        hash (validated; a malformed setting keeps what was read before, as
        Go's workers do). Levels are never lowered."""
        levels = _count(v) or 1
        if not 1 <= levels <= MAX_LEVELS or levels < self._levels:
            return
        w = [1 << (levels - 1 - i) for i in range(levels)]
        if weights is not None and levels > 1:
            try:
                parsed = [int(x.strip()) for x in _s(weights).split(",")]
            except ValueError:
                parsed = []
            if len(parsed) != levels or not all(1 <= x <= 1000 for x in parsed):
                self._warn.warn("worker of %s: malformed priority_weights %r: default weights used", self.topic, _s(weights)[:64])
            else:
                w = parsed
        self._levels, self._weights, self._strict = levels, w, _count(strict) == 1

    def _level_key(self, key: str, level: int) -> str:
        """The stream of level of the partition whose stream is key."""
        return key if level == 0 else f"{key}:p{level}"

    def _all_keys(self) -> list[str]:
        """Every stream read: each partition's, then their level streams."""
        out = list(self._parts)
        for k in self._parts:
            out.extend(self._lkeys.get(k, ()))
        return out

    async def _add_levels(self, key: str) -> None:
        """Joins the group on the level streams of the partition of key up
        to the topic's level count."""
        have = self._lkeys.setdefault(key, [])
        for level in range(len(have) + 1, self._levels):
            lk = self._level_key(key, level)
            await self._create_group(lk)
            have.append(lk)
            self._lkey_of[lk] = (key, level)

    async def _add_partition(self, i: int) -> None:
        name = partition(self.topic, i)
        key = self._keys.topic(name)
        await self._create_group(key)
        self._pnames.append(name)
        self._parts.append(key)
        await self._add_levels(key)

    def _on(self, key: str) -> dict[str, Any]:
        """Where a command whose key redis-py's cluster client cannot find
        (XGROUP's subcommands) goes: the server of key's slot."""
        return {"target_nodes": self.redis.get_node_from_key(key)} if self._cluster else {}

    async def _create_group(self, key: str) -> None:
        r = self.redis
        try:
            await r.execute_command("XGROUP", "CREATE", key, self.group, "0", "MKSTREAM", **self._on(key))
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        await r.execute_command("XGROUP", "CREATECONSUMER", key, self.group, self.name, **self._on(key))

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
            for key in self._all_keys():
                pend = await r.xpending_range(key, self.group, "-", "+", 1, consumername=self.name)
                if not pend:
                    await r.execute_command("XGROUP", "DELCONSUMER", key, self.group, self.name, **self._on(key))

    # -- loops ---------------------------------------------------------

    async def _presence_loop(self) -> None:
        last_parts = last_lag = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(PRESENCE_EVERY / 2.5)
            try:
                await self._beat()
                if time.monotonic() - last_parts >= 2:
                    last_parts = time.monotonic()
                    await self._follow_partitions()
            except (RedisError, OSError) as e:
                self._warn.warn("worker of %s: presence not announced (callers may see no responders): %s", self.topic, e)
            if time.monotonic() - last_lag >= LAG_REPAIR_EVERY:
                last_lag = time.monotonic()
                await self._repair_lag()

    async def _repair_lag(self) -> None:
        """Puts the group's lag right where Redis 7 overcounts it (entries
        trimmed before the group read them; producers' backpressure would
        see a backlog that is not there): the lagfix function, which acts
        only once the group has read up to the stream's last entry (Go: the
        janitor's repairLag)."""
        for key in self._all_keys():
            try:
                n = int(await self._scripts.call("lagfix", [key], [self.group]))
            except (RedisError, OSError, MyceliumError, ValueError, TypeError) as e:
                self._warn.warn("worker of %s: repairing the group's lag on %s failed: %s", self.topic, key, e)
                continue
            if n != 0:
                self.stats.lag_repaired += 1
                log.info("worker of %s: put the group's lag right on %s (lag %d: entries had been trimmed before it read them)", self.topic, key, n)

    async def _follow_partitions(self) -> None:
        """Reads partitions added since (from their first entry) and forgets
        removed ones once drained (Go: the consumer's topology)."""
        meta = await self.redis.hmget(self._keys.meta(self.topic), ["partitions", "drain", "lowered", "priorities", "priority_weights",
                                                                     "priority_strict"])
        self._note_levels(meta[3], meta[4], meta[5])
        for key in list(self._parts):  # levels raised since
            await self._add_levels(key)
        count, drain = _count(meta[0]) or 1, _count(meta[1])
        if drain > count and await self._forget(count, drain, _uint(meta[2])):
            meta = await self.redis.hmget(self._keys.meta(self.topic), ["partitions", "drain"])
        n = _count(meta[1]) or _count(meta[0]) or 1
        for i in range(len(self._parts), n):
            await self._add_partition(i)
            if self._cluster:
                self._start_reader(self._parts[-1])
        if n < len(self._parts):
            gone = self._parts[n:]
            for k in gone:
                for lk in self._lkeys.pop(k, []):
                    self._lkey_of.pop(lk, None)
            del self._parts[n:], self._pnames[n:]
            log.info("worker of %s: partitions %d to %d drained and removed: no longer read", self.topic, n, n + len(gone) - 1)

    async def _forget(self, count: int, drain: int, lowered_ms: int) -> bool:
        """Lowers the topic's drain bound over the removed partitions at its
        end that are drained for every group of partition 0 (nothing
        pending, nothing undelivered, no dead letters, delayed events or
        retries), once the count was lowered FORGET_GRACE ago by Redis's
        clock, and deletes their streams. Any worker may do it: the
        metadata check in the script makes concurrent attempts safe."""
        if lowered_ms and time.time() * 1000 - lowered_ms < (FORGET_GRACE - 1) * 1000:
            return False
        r = self.redis
        try:
            groups = [_s(g.get("name", g.get(b"name", b""))) for g in await xinfo(r, "GROUPS", self._keys.topic(self.topic))]
        except ResponseError:
            return False
        low = drain
        while low > count:
            if not await self._drained(partition(self.topic, low - 1), groups):
                break
            low -= 1
        if low == drain:
            return False
        ok = await self._scripts.call("forget", [self._keys.meta(self.topic)], [count, drain, low, int(FORGET_GRACE * 1000)])
        if int(ok or 0) != 1:
            return False
        for i in range(low, drain):
            with contextlib.suppress(RedisError, OSError):
                key = self._keys.topic(partition(self.topic, i))
                await r.delete(key, *(self._level_key(key, lv) for lv in range(1, self._levels)))
        log.info("worker of %s: removed partitions %d to %d drained: forgotten", self.topic, low, drain - 1)
        return True

    async def _drained(self, name: str, groups: list[str]) -> bool:
        base = self._keys.topic(name)
        for level in range(self._levels):  # every level of it
            if not await self._drained_stream(self._level_key(base, level), base, groups):
                return False
        return True

    async def _drained_stream(self, key: str, base: str, groups: list[str]) -> bool:
        r = self.redis
        pipe = r.pipeline(transaction=False)
        pipe.xlen(base + ":dlq")
        pipe.zcard(key + ":delayed")
        pipe.zcard(key + ":retry")
        dlq, delayed, retry = await pipe.execute()
        if dlq or delayed or retry:
            return False
        try:
            info = await xinfo(r, "STREAM", key)
        except ResponseError:
            return True  # no stream: nothing left
        if int(info.get("length", 0)) == 0:
            return True
        last = _s(info.get("last-generated-id", b"0-0"))
        have = {_s(g.get("name", b"")): g for g in await xinfo(r, "GROUPS", key)}
        for g in groups:
            gi = have.get(g)
            if gi is None or int(gi.get("pending", 0)) > 0 or _id_order(_s(gi.get("last-delivered-id", b"0-0"))) < _id_order(last):
                return False
        return True

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

    async def _free_slots(self, most: int) -> int:
        """Takes up to most slots free now, without waiting (acquire does not
        suspend while the semaphore is not locked)."""
        assert self._slots is not None
        n = 0
        while n < most and not self._slots.locked():
            await self._slots.acquire()
            n += 1
        return n

    def _give_slots(self, n: int) -> None:
        assert self._slots is not None
        for _ in range(n):
            self._slots.release()

    async def _read_loop(self, only: str | None) -> None:
        """Reads every partition in one XREADGROUP, or only one (a cluster:
        partitions live on other slots); a forgotten partition's loop ends."""
        backoff = 0.05
        while not self._stopping:
            if only is not None and only not in self._parts:
                return
            n = await self._take_slots()
            parts = [only] if only is not None else list(self._parts)
            assert self._lim is not None
            # Permits first (docs/flow-control.md): the read takes no more
            # than the topic's limits grant; none: it waits holding no slot.
            g, wait = await self._lim.take(n)
            if g.n == 0:
                self._give_slots(n)
                await self._lim.sleep(wait)
                continue
            if g.n < n:
                self._give_slots(n - g.n)
                n = g.n
            if len(parts) > n and (g.leased or g.timed):
                # COUNT is per stream: with fewer permits than partitions,
                # read as many partitions as permits, in turn.
                self._rot += 1
                parts = [parts[(self._rot + k) % len(parts)] for k in range(n)]
            keys = [lk for k in parts for lk in (k, *self._lkeys.get(k, ()))]
            try:
                # Permits of a rate or token budget are spent when granted,
                # and leases held by a blocked read starve other workers:
                # with them, read what is there now.
                res = await self._read(parts, n, None if g.now else self._block_ms)
                backoff = 0.05
            except ResponseError as e:
                self._give_slots(n)
                self._lim.filled(g, 0)
                if "NOGROUP" in str(e):  # Redis restarted or was flushed
                    with contextlib.suppress(RedisError, OSError):
                        for key in keys:
                            if key in self._parts or key in self._lkey_of:
                                await self._create_group(key)
                    continue
                if str(e).startswith("UNBLOCKED"):  # a partition forgotten (its stream deleted) while read
                    continue
                # Something else (a key replaced by another type): said,
                # and tried again later rather than stopping the worker.
                self._warn.warn("worker of %s: read refused, trying again in %.2fs: %s", self.topic, backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except (RedisError, OSError) as e:
                self._give_slots(n)
                self._lim.filled(g, 0)
                self._warn.warn("worker of %s: read failed, trying again in %.2fs: %s", self.topic, backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            read = [(rkey.decode() if isinstance(rkey, bytes) else str(rkey), eid.decode() if isinstance(eid, bytes) else str(eid), fields)
                    for rkey, entries in res or [] for eid, fields in entries]
            if not read and g.now:
                # Nothing there: give the permits back and wait for an entry
                # holding none.
                self._give_slots(n)
                self._lim.filled(g, 0)
                with contextlib.suppress(RedisError, OSError):
                    await self.redis.xread({k: "$" for k in parts}, count=1, block=TIMED_WAIT_MS)
                continue
            # A read that was waiting when a pause began brings its entries
            # back: they wait here, pending, until the pause ends.
            if read and not await self._lim.hold_while_paused(lambda: self._stopping):
                self._give_slots(n)
                self._lim.filled(g, 0)
                return
            for k, (key, eid, fields) in enumerate(read):
                if k >= n:  # more partitions than slots: an extra entry waits for one
                    await self._take_one()
                self._start(key, eid, fields, 1)
            self._give_slots(max(n - len(read), 0))
            self._lim.filled(g, min(len(read), n))

    async def _read(self, parts: list[str], n: int, block: int | None) -> Any:
        """One read of parts for up to n entries (COUNT is per stream). On
        a topic with priority levels the levels are tried without blocking
        in the order of their passes (stride scheduling, Go's levelSched:
        each level gets its weight's share while all are backlogged; strict
        mode: level order), the first with entries taken; only when none
        has any does the read wait, on every level's stream."""
        if self._levels <= 1 or not any(self._lkeys.get(k) for k in parts):
            return await self.redis.xreadgroup(self.group, self.name, {k: ">" for k in parts}, count=max(1, n // len(parts)), block=block)
        levels = 1 + max(len(self._lkeys.get(k, ())) for k in parts)
        order = self._sched.next(levels, self._strict)
        for i, lv in enumerate(order):
            keys = [k if lv == 0 else self._lkeys[k][lv - 1] for k in parts if lv == 0 or len(self._lkeys.get(k, ())) >= lv]
            if not keys:
                continue
            res = await self.redis.xreadgroup(self.group, self.name, {k: ">" for k in keys}, count=max(1, n // len(keys)))
            got = sum(len(es) for _, es in res or [])
            if got:
                self._sched.read(lv, got, self._weights, order[:i])
                return res
        if block is None:
            self._sched.idle()
            return []
        keys = [lk for k in parts for lk in (k, *self._lkeys.get(k, ()))]
        res = await self.redis.xreadgroup(self.group, self.name, {k: ">" for k in keys}, count=max(1, n // len(keys)), block=block)
        if not res:
            self._sched.idle()
        for rkey, es in res or []:
            k = rkey.decode() if isinstance(rkey, bytes) else str(rkey)
            self._sched.read(self._lkey_of.get(k, (k, 0))[1], len(es), self._weights, [])
        return res

    async def _reclaim_loop(self) -> None:
        cursors: dict[str, str] = {}
        every = min(self.claim_idle / 2, 5.0)
        while not self._stopping:
            await asyncio.sleep(every)
            for key in self._all_keys():
                try:
                    await self._reclaim(key, cursors)
                except (RedisError, OSError) as e:
                    self._warn.warn("worker of %s: reclaim on %s failed: %s", self.topic, key, e)

    async def _reclaim(self, key: str, cursors: dict[str, str]) -> None:
        n = self.concurrency - len(self._running)
        if n <= 0:
            return
        assert self._lim is not None
        g = await self._lim.grant(n, lambda: self._stopping)  # reclaimed entries take permits as reads do
        if g.n == 0:
            return
        started = 0
        try:
            started = await self._reclaim_with(key, cursors, g.n)
        finally:
            self._lim.filled(g, started)

    async def _reclaim_with(self, key: str, cursors: dict[str, str], n: int) -> int:
        """Reclaims up to n entries of key idle past claim_idle; returns how
        many it started."""
        res = await self.redis.xautoclaim(key, self.group, self.name, int(self.claim_idle * 1000),
                                          cursors.get(key, "0-0"), count=n)
        cursors[key] = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        entries = [e for e in res[1] if e and e[0]]
        if not entries:
            return 0
        ids = [e[0].decode() if isinstance(e[0], bytes) else str(e[0]) for e in entries]
        entries = [e for e, i in zip(entries, ids) if f"{key}|{i}" not in self._running]
        ids = [i for i in ids if f"{key}|{i}" not in self._running]
        if not ids:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:  # each one's delivery count, id by id (a range could be cut short by others pending here)
            pipe.xpending_range(key, self.group, i, i, 1, consumername=self.name)
        for i in ids:  # a delayed retry not yet due waits for its time (whoever holds it)
            pipe.zscore(key + ":retry", i)
        out = await pipe.execute(raise_on_error=False)
        counts: dict[str, int] = {}
        for i, row in zip(ids, out[: len(ids)]):
            if isinstance(row, list) and row and isinstance(row[0], dict):
                counts[i] = int(row[0].get("times_delivered", 1))
        now = self._redis_ms()
        started = 0
        for k, (eid, (_, fields)) in enumerate(zip(ids, entries)):
            due = out[len(ids) + k]
            if isinstance(due, (int, float)) and due > now:
                self._waiting[f"{key}|{eid}"] = int(due)
                self._note_due(int(due))
                continue
            taken = await self._take_one()
            self.stats.reclaimed += 1
            attempt = int(counts.get(eid, 1))
            if attempt > self.max_deliveries:
                self._give_slots(taken)
                await self._dead(key, eid, fields, attempt - 1, "max_deliveries",
                                 f"not completed after {attempt - 1} deliveries (MaxDeliveries {self.max_deliveries})")
                continue
            self._start(key, eid, fields, attempt)
            started += 1
        return started

    async def _take_one(self) -> int:
        assert self._slots is not None
        await self._slots.acquire()
        return 1

    async def _heartbeat_loop(self) -> None:
        every = self.claim_idle / 3
        while not self._stopping:
            await asyncio.sleep(every)
            old = time.monotonic() - every
            now = self._redis_ms()
            by_key: dict[str, list[str]] = {}
            for rid, run in list(self._running.items()):
                if run.started < old:
                    by_key.setdefault(run.key, []).append(rid.split("|", 1)[1])
            for rid, due in list(self._waiting.items()):
                if due <= now:  # due: whoever claims it at its time owns it now
                    del self._waiting[rid]
                    continue
                key, eid = rid.split("|", 1)
                by_key.setdefault(key, []).append(eid)
            for key, ids in by_key.items():
                try:
                    await self.redis.xclaim(key, self.group, self.name, int(self.claim_idle * 1000 / 6), ids, justid=True)
                    self.stats.heartbeats += len(ids)
                except (RedisError, OSError) as e:
                    self._warn.warn("worker of %s: heartbeat on %s failed (long handlers may be reclaimed): %s", self.topic, key, e)

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
        while not self._stopping:
            try:
                res = await self.redis.xread({self._keys.control(self.topic): self._ctl_last}, count=512, block=self._block_ms)
                backoff = 0.05
            except (RedisError, OSError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self._control(res)

    def _control(self, res: Any) -> int:
        """Applies cancel notices and wake-ups (docs/wire.md, "Control
        stream"); returns how many entries it read."""
        n = 0
        now = int(time.time() * 1000)
        for _, entries in res or []:
            for eid, fields in entries:
                n += 1
                self._ctl_last = eid.decode() if isinstance(eid, bytes) else eid
                f = dict(fields or {})
                op = f.get(b"op")
                if op == b"pause":  # a hint: the pause itself is read from Redis (Limiter.hold_while_paused)
                    if self._lim is not None:
                        self._lim.note_pause()
                    continue
                if op == b"wake":
                    try:
                        self._note_due(int(f.get(b"until", b"")))
                    except ValueError:
                        self.stats.control_malformed += 1
                    continue
                tok = f.get(b"tok", b"")
                # A notice must present the request's token: its ids alone
                # are no proof (anyone who saw them could cancel).
                if op != b"cancel" or len(tok) != codec.TOKEN_SIZE or tok == bytes(codec.TOKEN_SIZE):
                    self.stats.control_malformed += op == b"cancel"
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

    # -- delayed events and retries ---------------------------------------

    def _redis_ms(self) -> int:
        return int(time.time() * 1000) + self._clock_skew

    def _note_due(self, due: int) -> None:
        """Something is due at due (unix ms, Redis's clock): wake the due
        loop if that is earlier than what it sleeps for."""
        if due > 0 and (self._next_due == 0 or due < self._next_due):
            self._next_due = due
            if self._due_wake is not None:
                self._due_wake.set()

    async def _due_loop(self) -> None:
        """Moves due delayed events to the streams and claims due retries, at
        the earliest due time known, on a wake notice, and at least every
        DUE_EVERY seconds (docs/wire.md, "Delayed events and retries")."""
        assert self._due_wake is not None
        while not self._stopping:
            try:
                await self._due_pass()
            except (RedisError, OSError) as e:
                self._warn.warn("worker of %s: promoting due delayed events and retries failed: %s", self.topic, e)
            except MyceliumError as e:  # FunctionsNotLoaded: said once a period, the rest still serves
                self._warn.warn("worker of %s: delayed events and retries not served: %s", self.topic, e)
            wait = DUE_EVERY
            if self._next_due:
                wait = min(wait, max((self._next_due - self._redis_ms()) / 1000, 0.0))
            self._due_wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._due_wake.wait(), wait)

    async def _due_pass(self) -> None:
        self._next_due = 0
        assert self._lim is not None
        for key in self._all_keys():
            free = await self._free_slots(self.concurrency)
            g = Grant()
            started = 0
            try:
                if free > 0:  # due retries take permits as reads do; delayed events move to the stream regardless
                    g, _ = await self._lim.take(free)
                    self._give_slots(free - g.n)
                    free = g.n
                started = await self._due_part(key, free)
            finally:
                # Whatever failed (the script, Redis, a limited topic whose
                # functions are not loaded), no slot and no permit is kept
                # by entries that did not start.
                self._give_slots(free - started)
                self._lim.filled(g, started)

    async def _due_part(self, key: str, free: int) -> int:
        """One partition's due pass, claiming up to free due retries;
        returns how many entries it started (each holds one of free)."""
        t0 = time.time() * 1000
        res = await self._scripts.call(
            "due", [key + ":delayed", key, key + ":retry"],  # a level's own sets (Go: bus.Keys.LevelDelayed, LevelRetry)
            [FIELD, DUE_LIMIT, self.group, self.name, free, "MAXLEN" if self._stream_cap > 0 else "", self._stream_cap])
        if not isinstance(res, list) or len(res) != 5:
            raise ResponseError("due script: unexpected reply")
        moved, nxt, now, claimed = int(res[0]), int(res[1]), int(res[2]), res[3] or []
        self._clock_skew = int(now - (t0 + time.time() * 1000) / 2)
        self.stats.delayed_promoted += moved
        if nxt > 0:
            self._note_due(nxt)
        entries = [(e[0].decode() if isinstance(e[0], bytes) else str(e[0]), _fields(e[1])) for e in claimed if e and e[0]][:free]
        if not entries:
            return 0
        for eid, _ in entries:
            self._waiting.pop(f"{key}|{eid}", None)
        # Each entry's delivery count, id by id (one range over their ids
        # could be cut short by other entries pending here: Go's
        # redisx.Deliveries).
        pipe = self.redis.pipeline(transaction=False)
        for eid, _ in entries:
            pipe.xpending_range(key, self.group, eid, eid, 1, consumername=self.name)
        rows = await pipe.execute(raise_on_error=False)
        for (eid, fields), row in zip(entries, rows):
            attempt = 1
            if isinstance(row, list) and row and isinstance(row[0], dict):
                attempt = max(int(row[0].get("times_delivered", 1)), 1)
            self._start(key, eid, fields, attempt)
        return len(entries)

    def _retry_delay(self, asked: float, attempt: int) -> float:
        backoff = min(self.retry_backoff * (2 ** max(attempt - 1, 0)), self.retry_backoff_max)
        d = max(asked, backoff)
        return float(d + random.uniform(0, d / 20))

    async def _schedule_retry(self, key: str, eid: str, delay: float) -> None:
        due = int(await self._scripts.call("schedule", [key + ":retry"], [eid, int(delay * 1000)]))
        self._waiting[f"{key}|{eid}"] = due
        self._note_due(due)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.xadd(self._keys.control(self.topic), {b"op": b"wake", b"until": str(due).encode()},
                                  maxlen=10_000, approximate=True)

    def _pname(self, key: str) -> str:
        key = self._lkey_of.get(key, (key, 0))[0]  # a level stream: its partition's
        try:
            return self._pnames[self._parts.index(key)]
        except ValueError:
            return key[len(self._keys.prefix) + 2 : -1]  # a partition forgotten meanwhile: its name from its key

    # -- one entry -----------------------------------------------------

    def _start(self, key: str, eid: str, fields: Mapping[bytes, bytes] | None, attempt: int) -> None:
        """Runs one entry; a handler slot was taken for it."""
        self.stats.received += 1
        rid = key + "|" + eid
        task = asyncio.ensure_future(self._handle_safely(key, eid, fields, attempt))
        self._running[rid] = _Running(key, task, time.monotonic())

        def done(_: asyncio.Task[Any]) -> None:
            run = self._running.pop(rid, None)
            if run is not None and run.token:
                self._by_token.pop(run.token, None)
            self._give_slots(1)
            if self._lim is not None:
                self._lim.settle()  # a lease beyond the handlers running goes back

        task.add_done_callback(done)

    async def _handle_safely(self, key: str, eid: str, fields: Mapping[bytes, bytes] | None, attempt: int) -> None:
        try:
            await self._handle(key, eid, fields, attempt)
        except (RedisError, OSError, MyceliumError) as e:
            # The reply, ack or dead letter did not land: the entry stays
            # pending and is reclaimed after claim_idle (at least once).
            self.stats.write_errors += 1
            self._warn.warn("cannot finish entry %s on %s (it stays pending): %s", eid, key, e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug here must not kill the task silently
            self.stats.write_errors += 1
            self._warn.warn("entry %s on %s failed in the worker (it stays pending): %s", eid, key, e, exc=e)

    async def _invoke(self, msg: Message, env: codec.Envelope, eid: str, attempt: int) -> tuple[bytes | None, int]:
        """Runs the handler; returns the reply's payload and how many
        chunks were sent before it."""
        chunks = _Chunks(self, env, eid, attempt) if msg.streaming else None
        msg._chunks = chunks
        res = self._h(msg)
        if inspect.isasyncgen(res):
            joined: list[bytes] = []
            async for c in res:
                b = _as_bytes(c, "chunk")
                if chunks is not None:
                    await chunks.send(b)
                else:
                    joined.append(b)  # a caller that does not stream gets the chunks as one reply
            return (None if chunks is not None else b"".join(joined)), (chunks.n if chunks else 0)
        if not inspect.isawaitable(res):
            raise TypeError(f"handler returned {type(res).__name__}: it must be an async function or an async generator function")
        out = await res
        return _as_bytes(out, "reply") if out is not None else None, (chunks.n if chunks else 0)

    async def _handle(self, key: str, eid: str, fields: Mapping[bytes, bytes] | None, attempt: int) -> None:
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
        # A compressed payload (docs/wire.md): the handler gets it as sent,
        # and a request's reply goes back compressed the same way.
        comp = codec.compression_of(env)
        if comp != "none":
            try:
                env = codec.decompress(env, self.max_entry_size)
            except MalformedError as e:
                await self._dead(key, eid, fields, attempt, "malformed", str(e))
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
        cache_key, cache_ttl = self._cache_of(env, eid, attempt) if req and env.cache_key else ("", 0.0)
        base = self._lkey_of.get(key, (key, 0))[0]
        msg = Message(id=eid, topic=self.topic, partition=self._parts.index(base) if base in self._parts else 0,
                      payload=env.payload, headers=env.headers or {}, attempt=attempt,
                      deadline=env.deadline / 1e9 if env.deadline else None, request=req, sent=env.sent / 1e9,
                      streaming=req and bool(env.flags & codec.FLAG_STREAM))
        estimate = 0
        if msg.headers and self._lim is not None:
            # A token budget charges the caller's estimate now; the
            # handler's report corrects it when it returns.
            msg.cost = estimate = estimated_cost(msg.headers)
            await self._lim.start(estimate)
        started = time.monotonic()
        out: bytes | None = None
        sent_chunks = 0
        err: BaseException | None = None
        ran_out = False
        try:
            if env.deadline:
                out, sent_chunks = await asyncio.wait_for(self._invoke(msg, env, eid, attempt), max((env.deadline - time.time_ns()) / 1e9, 0))
            else:
                out, sent_chunks = await self._invoke(msg, env, eid, attempt)
        except asyncio.CancelledError:
            if req and env.token and env.token in self._cancelled:
                self.stats.cancelled += 1  # the caller gave up: no reply
                await asyncio.shield(self._ack(key, eid))
                return
            raise  # shutdown: the entry stays pending
        except asyncio.TimeoutError:
            err, ran_out = RemoteError(CODE_HANDLER, "context deadline exceeded"), True
        except Exception as e:  # noqa: BLE001 - a handler's failure becomes the caller's remote error
            err = e
        if msg._chunks is not None:
            sent_chunks = msg._chunks.n
        if msg.cost != estimate and self._lim is not None:  # the handler reported its cost
            self._lim.observe(msg.cost)
            self._lim.charge(msg.cost - estimate)
        handled_ns = int((time.monotonic() - started) * 1e9)
        self._time("retry_wait" if attempt > 1 else "queue_wait", _queue_wait(eid, env.sent, now_ns) / 1e9)
        self._time("handler", handled_ns / 1e9)
        self.stats.handled += 1
        if isinstance(err, RetryAfter) and await self._retry_later(key, eid, env, req, attempt, err):
            return
        if err is not None:
            self.stats.failed += 1
            if not isinstance(err, (RemoteError, RetryAfter)):
                self._warn.warn("handler failed on entry %s of %s (attempt %d, %s): %s", eid, self.topic, attempt,
                                "request" if req else "event", err, exc=err)
            else:
                self._warn.warn("handler answered entry %s of %s with an error (attempt %d, %s): %s", eid, self.topic, attempt,
                                "request" if req else "event", err)
        if req:
            await self._reply(key, eid, env, attempt, out, err, sent_chunks, now_ns, handled_ns, cache_key, cache_ttl, ran_out, comp)
            return
        if err is None:
            await self._ack(key, eid)
            return
        if attempt >= self.max_deliveries:
            await self._dead(key, eid, fields, attempt, "max_deliveries",
                             f"failed {attempt} times (MaxDeliveries {self.max_deliveries}); last error: {err}")
            return
        self.stats.retried += 1  # left pending: delivered again after claim_idle

    async def _retry_later(self, key: str, eid: str, env: codec.Envelope, req: bool, attempt: int, err: RetryAfter) -> bool:
        """Schedules a RetryAfter's delivery; False when it cannot be (the
        last delivery, or the caller's deadline is too close): the error
        stands."""
        if (err.pause or self.pause_on_retry_after) and err.delay > 0 and self._lim is not None:
            await self._lim.pause(err.delay)  # one 429 slows the fleet (docs/flow-control.md)
        if attempt >= self.max_deliveries:
            return False
        delay = self._retry_delay(err.delay, attempt)
        if req and env.deadline and time.time_ns() + int(delay * 1e9) >= env.deadline:
            return False
        try:
            await self._schedule_retry(key, eid, delay)
        except (RedisError, OSError, MyceliumError) as e:
            self._warn.warn("entry %s of %s: delayed retry not scheduled (delivered again after claim_idle): %s", eid, self.topic, e)
        self.stats.retries_scheduled += 1
        self.stats.retried += 1
        return True

    def _cache_of(self, env: codec.Envelope, eid: str, attempt: int) -> tuple[str, float]:
        """The request's cache entry id and how long its answer may be
        stored (seconds), or ("", 0) when it names none valid."""
        if not _CACHE_ID.fullmatch(env.cache_key):
            self._warn.warn("entry %s of %s: cached request with a malformed cache entry id: answered, not cached", eid, self.topic)
            return "", 0.0
        ttl = min(max(env.cache_ttl / 1e9, 0.0), CACHE_MAX_TTL)
        if self.cache_ttl is not None:
            ttl = 0.0 if self.cache_ttl < 0 else (min(ttl, self.cache_ttl) if self.cache_ttl > 0 else ttl)
        return env.cache_key, ttl

    async def _reply(self, key: str, eid: str, env: codec.Envelope, attempt: int, out: bytes | None, err: BaseException | None,
                     sent_chunks: int, read_ns: int, handled_ns: int, cache_key: str, cache_ttl: float, ran_out: bool,
                     comp: str = "none") -> None:
        reply = codec.Envelope(kind=codec.REPLY, id=env.id, sent=time.time_ns(), payload=out or b"",
                               queue_wait=_queue_wait(eid, env.sent, read_ns), handler=handled_ns,
                               request_entry=eid, attempt=min(attempt, (1 << 32) - 1), seq=sent_chunks)
        if err is not None:
            reply.payload = b""
            if isinstance(err, RemoteError):
                reply.err_code, reply.err_msg = err.code or CODE_HANDLER, err.message
            else:
                reply.err_code, reply.err_msg = CODE_HANDLER, str(err) or type(err).__name__
        reply = codec.compress(reply, comp)  # as the request came, as Go's worker does: stored and sent to joined callers so
        cmds: list[Any] = []
        settle = None
        if cache_key:
            reply.cache_key = cache_key
            # A handler that ran out of the deadline settles nothing: the
            # joined requests, whose deadlines may be later, ask again.
            if not (ran_out or (env.deadline and time.time_ns() >= env.deadline and err is not None)):
                ttl_ms = int(cache_ttl * 1000) if err is None and len(reply.payload) <= self.cache_max_value else 0
                reply.cache_ttl = ttl_ms * 1_000_000
                name = self._pname(key)
                settle = (self._keys.topic(name) + ":c:" + cache_key, self._keys.topic(name) + ":f:" + cache_key,
                          self._keys.meta(name), int(cache_key.split(":", 1)[0]), ttl_ms)
                cmds += [("LRANGE", settle[1], 1, MAX_FLIGHT_WAITERS), ("DEL", settle[1])]
        data = codec.encode(reply)
        if settle is not None and settle[4] > 0:
            cmds += [("SET", settle[0], str(settle[4]).encode() + b"\n" + data, "PX", settle[4]), ("HGET", settle[2], "gen")]
        tail = [_xadd(env.reply_to, data, self._reply_cap, nomkstream=True), ("XACK", key, self.group, eid)]
        ex: Any = None
        t0 = time.monotonic()
        if settle is None:
            res = await self._batch.run(tail)
        elif self._cluster:  # the settle first (stored before the caller sees it), on its slot's server
            ex = await self._tx.run(settle[0], cmds)
            res = await self._batch.run(tail)
        else:  # one round trip: settle, reply, ack
            res = await self._batch.run([("MULTI",), *cmds, ("EXEC",), *tail])
            ex = next((r for r in res[: len(cmds) + 1] if isinstance(r, Exception)), res[len(cmds) + 1])
        x, a = res[-2], res[-1]
        self._time("reply_write", time.monotonic() - t0)
        if isinstance(x, Exception) or x is None:
            self.stats.reply_dropped += 1  # the caller's reply stream is gone
        else:
            self.stats.replied += 1
        if isinstance(a, Exception):
            raise _unavailable(a)
        self.stats.acked += int(a or 0)
        if settle is not None:
            await self._settled(settle, ex, reply)

    async def _settled(self, settle: tuple[str, str, str, int, int], ex: Any, reply: codec.Envelope) -> None:
        """Answers the requests that joined a cached one (taken from its
        flight marker by the settle's EXEC ex), and deletes an answer stored
        under a generation that is not the topic's current one."""
        entry, _, _, gen, ttl_ms = settle
        if isinstance(ex, Exception) or not isinstance(ex, list):
            self._warn.warn("topic %s: cache store refused; joined requests ask again after the deadline: %s", self.topic, ex)
            return
        if ttl_ms > 0 and len(ex) == 4:
            if isinstance(ex[2], Exception):
                self._warn.warn("topic %s: cache store refused: %s", self.topic, ex[2])
            else:
                self.stats.cache_stores += 1
                if _uint(ex[3]) != gen:  # a flush raced it, or the request named a generation to come
                    with contextlib.suppress(RedisError, OSError):
                        await self.redis.delete(entry)
        waiters = ex[0] if isinstance(ex[0], list) else []
        cmds = []
        for w in waiters[:MAX_FLIGHT_WAITERS]:
            s = w.decode("utf-8", "replace") if isinstance(w, bytes) else str(w)
            reply_to, sep, cid = s.rpartition(" ")
            if not sep or not reply_to or not cid or len(cid.encode()) > 64 or self._keys.parse_reply(reply_to) is None:
                self._warn.warn("topic %s: skipped a joined request that is not a reply stream of this bus", self.topic)
                continue
            cmds.append(_xadd(reply_to, codec.encode(reply.replace(id=cid)), self._reply_cap, nomkstream=True))
        if not cmds:
            return
        res = await self._batch.run(cmds)
        for r in res:
            if r is None or isinstance(r, Exception):
                self.stats.reply_dropped += 1
            else:
                self.stats.coalesced_replies += 1

    async def _ack(self, key: str, eid: str) -> None:
        res = await self._batch.run([("XACK", key, self.group, eid)])
        if isinstance(res[0], Exception):
            raise _unavailable(res[0])
        self.stats.acked += int(res[0] or 0)

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
        flat: list[Any] = []
        for k, v in dl.items():
            flat += [k, v]
        ex = await self._tx.run(key, [("XADD", dlq, "MAXLEN", "~", self._dlq_cap, "*", *flat), ("XACK", key, self.group, eid)])
        if not isinstance(ex, list):
            raise _unavailable(ex if isinstance(ex, Exception) else ResponseError(f"dead letter not stored: {ex!r}"))
        for r in ex:
            if isinstance(r, Exception):
                raise _unavailable(r)
        self.stats.dead_lettered += 1
        self.stats.acked += 1
        self._warn.warn("entry %s of %s dead-lettered (%s): %s", eid, key, reason, why[:200])


def _xadd(key: str, data: bytes, cap: int, *, nomkstream: bool = False) -> tuple[Any, ...]:
    c: tuple[Any, ...] = ("XADD", key)
    if nomkstream:
        c += ("NOMKSTREAM",)
    if cap > 0:
        c += ("MAXLEN", "~", cap)
    return c + ("*", FIELD, data)


def _as_bytes(v: Any, what: str) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    raise TypeError(f"handler gave a {what} of type {type(v).__name__}: want bytes or str")


def _fields(v: Any) -> dict[bytes, bytes]:
    if isinstance(v, dict):
        return v
    if isinstance(v, list):
        return {v[i]: v[i + 1] for i in range(0, len(v) - 1, 2)}
    return {}


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _uint(v: Any) -> int:
    try:
        return int(v) if v is not None else 0
    except (TypeError, ValueError):
        return 0


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


__all__ = ["Consumer", "Handler", "Message", "Serving", "Stats"]
