"""The Python client on Redis Cluster (the repository's rig: 3 masters, 3
replicas) and behind Sentinel, with the same URL forms as Go: partitions
on several slots, requests and events, streams, the cache, dead letters,
delayed retries and events, and Go callers of a Python worker there."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import pytest

from mycelium import CacheConfig, Consumer, Message, Producer, RetryAfter
from test_conformance import eventually, go_cli

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def worker(url: str, topic: str, handler, **kw) -> AsyncIterator[Consumer]:  # type: ignore[no-untyped-def]
    async with Consumer(url, topic, handler, claim_idle=4, block=1, **kw) as c:
        yield c


async def test_cluster_partitions_streams_cache_retries(cluster_url: str, bus_worker: str, topic: str) -> None:
    code, _, err = await go_cli(bus_worker, "topic", "create", "--redis", cluster_url, "--topic", topic, "--partitions", "3")
    assert code == 0, err
    calls = 0
    events: asyncio.Queue[bytes] = asyncio.Queue()

    async def gen(m: Message) -> AsyncIterator[bytes]:
        nonlocal calls
        calls += 1
        if not m.request:
            await events.put(m.payload)
            return
        if m.payload == b"stream":
            for i in range(5):
                yield b"t%d" % i
            return
        if m.payload == b"retry" and m.attempt == 1:
            raise RetryAfter(0.2)
        yield b"re:" + m.payload + b"@%d" % m.partition

    async with worker(cluster_url, topic, gen, max_deliveries=2) as c:
        assert len(c._parts) == 3
        async with Producer(cluster_url, cache={topic: CacheConfig(ttl=30)}) as p:
            outs = await asyncio.gather(*(p.request(topic, b"q%d" % i, timeout=20, cache=False) for i in range(30)))
            parts = {o.rsplit(b"@", 1)[1] for o in outs}
            assert parts == {b"0", b"1", b"2"}, outs  # every partition (every slot) served
            assert [c async for c in p.stream(topic, b"stream", timeout=20)] == [b"t%d" % i for i in range(5)]
            # the cache on a cluster: three identical requests, one handler call
            before = calls
            cached = await asyncio.gather(*(p.request(topic, b"same", timeout=20) for _ in range(3)))
            assert len(set(cached)) == 1 and calls == before + 1
            async with Producer(cluster_url, cache={topic: CacheConfig(ttl=30)}) as p2:
                assert await p2.request(topic, b"same", timeout=20) == cached[0]
                assert p2.stats.cache_hits_shared == 1
            assert (await p.request(topic, b"retry", timeout=20, cache=False)).startswith(b"re:retry")
            ids = await p.publish_batch(topic, [b"e1", b"e2", b"e3"])
            assert len(ids) == 3
            await p.publish(topic, b"late", after=0.3)
            got = {await asyncio.wait_for(events.get(), 20) for _ in range(4)}
            assert got == {b"e1", b"e2", b"e3", b"late"}
            replies = await p.request_batch(topic, [b"b1", b"b2"], timeout=20)
            assert [r.payload.split(b"@")[0] for r in replies] == [b"re:b1", b"re:b2"]
        # a Go caller of the Python worker on the cluster
        code, out, err = await go_cli(bus_worker, "request", "--redis", cluster_url, "--topic", topic, "--data", "go", "--timeout", "20s")
        assert code == 0 and out.startswith(b"re:go@"), err


async def test_cluster_dead_letters(cluster_url: str, topic: str) -> None:
    async def failing(m: Message) -> bytes:
        raise ValueError("always")

    async with worker(cluster_url, topic, failing, max_deliveries=1) as c, Producer(cluster_url) as p:
        await p.publish(topic, b"poison")

        async def dead() -> bool:
            return c.stats.dead_lettered == 1
        await eventually(dead, 20, "the dead letter")
        assert await p.redis.xlen(f"myc:{{{topic}}}:dlq") == 1


async def test_sentinel_requests_events_and_streams(sentinel_url: str, bus_worker: str, topic: str) -> None:
    async def gen(m: Message) -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"s%d" % i

    async with worker(sentinel_url, topic, gen), Producer(sentinel_url) as p:
        assert await p.request(topic, b"x", timeout=20) == b"s0s1s2"
        assert [c async for c in p.stream(topic, b"x", timeout=20)] == [b"s0", b"s1", b"s2"]
        code, out, err = await go_cli(bus_worker, "request", "--redis", sentinel_url, "--topic", topic, "--data", "go", "--timeout", "20s")
        assert code == 0 and out.strip() == b"s0s1s2", err


async def test_cluster_limits_and_backpressure(cluster_url: str, bus_worker: str, topic: str) -> None:
    """A partitioned topic on the cluster: a concurrency limit of 2 holds
    across two Python workers (the limiter's keys share the topic's slot,
    the partitions live on others), and a producer with a cap of 60 waits
    for room instead of trimming unread entries."""
    code, _, err = await go_cli(bus_worker, "topic", "create", "--redis", cluster_url, "--topic", topic, "--partitions", "3")
    assert code == 0, err
    code, _, err = await go_cli(bus_worker, "limit", "set", "--redis", cluster_url, "--topic", topic, "--concurrency", "2")
    assert code == 0, err
    now = most = 0
    seen: set[bytes] = set()

    async def h(m: Message) -> None:
        nonlocal now, most
        now += 1
        most = max(most, now)
        await asyncio.sleep(0.01)
        now -= 1
        seen.add(m.payload)

    async with worker(cluster_url, topic, h, concurrency=4), worker(cluster_url, topic, h, concurrency=4):
        async with Producer(cluster_url, stream_max_len=60) as p:
            await asyncio.gather(*(p.publish(topic, b"%d" % i) for i in range(300)))

        async def done() -> bool:
            return len(seen) >= 300

        await eventually(done, 60, "300 events handled")
    assert most <= 2, most
    assert len(seen) == 300
