"""Warnings about entries, rate-limited as the Go worker's are: at most
``BURST`` lines per ``PERIOD`` seconds; the first line after a quiet
stretch says how many were left out. Counters count every one."""

from __future__ import annotations

import logging
import time
from typing import Any

BURST = 10
PERIOD = 10.0


class WarnLimiter:
    def __init__(self, log: logging.Logger, burst: int = BURST, period: float = PERIOD) -> None:
        self.log = log
        self._burst, self._period = burst, period
        self._start = -1e18
        self._n = 0
        self.suppressed = 0

    def allow(self) -> tuple[bool, int]:
        now = time.monotonic()
        if now - self._start >= self._period:
            self._start, self._n = now, 0
        if self._n >= self._burst:
            self.suppressed += 1
            return False, 0
        self._n += 1
        s, self.suppressed = self.suppressed, 0
        return True, s

    def warn(self, msg: str, *args: Any, exc: BaseException | None = None) -> None:
        if not self.log.isEnabledFor(logging.WARNING):
            return
        ok, s = self.allow()
        if not ok:
            return
        if s:
            msg += " (%d similar lines suppressed)"
            args = (*args, s)
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None and exc.__traceback__ is not None else None
        self.log.warning(msg, *args, exc_info=exc_info)
