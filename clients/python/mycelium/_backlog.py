"""Backpressure for the Python producer: the Go producer's (producer/
backpressure.go, docs/flow-control.md), so a burst of Python writes waits
for room (or is refused) before ``XADD … MAXLEN ~`` would trim entries no
worker has read.

A write to a topic stream first takes room in the stream's backlog: the
most entries any of its groups has not finished (lag + pending, at most the
stream's length; every entry without a group). What the producer knows is
its last measurement plus the entries it reserved since that measurement
began; a monitor task per stream measures with one round trip (``XLEN`` +
``XINFO GROUPS``): every second far from the limit, sooner as the backlog
grows, every 2 ms while callers wait; it stops after 5 s without writes.
Between two measurements a producer writes at most an eighth of the
headroom (limit to cap), then waits for a fresh measurement."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from redis.exceptions import NoPermissionError, ResponseError

from .connect import xinfo
from .errors import BacklogFull, BusTimeout, Closed, InvalidConfig

log = logging.getLogger("mycelium.producer")

BLOCK, REJECT, DROP_OLDEST = "block", "reject", "drop-oldest"
POLICIES = (BLOCK, REJECT, DROP_OLDEST)

MONITOR_IDLE = 5.0  # a monitor stops after this long without writes to its stream
STALE = 2.0  # an older measurement is not trusted: writes wait for a fresh one
SLOW_POLL, FAST_POLL = 1.0, 0.002
MEASURE_TIMEOUT = 2.0
DROP_WARN_EVERY = 10.0


@dataclass
class _Stream:
    offset: int = 0  # the last measurement minus reserved when it began
    base: int = 0  # reserved when the last measurement began
    reserved: int = 0  # entries reserved on the stream, ever
    measured: float = 0.0  # monotonic time of the last measurement (0: none)
    used: float = 0.0  # monotonic time of the last reservation
    waiting: int = 0
    off: bool = False  # the user may not measure it: no backpressure
    drop_warn: float = -1e18
    task: "asyncio.Task[None] | None" = None
    changed: "asyncio.Event | None" = None
    kick: "asyncio.Event | None" = None

    def estimate(self) -> int:
        return self.offset + self.reserved


class Pressure:
    def __init__(self, redis: Callable[[], Any], policy: str, max_backlog: int | None, max_wait: float, cap: int, stats: Any) -> None:
        if policy not in POLICIES:
            raise InvalidConfig(f"backpressure must be one of {', '.join(POLICIES)}, not {policy!r}")
        if max_wait < 0:
            raise InvalidConfig("backlog_max_wait must not be negative")
        limit = (cap * 3 // 4 if cap > 0 else 0) if max_backlog is None else max(max_backlog, 0)
        if policy != DROP_OLDEST and cap > 0 and limit >= cap:
            raise InvalidConfig(f"max_backlog ({limit}) must stay below stream_max_len ({cap}): the rest is headroom for other producers")
        if policy == DROP_OLDEST:
            limit = cap  # nothing waits or fails: measured to count what the trim drops
        self._r, self.policy, self.limit, self.max_wait, self.cap, self.stats = redis, policy, limit, max_wait, cap, stats
        room = cap - limit if cap > limit else limit
        self.slack = max(room // 8, 1)
        self._streams: dict[str, _Stream] = {}
        self._closed = False

    async def room(self, topic: str, key: str, n: int, deadline: float | None = None) -> None:
        """Takes room for n entries in key's backlog before they are
        written, as the policy says. deadline: a request's (monotonic), past
        which it raises BusTimeout; without one Block waits at most
        backlog_max_wait."""
        if self.limit <= 0:
            return
        b = self._streams.get(key)
        if b is None:
            if len(self._streams) >= 65536:  # stopped monitors' streams are forgotten first
                for k in [k for k, s in self._streams.items() if s.task is None][:1024]:
                    del self._streams[k]
            b = self._streams[key] = _Stream()
        if b.off:
            return
        now = time.monotonic()
        b.used = now
        self._start(key, b)
        if self._fresh(b, n, now):
            if self._decide(topic, key, b, n):
                return
        await self._wait(topic, key, b, n, deadline)

    def estimate(self, key: str) -> int:
        """key's backlog as this producer knows it (0 when unmeasured):
        read, never waited for (a tenant's least loaded shard)."""
        b = self._streams.get(key)
        return b.estimate() if b is not None and b.measured else 0

    def _fresh(self, b: _Stream, n: int, now: float) -> bool:
        if b.measured == 0 or now - b.measured >= STALE:
            return False
        if self.policy != DROP_OLDEST and b.reserved - b.base + n > self.slack and n <= self.slack:
            self._kick(b)
            return False
        return True

    def _decide(self, topic: str, key: str, b: _Stream, n: int, waited: float = 0.0) -> bool:
        est = b.estimate() + n
        if est <= self.limit:
            b.reserved += n
            return True
        if self.policy == DROP_OLDEST:
            b.reserved += n
            self._dropped(key, b, min(n, est - self.limit))
            return True
        if self.policy == REJECT:
            self.stats.backlog_full += 1
            raise BacklogFull(topic, est - n, self.limit, waited)
        return False

    async def _wait(self, topic: str, key: str, b: _Stream, n: int, deadline: float | None) -> None:
        b.waiting += 1
        start = time.monotonic()
        end = deadline if deadline is not None else (start + self.max_wait if self.max_wait > 0 else None)
        counted = False
        try:
            while True:
                if self._closed:
                    raise Closed("producer closed")
                self._start(key, b)
                if b.off:
                    return
                now = time.monotonic()
                if self._fresh(b, n, now):
                    if self._decide(topic, key, b, n, now - start):
                        return
                    if not counted:
                        counted = True
                        self.stats.backlog_waits += 1
                if end is not None and now >= end:
                    self.stats.backlog_full += 1
                    if deadline is not None:
                        self.stats.timeouts += 1
                        raise BusTimeout(f"write to {topic!r}: the deadline passed while waiting for room in the backlog "
                                         f"({b.estimate()} of {self.limit})")
                    raise BacklogFull(topic, b.estimate(), self.limit, now - start)
                if b.changed is None:
                    b.changed = asyncio.Event()
                ev = b.changed
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ev.wait(), None if end is None else max(end - now, 0.001))
        finally:
            b.waiting -= 1

    def _dropped(self, key: str, b: _Stream, n: int) -> None:
        if n <= 0:
            return
        self.stats.backlog_dropped += n
        now = time.monotonic()
        if now - b.drop_warn >= DROP_WARN_EVERY:
            b.drop_warn = now
            log.warning("backlog of %s past stream_max_len (%d of %d): writes trim entries no worker has finished "
                        "(backpressure drop-oldest; %d dropped so far)", key, b.estimate(), self.limit, self.stats.backlog_dropped)

    def _kick(self, b: _Stream) -> None:
        if b.kick is None:
            b.kick = asyncio.Event()
        b.kick.set()

    @staticmethod
    def _broadcast(b: _Stream) -> None:
        if b.changed is not None:
            b.changed.set()
            b.changed = None

    def _start(self, key: str, b: _Stream) -> None:
        if b.task is None and not self._closed:
            b.task = asyncio.ensure_future(self._monitor(key, b))

    async def close(self) -> None:
        self._closed = True
        tasks = [b.task for b in self._streams.values() if b.task is not None]
        for t in tasks:
            t.cancel()
        for b in self._streams.values():
            self._broadcast(b)
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def _monitor(self, key: str, b: _Stream) -> None:
        prev, prev_at = -1, 0.0
        try:
            while not self._closed:
                s0 = b.reserved
                try:
                    u = await asyncio.wait_for(self._measure(key), MEASURE_TIMEOUT)
                    err: BaseException | None = None
                except Exception as e:  # noqa: BLE001 - whatever failed, writes must not wait on a dead monitor
                    u, err = 0, e
                now = time.monotonic()
                if err is not None and _perm(err):
                    log.warning("cannot measure the backlog of %s: no backpressure for it (grant the producer role of this "
                                "release: bus-worker acl): %s", key, err)
                    b.off = True
                    return
                if err is not None:
                    # Redis did not answer: the writes will tell their callers.
                    b.measured = now
                    interval = 0.1
                else:
                    b.offset, b.base, b.measured = u - s0, s0, now
                    interval = self._next(b, u, prev, now - prev_at)
                    prev, prev_at = u, now
                self._broadcast(b)
                if b.waiting > 0:
                    interval = FAST_POLL
                elif now - b.used > MONITOR_IDLE:
                    return
                if b.kick is None:
                    b.kick = asyncio.Event()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(b.kick.wait(), interval)
                b.kick.clear()
        finally:
            b.task = None
            self._broadcast(b)

    def _next(self, b: _Stream, u: int, prev: int, dt: float) -> float:
        head = self.limit - b.estimate()
        if head <= 0:
            return FAST_POLL
        if prev >= 0 and u > prev and dt > 0:
            per_sec = (u - prev) / dt
            return float(min(max(head / per_sec / 4, FAST_POLL), SLOW_POLL))
        if head < self.limit // 2:
            return 0.1
        return SLOW_POLL

    async def _measure(self, key: str) -> int:
        """The most entries any group of key has not finished (Go:
        redisx.Backlog.Unfinished)."""
        r = self._r()
        length, groups = await asyncio.gather(r.xlen(key), xinfo(r, "GROUPS", key), return_exceptions=True)
        if isinstance(length, BaseException):
            raise length
        if isinstance(groups, ResponseError) and "no such key" in str(groups).lower():
            return 0
        if isinstance(groups, BaseException):
            raise groups
        n_len: int = int(length)
        if n_len < 0 or not isinstance(groups, list):
            raise ValueError("XLEN / XINFO GROUPS: malformed reply")
        if not groups:
            return n_len
        most = 0
        for g in groups:
            lag, pending = _field(g, "lag"), _field(g, "pending")
            if pending is None or int(pending) < 0:
                raise ValueError("XINFO GROUPS: malformed pending count")
            n = n_len if lag is None or int(lag) < 0 else min(int(lag) + int(pending), n_len)
            most = max(most, int(n))
        return int(most)


def _field(g: Any, name: str) -> Any:
    if not isinstance(g, dict):
        raise ValueError("XINFO GROUPS: malformed reply")
    v = g.get(name, g.get(name.encode()))
    return v


def _perm(e: BaseException) -> bool:
    return isinstance(e, NoPermissionError) or (isinstance(e, ResponseError) and str(e).startswith("NOPERM"))
