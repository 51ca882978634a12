"""The caller's side: requests and events (docs/wire.md, "Kinds")."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
import functools
import hashlib
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Concatenate, Iterable, Mapping, ParamSpec, TypeVar

from redis.exceptions import RedisError, ResponseError

from . import codec
from ._backlog import Pressure
from ._batch import Batcher, NodeTx, _pack, stop_tasks
from ._cache import (
    DEFAULT_LOCAL_BYTES,
    MAX_FLIGHT_WAITERS,
    META_REFRESH,
    TAKEOVER_GRACE,
    CacheConfig,
    Flight,
    LocalTier,
    TopicCache,
    digest,
    hash_partition,
)
from ._log import WarnLimiter
from .breaker import Breaker, BreakerConfig, BreakerOpen
from .connect import check_client, close_client, is_cluster, open_client, redact_url, wrap_error, xinfo
from .errors import (
    BusTimeout,
    Closed,
    DelayedFull,
    InvalidConfig,
    MalformedError,
    MyceliumError,
    NoResponders,
    PayloadTooLarge,
    PermissionDenied,
    RedisFailed,
    RemoteError,
    StreamBroken,
    Unavailable,
)
from .keys import DEFAULT_PREFIX, Keys, partition, partition_of, validate_name
from .scripts import Scripts

log = logging.getLogger("mycelium.producer")

FIELD = b"m"
MAX_HEADERS = 1024
MAX_HEADER_BYTES = 64 << 10
DEFAULT_MAX_PAYLOAD = 4 << 20
#: Redis's own bulk-string limit: the most a compressed reply may decode to
MAX_PAYLOAD_CAP = 512 << 20
RESPONDER_IDLE_MS = 15_000
#: the longest delay of a delayed event (Go: producer.MaxDelay)
MAX_DELAY = 366 * 24 * 3600.0
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _unavailable(e: BaseException) -> MyceliumError:
    """The MyceliumError a Redis error means (connect.wrap_error): refused
    credentials or commands are PermissionDenied, a connection that failed
    Unavailable, any other refusal RedisFailed."""
    w = wrap_error(e)
    return w if isinstance(w, MyceliumError) else RedisFailed(f"redis refused: {w}")


class _StreamState:
    """A streamed reply's reading state (docs/wire.md, "Chunk")."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.attempt = 0  # the delivery followed (0: none seen yet)
        self.next_seq = 0
        self.buffered = 0  # bytes queued, unread
        self.limit = limit
        self.ended = False
        self.broken = False


@dataclass
class _Waiter:
    future: asyncio.Future[codec.Envelope]
    entry: str | None = None  # the request's stream entry id, once written
    early: list[codec.Envelope] = field(default_factory=list)  # replies read before that
    cache_entry: str = ""  # a cached request's entry: a joined request's reply names it, not our stream entry
    stream: _StreamState | None = None


@dataclass
class _Topic:
    name: str
    parts: int = 1
    levels: int = 1  # priority levels (docs/scheduling.md)
    shards: int = 0  # partitions per tenant (tenant fairness; 0: off)
    parts_read: float = 0.0  # monotonic time of the last read of the count
    rr: int = 0
    served_at: float = -1e9  # monotonic time a worker was last seen


#: priority levels at most (Go: bus.MaxPriorities)
MAX_PRIORITIES = 10
PRIORITY_HEADER, TENANT_HEADER = "myc-priority", "myc-tenant"


@dataclass(frozen=True)
class _Route:
    """A call's routing beyond its partition key: its priority level and
    tenant (docs/scheduling.md), carried where the partition key goes."""

    key: str | bytes | None
    priority: int = 0
    tenant: str | None = None


def _sched(headers: Mapping[str, str] | None, partition_key: str | bytes | None, priority: int | None,
           tenant: str | None) -> tuple[Mapping[str, str] | None, Any]:
    """Checks a call's priority and tenant; returns its headers with them
    (Go: producer.Priority, producer.Tenant) and its route."""
    if priority is None and tenant is None:
        return headers, partition_key
    p = 0 if priority is None else priority
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < MAX_PRIORITIES:
        raise InvalidConfig(f"priority must be 0 to {MAX_PRIORITIES - 1}, got {priority!r}")
    if tenant is not None:
        validate_name("tenant", tenant)
    h = dict(headers or {})
    if p > 0:
        h[PRIORITY_HEADER] = str(p)
    if tenant is not None:
        h[TENANT_HEADER] = tenant
    return h, _Route(partition_key, p, tenant)


def shard_set(tenant: str, n: int, m: int) -> list[int]:
    """The partitions of a tenant among n when each tenant has m of them
    (Go: producer.ShardSet, part of the wire contract, docs/wire.md)."""
    m = min(max(m, 1), n)
    out: list[int] = []
    k = 0
    while len(out) < m:
        j = _shard_of(tenant, b"#%d" % k, n)
        if k >= 8 * n:  # pathological hashes: fill in order
            j = 0
            while j in out:
                j += 1
        if j not in out:
            out.append(j)
        k += 1
    return out


def _shard_of(tenant: str, suffix: bytes, n: int) -> int:
    """FNV-1a (32 bit) of tenant + suffix, mixed by MurmurHash3's fmix32,
    modulo n."""
    x = 2166136261
    for b in tenant.encode("utf-8", "surrogateescape") + suffix:
        x = ((x ^ b) * 16777619) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    x ^= x >> 16
    return x % n


@dataclass
class PublishInfo:
    """What an idempotent publish did: the entry id, and whether it was a
    duplicate of an earlier publish with the same key (nothing written)."""

    id: str
    duplicate: bool


@dataclass
class Reply:
    """One answer of :meth:`Producer.request_batch`: its payload, or the
    error that request got (``RemoteError``, ``BusTimeout``...)."""

    payload: bytes = b""
    error: MyceliumError | None = None


@dataclass
class Stats:
    """Counters of one producer."""

    published: int = 0
    delayed: int = 0
    requests: int = 0
    replies: int = 0
    chunks: int = 0
    streams_broken: int = 0
    late: int = 0
    timeouts: int = 0
    remote_errors: int = 0
    malformed: int = 0
    forged: int = 0
    cancelled: int = 0
    write_errors: int = 0
    cache_hits_local: int = 0
    cache_hits_shared: int = 0
    cache_misses: int = 0
    coalesced_local: int = 0
    coalesced_remote: int = 0
    cache_takeovers: int = 0
    cache_corrupt: int = 0
    reader_restarts: int = 0
    breaker_rejected: int = 0
    duplicates: int = 0  # idempotent publishes that found an earlier one: nothing written
    backlog_waits: int = 0  # writes that waited for room in a topic's backlog (backpressure "block")
    backlog_full: int = 0  # writes refused because the backlog stayed full (BacklogFull, or a request's deadline)
    backlog_dropped: int = 0  # entries written past the cap under "drop-oldest": the trim dropped unfinished ones (an estimate)


def _user_of(url: str, client: Any) -> str:
    """The ACL user a producer connects as ("" for the default user)."""
    user: str | None
    if client is not None:
        kw = client.connection_kwargs if is_cluster(client) else client.connection_pool.connection_kwargs
        user = kw.get("username")
    else:
        import urllib.parse

        try:
            user = urllib.parse.urlsplit(url).username
        except ValueError:
            user = None
        user = urllib.parse.unquote(user) if user else None
    return "" if not user or user == "default" else user


def validate_owner(name: str) -> None:
    """A reply stream's owner (an ACL user's name): it makes the key
    pattern of the user's reply streams, so no '.', braces, spaces or glob
    characters, at most 100 bytes."""
    if len(name.encode()) > 100 or any(ch in name for ch in ".{}*?[]\\ ") or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidConfig(f"owner {name!r}: at most 100 bytes without '.', braces, spaces, control or glob characters")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(fn: Callable[Concatenate["Producer", str, _P], Awaitable[_R]]) -> Callable[Concatenate["Producer", str, _P], Awaitable[_R]]:
    """Admits a call by its topic's circuit breaker (BreakerOpen at once
    when open) and reports its outcome: timeouts and Redis errors are
    failures; a handler's error a success (unless remote_errors_trip); the
    caller cancelling, no responders or a wait for a local slot say
    nothing about Redis or the workers."""

    @functools.wraps(fn)
    async def call(self: "Producer", topic: str, /, *args: _P.args, **kw: _P.kwargs) -> _R:
        br = self._breaker_of(topic)
        if br is None:
            return await fn(self, topic, *args, **kw)
        if not br.allow():
            self.stats.breaker_rejected += 1
            raise BreakerOpen(f"topic {topic!r}: circuit breaker open")
        t0 = time.monotonic()
        try:
            out = await fn(self, topic, *args, **kw)
        except BaseException as e:
            br.done(self._outcome(e), time.monotonic() - t0)
            raise
        br.done(False, time.monotonic() - t0)
        return out

    return call


class Producer:
    """Sends requests and publishes events. Use it as ``async with
    Producer(url) as p:``; it is safe to share between tasks of one event
    loop.

    One reply reader per producer reads its reply stream (never a
    subscription per request); at most ``max_in_flight`` requests wait at
    once (more wait for a slot, within their timeout). Writes of concurrent
    callers share round trips (one pipelined write per event-loop turn).
    Deadlines travel in the envelope, so workers skip requests whose caller
    gave up; a request cancelled by its task (``asyncio.CancelledError``)
    writes a cancel notice, so the worker running it cancels its handler.

    ``cache`` names the topics whose requests use the response cache
    (docs/cache.md): ``{"reasoning": CacheConfig(ttl=600)}``; per call,
    ``cache_key=``, ``max_age=``, ``no_cache=``, ``no_store=``."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        *,
        prefix: str = DEFAULT_PREFIX,
        producer_id: str | None = None,
        owner: str | None = None,
        max_in_flight: int = 1024,
        request_timeout: float = 30.0,
        reply_ttl: float = 60.0,
        reply_block: float = 1.0,
        stream_max_len: int = 100_000,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        wait_for_responders: bool = False,
        cache: Mapping[str, CacheConfig] | None = None,
        local_cache_bytes: int = DEFAULT_LOCAL_BYTES,
        idempotency_window: float = 120.0,
        idempotency_windows: Mapping[str, float] | None = None,
        backpressure: str = "block",
        compression: str | None = None,
        compress_min: int = codec.DEFAULT_COMPRESS_MIN,
        max_backlog: int | None = None,
        backlog_max_wait: float = 60.0,
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
        breaker: BreakerConfig | None = None,
        no_breaker: bool = False,
        client: Any = None,
    ) -> None:
        if max_connections < 2:
            raise InvalidConfig("max_connections must be at least 2 (the reply reader blocks on one)")
        self._conn: dict[str, Any] = dict(password=password, password_file=password_file, cluster=cluster, master_set=master_set,
                          sentinel_username=sentinel_username, sentinel_password=sentinel_password,
                          sentinel_password_file=sentinel_password_file, max_connections=max_connections,
                          connect_timeout=connect_timeout)
        if max_in_flight < 1 or request_timeout <= 0 or reply_ttl < 1 or reply_block <= 0 or max_payload < 1:
            raise InvalidConfig("max_in_flight, request_timeout, reply_ttl, reply_block and max_payload must be positive (reply_ttl at least 1 s)")
        if client is not None:
            check_client(client)
        self._keys = Keys(prefix)
        self.id = producer_id or secrets.token_hex(6)
        validate_name("producer", self.id)
        self._inc = secrets.token_hex(4)
        self._url = url
        self._own_client = client is None
        self._r: Any = client
        # The reply stream is named after its owner, the ACL user (the
        # producer role of bus-worker acl reads only its own user's:
        # <prefix>:{r.<owner>.<id>}); default: the URL's or the client's
        # user, none for the default user.
        if owner is None:
            owner = _user_of(url, client)
        if owner:
            validate_owner(owner)
            self.reply_key = self._keys.reply(owner + "." + self.id)
        else:
            self.reply_key = self._keys.reply(self.id)
        self._max_in_flight = max_in_flight
        self._timeout = request_timeout
        self._ttl_ms = int(reply_ttl * 1000)
        self._block_ms = max(1, int(reply_block * 1000))
        self._cap = stream_max_len
        self.max_payload = max_payload
        # Opt-in payload compression (docs/performance.md, "Large payloads"):
        # requests and events of compress_min bytes or more, when it pays;
        # workers answer compressed the same way.
        self._comp = codec.check_compression(compression)
        codec.require(self._comp)
        if compress_min < 0:
            raise ValueError("compress_min must not be negative")
        self._comp_min = compress_min
        self._wait = wait_for_responders
        self._seq = 0
        self._waiters: dict[int, _Waiter] = {}
        # seq -> topic, deadline (unix ns), cancel token (a worker cancels a
        # request only for a notice that presents its token)
        self._inflight: dict[int, tuple[_Topic, int, bytes]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reader_lock: asyncio.Lock | None = None
        self._topics: dict[str, _Topic] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._warn = WarnLimiter(log)
        self._down_since = 0.0  # monotonic time the reply reader lost Redis; 0: up
        self._cache_cfg: dict[str, CacheConfig] = {}
        for t, cc in (cache or {}).items():
            validate_name("topic", t)
            try:
                self._cache_cfg[t] = cc.resolved()
            except ValueError as e:
                raise InvalidConfig(f"cache of topic {t!r}: {e}") from None
        self._tcache: dict[str, TopicCache] = {}  # partition name -> its cache state
        self._local = LocalTier(local_cache_bytes) if local_cache_bytes > 0 else None
        self._flights: dict[tuple[Any, ...], Flight] = {}
        self._metrics = metrics  # a mycelium.metrics.Metrics: counters and stage timings under the Go names
        self._reader_conn: Any = None  # the reply reader's connection (one server)
        self._brcfg = None if no_breaker else (breaker or BreakerConfig())
        if self._brcfg is not None:
            self._brcfg.check()
        self._breakers: dict[str, Breaker] = {}
        self._xadd_heads: dict[str, bytes] = {}  # packed XADD heads per stream key
        self._window = idempotency_window
        self._windows = dict(idempotency_windows or {})
        if not all(0.001 <= w <= 7 * 86400 for w in (self._window, *self._windows.values())):
            raise InvalidConfig("idempotency windows must be 1 ms to 7 days")
        self.stats = Stats()
        # Backpressure (docs/flow-control.md): room in each topic stream's
        # backlog before a write, so MAXLEN ~ never trims unread entries.
        self._pressure = Pressure(lambda: self.redis, backpressure, max_backlog, backlog_max_wait, stream_max_len, self.stats)

    # -- lifecycle -----------------------------------------------------

    async def __aenter__(self) -> "Producer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connects (and checks Redis answers). Called by ``async with``.
        Raises :class:`InvalidConfig`, :class:`PermissionDenied` (a wrong
        password) or :class:`Unavailable`."""
        if self._r is None:
            self._r = await _apart(open_client(self._url, **self._conn))  # MyceliumErrors: InvalidConfig, PermissionDenied, Unavailable
        self._slots = asyncio.Semaphore(self._max_in_flight)
        self._reader_lock = asyncio.Lock()
        self._batch = Batcher(self._r)
        self._tx = NodeTx(self._r, self._batch)
        self._cluster = is_cluster(self._r)
        if self._metrics is not None:
            self._metrics.watch_producer(self)
        self._scripts = Scripts(self._r)
        if not self._own_client:
            try:
                await asyncio.wait_for(_apart(self._r.ping()), 10)
            except (RedisError, OSError, asyncio.TimeoutError) as e:
                raise _unavailable(e if not isinstance(e, asyncio.TimeoutError) else OSError("redis did not answer PING within 10s")) from None

    @property
    def redis(self) -> Any:
        if self._r is None:
            raise Closed("producer not started (use async with, or await start())")
        return self._r

    async def close(self) -> None:
        """Stops the reply reader, fails waiting requests with
        :class:`Closed` (their handlers are cancelled), deletes the reply
        stream and, if the producer made it, closes the connection pool."""
        if self._closed:
            return
        self._closed = True
        waiting = list(self._waiters.items())
        for seq, w in waiting:
            self._fail(w, Closed("producer closed"))
        for f in list(self._flights.values()):
            if not f.done.done():
                f.done.set_exception(Closed("producer closed"))
                f.done.exception()
        if waiting and self._r is not None and self._inflight:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._cancel_notices([(s, *v) for s, v in self._inflight.items()]), 2)
        if self._reader is not None:
            await stop_tasks([self._reader], self._block_ms / 1000 + 2)
        if self._reader_conn is not None:
            with contextlib.suppress(Exception):
                await self._reader_conn.disconnect()  # cancelled mid-read: not reusable
                await self.redis.connection_pool.release(self._reader_conn)
            self._reader_conn = None
            with contextlib.suppress(RedisError, OSError):
                await _apart(self.redis.delete(self.reply_key))
        await self._pressure.close()
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=2)  # cancel notices, cache epoch reads
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                self._metrics.unwatch(self)
        if self._r is not None and hasattr(self, "_tx"):
            await self._tx.close()
            await self._batch.close()
        if self._own_client and self._r is not None:
            await close_client(self._r)

    # -- checks --------------------------------------------------------

    def _breaker_of(self, topic: str) -> Breaker | None:
        if self._brcfg is None:
            return None
        br = self._breakers.get(topic)
        if br is None:
            validate_name("topic", topic)
            br = self._breakers[topic] = Breaker(self._brcfg)
        return br

    def breaker_state(self, topic: str) -> str:
        """The topic's breaker state: closed, open or half-open ("" when
        breakers are off)."""
        br = self._breaker_of(topic)
        return br.state if br is not None else ""

    def _outcome(self, e: BaseException) -> bool | None:
        """A call's error for the breaker: True a failure, False a success,
        None ignored."""
        if isinstance(e, RemoteError):
            return True if self._brcfg is not None and self._brcfg.remote_errors_trip else False
        if isinstance(e, _SlotTimeout):
            return None
        if isinstance(e, (BusTimeout, Unavailable, RedisFailed)):
            return True
        return None

    def _check(self, topic: str, payload: bytes, headers: Mapping[str, str] | None) -> _Topic:
        if self._closed:
            raise Closed("producer closed")
        if self._r is None:
            raise Closed("producer not started (use async with, or await start())")
        t = self._topics.get(topic)
        if t is None:
            validate_name("topic", topic)
            t = self._topics[topic] = _Topic(topic)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError("payload must be bytes")
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(f"payload of {len(payload)} bytes, max {self.max_payload}")
        if headers:
            if len(headers) > MAX_HEADERS:
                raise PayloadTooLarge(f"{len(headers)} headers, max {MAX_HEADERS}")
            n = 0
            for k, v in headers.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise TypeError("headers must map str to str")
                n += len(k.encode()) + len(v.encode())
            if n > MAX_HEADER_BYTES:
                raise PayloadTooLarge(f"headers of {n} bytes, max {MAX_HEADER_BYTES}")
        return t

    def _check_batch(self, topic: str, payloads: Iterable[bytes], headers: Mapping[str, str] | None) -> tuple[_Topic, list[bytes]]:
        """What both batch calls check before anything is sent: the topic,
        the headers, every payload's size (Go: checkBatch)."""
        out = [bytes(p) for p in payloads]
        t = self._check(topic, b"", headers)
        for i, p in enumerate(out):
            if len(p) > self.max_payload:
                raise PayloadTooLarge(f"entry {i}: payload of {len(p)} bytes, max {self.max_payload}")
        return t, out

    async def _count(self, t: _Topic) -> int:
        """The topic's partition count, re-read at most every second."""
        now = time.monotonic()
        if now - t.parts_read >= 1.0:
            try:
                # HMGET: the producer ACL role may read :meta with HMGET only
                v, lv, sh = await _apart(self.redis.hmget(self._keys.meta(t.name), ["partitions", "priorities", "fair_shards"]))
                n = int(v) if v is not None else 1
                t.parts = n if 1 <= n <= 1024 else 1
                lv_n = int(lv) if lv is not None else 1
                t.levels = lv_n if 1 <= lv_n <= MAX_PRIORITIES else 1
                sh_n = int(sh) if sh is not None else 0
                t.shards = sh_n if 0 <= sh_n <= t.parts else 0
            except (ValueError, RedisError, OSError):
                pass  # keep the last count
            t.parts_read = now
        return t.parts

    async def _pick(self, t: _Topic, key: str | bytes | None, cache_hash: str | None = None) -> str:
        """The partition to write to (its name): by partition key, by cache
        hash, else round robin."""
        n = await self._count(t)
        tenant = None
        if isinstance(key, _Route):
            key, tenant = key.key, key.tenant
        if n <= 1:
            return t.name
        if key is not None:
            p = partition_of(key, n)
        elif cache_hash is not None:
            p = hash_partition(cache_hash, n)
        elif tenant is not None and t.shards > 0:
            p = self._shard(t, tenant, n)
        else:
            p = t.rr % n
            t.rr += 1
        return partition(t.name, p)

    def _shard(self, t: _Topic, tenant: str, n: int) -> int:
        """A tenant's partition: the least loaded of its shard set by the
        backlog this producer measures (never waited for), ties spread."""
        s = shard_set(tenant, n, t.shards)
        start = random.randrange(len(s))
        best, load = s[start], -1
        for k in range(len(s)):
            j = s[(start + k) % len(s)]
            est = self._pressure.estimate(self._keys.topic(partition(t.name, j)))
            if load < 0 or est < load:
                best, load = j, est
        return best

    def _level(self, t: _Topic, key: Any) -> int:
        """The priority level a call writes to: its priority on a topic with
        levels (beyond them: the least urgent), else 0."""
        if isinstance(key, _Route) and key.priority > 0 and t.levels > 1:
            return min(key.priority, t.levels - 1)
        return 0

    def _stream_key(self, name: str, level: int) -> str:
        """The stream of a partition's level (Go: bus.Keys.Level)."""
        return self._keys.topic(name) + (f":p{level}" if level else "")

    async def _partition(self, t: _Topic, key: str | bytes | None) -> str:
        """The stream key to write to (see _pick), at the call's level."""
        return self._stream_key(await self._pick(t, key), self._level(t, key))

    async def _served(self, t: _Topic) -> bool:
        """Whether a worker serves t (its presence set, else its groups),
        checked at most once a second while the answer is yes."""
        now = time.monotonic()
        if now - t.served_at < 1.0:
            return True
        r = self.redis
        ms = int(time.time() * 1000)
        key = self._keys.workers(t.name)

        async def count() -> int:
            n = int(await r.zcount(key, f"({ms - RESPONDER_IDLE_MS}", "+inf"))
            if n == 0 and not await r.zcard(key):  # ZCARD, not EXISTS: the producer ACL role has ZCARD on :workers
                try:
                    groups = await xinfo(r, "GROUPS", self._keys.topic(t.name))
                except ResponseError:
                    groups = []
                n = sum(int(g.get("consumers", g.get(b"consumers", 0)) or 0) for g in groups)
            return n
        try:
            n = await _apart(count())
        except (RedisError, OSError) as e:
            raise _unavailable(e) from None
        if n > 0:
            t.served_at = now
            return True
        return False

    async def _write(self, cmds: list[Any]) -> list[Any]:
        """Runs cmds in the next shared write; Redis errors become
        MyceliumErrors."""
        return await self._write_requests(cmds, [])

    async def _write_requests(self, cmds: list[Any], reqs: list[tuple[int, _Topic, int, bytes]]) -> list[Any]:
        """_write for requests: a caller cancelled while its write is on the
        wire still gets its cancel notices written once the write lands
        (the worker may already run the handler)."""
        op = self._batch.submit(cmds)
        try:
            res = await op.fut
        except asyncio.CancelledError:
            if not reqs:
                pass
            elif op.res is not None:
                self._spawn(self._cancel_notices(reqs))
            elif op.err is None:
                op.after = lambda _: self._spawn(self._cancel_notices(reqs))
            raise
        except (RedisError, OSError) as e:
            self.stats.write_errors += 1
            raise _unavailable(e) from None
        for r in res:
            if isinstance(r, Exception):
                self.stats.write_errors += 1
                raise _unavailable(r)
        return res

    def _atomic(self, adds: list[Any]) -> list[Any]:
        """A batch's writes as one MULTI/EXEC (contiguous in the streams);
        on a cluster a plain pipeline (redis-py 4.3 runs no transactions
        there: the entries of one partition still go in order)."""
        return adds if self._cluster else [("MULTI",), *adds, ("EXEC",)]

    def _batch_ids(self, res: list[Any]) -> list[Any]:
        ids: list[Any] = res if self._cluster else res[-1]
        return ids

    def _encode(self, env: codec.Envelope) -> bytes:
        """``env`` encoded, its payload compressed as the producer was asked."""
        return codec.encode(codec.compress(env, self._comp, self._comp_min))

    def _xadd(self, key: str, data: bytes) -> Any:
        """XADD key [MAXLEN ~ cap] * m data: packed here on one server (the
        command's head cached per key: only the envelope is new), as a
        command for the cluster client's pipeline."""
        if self._cluster:
            if self._cap > 0:
                return ("XADD", key, "MAXLEN", "~", self._cap, "*", FIELD, data)
            return ("XADD", key, "*", FIELD, data)
        head = self._xadd_heads.get(key)
        if head is None:
            cmd: tuple[Any, ...] = ("XADD", key, "MAXLEN", "~", self._cap, "*", FIELD) if self._cap > 0 else ("XADD", key, "*", FIELD)
            head = _pack((*cmd, b""))[: -len(b"$0\r\n\r\n")]  # the same array length: only the last bulk string differs
            if len(self._xadd_heads) < 4096:
                self._xadd_heads[key] = head
        return head + b"$%d\r\n" % len(data) + data + b"\r\n"

    # -- events --------------------------------------------------------

    @_guarded
    async def publish(
        self, topic: str, payload: bytes, *, headers: Mapping[str, str] | None = None, partition_key: str | bytes | None = None,
        after: float | None = None, at: float | datetime.datetime | None = None, idempotency_key: str | None = None,
        priority: int | None = None, tenant: str | None = None,
    ) -> str:
        """Appends one event; returns its stream entry id once Redis stored
        it. ``after`` (seconds) or ``at`` (unix seconds or a datetime)
        delays it: it waits in its partition's delayed set until due, by
        Redis's clock, then a worker moves it to the stream; the id returned
        is then the delayed entry's (``d…``). ``idempotency_key`` publishes
        once per key within the topic's window (see :meth:`publish_once`).
        ``priority`` (0 the most urgent, to 9) and ``tenant`` route it on a
        topic with priority levels or tenant fairness (docs/scheduling.md;
        Go: producer.Priority, producer.Tenant), on every verb."""
        headers, partition_key = _sched(headers, partition_key, priority, tenant)
        if idempotency_key:
            return (await self._once(topic, payload, headers, partition_key, idempotency_key, after, at)).id
        t = self._check(topic, payload, headers)
        env = codec.Envelope(kind=codec.EVENT, sent=time.time_ns(), headers=dict(headers) if headers else None, payload=bytes(payload))
        due = _due(after, at)
        if due is not None:
            return await self._delayed(t, env, partition_key, due)
        key = await self._partition(t, partition_key)
        await self._pressure.room(topic, key, 1)
        res = await self._write([self._xadd(key, self._encode(env))])
        self.stats.published += 1
        return _s(res[0])

    @_guarded
    async def publish_once(
        self, topic: str, payload: bytes, key: str, *, headers: Mapping[str, str] | None = None,
        partition_key: str | bytes | None = None, priority: int | None = None, tenant: str | None = None,
    ) -> PublishInfo:
        """Publishes once per ``key`` within the topic's window
        (``idempotency_window``, 2 minutes; per topic ``idempotency_windows``),
        as Go's ``producer.IdempotencyKey``: a repeat, from any producer,
        writes nothing and returns the first entry's id with ``duplicate``
        set. One script checks and writes (the key picks the partition
        unless ``partition_key`` does)."""
        headers, partition_key = _sched(headers, partition_key, priority, tenant)
        return await self._once(topic, payload, headers, partition_key, key, None, None)

    async def _once(self, topic: str, payload: bytes, headers: Mapping[str, str] | None, partition_key: str | bytes | None,
                    key: str, after: float | None, at: float | datetime.datetime | None) -> PublishInfo:
        if after is not None or at is not None:
            raise InvalidConfig("an idempotent publish cannot be delayed (after=, at=)")
        if not key:
            raise InvalidConfig("idempotency key is empty")
        t = self._check(topic, payload, headers)
        env = codec.Envelope(kind=codec.EVENT, sent=time.time_ns(), headers=dict(headers) if headers else None, payload=bytes(payload))
        pick: Any = partition_key if partition_key is not None else key
        if isinstance(partition_key, _Route) and partition_key.key is None:
            pick = _Route(key, partition_key.priority, partition_key.tenant)  # the key picks the partition
        name = await self._pick(t, pick)
        stream = self._stream_key(name, self._level(t, partition_key))
        await self._pressure.room(topic, stream, 1)
        h = hashlib.sha256(b"i" + key.encode("utf-8", "surrogateescape")).digest()[:16].hex()
        window_ms = int(self._windows.get(topic, self._window) * 1000)
        try:  # the record is the partition's, whatever the level (Go: bus.Keys.Once)
            r = await _apart(self._scripts.call("once", [stream, f"{self._keys.topic(name)}:once:{h}"],
                                                [FIELD, self._encode(env), "MAXLEN" if self._cap > 0 else "", self._cap, max(window_ms, 1)]))
        except (RedisError, OSError) as e:
            self.stats.write_errors += 1
            raise _unavailable(e) from None
        if not isinstance(r, list) or len(r) != 2:
            raise RedisFailed(f"publish to {topic!r}: the once script answered {r!r}")
        dup = int(r[0]) == 0
        if dup:
            self.stats.duplicates += 1
        else:
            self.stats.published += 1
        return PublishInfo(_s(r[1]), dup)

    async def _delayed(self, t: _Topic, env: codec.Envelope, partition_key: str | bytes | None, due: tuple[int, int]) -> str:
        name = await self._pick(t, partition_key)
        delayed = self._stream_key(name, self._level(t, partition_key)) + ":delayed"  # Go: bus.Keys.LevelDelayed
        self._seq += 1
        did = f"d{self._inc}{self._seq:x}"
        member = did.encode() + b":" + self._encode(env)
        at_ms, after_ms = due
        try:
            when = await _apart(self._scripts.call("delay", [delayed], [member, at_ms, after_ms, self._cap]))
        except ResponseError as e:
            self.stats.write_errors += 1
            if str(e).startswith("MYCFULL"):
                raise DelayedFull(f"publish to {t.name}: the delayed set holds stream_max_len ({self._cap}) entries") from None
            raise _unavailable(e) from None
        except (RedisError, OSError) as e:
            self.stats.write_errors += 1
            raise _unavailable(e) from None
        self.stats.published += 1
        self.stats.delayed += 1
        with contextlib.suppress(RedisError, OSError):  # best effort: workers look every few seconds anyway
            await _apart(self.redis.xadd(self._keys.control(t.name), {b"op": b"wake", b"until": str(int(when)).encode()},
                                         maxlen=10_000, approximate=True))
        return did

    @_guarded
    async def publish_batch(
        self, topic: str, payloads: Iterable[bytes], *, headers: Mapping[str, str] | None = None, partition_key: str | bytes | None = None,
        priority: int | None = None, tenant: str | None = None,
    ) -> list[str]:
        """Appends events in one round trip, as one MULTI/EXEC (contiguous
        in the streams; a blocked worker gets them in one read). Payloads
        are checked before anything is sent."""
        headers, partition_key = _sched(headers, partition_key, priority, tenant)
        t, payloads = self._check_batch(topic, payloads, headers)
        if not payloads:
            return []
        sent = time.time_ns()
        hd = dict(headers) if headers else None
        keys = [await self._partition(t, partition_key) for _ in payloads]
        for k, n in collections.Counter(keys).items():  # room for the whole batch in each stream it writes to
            await self._pressure.room(topic, k, n)
        adds = [self._xadd(k, self._encode(codec.Envelope(kind=codec.EVENT, sent=sent, headers=hd, payload=p))) for k, p in zip(keys, payloads)]
        ids = self._batch_ids(await self._write(self._atomic(adds)))
        if not isinstance(ids, list) or len(ids) != len(payloads):
            raise Unavailable(f"publish batch to {topic!r}: the transaction was not applied ({ids!r})")
        for i in ids:
            if isinstance(i, Exception):
                raise _unavailable(i)
        self.stats.published += len(ids)
        return [_s(i) for i in ids]

    # -- requests ------------------------------------------------------

    @_guarded
    async def request(
        self,
        topic: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        partition_key: str | bytes | None = None,
        wait_for_responders: bool | None = None,
        cache: bool | None = None,
        cache_key: str | bytes | None = None,
        max_age: float | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        priority: int | None = None,
        tenant: str | None = None,
    ) -> bytes:
        """Sends a request and waits for its reply's payload.

        Raises :class:`BusTimeout` when ``timeout`` (default the producer's
        ``request_timeout``) passes, :class:`RemoteError` when the handler
        failed, :class:`NoResponders` when no worker serves the topic
        (nothing written; ``wait_for_responders=True`` queues it anyway),
        :class:`PayloadTooLarge`, :class:`Closed`, :class:`Unavailable`.

        On a cached topic (``cache=`` of the producer, or ``cache=True``
        here with the default settings; ``cache=False`` bypasses it) the
        answer may come from this process's memory, from Redis, or from an
        identical request in flight anywhere: ``cache_key`` says what counts
        as the same request (default the payload), ``max_age`` accepts only
        a stored answer that young, ``no_cache`` asks a worker even if an
        answer is stored, ``no_store`` leaves this answer unstored.
        ``priority`` and ``tenant``: as :meth:`publish`."""
        headers, partition_key = _sched(headers, partition_key, priority, tenant)
        t = self._check(topic, payload, headers)
        timeout = self._timeout if timeout is None else timeout
        if timeout <= 0:
            raise InvalidConfig("timeout must be positive")
        if max_age is not None and max_age <= 0:
            raise InvalidConfig("max_age must be positive")
        start = time.monotonic()
        deadline_ns = time.time_ns() + int(timeout * 1e9)
        cc = self._cache_cfg.get(topic)
        if cache is True and cc is None:
            cc = CacheConfig().resolved()
        if cache is False:
            cc = None
        if cc is not None:
            return await self._cached(t, payload, headers, partition_key, deadline_ns, start, timeout, wait_for_responders, cc,
                                      cache_key, max_age, no_cache, no_store)
        await self._admit(t, wait_for_responders)
        assert self._slots is not None
        await self._slot(t, start, timeout)
        try:
            return await self._request(t, payload, headers, partition_key, deadline_ns, start, timeout)
        finally:
            self._slots.release()

    async def _admit(self, t: _Topic, wait_for_responders: bool | None) -> None:
        wait = self._wait if wait_for_responders is None else wait_for_responders
        if not wait and not await self._served(t):
            raise NoResponders(f"no worker serves topic {t.name!r}")
        await self._ensure_reader()

    async def _slot(self, t: _Topic, start: float, timeout: float) -> None:
        assert self._slots is not None
        if not self._slots.locked():
            await self._slots.acquire()  # free: taken at once, no task, no timer
            return
        remaining = timeout - (time.monotonic() - start)
        try:
            await asyncio.wait_for(self._slots.acquire(), max(remaining, 0))
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            raise _SlotTimeout(f"request to {t.name!r}: timeout waiting for an in-flight slot") from None

    def _new_waiter(self, **kw: Any) -> tuple[int, str, _Waiter]:
        self._seq += 1
        seq = self._seq
        w = _Waiter(asyncio.get_running_loop().create_future(), **kw)
        self._waiters[seq] = w
        return seq, f"{self._inc}{seq:x}", w

    async def _request(
        self, t: _Topic, payload: bytes, headers: Mapping[str, str] | None, partition_key: str | bytes | None,
        deadline_ns: int, start: float, timeout: float,
    ) -> bytes:
        seq, cid, w = self._new_waiter()
        token = secrets.token_bytes(codec.TOKEN_SIZE)
        self._inflight[seq] = (t, deadline_ns, token)
        written = False
        try:
            key = await self._partition(t, partition_key)
            await self._pressure.room(t.name, key, 1, start + timeout)
            env = codec.Envelope(kind=codec.REQUEST, id=cid, reply_to=self.reply_key, deadline=deadline_ns, sent=time.time_ns(),
                                 headers=dict(headers) if headers else None, payload=bytes(payload), token=token)
            wrote = time.monotonic()
            res = await self._write_requests([self._xadd(key, self._encode(env))], [(seq, t, deadline_ns, token)])
            written = True
            self.stats.requests += 1
            self._written(w, _s(res[0]))
            self._time("redis_write", time.monotonic() - wrote)
            reply = await self._await_reply(w, t, start, timeout)
            self._timings(t, reply, start)
        except asyncio.CancelledError:
            if written:  # the caller gave up: its handler stops too
                self._spawn(self._cancel_notices([(seq, t, deadline_ns, token)]))
            raise
        finally:
            self._waiters.pop(seq, None)
            self._inflight.pop(seq, None)
        return self._result(reply)

    def _written(self, w: _Waiter, entry: str) -> None:
        w.entry = entry
        early, w.early = w.early, []
        for r in early:  # replies read before the write returned
            self._deliver(w, r)

    async def _await_reply(self, w: _Waiter, t: _Topic, start: float, timeout: float) -> codec.Envelope:
        """The reply, or BusTimeout at start + timeout (a timer on the
        waiter's future: no task per request)."""
        if w.future.done():
            return w.future.result()
        loop = asyncio.get_running_loop()
        h = loop.call_at(loop.time() + max(timeout - (time.monotonic() - start), 0), _expire, w.future)
        try:
            return await w.future
        except _Expired:
            self.stats.timeouts += 1
            raise BusTimeout(f"request to {t.name!r}: no reply within {timeout:g}s") from None
        finally:
            h.cancel()

    def _time(self, stage: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_stage(stage, seconds, role="producer")

    def _timings(self, t: _Topic, reply: codec.Envelope, start: float) -> None:
        """Records a request's stages (the worker's from its reply) in the
        metrics, and logs them at debug level."""
        total = time.monotonic() - start
        qw, hd = reply.queue_wait / 1e9, reply.handler / 1e9
        if self._metrics is not None:
            self._time("retry_wait" if reply.attempt > 1 else "queue_wait", qw)
            self._time("handler", hd)
            self._time("end_to_end", total)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request timing topic=%s outcome=%s queue_wait_us=%.0f handler_us=%.0f end_to_end_us=%.0f",
                      t.name, "remote_error" if reply.err_code else "ok", qw * 1e6, hd * 1e6, total * 1e6)

    def _result(self, reply: codec.Envelope) -> bytes:
        if reply.err_code:
            self.stats.remote_errors += 1
            raise RemoteError(reply.err_code, reply.err_msg)
        self.stats.replies += 1
        return reply.payload

    @_guarded
    async def request_batch(
        self, topic: str, payloads: Iterable[bytes], *, timeout: float | None = None, headers: Mapping[str, str] | None = None,
        partition_key: str | bytes | None = None, wait_for_responders: bool | None = None,
        priority: int | None = None, tenant: str | None = None,
    ) -> list[Reply]:
        """Sends requests in one round trip (one MULTI/EXEC: a worker's read
        gets them together) and returns one :class:`Reply` per payload, in
        order, each with its payload or its error. Raises for the batch as a
        whole: :class:`NoResponders`, :class:`PayloadTooLarge` (checked
        before anything is sent), :class:`Closed`, :class:`Unavailable`."""
        headers, partition_key = _sched(headers, partition_key, priority, tenant)
        t, payloads = self._check_batch(topic, payloads, headers)
        if not payloads:
            return []
        timeout = self._timeout if timeout is None else timeout
        if timeout <= 0:
            raise InvalidConfig("timeout must be positive")
        start = time.monotonic()
        deadline_ns = time.time_ns() + int(timeout * 1e9)
        await self._admit(t, wait_for_responders)
        taken = 0
        assert self._slots is not None
        try:
            for _ in payloads:
                await self._slot(t, start, timeout)
                taken += 1
            return await self._request_batch(t, payloads, headers, partition_key, deadline_ns, start, timeout)
        except BusTimeout as e:
            return [Reply(error=e) for _ in payloads]
        finally:
            for _ in range(taken):
                self._slots.release()

    async def _request_batch(self, t: _Topic, payloads: list[bytes], headers: Mapping[str, str] | None,
                             partition_key: str | bytes | None, deadline_ns: int, start: float, timeout: float) -> list[Reply]:
        hd = dict(headers) if headers else None
        waiters: list[tuple[int, _Waiter, bytes]] = []
        cmds: list[Any] = []
        sent = time.time_ns()
        for p in payloads:
            seq, cid, w = self._new_waiter()
            token = secrets.token_bytes(codec.TOKEN_SIZE)
            self._inflight[seq] = (t, deadline_ns, token)
            waiters.append((seq, w, token))
            env = codec.Envelope(kind=codec.REQUEST, id=cid, reply_to=self.reply_key, deadline=deadline_ns, sent=sent, headers=hd,
                                 payload=p, token=token)
            cmds.append((await self._partition(t, partition_key), self._encode(env)))
        written = False
        try:
            for k, n in collections.Counter(k for k, _ in cmds).items():
                await self._pressure.room(t.name, k, n, start + timeout)
            cmds = [self._xadd(k, data) for k, data in cmds]
            ids = self._batch_ids(await self._write_requests(self._atomic(cmds), [(seq, t, deadline_ns, tok) for seq, _, tok in waiters]))
            if not isinstance(ids, list) or len(ids) != len(payloads):
                raise Unavailable(f"request batch to {t.name!r}: the transaction was not applied ({ids!r})")
            written = True
            self.stats.requests += len(ids)
            for (_, w, _), eid in zip(waiters, ids):
                self._written(w, _s(eid))
            out: list[Reply] = []
            for _, w, _ in waiters:
                try:
                    out.append(Reply(payload=self._result(await self._await_reply(w, t, start, timeout))))
                except (RemoteError, BusTimeout) as e:
                    out.append(Reply(error=e))
            return out
        except asyncio.CancelledError:
            if written:
                self._spawn(self._cancel_notices([(seq, t, deadline_ns, tok) for seq, w, tok in waiters if not w.future.done()]))
            raise
        finally:
            for seq, _, _ in waiters:
                self._waiters.pop(seq, None)
                self._inflight.pop(seq, None)

    # -- streamed replies ----------------------------------------------------

    async def stream(
        self, topic: str, payload: bytes, *, timeout: float | None = None, headers: Mapping[str, str] | None = None,
        partition_key: str | bytes | None = None, wait_for_responders: bool | None = None,
        priority: int | None = None, tenant: str | None = None,
    ) -> AsyncIterator[bytes]:
        """Sends a request whose reply the handler streams, and yields its
        chunks as they arrive: ``async for chunk in p.stream(topic, prompt):``.
        A handler that does not stream gives its reply as the one chunk.

        The stream ends after the last chunk; a handler error after some
        chunks raises :class:`RemoteError` after them; a missing chunk, or
        a delivery again after chunks were read, raises
        :class:`StreamBroken`; ``timeout`` bounds the whole stream
        (:class:`BusTimeout`). Leaving the loop early (``break``, an
        exception) cancels the handler: close the iterator then, at once,
        with ``contextlib.aclosing(p.stream(...))``, else it is closed when
        collected."""
        headers, partition_key = _sched(headers, partition_key, priority, tenant)
        t = self._check(topic, payload, headers)
        timeout = self._timeout if timeout is None else timeout
        if timeout <= 0:
            raise InvalidConfig("timeout must be positive")
        br = self._breaker_of(topic)
        if br is not None and not br.allow():
            self.stats.breaker_rejected += 1
            raise BreakerOpen(f"topic {topic!r}: circuit breaker open")
        outcome: bool | None = None
        start = time.monotonic()
        try:
            async with contextlib.aclosing(self._stream(t, payload, headers, partition_key, wait_for_responders, timeout, start)) as it:
                async for chunk in it:
                    yield chunk
            outcome = False
        except BaseException as e:
            outcome = self._outcome(e)
            raise
        finally:
            if br is not None:
                br.done(outcome, time.monotonic() - start)

    async def _stream(self, t: _Topic, payload: bytes, headers: Mapping[str, str] | None, partition_key: str | bytes | None,
                      wait_for_responders: bool | None, timeout: float, start: float) -> AsyncGenerator[bytes, None]:
        deadline_ns = time.time_ns() + int(timeout * 1e9)
        await self._admit(t, wait_for_responders)
        await self._slot(t, start, timeout)
        assert self._slots is not None
        st = _StreamState(max(16 << 20, 4 * self.max_payload))
        expiry: asyncio.TimerHandle | None = None
        seq, cid, w = self._new_waiter(stream=st)
        token = secrets.token_bytes(codec.TOKEN_SIZE)
        self._inflight[seq] = (t, deadline_ns, token)
        written = False
        try:
            key = await self._partition(t, partition_key)
            await self._pressure.room(t.name, key, 1, start + timeout)
            env = codec.Envelope(kind=codec.REQUEST, id=cid, reply_to=self.reply_key, deadline=deadline_ns, sent=time.time_ns(),
                                 headers=dict(headers) if headers else None, payload=bytes(payload), token=token,
                                 flags=codec.FLAG_STREAM)
            res = await self._write_requests([self._xadd(key, self._encode(env))], [(seq, t, deadline_ns, token)])
            written = True
            self.stats.requests += 1
            self._written(w, _s(res[0]))
            # The deadline is an item the stream's queue gets (a timer, not
            # wait_for: in 3.11 a cancellation racing wait_for's timeout can
            # come out as a timeout, and Ctrl-C must stay a cancellation).
            loop = asyncio.get_running_loop()
            expiry = loop.call_at(loop.time() + max(timeout - (time.monotonic() - start), 0), st.queue.put_nowait, _Expired())
            while True:
                item = await st.queue.get()
                if isinstance(item, _Expired):
                    self.stats.timeouts += 1
                    raise BusTimeout(f"stream from {t.name!r}: not ended within {timeout:g}s")
                if item is None:
                    self.stats.replies += 1
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, RemoteError):
                        self.stats.remote_errors += 1
                    raise item
                st.buffered -= len(item)
                yield item
        finally:
            if expiry is not None:
                expiry.cancel()
            ended = st.ended and st.queue.empty() and not st.broken
            self._waiters.pop(seq, None)
            self._inflight.pop(seq, None)
            self._slots.release()
            if written and not ended:  # the caller stopped reading: its handler stops too
                self._spawn(self._cancel_notices([(seq, t, deadline_ns, token)]))

    def _stream_item(self, w: _Waiter, r: codec.Envelope) -> None:
        """Takes a chunk or the ending reply of a streamed request (the wire
        rules of docs/wire.md, "Chunk")."""
        st = w.stream
        assert st is not None
        if st.ended:
            return
        att = r.attempt
        if st.attempt == 0:
            st.attempt = att
        elif att != st.attempt:
            if att < st.attempt:
                return  # an earlier delivery's: dropped
            if st.next_seq > 0:
                self._break(w, f"the request was delivered again (attempt {att}) after {st.next_seq} chunks of attempt {st.attempt}")
                return
            st.attempt = att  # nothing read yet: follow the new delivery
        if r.kind == codec.CHUNK:
            if r.seq < st.next_seq:
                return  # a duplicate
            if r.seq > st.next_seq:
                self._break(w, f"chunk {r.seq} arrived when {st.next_seq} was next: the reply stream was trimmed")
                return
            st.next_seq += 1
            st.buffered += len(r.payload)
            self.stats.chunks += 1
            if st.buffered > st.limit:
                self._break(w, f"the caller left more than {st.limit} bytes of chunks unread")
                return
            st.queue.put_nowait(r.payload)
            return
        if r.seq != st.next_seq:  # the ending reply
            self._break(w, f"the reply counts {r.seq} chunks, {st.next_seq} arrived: the reply stream was trimmed")
            return
        if r.payload:
            st.queue.put_nowait(r.payload)
        st.queue.put_nowait(RemoteError(r.err_code, r.err_msg) if r.err_code else None)
        st.ended = True

    def _break(self, w: _Waiter, why: str) -> None:
        st = w.stream
        assert st is not None
        st.ended = st.broken = True
        self.stats.streams_broken += 1
        st.queue.put_nowait(StreamBroken(f"stream broken: {why}"))

    # -- the response cache ---------------------------------------------------

    async def _cached(
        self, t: _Topic, payload: bytes, headers: Mapping[str, str] | None, partition_key: str | bytes | None, deadline_ns: int,
        start: float, timeout: float, wait_for_responders: bool | None, cc: CacheConfig, cache_key: str | bytes | None,
        max_age: float | None, no_cache: bool, no_store: bool,
    ) -> bytes:
        h = digest(payload, cache_key)
        name = await self._pick(t, partition_key, h)
        level = self._level(t, partition_key)
        tc = self._tcache.get(name)
        if tc is None:
            tc = self._tcache[name] = TopicCache(cc)
        if not no_cache and self._local is not None and cc.local_ttl > 0:
            e = self._local.get((name, tc.epoch, h))
            if e is not None and (max_age is None or time.monotonic() - e.made <= max_age):
                self.stats.cache_hits_local += 1
                self._refresh_meta(name, tc)
                return e.payload
        fk = (name, h, no_cache, no_store, max_age)
        f = self._flights.get(fk)
        if f is not None and not f.done.done():
            f.refs += 1
            self.stats.coalesced_local += 1
            try:
                remaining = timeout - (time.monotonic() - start)
                reply = await asyncio.wait_for(asyncio.shield(f.done), max(remaining, 0))
            except asyncio.TimeoutError:
                self.stats.timeouts += 1
                raise BusTimeout(f"request to {t.name!r}: no reply within {timeout:g}s") from None
            finally:
                f.refs -= 1
            return self._result(reply)
        f = Flight(asyncio.get_running_loop().create_future())
        self._flights[fk] = f  # before any await: identical requests from now on join it
        slot = False
        assert self._slots is not None
        try:
            await self._admit(t, wait_for_responders)
            await self._slot(t, start, timeout)
            slot = True
            reply = await self._lead(t, name, tc, f, h, payload, headers, deadline_ns, start, timeout, max_age, no_cache, no_store, level)
            if not f.done.done():
                f.done.set_result(reply)
        except BaseException as e:
            if not f.done.done():
                f.done.set_exception(e if isinstance(e, Exception) else BusTimeout("the leading request was cancelled"))
                f.done.exception()
            raise
        finally:
            if self._flights.get(fk) is f:
                del self._flights[fk]
            if slot:
                self._slots.release()
        if not reply.err_code and reply.cache_ttl > 0 and self._local is not None and cc.local_ttl > 0:
            self._local.put((name, tc.epoch, h), reply.payload, f.age, min(cc.local_ttl, reply.cache_ttl / 1e9 - f.age), f.entry)
        return self._result(reply)

    async def _lead(
        self, t: _Topic, name: str, tc: TopicCache, f: Flight, h: str, payload: bytes, headers: Mapping[str, str] | None,
        deadline_ns: int, start: float, timeout: float, max_age: float | None, no_cache: bool, no_store: bool, level: int = 0,
    ) -> codec.Envelope:
        """One flight's request: the cache script's round trip (a stored
        answer, a flight joined anywhere, or the request written), then its
        reply; asking again as this caller when the request it waited for
        gave up (its deadline passed)."""
        seq, cid, w = self._new_waiter()
        try:
            env = codec.Envelope(kind=codec.REQUEST, id=cid, reply_to=self.reply_key, deadline=deadline_ns,
                                 headers=dict(headers) if headers else None, payload=bytes(payload),
                                 cache_ttl=0 if no_store else int(tc.cfg.ttl * 1e9))
            while True:
                hit = await self._begin(t, name, tc, f, w, env, h, deadline_ns, max_age, no_cache, level)
                if hit is not None:
                    return hit
                remaining = timeout - (time.monotonic() - start)
                wait = remaining
                if f.leader and f.leader < deadline_ns / 1e9:  # the request we joined gives up before us
                    wait = min(remaining, max(f.leader + TAKEOVER_GRACE - time.time(), 0))
                try:
                    return await asyncio.wait_for(asyncio.shield(w.future), max(wait, 0))
                except asyncio.TimeoutError:
                    if wait >= remaining:
                        self.stats.timeouts += 1
                        raise BusTimeout(f"request to {t.name!r}: no reply within {timeout:g}s") from None
                    self.stats.cache_takeovers += 1  # ask again: the script takes the stale flight over
        finally:
            self._waiters.pop(seq, None)

    async def _begin(self, t: _Topic, name: str, tc: TopicCache, f: Flight, w: _Waiter, env: codec.Envelope, h: str,
                     deadline_ns: int, max_age: float | None, no_cache: bool, level: int = 0) -> codec.Envelope | None:
        """Runs the cache script; returns a stored answer, or None when the
        request was joined or written (its reply comes to w)."""
        drop = False
        stream = self._keys.topic(name)  # the cache entries' base: one cache across levels
        target = self._stream_key(name, level)  # where the request is written: its level's stream
        await self._pressure.room(t.name, target, 1, time.monotonic() + (deadline_ns - time.time_ns()) / 1e9)
        for _ in range(3):
            entry = f"{tc.gen}:{h}"
            f.entry = w.cache_entry = entry
            now = time.time()
            env.cache_key, env.sent = entry, time.time_ns()
            args = [tc.gen, int(max_age * 1000) if max_age else 0, self.reply_key + " " + env.id, int(now * 1000),
                    deadline_ns // 1_000_000, int((deadline_ns / 1e9 - now + TAKEOVER_GRACE + 1) * 1000), MAX_FLIGHT_WAITERS,
                    FIELD, self._encode(env), "MAXLEN" if self._cap > 0 else "", self._cap, "1" if drop else "0", "1" if no_cache else "0"]
            try:
                r = await _apart(self._scripts.call("begin", [target, self._keys.meta(name), f"{stream}:c:{entry}", f"{stream}:f:{entry}"], args))
            except (RedisError, OSError) as e:
                self.stats.write_errors += 1
                raise _unavailable(e) from None
            if not isinstance(r, list) or len(r) < 3:
                raise Unavailable(f"request to {t.name!r}: the cache script answered {r!r}")
            outcome = int(r[0])
            tc.gen, tc.epoch, tc.meta_at = _uint(r[1]), _uint(r[2]), time.monotonic()
            if outcome == 0:  # the generation changed: ask again with it
                continue
            if outcome == 1:
                try:
                    v = codec.decompress(codec.decode(r[3]), MAX_PAYLOAD_CAP)
                except MalformedError:
                    v = None
                if v is None or v.kind != codec.REPLY or v.err_code:
                    self.stats.cache_corrupt += 1
                    self._warn.warn("topic %s: undecodable cache value: deleted, asking a worker", t.name)
                    drop = True
                    continue
                self.stats.cache_hits_shared += 1
                age = max(int(r[4]), 0) / 1000
                f.age = age
                v.cache_ttl = int((age + max(int(r[5]), 0) / 1000) * 1e9) if len(r) > 5 else 0
                return v
            if outcome == 2:
                self.stats.coalesced_remote += 1
                f.leader = int(r[3]) / 1000
                return None
            self.stats.requests += 1
            self.stats.cache_misses += 1
            if outcome == 4:
                self.stats.cache_takeovers += 1
            f.leader = 0.0
            w.entry = _s(r[3])
            return None
        raise Unavailable(f"request to {t.name!r}: the cache generation kept changing")

    def _refresh_meta(self, name: str, tc: TopicCache) -> None:
        """Re-reads the topic's epoch in the background at most once a
        second while local hits are served: an invalidation reaches this
        process's memory within about a second."""
        if time.monotonic() - tc.meta_at < META_REFRESH or tc.refreshing:
            return
        tc.refreshing = True

        async def read() -> None:
            try:
                g, e = await self.redis.hmget(self._keys.meta(name), ["gen", "epoch"])
                tc.gen, tc.epoch, tc.meta_at = _uint(g), _uint(e), time.monotonic()
            except (RedisError, OSError):
                pass
            finally:
                tc.refreshing = False
        self._spawn(read())

    # -- cancel notices ------------------------------------------------------

    async def _cancel_notices(self, reqs: list[tuple[int, _Topic, int, bytes]]) -> None:
        """Writes a cancel notice for each (seq, topic, deadline, token)."""
        if not reqs:
            return
        pipe = self.redis.pipeline(transaction=False)
        for seq, t, deadline_ns, token in reqs:
            pipe.xadd(
                self._keys.control(t.name),
                {b"op": b"cancel", b"until": str(deadline_ns // 1_000_000).encode(), b"tok": token,
                 b"id": f"{self._inc}{seq:x}".encode(), b"to": self.reply_key.encode()},
                maxlen=10_000, approximate=True,
            )
        with contextlib.suppress(RedisError, OSError):
            await pipe.execute()
            self.stats.cancelled += len(reqs)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- the reply reader ---------------------------------------------------

    async def _ensure_reader(self) -> None:
        if self._reader is not None:
            return
        assert self._reader_lock is not None
        async with self._reader_lock:
            if self._reader is not None:
                return
            if self._closed:
                raise Closed("producer closed")
            await _apart(self._create_reply_stream())
            self._reader = asyncio.ensure_future(self._read_replies())
            self._reader.add_done_callback(self._reader_ended)

    def _reader_ended(self, task: asyncio.Task[None]) -> None:
        """A reply reader that died (a bug, a reply redis-py could not
        parse) fails every waiter at once with the cause; the next request
        starts a new one."""
        if task.cancelled() or self._closed:
            return
        err = task.exception()
        if err is None:
            return
        self._reader = None
        self.stats.reader_restarts += 1
        log.error("reply reader of %s stopped; failing %d waiting requests, the next request starts a new one: %s",
                  self.reply_key, len(self._waiters), err, exc_info=err)
        cause = Unavailable(f"the reply reader stopped: {err}")
        for w in list(self._waiters.values()):
            self._fail(w, cause)
        for f in list(self._flights.values()):
            if not f.done.done():
                f.done.set_exception(cause)
                f.done.exception()

    def _fail(self, w: _Waiter, err: MyceliumError) -> None:
        if w.stream is not None and not w.stream.ended:
            w.stream.ended = True
            w.stream.queue.put_nowait(err)
        if not w.future.done():
            w.future.set_exception(err)
            w.future.exception()

    async def _create_reply_stream(self) -> None:
        ctl = self._encode(codec.Envelope(kind=codec.CONTROL, sent=time.time_ns()))
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.reply_key, {FIELD: ctl})
        pipe.pexpire(self.reply_key, self._ttl_ms)
        try:
            await pipe.execute()
        except (RedisError, OSError) as e:
            raise _unavailable(e) from None

    async def _read_replies(self) -> None:
        last = b"0-0"
        every = min(self._ttl_ms / 3000, 5.0)
        next_refresh = time.monotonic() + every
        backoff = 0.05
        while not self._closed:
            try:
                if time.monotonic() >= next_refresh:
                    if not await self.redis.pexpire(self.reply_key, self._ttl_ms):
                        log.warning("reply stream %s was lost (a restart, a flush): recreating it", self.reply_key)
                        await self._create_reply_stream()
                    next_refresh = time.monotonic() + every
                res = await self._xread(last)
                backoff = 0.05
                if self._down_since:
                    log.warning("redis is back after %.1fs: reading replies on %s again", time.monotonic() - self._down_since, self.reply_key)
                    self._down_since = 0.0
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, MyceliumError) as e:
                if self._closed:
                    return  # closing: redis-py may have turned the cancellation into this error
                next_refresh = 0.0  # Redis may have restarted without the reply stream: confirm it first when back
                if not self._down_since:
                    self._down_since = time.monotonic()
                self._warn.warn("redis unavailable to the reply reader of %s (requests wait; retrying in %.2fs): %s",
                                self.reply_key, backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for _stream, entries in res or []:
                for eid, fields in entries:
                    last = eid
                    self._dispatch(fields)

    async def _xread(self, last: bytes) -> Any:
        """One blocking read of the reply stream after last: on one server
        on a connection the reader keeps, packed and parsed here (raw
        replies: [[key, [[id, [field, value, ...]], ...]]]); on a cluster
        through the client."""
        if self._cluster:
            return await self.redis.xread({self.reply_key: last}, count=256, block=self._block_ms)
        if self._reader_conn is None:
            self._reader_conn = await self.redis.connection_pool.get_connection("XREAD")
        conn = self._reader_conn
        try:
            await conn.send_packed_command(_pack(("XREAD", "COUNT", 256, "BLOCK", self._block_ms, "STREAMS", self.reply_key, last)),
                                           check_health=False)
            return await conn.read_response()
        except BaseException:
            await conn.disconnect()  # a reply may be left unread: it reconnects on the next read
            raise

    def _dispatch(self, fields: Any) -> None:
        if isinstance(fields, list):  # a raw reply: field, value, ...
            fields = {fields[i]: fields[i + 1] for i in range(0, len(fields) - 1, 2)}
        data = fields.get(FIELD)
        if data is None:
            self.stats.malformed += 1
            return
        try:
            env = codec.decode(data)
        except MalformedError:
            self.stats.malformed += 1
            return
        if env.kind not in (codec.REPLY, codec.CHUNK):
            return  # control entries
        bad: MalformedError | None = None
        if codec.compression_of(env) != "none":  # a worker answers compressed as it was asked
            try:
                env = codec.decompress(env, MAX_PAYLOAD_CAP)
            except MalformedError as e:
                self.stats.malformed += 1
                if env.kind == codec.CHUNK:
                    return  # skipped; the stream's end says how many came
                bad = e  # its caller gets the error
        if not env.id.startswith(self._inc):
            self.stats.late += 1  # an earlier incarnation's
            return
        try:
            seq = int(env.id[len(self._inc):], 16)
        except ValueError:
            self.stats.late += 1
            return
        w = self._waiters.get(seq)
        if w is None or w.future.done() or (w.stream is not None and w.stream.ended):
            if env.kind == codec.REPLY:
                self.stats.late += 1
            return
        if env.kind == codec.CHUNK and w.stream is None:
            return  # a chunk for a caller that reads a whole reply: dropped
        if bad is not None:
            if w.stream is None and not (env.request_entry and w.entry is not None and env.request_entry != w.entry):
                w.future.set_exception(bad)
            return
        if w.entry is None and env.request_entry and not (w.cache_entry and env.cache_key == w.cache_entry):
            if len(w.early) < 64:
                w.early.append(env)  # read before the write returned: judged then
            return
        self._deliver(w, env)

    def _deliver(self, w: _Waiter, r: codec.Envelope) -> None:
        if w.cache_entry and r.cache_key == w.cache_entry:
            pass  # a cached request's answer (ours, or the one we joined): it names the entry
        elif r.request_entry and w.entry is not None and r.request_entry != w.entry:
            self.stats.forged += 1  # answers an entry someone else wrote with this id
            return
        if w.stream is not None:
            self._stream_item(w, r)
            return
        if r.kind == codec.REPLY and not w.future.done():
            w.future.set_result(r)


class _SlotTimeout(BusTimeout):
    """Waited in vain for a local in-flight slot: says nothing of Redis or
    the workers (the breaker ignores it)."""


class _Expired(Exception):
    """A waiter's deadline passed (turned into BusTimeout by its caller)."""


def _expire(f: asyncio.Future[Any]) -> None:
    if not f.done():
        f.set_exception(_Expired())


async def _apart(coro: Awaitable[_R]) -> _R:
    """Runs a redis-py call in a task of its own. redis-py 4.3 checks a
    pooled connection with async_timeout(0), which cancels the task it runs
    in and turns that into a timeout: run on the caller's task, it raises
    the task's cancel count (Python 3.11: Ctrl-C then ends in
    CancelledError, not KeyboardInterrupt; asyncio.timeout() and TaskGroups
    around our calls misjudge) and can swallow a real cancellation. The hot
    path (shared writes, the reply reader) runs in tasks of its own already."""
    return await asyncio.ensure_future(coro)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _uint(v: Any) -> int:
    try:
        n = int(v) if v is not None else 0
    except (TypeError, ValueError):
        return 0
    return max(n, 0)


def _due(after: float | None, at: float | datetime.datetime | None) -> tuple[int, int] | None:
    """(at ms, after ms) for the delay script, or None for no delay (a
    delay not in the future publishes at once)."""
    if after is not None and at is not None:
        raise InvalidConfig("give after or at, not both")
    if after is not None:
        if after > MAX_DELAY:
            raise InvalidConfig(f"delay over {MAX_DELAY:g}s (366 days)")
        return (0, int(after * 1000)) if after > 0 else None
    if at is not None:
        ts = at.timestamp() if isinstance(at, datetime.datetime) else float(at)
        if ts - time.time() > MAX_DELAY:
            raise InvalidConfig(f"delay over {MAX_DELAY:g}s (366 days)")
        return (max(int(ts * 1000), 1), 0) if ts > time.time() else None
    return None
