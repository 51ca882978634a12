"""The producer's side of the response cache (docs/cache.md): what counts as
the same request (the digest), the local tier (answers kept in this
process's memory, bounded by bytes and time), and the flights of this
process's cached requests (identical requests in flight share one answer)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

#: how long a stored answer is kept in Redis unless the worker allows less
#: (Go: producer.DefaultCacheTTL)
DEFAULT_TTL = 300.0
#: how long this process keeps an answer in memory (Go: DefaultLocalTTL)
DEFAULT_LOCAL_TTL = 60.0
#: the local tier's bound (Go: producer.DefaultLocalCacheBytes)
DEFAULT_LOCAL_BYTES = 64 << 20
#: after a flight's leader deadline, how long its joined callers wait before
#: asking again themselves (Go: takeoverGrace)
TAKEOVER_GRACE = 0.1
#: requests that may join one flight (Go: redisx.MaxFlightWaiters)
MAX_FLIGHT_WAITERS = 10_000
#: how often a producer serving local hits re-reads a topic's epoch
META_REFRESH = 1.0


@dataclass(frozen=True)
class CacheConfig:
    """A cached topic's settings (Go: producer.CacheConfig).

    ``ttl``: how long an answer is stored in Redis (the shared tier), unless
    the worker or its handler allows less. ``local_ttl``: how long this
    process keeps an answer in memory, never longer than the shared entry
    lives; 0 means min(ttl, 60 s), negative no local tier for the topic."""

    ttl: float = DEFAULT_TTL
    local_ttl: float = 0.0

    def resolved(self) -> "CacheConfig":
        if self.ttl <= 0 or self.ttl < 0.001:
            raise ValueError("cache ttl must be at least 1 ms")
        local = self.local_ttl
        if local == 0:
            local = min(self.ttl, DEFAULT_LOCAL_TTL)
        return CacheConfig(self.ttl, min(local, self.ttl))


def digest(payload: bytes, key: str | bytes | None) -> str:
    """The first 128 bits of SHA-256 over a domain byte and the payload
    (``p``) or the caller's cache key (``k``), as 32 hex digits
    (bus.PayloadDigest, bus.KeyDigest)."""
    if key is not None:
        data = b"k" + (key.encode() if isinstance(key, str) else bytes(key))
    else:
        data = b"p" + bytes(payload)
    return hashlib.sha256(data).digest()[:16].hex()


def hash_partition(h: str, n: int) -> int:
    """The partition of a cache hash: its first 4 bytes, big-endian, mod n
    (one entry, one partition: its marker and answer share a hash tag)."""
    return int(h[:8], 16) % n


@dataclass
class TopicCache:
    cfg: CacheConfig
    gen: int = 0
    epoch: int = 0
    meta_at: float = 0.0  # monotonic time of the last reading
    refreshing: bool = False


@dataclass
class _Local:
    payload: bytes
    made: float  # monotonic time it was answered (its age at that time subtracted)
    expires: float  # monotonic
    entry: str


class LocalTier:
    """Answers kept in memory, least recently used out first, bounded by
    their bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._m: collections.OrderedDict[tuple[str, int, str], _Local] = collections.OrderedDict()
        self.bytes = 0
        self.evicted = 0

    def get(self, key: tuple[str, int, str]) -> _Local | None:
        e = self._m.get(key)
        if e is None:
            return None
        if time.monotonic() >= e.expires:
            self._drop(key)
            return None
        self._m.move_to_end(key)
        return e

    def put(self, key: tuple[str, int, str], payload: bytes, age: float, ttl: float, entry: str) -> None:
        size = len(payload) + 64
        if ttl <= 0 or size > self.max_bytes:
            return
        if key in self._m:
            self._drop(key)
        now = time.monotonic()
        self._m[key] = _Local(payload, now - age, now + ttl, entry)
        self.bytes += size
        while self.bytes > self.max_bytes and self._m:
            k = next(iter(self._m))
            self._drop(k)
            self.evicted += 1

    def _drop(self, key: tuple[str, int, str]) -> None:
        e = self._m.pop(key)
        self.bytes -= len(e.payload) + 64

    def __len__(self) -> int:
        return len(self._m)


@dataclass
class Flight:
    """One cached request of this process in flight, shared by every
    identical one."""

    done: asyncio.Future[Any]
    refs: int = 1
    entry: str = ""
    leader: float = 0.0  # the deadline (unix s) of the request it waits for; 0: unknown
    source: str = ""
    age: float = 0.0  # a stored answer's age when it came from Redis
    waiters: list[Any] = field(default_factory=list)
