"""The caller's side: requests and events (docs/wire.md, "Kinds")."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import codec
from .errors import (
    BusTimeout,
    Closed,
    InvalidConfig,
    PermissionDenied,
    MalformedError,
    NoResponders,
    PayloadTooLarge,
    RemoteError,
    Unavailable,
)
from .keys import DEFAULT_PREFIX, Keys, partition, partition_of, validate_name

FIELD = b"m"
MAX_HEADERS = 1024
MAX_HEADER_BYTES = 64 << 10
DEFAULT_MAX_PAYLOAD = 4 << 20
RESPONDER_IDLE_MS = 15_000
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_B36[r])
    return "".join(reversed(out))


def _unavailable(e: Exception) -> Exception:
    """The MyceliumError a Redis error means: refused credentials or
    commands (a wrong password raised a bare redis-py error) are
    PermissionDenied, a connection that failed Unavailable."""
    if isinstance(e, (AuthenticationError, NoPermissionError)) or (
            isinstance(e, ResponseError) and str(e).split(" ", 1)[0] in ("WRONGPASS", "NOAUTH", "NOPERM")):
        return PermissionDenied(f"redis refused: {e}")
    if isinstance(e, (RedisConnectionError, RedisTimeoutError, OSError)):
        return Unavailable(f"redis unavailable: {e}")
    return e


@dataclass
class _Waiter:
    future: asyncio.Future[codec.Envelope]
    entry: str | None = None  # the request's stream entry id, once written
    early: list[codec.Envelope] = field(default_factory=list)  # replies read before that


@dataclass
class _Topic:
    name: str
    parts: int = 1
    parts_read: float = 0.0  # monotonic time of the last read of the count
    rr: int = 0
    served_at: float = -1e9  # monotonic time a worker was last seen


@dataclass
class Stats:
    """Counters of one producer."""

    published: int = 0
    requests: int = 0
    replies: int = 0
    late: int = 0
    timeouts: int = 0
    remote_errors: int = 0
    malformed: int = 0
    forged: int = 0
    cancelled: int = 0




def redact_url(url: str) -> str:
    """``url`` with its password replaced by xxxxx. The userinfo is taken to
    run to the last '@' (not the first '/', '?' or '#', as a URL parser
    reads it), so a password holding one of those unencoded never shows."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at < 0 or ":" not in rest[:at]:
        return url
    user = rest[:at].split(":", 1)[0]
    return (scheme + "://" if sep else "") + user + ":xxxxx" + rest[at:]


def connect_url(url: str) -> aioredis.Redis:
    """The client of ``url``; a malformed URL raises InvalidConfig saying
    what is wrong without its password (Go: bus.Config's checks)."""
    _, sep, rest = url.partition("://")
    at, cut = rest.rfind("@"), min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=-1)
    if sep and at >= 0 and 0 <= cut < at and ":" in rest[:at]:
        raise InvalidConfig(f"redis URL {redact_url(url)!r}: its password holds '/', '?', '#' or '@' unencoded: "
                            "percent-encode it (%2F, %3F, %23, %40)")
    try:
        return aioredis.from_url(url, decode_responses=False)
    except ValueError as e:
        shown = redact_url(url)
        why = str(e) if shown == url else "malformed (details not shown: it holds a password)"
        raise InvalidConfig(f"redis URL {shown!r}: {why}") from None

def check_client(client: Any) -> None:
    """Refuses a client that decodes replies to str: the bus reads bytes
    (envelopes are binary), and such a client would fail every read."""
    kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kw is None:
        kw = getattr(client, "connection_kwargs", None)
    if kw is None and hasattr(client, "get_connection_kwargs"):
        kw = client.get_connection_kwargs()
    if kw and kw.get("decode_responses"):
        raise InvalidConfig("the redis client decodes responses (decode_responses=True): give one made with "
                            "decode_responses=False (the bus reads binary envelopes)")


def _user_of(url: str, client: aioredis.Redis | None) -> str:
    """The ACL user a producer connects as ("" for the default user)."""
    user: str | None
    if client is not None:
        user = client.connection_pool.connection_kwargs.get("username")
    else:
        import urllib.parse

        user = urllib.parse.urlsplit(url).username
        user = urllib.parse.unquote(user) if user else None
    return "" if not user or user == "default" else user


def validate_owner(name: str) -> None:
    """A reply stream's owner (an ACL user's name): it makes the key
    pattern of the user's reply streams, so no '.', braces, spaces or glob
    characters, at most 100 bytes."""
    if len(name.encode()) > 100 or any(ch in name for ch in ".{}*?[]\\ ") or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidConfig(f"owner {name!r}: at most 100 bytes without '.', braces, spaces, control or glob characters")

class Producer:
    """Sends requests and publishes events. Use it as ``async with
    Producer(url) as p:``; it is safe to share between tasks of one event
    loop.

    One reply reader per producer reads its reply stream (never a
    subscription per request); at most ``max_in_flight`` requests wait at
    once (more wait for a slot, within their timeout). Deadlines travel in
    the envelope, so workers skip requests whose caller gave up; a request
    cancelled by its task (``asyncio.CancelledError``) writes a cancel
    notice, so the worker running it cancels its handler."""

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
        client: aioredis.Redis | None = None,
    ) -> None:
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
        self._r: aioredis.Redis | None = client
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
        self.stats = Stats()

    # -- lifecycle -----------------------------------------------------

    async def __aenter__(self) -> "Producer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connects (and checks Redis answers). Called by ``async with``."""
        if self._r is None:
            self._r = connect_url(self._url)
        self._slots = asyncio.Semaphore(self._max_in_flight)
        self._reader_lock = asyncio.Lock()
        try:
            await self._r.ping()
        except (RedisError, OSError) as e:
            if self._own_client:  # nothing else will close it: __aexit__ does not run when __aenter__ fails
                with contextlib.suppress(Exception):
                    await self._r.close(close_connection_pool=True)
                self._r = None
            raise _unavailable(e) from None

    @property
    def redis(self) -> aioredis.Redis:
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
            if not w.future.done():
                w.future.set_exception(Closed("producer closed"))
        if waiting and self._r is not None:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._cancel_notices([(s, *v) for s, v in self._inflight.items()]), 2)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(self.reply_key)
        for t in list(self._bg):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 2)
        if self._own_client and self._r is not None:
            with contextlib.suppress(Exception):
                await self._r.close()
                await self._r.connection_pool.disconnect()

    # -- checks --------------------------------------------------------

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

    async def _partition(self, t: _Topic, key: str | bytes | None) -> str:
        """The stream key to write to: by partition key, else round robin.
        The count is re-read at most every second."""
        now = time.monotonic()
        if now - t.parts_read >= 1.0:
            try:
                v = await self.redis.hget(self._keys.meta(t.name), "partitions")
                n = int(v) if v is not None else 1
                t.parts = n if 1 <= n <= 1024 else 1
            except (ValueError, RedisError):
                pass  # keep the last count
            t.parts_read = now
        if t.parts <= 1:
            return self._keys.topic(t.name)
        if key is not None:
            p = partition_of(key, t.parts)
        else:
            p = t.rr % t.parts
            t.rr += 1
        return self._keys.topic(partition(t.name, p))

    async def _served(self, t: _Topic) -> bool:
        """Whether a worker serves t (its presence set, else its groups),
        checked at most once a second while the answer is yes."""
        now = time.monotonic()
        if now - t.served_at < 1.0:
            return True
        r = self.redis
        ms = int(time.time() * 1000)
        key = self._keys.workers(t.name)
        try:
            n = await r.zcount(key, f"({ms - RESPONDER_IDLE_MS}", "+inf")
            if n == 0 and not await r.exists(key):
                try:
                    groups = await r.xinfo_groups(self._keys.topic(t.name))
                except ResponseError:
                    groups = []
                n = sum(int(g.get("consumers", g.get(b"consumers", 0)) or 0) for g in groups)
        except RedisError as e:
            raise _unavailable(e) from None
        if n > 0:
            t.served_at = now
            return True
        return False

    # -- events --------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, headers: Mapping[str, str] | None = None, partition_key: str | bytes | None = None
    ) -> str:
        """Appends one event; returns its stream entry id once Redis stored it."""
        t = self._check(topic, payload, headers)
        key = await self._partition(t, partition_key)
        env = codec.Envelope(kind=codec.EVENT, sent=time.time_ns(), headers=dict(headers) if headers else None, payload=bytes(payload))
        try:
            eid = await self.redis.xadd(key, {FIELD: codec.encode(env)}, maxlen=self._cap, approximate=True)
        except RedisError as e:
            raise _unavailable(e) from None
        self.stats.published += 1
        return eid.decode() if isinstance(eid, bytes) else str(eid)

    async def publish_batch(
        self, topic: str, payloads: Iterable[bytes], *, headers: Mapping[str, str] | None = None, partition_key: str | bytes | None = None
    ) -> list[str]:
        """Appends events in one round trip, one MULTI/EXEC per partition
        (contiguous in the stream; a blocked worker gets them in one read).
        Payloads are checked before anything is sent."""
        payloads = [bytes(p) for p in payloads]
        t = self._check(topic, b"", headers)
        for i, p in enumerate(payloads):
            if len(p) > self.max_payload:
                raise PayloadTooLarge(f"entry {i}: payload of {len(p)} bytes, max {self.max_payload}")
        if not payloads:
            return []
        sent = time.time_ns()
        hd = dict(headers) if headers else None
        keys = [await self._partition(t, partition_key) for _ in payloads]
        pipe = self.redis.pipeline(transaction=True)
        for k, p in zip(keys, payloads):
            pipe.xadd(k, {FIELD: codec.encode(codec.Envelope(kind=codec.EVENT, sent=sent, headers=hd, payload=p))}, maxlen=self._cap, approximate=True)
        try:
            ids = await pipe.execute()
        except RedisError as e:
            raise _unavailable(e) from None
        self.stats.published += len(ids)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    # -- requests ------------------------------------------------------

    async def request(
        self,
        topic: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        partition_key: str | bytes | None = None,
        wait_for_responders: bool | None = None,
    ) -> bytes:
        """Sends a request and waits for its reply's payload.

        Raises :class:`BusTimeout` when ``timeout`` (default the producer's
        ``request_timeout``) passes, :class:`RemoteError` when the handler
        failed, :class:`NoResponders` when no worker serves the topic
        (nothing written; ``wait_for_responders=True`` queues it anyway),
        :class:`PayloadTooLarge`, :class:`Closed`, :class:`Unavailable`."""
        t = self._check(topic, payload, headers)
        timeout = self._timeout if timeout is None else timeout
        if timeout <= 0:
            raise InvalidConfig("timeout must be positive")
        start = time.monotonic()
        deadline_ns = time.time_ns() + int(timeout * 1e9)
        wait = self._wait if wait_for_responders is None else wait_for_responders
        if not wait and not await self._served(t):
            raise NoResponders(f"no worker serves topic {topic!r}")
        await self._ensure_reader()
        remaining = timeout - (time.monotonic() - start)
        assert self._slots is not None
        try:
            await asyncio.wait_for(self._slots.acquire(), max(remaining, 0))
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            raise BusTimeout(f"request to {topic!r}: timeout waiting for an in-flight slot") from None
        try:
            return await self._request(t, payload, headers, partition_key, deadline_ns, start, timeout)
        finally:
            self._slots.release()

    async def _request(
        self, t: _Topic, payload: bytes, headers: Mapping[str, str] | None, partition_key: str | bytes | None,
        deadline_ns: int, start: float, timeout: float,
    ) -> bytes:
        self._seq += 1
        seq = self._seq
        cid = self._inc + _base36(seq)
        loop = asyncio.get_running_loop()
        w = _Waiter(loop.create_future())
        self._waiters[seq] = w
        token = secrets.token_bytes(codec.TOKEN_SIZE)
        self._inflight[seq] = (t, deadline_ns, token)
        written = False
        try:
            key = await self._partition(t, partition_key)
            env = codec.Envelope(kind=codec.REQUEST, id=cid, reply_to=self.reply_key, deadline=deadline_ns, sent=time.time_ns(),
                                 headers=dict(headers) if headers else None, payload=bytes(payload), token=token)
            try:
                eid = await self.redis.xadd(key, {FIELD: codec.encode(env)}, maxlen=self._cap, approximate=True)
            except RedisError as e:
                raise _unavailable(e) from None
            written = True
            self.stats.requests += 1
            w.entry = eid.decode() if isinstance(eid, bytes) else str(eid)
            for r in w.early:  # replies read before the write returned
                if self._accept(w, r):
                    break
            w.early.clear()
            remaining = timeout - (time.monotonic() - start)
            try:
                reply = await asyncio.wait_for(asyncio.shield(w.future), max(remaining, 0))
            except asyncio.TimeoutError:
                self.stats.timeouts += 1
                raise BusTimeout(f"request to {t.name!r}: no reply within {timeout:g}s") from None
        except asyncio.CancelledError:
            if written:  # the caller gave up: its handler stops too
                self._spawn(self._cancel_notices([(seq, t, deadline_ns, token)]))
            raise
        finally:
            self._waiters.pop(seq, None)
            self._inflight.pop(seq, None)
        if reply.err_code:
            self.stats.remote_errors += 1
            raise RemoteError(reply.err_code, reply.err_msg)
        self.stats.replies += 1
        return reply.payload

    def _accept(self, w: _Waiter, r: codec.Envelope) -> bool:
        if r.request_entry and w.entry is not None and r.request_entry != w.entry:
            self.stats.forged += 1  # answers an entry someone else wrote with this id
            return False
        if not w.future.done():
            w.future.set_result(r)
        return True

    async def _cancel_notices(self, reqs: list[tuple[int, _Topic, int, bytes]]) -> None:
        """Writes a cancel notice for each (seq, topic, deadline, token)."""
        pipe = self.redis.pipeline(transaction=False)
        for seq, t, deadline_ns, token in reqs:
            pipe.xadd(
                self._keys.control(t.name),
                {b"op": b"cancel", b"until": str(deadline_ns // 1_000_000).encode(), b"tok": token,
                 b"id": (self._inc + _base36(seq)).encode(), b"to": self.reply_key.encode()},
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
            await self._create_reply_stream()
            self._reader = asyncio.ensure_future(self._read_replies())

    async def _create_reply_stream(self) -> None:
        ctl = codec.encode(codec.Envelope(kind=codec.CONTROL, sent=time.time_ns()))
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.reply_key, {FIELD: ctl})
        pipe.pexpire(self.reply_key, self._ttl_ms)
        try:
            await pipe.execute()
        except RedisError as e:
            raise _unavailable(e) from None

    async def _read_replies(self) -> None:
        last = b"0-0"
        every = min(self._ttl_ms / 3000, 5.0)
        next_refresh = time.monotonic() + every
        backoff = 0.05
        while True:
            try:
                if time.monotonic() >= next_refresh:
                    if not await self.redis.pexpire(self.reply_key, self._ttl_ms):
                        await self._create_reply_stream()  # Redis lost it (restart, FLUSHALL)
                    next_refresh = time.monotonic() + every
                res = await self.redis.xread({self.reply_key: last}, count=256, block=self._block_ms)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for _stream, entries in res or []:
                for eid, fields in entries:
                    last = eid
                    self._dispatch(fields)

    def _dispatch(self, fields: Mapping[bytes, bytes]) -> None:
        data = fields.get(FIELD)
        if data is None:
            self.stats.malformed += 1
            return
        try:
            env = codec.decode(data)
        except MalformedError:
            self.stats.malformed += 1
            return
        if env.kind != codec.REPLY:
            return  # control entries; chunks (this client reads no streams)
        if not env.id.startswith(self._inc):
            self.stats.late += 1  # an earlier incarnation's
            return
        try:
            seq = int(env.id[len(self._inc):], 36)
        except ValueError:
            self.stats.late += 1
            return
        w = self._waiters.get(seq)
        if w is None or w.future.done():
            self.stats.late += 1
            return
        if w.entry is None and env.request_entry:
            if len(w.early) < 4:
                w.early.append(env)  # read before the write returned: judged then
            return
        self._accept(w, env)
