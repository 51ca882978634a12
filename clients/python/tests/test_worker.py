"""The Python worker next to the Go one: the response cache, streamed
replies, delayed retries and events, its lifecycle (start, serving, stop,
SIGTERM) and the handler's return types; each a regression test of a defect
a Python team found (issue 26)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from conftest import ROOT, free_port, start_redis
from mycelium import Consumer, Message, Producer, RemoteError, codec
from mycelium.errors import InvalidConfig, NoResponders, NotStreaming, PermissionDenied, RetryAfter, Unavailable
from test_conformance import eventually, go_cli, py_worker

pytestmark = pytest.mark.asyncio


# -- the response cache -------------------------------------------------------


async def test_go_cached_callers_coalesce_on_a_python_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    """Three `bus-worker request --cache` calls for one prompt: one handler
    call answers all three (two joined the first in flight), and the answer
    is stored for the next caller."""
    calls = 0
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(m: Message) -> bytes:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return b"answer to " + m.payload

    async with py_worker(redis_url, topic, slow) as c:
        args = ("request", "--redis", redis_url, "--topic", topic, "--data", "q", "--cache", "--timeout", "20s")
        first = asyncio.ensure_future(go_cli(bus_worker, *args))
        await asyncio.wait_for(started.wait(), 20)
        joined = [asyncio.ensure_future(go_cli(bus_worker, *args)) for _ in range(2)]
        r = aioredis.from_url(redis_url)
        try:
            async def both_joined() -> bool:
                keys = [k async for k in r.scan_iter(match=f"myc:{{{topic}}}:f:*")]
                return len(keys) == 1 and await r.llen(keys[0]) == 3
            await eventually(both_joined, 20, "two callers joined the flight")
        finally:
            await r.close(close_connection_pool=True)
        release.set()
        for f in [first, *joined]:
            code, out, err = await f
            assert code == 0, err
            assert out.strip() == b"answer to q"
        assert calls == 1
        assert c.stats.coalesced_replies == 2 and c.stats.cache_stores == 1
        code, out, err = await go_cli(bus_worker, *args)  # stored: no handler call
        assert code == 0 and out.strip() == b"answer to q", err
        assert calls == 1


async def test_cache_errors_are_not_stored(redis_url: str, bus_worker: str, topic: str) -> None:
    calls = 0

    async def failing(m: Message) -> bytes:
        nonlocal calls
        calls += 1
        raise RemoteError("model_down", "try later")

    async with py_worker(redis_url, topic, failing) as c:
        for _ in range(2):
            code, out, _ = await go_cli(bus_worker, "request", "--redis", redis_url, "--topic", topic, "--data", "q", "--cache", "--json")
            assert code != 0 and b"model_down" in out
        assert calls == 2 and c.stats.cache_stores == 0


# -- streamed replies -----------------------------------------------------------


async def _stream_lines(bus_worker: str, redis_url: str, topic: str) -> list[dict]:
    code, out, err = await go_cli(bus_worker, "request", "--redis", redis_url, "--topic", topic, "--data", "go", "--stream", "--json",
                                  "--timeout", "20s")
    assert code == 0, err
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_go_stream_from_an_async_generator_handler(redis_url: str, bus_worker: str, topic: str) -> None:
    async def tokens(m: Message) -> AsyncIterator[bytes | str]:
        for i in range(5):
            yield f"tok{i} "

    async with py_worker(redis_url, topic, tokens) as c:
        lines = await _stream_lines(bus_worker, redis_url, topic)
        assert [x.get("chunk") for x in lines[:-1]] == [f"tok{i} " for i in range(5)]
        assert [x["seq"] for x in lines[:-1]] == list(range(5))
        assert lines[-1]["end"] is True and lines[-1]["chunks"] == 5
        assert c.stats.chunks == 5
        # a caller that does not stream gets the chunks as one reply
        async with Producer(redis_url) as p:
            assert await p.request(topic, b"x", timeout=10) == b"tok0 tok1 tok2 tok3 tok4 "


async def test_go_stream_from_send_and_a_last_chunk(redis_url: str, bus_worker: str, topic: str) -> None:
    async def sender(m: Message) -> bytes:
        if not m.streaming:
            with pytest.raises(NotStreaming):
                await m.send(b"x")
            return b"whole"
        for i in range(3):
            await m.send(b"c%d" % i)
        return b"last"

    async with py_worker(redis_url, topic, sender):
        lines = await _stream_lines(bus_worker, redis_url, topic)
        assert [x.get("chunk") for x in lines[:-1]] == ["c0", "c1", "c2", "last"]
        assert lines[-1]["chunks"] == 4
        async with Producer(redis_url) as p:
            assert await p.request(topic, b"x", timeout=10) == b"whole"


# -- handler results ---------------------------------------------------------


async def test_handler_results_str_none_and_wrong_types(redis_url: str, topic: str) -> None:
    """str is sent as UTF-8, None as an empty reply; anything else is an
    immediate handler_error reply and the entry is acknowledged (it used to
    leave the caller waiting its whole timeout and the entry pending)."""

    async def typed(m: Message):  # type: ignore[no-untyped-def]
        return {b"str": "héllo", b"none": None, b"dict": {"a": 1}, b"int": 3}[m.payload]

    async with py_worker(redis_url, topic, typed) as c, Producer(redis_url) as p:
        assert await p.request(topic, b"str", timeout=10) == "héllo".encode()
        assert await p.request(topic, b"none", timeout=10) == b""
        for bad in (b"dict", b"int"):
            t0 = time.monotonic()
            with pytest.raises(RemoteError) as ei:
                await p.request(topic, bad, timeout=20)
            assert ei.value.code == "handler_error" and "type" in ei.value.message
            assert time.monotonic() - t0 < 5
        pend = await p.redis.xpending(f"myc:{{{topic}}}", "workers")
        assert pend["pending"] == 0
        assert c.stats.failed == 2


# -- delayed retries and events -------------------------------------------------


async def test_retry_after_redelivers_a_request_later(redis_url: str, bus_worker: str, topic: str) -> None:
    seen: list[tuple[int, float]] = []

    async def limited(m: Message) -> bytes:
        seen.append((m.attempt, time.monotonic()))
        if m.attempt == 1:
            raise RetryAfter(0.4, "429 from the provider")
        return b"ok on attempt %d" % m.attempt

    async with py_worker(redis_url, topic, limited, retry_backoff=0.1) as c:
        code, out, err = await go_cli(bus_worker, "request", "--redis", redis_url, "--topic", topic, "--data", "q", "--timeout", "20s")
        assert code == 0, err
        assert out.strip() == b"ok on attempt 2"
        assert [a for a, _ in seen] == [1, 2]
        assert seen[1][1] - seen[0][1] >= 0.39
        assert c.stats.retries_scheduled == 1


async def test_retry_after_beyond_the_deadline_fails_at_once(redis_url: str, topic: str) -> None:
    async def limited(m: Message) -> bytes:
        raise RetryAfter(60, "429")

    async with py_worker(redis_url, topic, limited), Producer(redis_url) as p:
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as ei:
            await p.request(topic, b"q", timeout=5)
        assert "retry after" in ei.value.message and time.monotonic() - t0 < 4


async def test_go_delayed_event_promoted_by_a_python_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    got: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()

    async def handle(m: Message) -> None:
        await got.put((m.payload, time.monotonic()))

    async with py_worker(redis_url, topic, handle) as c:
        t0 = time.monotonic()
        code, _, err = await go_cli(bus_worker, "publish", "--redis", redis_url, "--topic", topic, "--data", "later", "--after", "700ms")
        assert code == 0, err
        payload, at = await asyncio.wait_for(got.get(), 15)
        assert payload == b"later" and at - t0 >= 0.6

        async def promoted() -> bool:
            return c.stats.delayed_promoted == 1
        await eventually(promoted, 5, "the promotion counted")


# -- lifecycle ----------------------------------------------------------------


@pytest.fixture(scope="module")
def password_redis() -> Iterator[str]:
    with start_redis("--requirepass", "s3cret") as (port, _):
        yield f"127.0.0.1:{port}"


async def echo(m: Message) -> bytes:
    return m.payload


async def test_start_raises_on_a_wrong_password(password_redis: str, topic: str) -> None:
    c = Consumer(f"redis://:wrong@{password_redis}", topic, echo)
    with pytest.raises(PermissionDenied) as ei:
        await asyncio.wait_for(c.start(), 10)
    assert "wrong" not in str(ei.value)
    with pytest.raises(PermissionDenied):
        await asyncio.wait_for(c.serving.wait(), 1)  # never waited on in vain
    async with Consumer(f"redis://:s3cret@{password_redis}", topic, echo) as ok:
        assert ok.serving.is_set()


async def test_run_pattern_does_not_hang_when_redis_is_unreachable(topic: str) -> None:
    """The README's pattern: run() in a task, then serving.wait(): raises
    instead of waiting forever."""
    c = Consumer(f"redis://127.0.0.1:{free_port()}", topic, echo)
    task = asyncio.ensure_future(c.run())
    with pytest.raises(Unavailable):
        await asyncio.wait_for(c.serving.wait(), 15)
    with pytest.raises(Unavailable):
        await task


async def test_decode_responses_client_refused(redis_url: str, topic: str) -> None:
    r = aioredis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(InvalidConfig, match="decode_responses"):
            Consumer(redis_url, topic, echo, client=r)
        with pytest.raises(InvalidConfig, match="decode_responses"):
            Producer(redis_url, client=r)
    finally:
        await r.close(close_connection_pool=True)


async def test_async_with_consumer_serves_and_leaves(redis_url: str, topic: str) -> None:
    async with Producer(redis_url) as p:
        async with Consumer(redis_url, topic, echo) as c:
            assert await p.request(topic, b"in", timeout=10) == b"in"
        assert await p.redis.zcard(f"myc:{{{topic}}}:workers") == 0
    async with Producer(redis_url) as p2:  # a producer checks a served topic at most once a second: a new one
        with pytest.raises(NoResponders):
            await p2.request(topic, b"out", timeout=5)
        assert c.stats.handled == 1


def _get(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return -1, b""


async def test_serve_answers_health_and_metrics(redis_url: str, topic: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    addr = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mycelium", "serve", "--redis", redis_url, "--topic", topic,
                                                "--http-addr", addr, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=env)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"serving"
        async with Producer(redis_url) as p:
            assert await p.request(topic, b"m", timeout=10) == b"m"
        assert await asyncio.to_thread(_get, f"http://{addr}/healthz") == (200, b"ok\n")
        code, body = await asyncio.to_thread(_get, f"http://{addr}/metrics")
        assert code == 200
        assert b'mycelium_consumer_handled_total{group="workers",topic="%s"} 1.0' % topic.encode() in body
        assert b'mycelium_stage_duration_seconds_count{role="consumer",stage="handler",topic="%s"} 1.0' % topic.encode() in body
        code, body = await asyncio.to_thread(_get, f"http://{addr}/stats")
        assert code == 200 and json.loads(body)["handled"] == 1
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_drains_python_m_mycelium_serve(redis_url: str, topic: str) -> None:
    """SIGTERM while a request runs: its caller gets the answer, the worker
    leaves (the next caller gets NoResponders at once, not a timeout), and
    the process exits 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    addr = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mycelium", "serve", "--redis", redis_url, "--topic", topic,
                                                "--handler", "sleep:1", "--http-addr", addr, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"serving"
        ready = await asyncio.to_thread(_get, f"http://{addr}/readyz")
        assert ready == (200, b"ready\n")
        async with Producer(redis_url) as p:
            call = asyncio.ensure_future(p.request(topic, b"drain me", timeout=20))

            async def running() -> bool:
                return (await p.redis.xpending(f"myc:{{{topic}}}", "workers"))["pending"] == 1
            await eventually(running, 10, "the handler running")
            proc.send_signal(signal.SIGTERM)
            assert await call == b"drain me"
            code, body = await asyncio.to_thread(_get, f"http://{addr}/metrics")
            assert code in (200, -1)  # -1: the server already closed (stopping)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            with pytest.raises(NoResponders):
                await p.request(topic, b"after", timeout=5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- partitions -----------------------------------------------------------------


async def test_removed_partitions_are_drained_then_forgotten(redis_url: str, bus_worker: str, topic: str) -> None:
    """A lowered count: the worker keeps reading the removed partitions
    until they are drained, then forgets them (lowers the drain bound and
    deletes their streams), as a Go worker does."""
    code, _, err = await go_cli(bus_worker, "topic", "create", "--redis", redis_url, "--topic", topic, "--partitions", "3")
    assert code == 0, err
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(m: Message) -> None:
        await got.put(m.payload)

    async with Producer(redis_url) as p:
        r = p.redis
        # entries left in partition 2 before any worker runs
        await r.xadd(f"myc:{{{topic}#2}}", {b"m": codec.encode(codec.Envelope(kind=codec.EVENT, payload=b"left in 2"))})
        code, _, err = await go_cli(bus_worker, "topic", "set-partitions", "--redis", redis_url, "--topic", topic, "--partitions", "1")
        assert code == 0, err
        await r.hset(f"myc:{{{topic}}}:meta", "lowered", int(time.time() * 1000) - 60_000)  # as if lowered a minute ago
        async with py_worker(redis_url, topic, handle) as c:
            assert len(c._parts) == 3  # still read: not drained
            assert await asyncio.wait_for(got.get(), 10) == b"left in 2"

            async def forgotten() -> bool:
                return len(c._parts) == 1 and await r.hget(f"myc:{{{topic}}}:meta", "drain") == b"1"
            await eventually(forgotten, 20, "the drained partitions forgotten")
            assert not await r.exists(f"myc:{{{topic}#2}}")


async def test_handler_exceptions_are_logged_with_their_traceback(redis_url: str, topic: str, caplog: pytest.LogCaptureFixture) -> None:
    async def buggy(m: Message) -> bytes:
        return _parse_prompt(m.payload)

    with caplog.at_level(logging.WARNING, logger="mycelium.consumer"):
        async with py_worker(redis_url, topic, buggy), Producer(redis_url) as p:
            for _ in range(15):
                with pytest.raises(RemoteError):
                    await p.request(topic, b"x", timeout=10)
    recs = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert recs and recs[0].exc_info is not None
    assert "_parse_prompt" in logging.Formatter().formatException(recs[0].exc_info)
    assert len(recs) == 10  # rate-limited as Go's warn logs: 10 lines per 10 s


def _parse_prompt(b: bytes) -> bytes:
    raise ValueError("cannot parse the prompt")


async def test_worker_reads_every_priority_level(redis_url: str, bus_worker: str, topic: str) -> None:
    """A topic with priority levels (bus-worker topic create --priorities 3,
    weights 4,2,1): the Python worker reads every level, each its weight's
    share while all are backlogged (stride scheduling, as Go's workers), and
    a request at any level is answered."""
    code, _, err = await go_cli(bus_worker, "topic", "create", "--redis", redis_url, "--topic", topic, "--priorities", "3")
    assert code == 0, err
    order: list[int] = []

    async def work(m: Message) -> bytes:
        if m.request:
            return m.payload
        order.append(int(m.headers.get("myc-priority", "0")))
        await asyncio.sleep(0.002)
        return b""

    async with Producer(redis_url) as p:
        for lv in (2, 1, 0):  # the least urgent first: order of writing does not decide
            await p.publish_batch(topic, [b"e"] * 300, priority=lv)
        async with py_worker(redis_url, topic, work, concurrency=4):
            for lv in range(3):
                assert await p.request(topic, b"at %d" % lv, priority=lv, timeout=20) == b"at %d" % lv

            async def all_read() -> bool:
                return len(order) >= 900

            await eventually(all_read, 60, "900 events")
    first = order[:350]  # every level backlogged: shares 4:2:1 (4/7, 2/7, 1/7)
    shares = [first.count(lv) / len(first) for lv in range(3)]
    assert abs(shares[0] - 4 / 7) < 0.1 and abs(shares[1] - 2 / 7) < 0.1 and abs(shares[2] - 1 / 7) < 0.1, shares
