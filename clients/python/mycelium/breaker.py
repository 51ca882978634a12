"""The producer's circuit breaker, as the Go breaker package behaves
(closed, open, half-open; tripping on the failure ratio and the slow-call
ratio over a rolling window of buckets): when a topic's Redis or worker pool
stops answering, calls fail at once with :class:`BreakerOpen` instead of
each waiting out its timeout. One event loop runs a producer, so no lock is
needed: the state is plain fields."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .errors import InvalidConfig, MyceliumError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class BreakerOpen(MyceliumError):
    """The topic's circuit breaker is open: the call failed at once, nothing
    was written (Go: bus.ErrBreakerOpen)."""


@dataclass(frozen=True)
class BreakerConfig:
    """The Go breaker.Config, in seconds; the defaults are Go's.

    ``remote_errors_trip``: handler errors count as failures too (by default
    only timeouts and Redis errors do: a worker answering with an error is a
    worker that answers)."""

    window: float = 10.0
    buckets: int = 10
    min_calls: int = 20
    failure_ratio: float = 0.5
    slow_call: float = 0.0  # 0: slow calls do not trip it
    slow_ratio: float = 0.8
    open_timeout: float = 5.0
    max_open_timeout: float = 0.0  # above open_timeout: doubled after each failed probe round, up to this
    jitter: float = 0.0
    half_open_probes: int = 5
    remote_errors_trip: bool = False

    def check(self) -> None:
        if min(self.window, self.open_timeout, self.slow_call, self.max_open_timeout) < 0 or self.window == 0 or self.open_timeout == 0:
            raise InvalidConfig("breaker: window and open_timeout must be positive, durations not negative")
        if self.buckets < 1 or self.min_calls < 1 or not 1 <= self.half_open_probes <= 1024:
            raise InvalidConfig("breaker: buckets and min_calls must be positive, half_open_probes 1 to 1024")
        if not 0 < self.failure_ratio <= 1 or not 0 < self.slow_ratio <= 1 or not 0 <= self.jitter <= 1:
            raise InvalidConfig("breaker: ratios must be in (0, 1], jitter in [0, 1]")


class Breaker:
    """One topic's breaker."""

    def __init__(self, cfg: BreakerConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.state = CLOSED
        self._width = cfg.window / cfg.buckets
        n = cfg.buckets
        self._calls, self._fails, self._slow = [0] * n, [0] * n, [0] * n
        self._slot = [0] * n  # which time slice each bucket holds
        self._open_until = 0.0
        self._open_for = cfg.open_timeout
        self._probes = 0  # half-open: admitted, not yet reported
        self._probes_ok = 0
        self.transitions = 0

    def allow(self) -> bool:
        """Whether a call may go now (half-open: a probe is admitted)."""
        if self.state == CLOSED:
            return True
        now = time.monotonic()
        if self.state == OPEN:
            if now < self._open_until:
                return False
            self._to(HALF_OPEN)
            self._probes = self._probes_ok = 0
        if self._probes >= self.cfg.half_open_probes:
            return False
        self._probes += 1
        return True

    def done(self, failed: bool | None, seconds: float = 0.0) -> None:
        """Reports an admitted call's outcome: True a failure, False a
        success, None ignored (the caller cancelled, no responders...)."""
        if failed is None:
            if self.state == HALF_OPEN:
                self._probes = max(self._probes - 1, 0)
            return
        slow = self.cfg.slow_call > 0 and seconds >= self.cfg.slow_call
        if self.state == HALF_OPEN:
            if failed or slow:
                self._trip(grow=True)
                return
            self._probes_ok += 1
            if self._probes_ok >= self.cfg.half_open_probes:
                self._to(CLOSED)
                self._reset()
                self._open_for = self.cfg.open_timeout
            return
        if self.state != CLOSED:
            return
        i = self._bucket()
        self._calls[i] += 1
        self._fails[i] += failed
        self._slow[i] += slow
        if not failed and not slow:
            return
        calls = sum(self._calls)
        if calls < self.cfg.min_calls:
            return
        if sum(self._fails) / calls >= self.cfg.failure_ratio or (self.cfg.slow_call > 0 and sum(self._slow) / calls >= self.cfg.slow_ratio):
            self._trip(grow=False)

    def _bucket(self) -> int:
        s = int(time.monotonic() / self._width)
        n = len(self._calls)
        i = s % n
        if self._slot[i] != s:
            for j in range(n):  # clear the slices that fell out of the window
                if s - self._slot[j] >= n:
                    self._calls[j] = self._fails[j] = self._slow[j] = 0
                    self._slot[j] = s
            self._calls[i] = self._fails[i] = self._slow[i] = 0
            self._slot[i] = s
        return i

    def _trip(self, grow: bool) -> None:
        if grow and self.cfg.max_open_timeout > self.cfg.open_timeout:
            self._open_for = min(self._open_for * 2, self.cfg.max_open_timeout)
        d = self._open_for * (1 + random.uniform(0, self.cfg.jitter))
        self._open_until = time.monotonic() + d
        self._to(OPEN)
        self._reset()

    def _reset(self) -> None:
        n = len(self._calls)
        self._calls, self._fails, self._slow = [0] * n, [0] * n, [0] * n

    def _to(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.transitions += 1
