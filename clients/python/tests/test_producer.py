"""The Python producer next to the Go one: streamed replies, the response
cache (mixed Go and Python callers coalescing onto either worker), request
batches, delayed events, and its behaviour when Redis or its reply reader
fails (issue 26)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from typing import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from conftest import free_port, start_redis
from mycelium import CacheConfig, Message, Producer, RemoteError, codec
from mycelium.keys import partition
from mycelium.errors import BusTimeout, InvalidConfig, NoResponders, PermissionDenied, StreamBroken, Unavailable
from test_conformance import eventually, go_cli, go_worker, py_worker

pytestmark = pytest.mark.asyncio


# -- streams ---------------------------------------------------------------------


async def test_python_stream_from_a_go_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic, "--handler", "stream:20,5ms"):
        async with Producer(redis_url) as p:
            chunks = [c async for c in p.stream(topic, b"prompt", timeout=20)]
            assert chunks == [b"tok%d " % i for i in range(20)]
            assert p.stats.chunks == 20 and p.stats.streams_broken == 0
            # a plain request gets them as one reply
            assert await p.request(topic, b"x", timeout=20) == b"".join(chunks)


async def test_python_stream_from_a_python_worker_with_a_late_error(redis_url: str, topic: str) -> None:
    async def tokens(m: Message) -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"
        raise RemoteError("context_length", "prompt too long")

    async with py_worker(redis_url, topic, tokens), Producer(redis_url) as p:
        got = []
        with pytest.raises(RemoteError) as ei:
            async for c in p.stream(topic, b"x", timeout=10):
                got.append(c)
        assert got == [b"a", b"b"] and ei.value.code == "context_length"


async def test_closing_a_stream_early_cancels_the_handler(redis_url: str, topic: str) -> None:
    cancelled = asyncio.Event()

    async def endless(m: Message) -> AsyncIterator[bytes]:
        try:
            i = 0
            while True:
                yield b"t%d" % i
                i += 1
                await asyncio.sleep(0.01)
        except (asyncio.CancelledError, GeneratorExit):
            cancelled.set()
            raise

    async with py_worker(redis_url, topic, endless) as c, Producer(redis_url) as p:
        async with contextlib.aclosing(p.stream(topic, b"x", timeout=30)) as s:
            async for chunk in s:
                if chunk == b"t3":
                    break
        await asyncio.wait_for(cancelled.wait(), 10)
        assert p.stats.cancelled == 1

        async def acked() -> bool:
            return c.stats.cancelled == 1
        await eventually(acked, 10, "the worker counted the cancel")


async def test_stream_gap_breaks_the_stream(redis_url: str, topic: str) -> None:
    """A missing chunk (a trimmed reply stream) raises StreamBroken."""
    async with Producer(redis_url) as p:
        from mycelium import codec
        from mycelium.producer import _StreamState, _Waiter

        st = _StreamState(1 << 20)
        w = _Waiter(asyncio.get_running_loop().create_future(), entry="1-1", stream=st)
        p._deliver(w, codec.Envelope(kind=codec.CHUNK, id="x", request_entry="1-1", attempt=1, seq=0, payload=b"a"))
        p._deliver(w, codec.Envelope(kind=codec.CHUNK, id="x", request_entry="1-1", attempt=1, seq=0, payload=b"a"))  # duplicate
        p._deliver(w, codec.Envelope(kind=codec.CHUNK, id="x", request_entry="1-1", attempt=1, seq=2, payload=b"c"))  # gap
        assert st.queue.get_nowait() == b"a"
        assert isinstance(st.queue.get_nowait(), StreamBroken)
        # a later delivery after chunks were read breaks it too
        st2 = _StreamState(1 << 20)
        w2 = _Waiter(asyncio.get_running_loop().create_future(), entry="1-1", stream=st2)
        p._deliver(w2, codec.Envelope(kind=codec.CHUNK, id="x", request_entry="1-1", attempt=1, seq=0, payload=b"a"))
        p._deliver(w2, codec.Envelope(kind=codec.CHUNK, id="x", request_entry="1-1", attempt=2, seq=0, payload=b"a"))
        assert st2.queue.get_nowait() == b"a"
        assert "delivered again" in str(st2.queue.get_nowait())
        # before any chunk, a later delivery is followed
        st3 = _StreamState(1 << 20)
        w3 = _Waiter(asyncio.get_running_loop().create_future(), entry="1-1", stream=st3)
        p._deliver(w3, codec.Envelope(kind=codec.REPLY, id="x", request_entry="1-1", attempt=2, seq=0, payload=b"whole"))
        assert st3.queue.get_nowait() == b"whole" and st3.queue.get_nowait() is None


# -- the response cache ------------------------------------------------------------


async def _mixed_callers(bus_worker: str, redis_url: str, topic: str, started: asyncio.Event | None) -> list[bytes]:
    """A Go caller leads; once it is being handled, a Python caller and
    another Go caller ask the same: all three get the one answer."""
    args = ("request", "--redis", redis_url, "--topic", topic, "--data", "same prompt", "--cache", "--timeout", "20s")
    first = asyncio.ensure_future(go_cli(bus_worker, *args))
    async with Producer(redis_url, cache={topic: CacheConfig(ttl=60)}) as p:
        r = p.redis

        async def flight(n: int) -> bool:
            keys = [k async for k in r.scan_iter(match=f"myc:{{{topic}}}:f:*")]
            return len(keys) == 1 and await r.llen(keys[0]) == n
        await eventually(lambda: flight(1), 20, "the Go leader's flight")
        py = asyncio.ensure_future(p.request(topic, b"same prompt", timeout=20))
        await eventually(lambda: flight(2), 20, "the Python caller joined")
        second = asyncio.ensure_future(go_cli(bus_worker, *args))
        await eventually(lambda: flight(3), 20, "the second Go caller joined")
        if started is not None:
            started.set()
        outs = [(await first)[1].strip(), await py, (await second)[1].strip()]
        assert p.stats.coalesced_remote == 1
        assert await p.request(topic, b"same prompt", timeout=10) == outs[1]  # kept in memory
        assert p.stats.cache_hits_local == 1
    async with Producer(redis_url, cache={topic: CacheConfig(ttl=60)}) as p2:
        # stored: another process gets it from Redis, then from memory
        assert await p2.request(topic, b"same prompt", timeout=10) == outs[1]
        assert await p2.request(topic, b"same prompt", timeout=10) == outs[1]
        assert p2.stats.cache_hits_shared == 1 and p2.stats.cache_hits_local == 1
    return outs


async def test_mixed_cached_callers_coalesce_onto_a_python_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    calls = 0
    release = asyncio.Event()

    async def slow(m: Message) -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        return b"answer"

    async with py_worker(redis_url, topic, slow):
        outs = await _mixed_callers(bus_worker, redis_url, topic, release)
    assert outs == [b"answer"] * 3 and calls == 1


async def test_mixed_cached_callers_coalesce_onto_a_go_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic, "--handler", "sleep:1500ms") as w:
        outs = await _mixed_callers(bus_worker, redis_url, topic, None)
        assert outs == [b"same prompt"] * 3
        assert w.stats()["handled"] == 1


async def test_cache_options_and_local_coalescing(redis_url: str, topic: str) -> None:
    calls = 0

    async def count(m: Message) -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"v%d" % calls

    async with py_worker(redis_url, topic, count), Producer(redis_url, cache={topic: CacheConfig(ttl=60)}) as p:
        outs = await asyncio.gather(*(p.request(topic, b"q", timeout=10) for _ in range(20)))
        assert outs == [b"v1"] * 20 and calls == 1 and p.stats.coalesced_local == 19
        assert await p.request(topic, b"q", timeout=10, no_cache=True) == b"v2"  # asks a worker, stores the new answer
        assert await p.request(topic, b"prompt 1", timeout=10, cache_key="K") == b"v3"
        assert await p.request(topic, b"prompt 2", timeout=10, cache_key="K") == b"v3"  # the caller's key decides
        assert await p.request(topic, b"n", timeout=10, no_store=True) == b"v4"
        assert await p.request(topic, b"n", timeout=10) == b"v5"  # nothing was stored
        assert await p.request(topic, b"q", timeout=10, cache=False) == b"v6"  # the cache bypassed


async def test_cache_flush_reaches_the_local_tier(redis_url: str, bus_worker: str, topic: str) -> None:
    calls = 0

    async def count(m: Message) -> bytes:
        nonlocal calls
        calls += 1
        return b"v%d" % calls

    async with py_worker(redis_url, topic, count), Producer(redis_url, cache={topic: CacheConfig(ttl=60)}) as p:
        assert await p.request(topic, b"q", timeout=10) == b"v1"
        assert await p.request(topic, b"q", timeout=10) == b"v1"  # local
        code, _, err = await go_cli(bus_worker, "cache", "flush", "--redis", redis_url, "--topic", topic)
        assert code == 0, err

        async def fresh() -> bool:
            return await p.request(topic, b"q", timeout=10) == b"v2"
        await eventually(fresh, 5, "the flush reached this process's memory")


# -- batches, delayed events ------------------------------------------------------------


async def test_request_batch_to_a_go_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic):
        async with Producer(redis_url) as p:
            replies = await p.request_batch(topic, [b"a", b"b", b"c"], timeout=20)
            assert [r.payload for r in replies] == [b"a", b"b", b"c"] and all(r.error is None for r in replies)
            assert await p.request_batch(topic, []) == []
    async with Producer(redis_url) as p:
        with pytest.raises(NoResponders):
            await p.request_batch(topic + "-none", [b"a"], timeout=5)


async def test_request_batch_errors_per_request(redis_url: str, topic: str) -> None:
    async def picky(m: Message) -> bytes:
        if m.payload == b"bad":
            raise RemoteError("bad_input", "no")
        return m.payload

    async with py_worker(redis_url, topic, picky), Producer(redis_url) as p:
        replies = await p.request_batch(topic, [b"ok", b"bad"], timeout=10)
        assert replies[0].payload == b"ok" and isinstance(replies[1].error, RemoteError)


async def test_delayed_publish_to_a_go_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic) as w:
        async with Producer(redis_url) as p:
            t0 = time.monotonic()
            did = await p.publish(topic, b"later", after=0.6)
            assert did.startswith("d")
            assert p.stats.delayed == 1
            await eventually(lambda: asyncio.to_thread(lambda: w.stats()["handled"] >= 1), 15, "the Go worker handled it")
            assert time.monotonic() - t0 >= 0.55
            assert await p.publish(topic, b"now", after=0) != did  # not in the future: at once, a stream id
            with pytest.raises(Exception):
                await p.publish(topic, b"x", after=1, at=time.time() + 1)


# -- failures -------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with start_redis() as (port, proc):
        yield f"redis://127.0.0.1:{port}", proc


async def test_outage_is_logged_and_errors_are_mycelium_errors(own_redis: tuple[str, subprocess.Popen[bytes]], topic: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    url, proc = own_redis
    async with py_worker(url, topic, lambda m: _echo(m)) as c, Producer(url) as p:
        assert await p.request(topic, b"x", timeout=10) == b"x"
        with caplog.at_level(logging.WARNING, logger="mycelium.producer"):
            proc.kill()
            proc.wait(10)
            with pytest.raises(Unavailable):
                await p.request(topic, b"y", timeout=5, wait_for_responders=True)
            with pytest.raises(Unavailable):
                await p.publish(topic, b"y")

            async def logged() -> bool:
                return any("reply reader" in r.getMessage() for r in caplog.records)
            await eventually(logged, 10, "the reply reader's outage logged")


async def _echo(m: Message) -> bytes:
    return m.payload


async def test_wrong_password_is_permission_denied(own_redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = own_redis
    p = Producer(url.replace("redis://", "redis://someone:nope@"))
    with pytest.raises(PermissionDenied):
        await p.start()


async def test_a_dead_reply_reader_fails_waiters_at_once_and_restarts(redis_url: str, topic: str) -> None:
    release = asyncio.Event()

    async def slow(m: Message) -> bytes:
        await release.wait()
        return m.payload

    async with py_worker(redis_url, topic, slow), Producer(redis_url) as p:
        call = asyncio.ensure_future(p.request(topic, b"x", timeout=30))

        async def pending() -> bool:
            return p._reader is not None and len(p._waiters) == 1
        await eventually(pending, 10, "the request waiting")
        orig = p._dispatch

        def broken(fields):  # type: ignore[no-untyped-def]
            raise RuntimeError("a reply the reader could not take")
        p._dispatch = broken  # type: ignore[method-assign]
        release.set()
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="reply reader stopped"):
            await call
        assert time.monotonic() - t0 < 10 and p.stats.reader_restarts == 1
        p._dispatch = orig  # type: ignore[method-assign]
        assert await p.request(topic, b"again", timeout=10) == b"again"


# -- the circuit breaker ------------------------------------------------------------------


async def test_breaker_opens_on_timeouts_and_closes_after_probes(redis_url: str, topic: str) -> None:
    """A worker pool that stops answering: after min_calls timeouts the
    breaker opens and calls fail at once with BreakerOpen; after
    open_timeout probes go through and, answered, close it."""
    from mycelium import BreakerConfig, BreakerOpen

    answering = asyncio.Event()

    async def stuck(m: Message) -> bytes:
        await answering.wait()
        return m.payload

    cfg = BreakerConfig(min_calls=4, failure_ratio=0.5, open_timeout=0.5, half_open_probes=2)
    async with py_worker(redis_url, topic, stuck), Producer(redis_url, breaker=cfg) as p:
        for _ in range(4):
            with pytest.raises(BusTimeout):
                await p.request(topic, b"x", timeout=0.2)
        assert p.breaker_state(topic) == "open"
        t0 = time.monotonic()
        with pytest.raises(BreakerOpen):
            await p.request(topic, b"x", timeout=5)
        with pytest.raises(BreakerOpen):
            await p.publish(topic, b"x")
        assert time.monotonic() - t0 < 0.1 and p.stats.breaker_rejected == 2
        answering.set()

        async def closed() -> bool:
            with contextlib.suppress(BreakerOpen):
                assert await p.request(topic, b"probe", timeout=5) == b"probe"
            return p.breaker_state(topic) == "closed"
        await eventually(closed, 10, "the breaker closed after its probes")
        # remote errors do not trip it (a worker that answers is a worker that answers)


async def test_breaker_ignores_remote_errors_and_no_responders(redis_url: str, topic: str) -> None:
    from mycelium import BreakerConfig

    async def refuse(m: Message) -> bytes:
        raise RemoteError("bad_prompt", "no")

    cfg = BreakerConfig(min_calls=2, open_timeout=5)
    async with Producer(redis_url, breaker=cfg) as p:
        for _ in range(3):
            with pytest.raises(NoResponders):
                await p.request(topic, b"x", timeout=1)
        async with py_worker(redis_url, topic, refuse):
            for _ in range(5):
                with pytest.raises(RemoteError):
                    await p.request(topic, b"x", timeout=5)
        assert p.breaker_state(topic) == "closed"


async def test_cli_cached_requests_exit_promptly(redis_url: str, topic: str) -> None:
    """A new user's find: the second `python -m mycelium request --cache`
    (answered from the cache) never exited: closing the producer cancelled
    its reply reader inside redis-py 4.3's connection check, which turned
    the cancellation into a timeout the reader retried forever."""
    import os
    import sys

    from conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    async with py_worker(redis_url, topic, _echo):
        for _ in range(3):
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mycelium", "request", "--redis", redis_url, "--topic", topic,
                                                        "--data", "cc1", "--cache", "--timeout", "3", stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, env=env)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), 20)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0 and out.strip() == b"cc1", err


@pytest.mark.parametrize("pause", [0.0, 0.9, 1.0, 1.05])
async def test_close_after_a_pause_is_prompt(redis_url: str, topic: str, pause: float) -> None:
    async with py_worker(redis_url, topic, _echo):
        p = Producer(redis_url)
        await p.start()
        assert await p.request(topic, b"x", timeout=5) == b"x"
        await asyncio.sleep(pause)
        assert await p.request(topic, b"y", timeout=5) == b"y"
        t0 = time.monotonic()
        await asyncio.wait_for(p.close(), 10)
        assert time.monotonic() - t0 < 4


async def test_publish_once_with_go(redis_url: str, bus_worker: str, topic: str) -> None:
    """Idempotent publishes: Python and Go publishers of one key write one
    entry (the Go library's once function)."""
    async with Producer(redis_url) as p:
        first = await p.publish_once(topic, b"a", "order-7")
        again = await p.publish_once(topic, b"b", "order-7")
        assert not first.duplicate and again.duplicate and again.id == first.id
        assert await p.publish(topic, b"c", idempotency_key="order-7") == first.id
        code, out, err = await go_cli(bus_worker, "publish", "--redis", redis_url, "--topic", topic, "--data", "d", "--idempotency-key", "order-7")
        assert code == 0 and out.strip().decode() == first.id and b"duplicate" in err
        assert await p.redis.xlen(f"myc:{{{topic}}}") == 1
        assert p.stats.duplicates == 2 and p.stats.published == 1


# -- priorities and tenants (docs/scheduling.md) --------------------------------


async def test_shard_set_is_go_s() -> None:
    """The wire contract (Go's producer.ShardSet test table)."""
    from mycelium.producer import shard_set

    assert shard_set("A", 16, 2) == [12, 1]
    assert shard_set("B", 16, 2) == [2, 4]
    assert shard_set("tenant-42", 16, 4) == [5, 8, 1, 7]
    assert shard_set("A", 16, 0) == [12]
    assert sorted(shard_set("A", 3, 9)) == [0, 1, 2]


async def test_priority_and_tenant_route_python_writes(redis_url: str, bus_worker: str, topic: str) -> None:
    code, _, err = await go_cli(bus_worker, "topic", "create", "--redis", redis_url, "--topic", topic, "--priorities", "3")
    assert code == 0, err
    r = aioredis.from_url(redis_url)
    try:
        async with Producer(redis_url) as p:
            await p.publish(topic, b"urgent")
            await p.publish(topic, b"later", priority=2)
            await p.publish(topic, b"beyond", priority=9)  # beyond the topic's levels: its least urgent
            await p.publish_batch(topic, [b"b1", b"b2"], priority=1)
            with pytest.raises(InvalidConfig):
                await p.publish(topic, b"x", priority=10)
            with pytest.raises(InvalidConfig):
                await p.publish(topic, b"x", tenant="a{b}")
        assert await r.xlen(f"myc:{{{topic}}}") == 1
        assert await r.xlen(f"myc:{{{topic}}}:p1") == 2
        assert await r.xlen(f"myc:{{{topic}}}:p2") == 2
        (eid, fields), = await r.xrange(f"myc:{{{topic}}}:p2", count=1)
        assert codec.decode(fields[b"m"]).headers == {"myc-priority": "2"}
        # A Go worker reads every level: a Python request at level 1 is answered.
        with go_worker(bus_worker, redis_url, topic):
            async with Producer(redis_url) as p:
                assert await p.request(topic, b"hi", priority=1, timeout=10) == b"hi"
        # Tenant fairness: a tenant's writes go to its shard set.
        fair = topic + "-fair"
        code, _, err = await go_cli(bus_worker, "topic", "create", "--redis", redis_url, "--topic", fair, "--partitions", "16",
                                    "--fair-shards", "2")
        assert code == 0, err
        async with Producer(redis_url) as p:
            for _ in range(20):
                await p.publish(fair, b"t", tenant="A")
        lens = {i: await r.xlen(f"myc:{{{partition(fair, i)}}}") for i in range(16)}
        used = {i for i, n in lens.items() if n}
        assert used and used <= {12, 1}, lens
        assert sum(lens.values()) == 20
    finally:
        await r.close(close_connection_pool=True)
