"""Fleet-wide flow control for the Python worker: the Go consumer's limiter
(consumer/limiter.go, docs/flow-control.md) over the same functions
(``permit``, ``permitdone``, ``startcost``, ``pause``) and keys, so Python
and Go workers of one topic share its rate, token budget, concurrency
leases and pauses.

The worker asks for permits before it reads and reads only what it was
granted; a topic without limits is answered from memory for a second
between checks. Concurrency leases are held per consumer name: whenever
the worker holds more than it has handlers running (and a read is
filling), the excess goes back, on the flusher task (or in the waiting
reader's next permit call). Leases are renewed every ``lease_ttl / 3`` and
lapse ``lease_ttl`` after the last renewal, so a killed worker's leases
return within ``claim_idle``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._log import WarnLimiter
from .errors import PermissionDenied
from .keys import Keys
from .scripts import FunctionsNotLoaded, Scripts

log = logging.getLogger("mycelium.consumer")

#: how long a topic found without limits is answered from memory
RECHECK = 1.0
#: how soon a worker waiting for a lease asks again, doubling up to the max
LEASE_POLL, LEASE_POLL_MAX = 0.01, 0.1
#: the header carrying a message's estimated cost (Go: bus.CostHeader)
COST_HEADER = "myc-cost"
#: the largest count of a limit (Go: redisx.MaxLimit; Lua's doubles are exact to 2^53)
MAX_LIMIT = 1 << 40
_FIELDS = ("limit_rate", "limit_rate_ms", "limit_burst", "limit_tokens", "limit_tokens_ms", "limit_tokens_burst",
           "limit_concurrency", "paused_until")


@dataclass
class Grant:
    """Permits a read may use: n of them; leased (holding concurrency
    leases) or timed (a rate or token budget spent them when granted): then
    the read must not block holding them."""

    n: int = 0
    leased: bool = False
    timed: bool = False
    charged: int = 0  # tokens charged per permit (the average cost), given back in filled

    @property
    def now(self) -> bool:
        return self.timed or self.leased


def estimated_cost(headers: dict[str, str]) -> int:
    """A message's estimated cost from its headers (0: none, or not a count)."""
    s = headers.get(COST_HEADER)
    if s is None or len(s) > 13 or not s.isascii() or not s.isdigit():
        return 0
    n = int(s)
    return n if n <= MAX_LIMIT else 0


class Limiter:
    def __init__(self, redis: Any, scripts: Scripts, keys: Keys, topic: str, name: str, lease_ttl: float,
                 in_flight: Callable[[], int], warn: WarnLimiter, stats: Any) -> None:
        t = keys.topic(topic)
        self._r, self._scripts, self._topic, self._name = redis, scripts, topic, name
        self._meta, self._ctl = keys.meta(topic), keys.control(topic)
        self._keys = [self._meta, t + ":lim:rate", t + ":lim:tokens", t + ":lim:leases", t + ":lim:expiry"]
        self._ttl_ms = max(int(lease_ttl * 1000), 1)
        self._in_flight = in_flight
        self._warn, self.stats = warn, stats
        self.active = False  # the last answer said limited (or paused)
        self._checked = -1e18  # monotonic time of the last answer
        self.paused_until = 0  # unix ms (Redis's clock) the topic is paused until, as last heard; 0: not paused
        self._hint = False  # a pause notice was heard: read the pause before routing entries
        self._no_lib = self._outage = False
        self.held = 0  # concurrency leases this consumer holds
        self._reading = 0  # leased permits a read is filling now
        self._avg_cost = 0
        self._per_permit = 0
        self._wait_start = 0.0
        self._poll = LEASE_POLL
        self._starved = False
        self._release = self._unused = self._tokens = 0
        self._kick = asyncio.Event()
        self._freed = asyncio.Event()

    # -- permits ---------------------------------------------------------

    async def take(self, want: int) -> tuple[Grant, float]:
        """Asks once for up to want permits: a Grant with some, or an empty
        one and how long to wait (seconds, holding no slot) before asking
        again. Raises FunctionsNotLoaded for a limited topic whose functions
        are not loaded (the worker cannot keep its limits)."""
        now = time.monotonic()
        if not self.active and now - self._checked < RECHECK:
            return Grant(want), 0.0
        rel, self._release = self._release, 0
        try:
            out = await self._scripts.call("permit", self._keys, [self._name, want, self._ttl_ms, max(self._avg_cost, 1), rel])
            p = _permit(out, want)
        except asyncio.CancelledError:
            self._release += rel  # the stop's close gives them back
            raise
        except FunctionsNotLoaded:
            self._release += rel
            if await self._unlimited():
                if not self._no_lib:
                    self._no_lib = True
                    log.warning("worker of %s: the bus's functions are not loaded: reading without permits while the topic has no limits", self._topic)
                self._checked, self.active = now, False
                return Grant(want), 0.0
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            self._release += rel
            if rel:
                self._kick.set()
            # Redis did not answer: the read meets the same outage and backs
            # off; no limit can be kept meanwhile, so none is assumed.
            if self.active and not self._outage:
                self._outage = True
                log.warning("worker of %s: asking for permits failed: reading without them until Redis answers: %s", self._topic, e)
            return Grant(want), 0.0
        except RedisError as e:
            self._release += rel
            if _perm(e):  # this user may not run the limiter: it cannot keep the topic's limits (Go stops Run too)
                raise PermissionDenied(f"worker of {self._topic}: the topic's limits cannot be kept: {e} "
                                       "(grant the worker role of this release: bus-worker acl)") from None
            # Refused or answered out of its contract: limits cannot be
            # checked, so none is passed: read nothing, ask again soon.
            self._warn.warn("worker of %s: the permit function failed (reading nothing until it answers): %s", self._topic, e)
            return Grant(), RECHECK
        granted, wait_ms, limited, paused, leased, timed, charged = p
        self._outage = False
        self._checked, self.active = now, limited
        if paused:
            self.paused_until = paused
        self._starved = granted == 0
        if granted > 0:
            if limited:
                self.stats.permits_granted += granted
            if self._wait_start:
                self.stats.permit_wait_seconds += now - self._wait_start
                self._wait_start = 0.0
            self._poll = LEASE_POLL
            if leased:
                self._reading += granted
                self.held += granted
            self._per_permit = charged
            return Grant(granted, leased, timed, charged), 0.0
        if not self._wait_start:
            self._wait_start = now
            self.stats.permit_waits += 1
        if wait_ms < 0:
            d = max(self._poll, LEASE_POLL)
            self._poll = min(2 * d, LEASE_POLL_MAX)
        else:
            d = wait_ms / 1000
        return Grant(), min(d, RECHECK)  # a changed limit or a lifted pause is seen within a second

    async def grant(self, want: int, stopping: Callable[[], bool]) -> Grant:
        """Waits for permits (up to want) until stopping says so: for a
        caller holding no handler slot while it waits (the reclaimer)."""
        while not stopping():
            g, wait = await self.take(want)
            if g.n > 0:
                return g
            await self.sleep(wait)
        return Grant()

    async def _unlimited(self) -> bool:
        with contextlib.suppress(RedisError, OSError, ValueError):
            vals = await self._r.hmget(self._meta, list(_FIELDS))
            set_ = any(v is not None and int(v) > 0 for v in vals[:7])
            paused = vals[7] is not None and int(vals[7]) > time.time() * 1000
            return not set_ and not paused
        return False

    async def sleep(self, d: float) -> None:
        """Waits d seconds, or until this worker frees a lease (its waiting
        reader then asks at once, giving it back and taking it in one call;
        a lease freed since the last wake counts)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._freed.wait(), d)
        self._freed.clear()

    def filled(self, g: Grant, got: int) -> None:
        """Ends a read made with g that brought got entries (already
        running): unused rate permits go back, and leases beyond what runs."""
        if not self.active and not g.leased:
            return
        if g.leased:
            self._reading -= g.n
        if got < g.n or g.charged > 0:
            self._unused += g.n - got
            self._tokens -= g.n * g.charged  # the entries charge their own estimates (start)
            self._kick.set()
        self.settle()

    def settle(self) -> None:
        """Gives back the leases held beyond the handlers running and the
        permits a read is filling; called wherever a handler ends."""
        if self.held <= 0:
            return
        excess = self.held - self._in_flight() - self._reading
        if excess <= 0:
            return
        self.held -= excess
        self._release += excess
        if self._starved:
            self._freed.set()  # the waiting reader gives them back in its call
        else:
            self._kick.set()

    # -- token costs -----------------------------------------------------

    async def start(self, cost: int) -> None:
        """Charges a message's estimated cost as its handler starts: on the
        next flush, or, when it is over twice what its permit charged (a
        large prompt), at once, once the budget has room for it."""
        if cost <= 0 or not self.active:
            return
        self.observe(cost)
        per = self._per_permit
        if per > 0 and cost > 2 * per:
            while True:
                try:
                    ms = int(await self._scripts.call("startcost", [self._meta, self._keys[2]], [cost]))
                except (RedisError, OSError, FunctionsNotLoaded, ValueError, TypeError):
                    break  # charged on the next flush
                if ms <= 0:
                    return
                await asyncio.sleep(min(ms / 1000, RECHECK))
        self.charge(cost)

    def charge(self, n: int) -> None:
        """Charges n tokens (negative: gives them back), the total kept
        within what Lua counts exactly."""
        if n == 0 or not self.active:
            return
        self._tokens = max(min(self._tokens + n, MAX_LIMIT), -MAX_LIMIT)
        self._kick.set()

    def observe(self, cost: int) -> None:
        """Adds a cost to the moving average that sizes a budget's grants."""
        if cost > 0 and self.active:
            a = self._avg_cost
            self._avg_cost = min(max(a - a // 8 + min(cost, MAX_LIMIT) // 8, 1), MAX_LIMIT)

    # -- the flusher ------------------------------------------------------

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Gives back releases, unused permits and charges as they gather,
        renews held leases every lease TTL / 3; ends when stopping."""
        every = max(self._ttl_ms / 3000, 0.1)
        next_renew = time.monotonic() + every
        while not stopping():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), max(next_renew - time.monotonic(), 0))
            self._kick.clear()
            renew = time.monotonic() >= next_renew
            if renew:
                next_renew = time.monotonic() + every
            if not await self.flush(renew and self.held > 0):
                await asyncio.sleep(0.1)  # Redis did not answer: gather more, try again

    async def flush(self, renew: bool = False) -> bool:
        rel, unused, tokens = self._release, self._unused, self._tokens
        if rel == 0 and unused == 0 and tokens == 0 and not renew:
            return True
        self._release = self._unused = self._tokens = 0
        try:
            await self._scripts.call("permitdone", self._keys, [self._name, rel, unused, tokens, self._ttl_ms])
        except asyncio.CancelledError:
            self._release += rel
            self._unused += unused
            self._tokens += tokens
            raise
        except (RedisError, OSError, FunctionsNotLoaded) as e:
            self._release += rel
            self._unused += unused
            self._tokens += tokens
            self._warn.warn("worker of %s: giving back permits failed (tried again): %s", self._topic, e)
            return False
        return True

    async def close(self) -> None:
        """Gives back every lease this worker holds (its handlers ended):
        all it has in Redis, whatever its count says (a permit call cut off
        by the stop may have taken leases it never heard of)."""
        if self.active:
            self._release = MAX_LIMIT  # permitdone removes the consumer's entry
        self.held = 0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), 2)

    # -- pauses -----------------------------------------------------------

    def note_pause(self) -> None:
        """A pause notice on the control stream (a hint, never trusted for
        its time: a producer may write that stream)."""
        self._hint = True
        self.active = True

    async def hold_while_paused(self, stopping: Callable[[], bool]) -> bool:
        """Waits, before entries just read are started, until the topic's
        pause (as Redis keeps it) is over; False when stopping meanwhile."""
        started = 0.0
        try:
            while True:
                if self._hint or started:
                    self._hint = False
                    with contextlib.suppress(RedisError, OSError, ValueError, TypeError):
                        v = await self._r.hget(self._meta, "paused_until")
                        self.paused_until = int(v) if v is not None else 0
                left = self.paused_until / 1000 - time.time()
                if self.paused_until == 0 or left <= 0:
                    return True
                if not started:
                    started = time.monotonic()
                    self.stats.permit_waits += 1
                await asyncio.sleep(min(left, RECHECK))
                if stopping():
                    return False
        finally:
            if started:
                self.stats.permit_wait_seconds += time.monotonic() - started

    async def pause(self, seconds: float) -> None:
        """Pauses the topic for every worker (RetryAfter(pause=True))."""
        try:
            until = int(await self._scripts.call("pause", [self._meta, self._ctl], [max(int(seconds * 1000), 1), 10_000]))
        except (RedisError, OSError, FunctionsNotLoaded, ValueError, TypeError) as e:
            self._warn.warn("worker of %s: could not pause the topic (the message is retried all the same): %s", self._topic, e)
            return
        self.stats.pauses += 1
        self.paused_until = until
        self.active = True
        log.info("worker of %s: paused the topic for every worker for %.3gs (a handler asked)", self._topic, seconds)


def _permit(out: Any, want: int) -> tuple[int, int, bool, int, bool, bool, int]:
    """Validates the permit function's reply (see internal/redisx/limits.go)."""
    if not isinstance(out, list) or len(out) != 7:
        raise ResponseError("permit function: unexpected reply")
    v = []
    for x in out:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ResponseError("permit function: malformed reply")
        v.append(int(x))
    if not 0 <= v[0] <= want:
        raise ResponseError("permit function: granted out of range")
    return v[0], v[1], v[2] != 0, max(v[3], 0), v[4] != 0, v[5] != 0, max(v[6], 0)


def _perm(e: BaseException) -> bool:
    return isinstance(e, NoPermissionError) or (isinstance(e, ResponseError) and str(e).startswith("NOPERM"))
