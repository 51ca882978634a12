"""Fleet-wide flow control with Python workers in the fleet
(docs/flow-control.md): a Python worker asks the topic's permit function
before it reads, as Go workers do, so one limit holds across both."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from typing import Iterator

import pytest
import redis.asyncio as aioredis

from mycelium import COST_HEADER, BacklogFull, BusTimeout, Message, Producer, RetryAfter
from test_conformance import eventually, go_cli, go_worker, py_worker

pytestmark = pytest.mark.asyncio


class Provider:
    """Counts calls in flight (HTTP calls from a Go bus-worker and Python
    handlers alike) and the most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def serve_http(p: Provider, took: float) -> Iterator[int]:
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            p.enter()
            time.sleep(took)
            p.leave()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_port
    finally:
        srv.shutdown()
        srv.server_close()


async def limit(bus_worker: str, redis_url: str, topic: str, *args: str) -> None:
    code, _, err = await go_cli(bus_worker, "limit", "set", "--redis", redis_url, "--topic", topic, *args)
    assert code == 0, err


async def test_concurrency_limit_holds_across_go_and_python_workers(redis_url: str, bus_worker: str, topic: str) -> None:
    await limit(bus_worker, redis_url, topic, "--concurrency", "3")
    prov = Provider()

    async def handler(m: Message) -> None:
        prov.enter()
        await asyncio.sleep(0.03)
        prov.leave()

    gen = serve_http(prov, 0.03)
    port = next(gen)
    try:
        with go_worker(bus_worker, redis_url, topic, "--handler", f"http://127.0.0.1:{port}/", "--concurrency", "1"):
            async with py_worker(redis_url, topic, handler, concurrency=8) as a, py_worker(redis_url, topic, handler, concurrency=8) as b:
                async with Producer(redis_url) as p:
                    for i in range(150):
                        await p.publish(topic, b"%d" % i)

                async def all_handled() -> bool:
                    return prov.calls >= 150

                await eventually(all_handled, 60, "150 calls")
                assert prov.most <= 3, f"{prov.most} calls at once under a limit of 3"
                assert prov.most >= 2
                assert a.stats.handled + b.stats.handled > 0, "the Python workers took no part"
                assert a.stats.permits_granted + b.stats.permits_granted >= a.stats.handled + b.stats.handled
        # Stopped workers gave their leases back (not after claim_idle).
        r = aioredis.from_url(redis_url)
        try:
            leases = await r.hgetall(f"myc:{{{topic}}}:lim:leases")
            assert not any(k.decode() in (a.name, b.name) for k in leases), leases
        finally:
            await r.close(close_connection_pool=True)
    finally:
        with pytest.raises(StopIteration):
            next(gen)


async def test_rate_limit_holds_for_a_python_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    await limit(bus_worker, redis_url, topic, "--rate", "20/s", "--burst", "2")
    starts: list[float] = []

    async def handler(m: Message) -> None:
        starts.append(time.monotonic())

    async with py_worker(redis_url, topic, handler, concurrency=16) as c:
        async with Producer(redis_url) as p:
            await p.publish_batch(topic, [b"x"] * 50)

        async def done() -> bool:
            return len(starts) >= 50

        await eventually(done, 30, "50 handled")
        # GCRA at 20/s with a burst of 2: 50 starts take at least 48/20 s,
        # and no second holds more than 20 + 2.
        assert starts[-1] - starts[0] >= 2.3
        for i, t in enumerate(starts):
            assert sum(1 for u in starts[i:] if u - t < 1.0) <= 22
        assert c.stats.permit_waits > 0


async def test_token_budget_charges_reported_costs(redis_url: str, bus_worker: str, topic: str) -> None:
    await limit(bus_worker, redis_url, topic, "--tokens", "2000/s")
    starts: list[float] = []

    async def handler(m: Message) -> None:
        starts.append(time.monotonic())
        assert m.cost == 100
        m.report_cost(200)  # the provider counted twice the estimate

    async with py_worker(redis_url, topic, handler, concurrency=8):
        async with Producer(redis_url) as p:
            await p.publish_batch(topic, [b"x"] * 40, headers={COST_HEADER: "100"})

        async def done() -> bool:
            return len(starts) >= 40

        await eventually(done, 30, "40 handled")
        # 40 x 200 = 8,000 tokens at 2,000/s with one second's burst: at
        # least ~3 s (estimates alone would take ~1 s).
        assert starts[-1] - starts[0] >= 2.5, starts[-1] - starts[0]


async def test_retry_after_with_pause_pauses_the_fleet(redis_url: str, bus_worker: str, topic: str) -> None:
    starts: dict[bytes, float] = {}
    paused_at: list[float] = []

    async def provider(m: Message) -> None:
        if m.payload == b"429" and m.attempt == 1:
            paused_at.append(time.monotonic())
            raise RetryAfter(1.5, "429 from the provider", pause=True)
        starts.setdefault(m.payload, time.monotonic())

    async with py_worker(redis_url, topic, provider, concurrency=4, retry_backoff=0.1) as a, \
            py_worker(redis_url, topic, provider, concurrency=4, retry_backoff=0.1) as b:
        async with Producer(redis_url) as p:
            await p.publish(topic, b"429")

            async def paused() -> bool:
                return a.stats.pauses + b.stats.pauses == 1

            await eventually(paused, 10, "the pause")
            await p.publish_batch(topic, [b"after-%d" % i for i in range(10)])

        async def done() -> bool:
            return len(starts) >= 11

        await eventually(done, 20, "everything handled after the pause")
        for k, t in starts.items():
            assert t - paused_at[0] >= 1.4, (k, t - paused_at[0])
        assert a.stats.permit_waits + b.stats.permit_waits > 0


# -- backpressure: a Python producer waits or is refused, never trims unread --


async def test_backpressure_block_never_loses(redis_url: str, topic: str) -> None:
    seen: set[bytes] = set()

    async def slow(m: Message) -> None:
        await asyncio.sleep(0.002)
        seen.add(m.payload)

    async with py_worker(redis_url, topic, slow, concurrency=16):
        # A cap of 1,000 (limit 750): 5,000 events from 8 publishers would
        # have trimmed unread entries before backpressure.
        async with Producer(redis_url, stream_max_len=1000) as p:
            async def publisher(k: int) -> None:
                for i in range(625):
                    await p.publish(topic, b"%d-%d" % (k, i))

            await asyncio.gather(*(publisher(k) for k in range(8)))
            assert p.stats.backlog_waits > 0, "the burst never waited: the test proves nothing"

        async def all_seen() -> bool:
            return len(seen) >= 5000

        await eventually(all_seen, 60, "5,000 events handled")
    assert len(seen) == 5000


async def test_backpressure_reject_refuses_with_the_typed_error(redis_url: str, topic: str) -> None:
    r = aioredis.from_url(redis_url)
    try:
        await r.execute_command("XGROUP", "CREATE", f"myc:{{{topic}}}", "workers", "$", "MKSTREAM")  # a group nobody serves
        async with Producer(redis_url, stream_max_len=100, backpressure="reject") as p:
            accepted = 0
            with pytest.raises(BacklogFull) as exc:
                for i in range(200):
                    await p.publish(topic, b"%d" % i)
                    accepted += 1
            assert exc.value.limit == 75 and exc.value.topic == topic
            assert 70 <= accepted <= 75, accepted
            assert await r.xlen(f"myc:{{{topic}}}") == accepted  # nothing trimmed, nothing written for the refusal
            assert p.stats.backlog_full == 1
        async with Producer(redis_url, stream_max_len=100, backlog_max_wait=0.3) as p:
            t0 = time.monotonic()
            with pytest.raises(BacklogFull):
                for i in range(10):
                    await p.publish(topic, b"more")
            assert time.monotonic() - t0 >= 0.3
            assert p.stats.backlog_waits == 1
            with pytest.raises(BusTimeout):
                await p.request(topic, b"q", timeout=0.3, wait_for_responders=True)
        async with Producer(redis_url, stream_max_len=100, backpressure="drop-oldest") as p:
            for i in range(60):
                await p.publish(topic, b"x")
            assert p.stats.backlog_dropped > 0
    finally:
        await r.close(close_connection_pool=True)
