"""Same wire, proved both ways: the Python client against the Go bus-worker
(callers and workers in both languages on one redis-server)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from conftest import free_port
from mycelium import Consumer, Message, Producer, RemoteError, codec
from mycelium.errors import NoResponders

pytestmark = pytest.mark.asyncio

MIB = 1 << 20


class GoWorker:
    def __init__(self, proc: subprocess.Popen[bytes], http_addr: str) -> None:
        self.proc, self.http_addr = proc, http_addr

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://{self.http_addr}/stats", timeout=5) as r:
            return json.load(r)


@contextlib.contextmanager
def go_worker(bus_worker: str, redis_url: str, topic: str, *args: str) -> Iterator[GoWorker]:
    addr = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([bus_worker, "serve", "--redis", redis_url, "--topic", topic, "--http-addr", addr, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"bus-worker did not get ready: {proc.stderr.read().decode() if proc.poll() is not None else ''}")
            time.sleep(0.05)
        yield GoWorker(proc, addr)
    finally:
        proc.terminate()
        proc.wait(30)


async def go_cli(bus_worker: str, *args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    p = await asyncio.create_subprocess_exec(bus_worker, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(stdin), 60)
    return p.returncode or 0, out, err


@contextlib.asynccontextmanager
async def py_worker(redis_url: str, topic: str, handler, serving_within: float = 10, **kw) -> AsyncIterator[Consumer]:
    c = Consumer(redis_url, topic, handler, **kw)
    task = asyncio.ensure_future(c.run())
    await asyncio.wait_for(c.serving.wait(), serving_within)
    try:
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(cond, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def echo(m: Message) -> bytes:
    return m.payload


# -- Python caller, Go worker ------------------------------------------------


async def test_python_caller_go_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic):
        async with Producer(redis_url) as p:
            assert await p.request(topic, b"hello", timeout=10) == b"hello"
            big = os.urandom(MIB)
            assert await p.request(topic, big, timeout=30) == big
            results = await asyncio.gather(*(p.request(topic, b"r%d" % i, timeout=20) for i in range(200)))
            assert results == [b"r%d" % i for i in range(200)]
            assert p.stats.replies == 202 and p.stats.forged == 0


async def test_no_responders(redis_url: str) -> None:
    async with Producer(redis_url) as p:
        with pytest.raises(NoResponders):
            await p.request("py-nobody-serves", b"x", timeout=5)


async def test_python_producer_as_its_acl_user(redis_url: str, bus_worker: str, topic: str) -> None:
    """A Python producer connecting as a user made from `bus-worker acl
    --role producer --user NAME` names its reply stream after the user,
    gets its answers, and can read no topic."""
    import shlex

    code, out, err = await go_cli(bus_worker, "acl", "--role", "producer", "--user", "pyuser")
    assert code == 0, err
    line = out.decode().splitlines()[0]
    args = shlex.split(line)
    assert args[:3] == ["ACL", "SETUSER", "pyuser"]
    admin = aioredis.from_url(redis_url)
    await admin.execute_command(*args, ">pw")
    user_url = redis_url.replace("redis://", "redis://pyuser:pw@")
    with go_worker(bus_worker, redis_url, topic):
        async with Producer(user_url) as p:
            assert p.reply_key.startswith("myc:{r.pyuser.")
            assert await p.request(topic, b"hi", timeout=20) == b"hi"
        user = aioredis.from_url(user_url)
        with pytest.raises(NoPermissionError):
            await user.xrange(f"myc:{{{topic}}}")
        await user.close(close_connection_pool=True)
    # As that user: a topic nobody serves is NoResponders (not a refused
    # EXISTS), and a partitioned topic's count is read (HMGET, not HGET).
    async with Producer(user_url) as p:
        with pytest.raises(NoResponders):
            await p.request(topic + "-nobody", b"x", timeout=5)
        code, _, err = await go_cli(bus_worker, "topic", "create", "--redis", redis_url, "--topic", topic + "-parts", "--partitions", "3")
        assert code == 0, err
        for i in range(6):
            await p.publish(topic + "-parts", b"e%d" % i)
        lens = [await admin.xlen(f"myc:{{{topic}-parts{'' if i == 0 else '#%d' % i}}}") for i in range(3)]
        assert lens == [2, 2, 2], lens
    await admin.close(close_connection_pool=True)


async def test_trace_headers_reach_go_worker_backend(redis_url: str, bus_worker: str, topic: str) -> None:
    got: dict[str, str] = {}

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.update({k.lower(): v for k, v in self.headers.items()})
            body = b"seen"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        with go_worker(bus_worker, redis_url, topic, "--handler", f"http://127.0.0.1:{srv.server_port}/"):
            async with Producer(redis_url) as p:
                out = await p.request(topic, b"{}", timeout=10, headers={"traceparent": tp, "tracestate": "a=b", "tenant": "acme"})
    finally:
        srv.shutdown()
    assert out == b"seen"
    assert got["traceparent"] == tp and got["tracestate"] == "a=b" and got["x-mycelium-header-tenant"] == "acme"


async def test_go_remote_error_code(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic, "--handler", "http://127.0.0.1:1/", "--breaker=false"):
        async with Producer(redis_url) as p:
            with pytest.raises(RemoteError) as e:
                await p.request(topic, b"x", timeout=10)
    assert e.value.code == "http_unreachable"


async def test_python_events_to_go_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic) as w:
        async with Producer(redis_url) as p:
            ids = await p.publish_batch(topic, [b"e%d" % i for i in range(50)])
            ids.append(await p.publish(topic, b"one more", headers={"k": "v"}))
        assert len(ids) == 51 and all("-" in i for i in ids)

        async def handled() -> bool:
            s = w.stats()
            return s["handled"] == 51 and s["acked"] == 51

        await eventually(handled, what="the Go worker to handle 51 events")


async def test_expired_request_skipped_by_go(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic) as w:
        r = aioredis.from_url(redis_url)
        env = codec.Envelope(kind=codec.REQUEST, id="late1", reply_to="myc:{r.nobody}", deadline=time.time_ns() - 10**9,
                             sent=time.time_ns(), payload=b"x")
        await r.xadd(f"myc:{{{topic}}}", {"m": codec.encode(env)})
        await r.close(close_connection_pool=True)

        async def expired() -> bool:
            s = w.stats()
            return s["expired"] == 1 and s["handled"] == 0

        await eventually(expired, what="the Go worker to skip the expired request")


async def test_python_malformed_dead_lettered_by_go(redis_url: str, bus_worker: str, topic: str) -> None:
    with go_worker(bus_worker, redis_url, topic) as w:
        r = aioredis.from_url(redis_url)
        await r.xadd(f"myc:{{{topic}}}", {"m": b"\x92\x01\x02"})  # msgpack, not an envelope
        await r.xadd(f"myc:{{{topic}}}", {"other": b"field"})

        async def dead() -> bool:
            return await r.xlen(f"myc:{{{topic}}}:dlq") == 2

        await eventually(dead, what="two dead letters")
        letters = await r.xrange(f"myc:{{{topic}}}:dlq")
        await r.close(close_connection_pool=True)
        assert {f[b"reason"] for _, f in letters} == {b"malformed"}

        # The worker counts a dead letter once its write is answered: the
        # entries can be in Redis a moment before the count says so.
        async def counted() -> bool:
            return bool(w.stats()["dead_lettered"] == 2)

        await eventually(counted, what="the worker counting two dead letters")


# -- Go caller, Python worker ------------------------------------------------


async def test_go_caller_python_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    async with py_worker(redis_url, topic, echo) as c:
        code, out, err = await go_cli(bus_worker, "request", "--redis", redis_url, "--topic", topic, "--data", "hi from go", "--json")
        assert code == 0, err
        assert json.loads(out)["reply"] == "hi from go"
        big = os.urandom(MIB)
        with tempfile.NamedTemporaryFile() as f:
            f.write(big)
            f.flush()
            code, out, err = await go_cli(bus_worker, "request", "--redis", redis_url, "--topic", topic, "--data-file", f.name)
        assert code == 0, err
        assert out == big + b"\n"
        assert c.stats.replied == 2


async def test_python_remote_error_code_to_go(redis_url: str, bus_worker: str, topic: str) -> None:
    async def quota(m: Message) -> bytes:
        raise RemoteError("quota_exceeded", "try again in a minute")

    async def boom(m: Message) -> bytes:
        raise ValueError("bad prompt")

    async with py_worker(redis_url, topic, quota):
        code, out, _ = await go_cli(bus_worker, "request", "--redis", redis_url, "--topic", topic, "--data", "x", "--json")
    assert code == 1
    assert json.loads(out)["error"] == {"kind": "remote", "code": "quota_exceeded", "message": "try again in a minute"}
    async with py_worker(redis_url, topic + "-2", boom):
        code, out, _ = await go_cli(bus_worker, "request", "--redis", redis_url, "--topic", topic + "-2", "--data", "x", "--json")
    assert json.loads(out)["error"]["code"] == "handler_error" and "bad prompt" in json.loads(out)["error"]["message"]


async def test_go_events_to_python_worker(redis_url: str, bus_worker: str, topic: str) -> None:
    seen: list[tuple[bytes, dict]] = []

    async def record(m: Message) -> None:
        seen.append((m.payload, m.headers))

    async with py_worker(redis_url, topic, record) as c:
        for i in range(5):
            code, _, err = await go_cli(bus_worker, "publish", "--redis", redis_url, "--topic", topic, "--data", f"ev{i}")
            assert code == 0, err

        async def handled() -> bool:
            return c.stats.acked == 5

        await eventually(handled, what="five events handled")
    assert sorted(p for p, _ in seen) == [b"ev%d" % i for i in range(5)]


async def test_trace_headers_reach_python_worker(redis_url: str, topic: str) -> None:
    async def headers(m: Message) -> bytes:
        return json.dumps(m.headers, sort_keys=True).encode()

    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with py_worker(redis_url, topic, headers):
        async with Producer(redis_url) as p:
            out = await p.request(topic, b"", timeout=10, headers={"traceparent": tp, "baggage": "k=v"})
    assert json.loads(out) == {"baggage": "k=v", "traceparent": tp}


async def test_expired_and_malformed_by_python_worker(redis_url: str, topic: str) -> None:
    calls = 0

    async def count(m: Message) -> bytes:
        nonlocal calls
        calls += 1
        return b""

    async with py_worker(redis_url, topic, count) as c:
        r = aioredis.from_url(redis_url)
        key = f"myc:{{{topic}}}"
        late = codec.Envelope(kind=codec.REQUEST, id="l1", reply_to="myc:{r.nobody}", deadline=time.time_ns() - 10**9, payload=b"x")
        await r.xadd(key, {"m": codec.encode(late)})
        await r.xadd(key, {"m": b"garbage"})
        await r.xadd(key, {"m": codec.encode(codec.Envelope(kind=codec.REQUEST, id="x", reply_to="other:key"))})
        await r.xadd(key, {"m": codec.encode(codec.Envelope(kind=codec.REPLY, id="x"))})

        async def done() -> bool:
            return c.stats.expired == 1 and c.stats.dead_lettered == 3

        await eventually(done, what="one expired, three dead letters")
        letters = await r.xrange(key + ":dlq")
        await r.close(close_connection_pool=True)
    assert calls == 0
    assert all(f[b"reason"] == b"malformed" for _, f in letters)
    assert any(b"reply_to" in f[b"error"] for _, f in letters)


async def test_python_caller_python_worker_cancel(redis_url: str, topic: str) -> None:
    started, ended = asyncio.Event(), asyncio.Event()

    async def slow(m: Message) -> bytes:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            ended.set()
        return b""

    async with py_worker(redis_url, topic, slow) as c:
        async with Producer(redis_url) as p:
            req = asyncio.ensure_future(p.request(topic, b"x", timeout=30))
            await asyncio.wait_for(started.wait(), 10)
            req.cancel()
            with pytest.raises(asyncio.CancelledError):
                await req
            await asyncio.wait_for(ended.wait(), 5)  # the cancel notice reached the handler
        assert c.stats.cancelled == 1


async def test_forged_cancel_ignored(redis_url: str, topic: str) -> None:
    """A notice that copies a running request's ids without its token, or
    with a wrong one, cancels nothing (security issue: anyone who may write
    the control stream could cancel anyone's requests)."""
    release = asyncio.Event()

    async def slow(m: Message) -> bytes:
        await release.wait()
        return b"re:" + m.payload

    r = aioredis.from_url(redis_url)
    key, ctl = f"myc:{{{topic}}}", f"myc:{{{topic}}}:ctl"
    async with py_worker(redis_url, topic, slow) as c:
        async with Producer(redis_url) as p:
            req = asyncio.ensure_future(p.request(topic, b"slow", timeout=30))

            async def written() -> bool:
                return await r.xlen(key) == 1

            await eventually(written, within=10, what="the request written")
            (_, fields), = await r.xrange(key)
            victim = codec.decode(fields[b"m"])
            assert len(victim.token) == codec.TOKEN_SIZE
            until = str(int(time.time() * 1000) + 60_000).encode()
            base = {b"op": b"cancel", b"until": until, b"id": victim.id.encode(), b"to": victim.reply_to.encode()}
            wrong = bytes([victim.token[0] ^ 1]) + victim.token[1:]
            for extra in ({}, {b"tok": wrong}, {b"tok": b"short"}):
                await r.xadd(ctl, {**base, **extra})

            async def read() -> bool:
                return c.stats.control_malformed == 2  # no token, a short one

            await eventually(read, within=10, what="the forged notices read")
            release.set()
            assert await req == b"re:slow"
        assert c.stats.cancelled == 0
    await r.close(close_connection_pool=True)


async def test_cancel_flood_bounded(redis_url: str, topic: str) -> None:
    """200,000 distinct notices: the worker remembers at most MAX_CANCELLED
    and serves."""
    from mycelium import consumer as cmod

    r = aioredis.from_url(redis_url)
    ctl = f"myc:{{{topic}}}:ctl"
    until = str(int(time.time() * 1000) + 300_000).encode()
    for i in range(0, 200_000, 5000):
        pipe = r.pipeline(transaction=False)
        for j in range(i, i + 5000):
            pipe.xadd(ctl, {b"op": b"cancel", b"until": until, b"tok": j.to_bytes(16, "big")})
        await pipe.execute()
    await r.close(close_connection_pool=True)

    async def echo(m: Message) -> bytes:
        return m.payload

    # It judges memory and that the worker serves, not how fast it catches
    # up: on a loaded CI machine reading 200,000 notices takes seconds.
    async with py_worker(redis_url, topic, echo, serving_within=120) as c:
        async with Producer(redis_url) as p:
            assert await p.request(topic, b"hello", timeout=60) == b"hello"
        assert len(c._cancelled) <= cmod.MAX_CANCELLED


async def test_event_retry_then_dead_letter(redis_url: str, topic: str) -> None:
    attempts: list[int] = []

    async def fail(m: Message) -> None:
        attempts.append(m.attempt)
        raise RuntimeError("nope")

    async with py_worker(redis_url, topic, fail, claim_idle=0.3, block=0.1, max_deliveries=3) as c:
        async with Producer(redis_url) as p:
            await p.publish(topic, b"poison")

        async def dead() -> bool:
            return c.stats.dead_lettered == 1

        await eventually(dead, within=20, what="the poison event dead-lettered")
    assert attempts == [1, 2, 3]


async def test_reclaim_from_dead_consumer_and_heartbeat(redis_url: str, topic: str) -> None:
    r = aioredis.from_url(redis_url)
    key = f"myc:{{{topic}}}"
    # A worker that read an entry and died: it stays pending under its name.
    await r.xgroup_create(key, "workers", id="0", mkstream=True)
    await r.xadd(key, {"m": codec.encode(codec.Envelope(kind=codec.EVENT, payload=b"orphan"))})
    await r.xreadgroup("workers", "dead-worker", {key: ">"}, count=1)
    seen: list[tuple[bytes, int]] = []

    async def slow(m: Message) -> None:
        seen.append((m.payload, m.attempt))
        if m.payload == b"long":
            await asyncio.sleep(2.0)  # longer than claim_idle: the heartbeat keeps it ours

    async with py_worker(redis_url, topic, slow, claim_idle=0.6, block=0.1) as c:
        await r.xadd(key, {"m": codec.encode(codec.Envelope(kind=codec.EVENT, payload=b"long"))})

        async def done() -> bool:
            return c.stats.acked == 2

        await eventually(done, within=15, what="the orphan reclaimed and the long event handled")
        assert c.stats.reclaimed >= 1 and c.stats.heartbeats >= 1
    await r.close(close_connection_pool=True)
    assert (b"orphan", 2) in seen
    assert [p for p, _ in seen].count(b"long") == 1  # never reclaimed while running


async def test_wrong_password_is_permission_denied(redis_url: str, topic: str) -> None:
    """A wrong password raises PermissionDenied, a MyceliumError, from a
    producer and a consumer alike (security issue, point 20: a raw redis-py
    error escaped)."""
    from mycelium import MyceliumError, PermissionDenied

    admin = aioredis.from_url(redis_url)
    await admin.execute_command("ACL", "SETUSER", "pwuser", "on", ">right", "~*", "+@all")
    await admin.close(close_connection_pool=True)
    bad = redis_url.replace("redis://", "redis://pwuser:wrong@")
    with pytest.raises(PermissionDenied) as e:
        async with Producer(bad):
            pass
    assert isinstance(e.value, MyceliumError) and "wrong" not in str(e.value)

    async def echo(m: Message) -> bytes:
        return m.payload

    c = Consumer(bad, topic, echo)
    with pytest.raises(PermissionDenied):
        await asyncio.wait_for(c.run(), 10)


# -- Compressed payloads (docs/wire.md, "Compression") ----------------------

@contextlib.asynccontextmanager
async def plain_redis(url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(url)
    try:
        yield r
    finally:
        await r.close(close_connection_pool=True)


PROMPT = b'{"role":"user","content":"summarise the quarterly report for the customer"},' * 900  # ~66 KiB of text


@pytest.mark.parametrize("how", ["s2", "zstd"])
async def test_python_compressed_requests_to_go_worker(redis_url: str, bus_worker: str, topic: str, how: str) -> None:
    """A Python producer compresses; the Go worker hands the handler the
    original bytes and answers compressed the same way; Python reads it."""
    with go_worker(bus_worker, redis_url, topic):
        async with Producer(redis_url, compression=how) as p, plain_redis(redis_url) as r:
            assert await p.request(topic, PROMPT, timeout=20) == PROMPT
            (eid, fields), = await r.xrevrange(f"myc:{{{topic}}}", count=1)
            stored = codec.decode(fields[b"m"])
            assert codec.compression_of(stored) == how and len(fields[b"m"]) < len(PROMPT) // 4
            (rid, rfields), = await r.xrevrange(p.reply_key, count=1)
            assert codec.compression_of(codec.decode(rfields[b"m"])) == how  # the Go worker's reply
            rnd = os.urandom(64 << 10)
            assert await p.request(topic, rnd, timeout=20) == rnd  # incompressible: sent as it is


@pytest.mark.parametrize("how", ["s2", "zstd"])
async def test_go_compressed_requests_to_python_worker(redis_url: str, bus_worker: str, topic: str, how: str) -> None:
    """A Go caller compresses; the Python worker's handler gets the original
    bytes and its reply goes back compressed; the Go caller reads it."""
    got: list[bytes] = []

    async def keep(m: Message) -> bytes:
        got.append(m.payload)
        return m.payload

    async with py_worker(redis_url, topic, keep):
        with tempfile.NamedTemporaryFile() as f:
            f.write(PROMPT)
            f.flush()
            code, out, err = await go_cli(bus_worker, "request", "--redis", redis_url, "--topic", topic, "--data-file", f.name, "--compress", how)
        assert code == 0, err
        assert out == PROMPT + b"\n" and got == [PROMPT]


async def test_corrupt_compressed_entry_dead_lettered_by_python(redis_url: str, topic: str) -> None:
    async with py_worker(redis_url, topic, echo) as c:
        async with plain_redis(redis_url) as r:
            bad = codec.encode(codec.Envelope(kind=codec.EVENT, flags=codec.FLAG_ZSTD, payload=b"not zstd"))
            await r.xadd(f"myc:{{{topic}}}", {b"m": bad})
            await eventually(lambda: _xlen(r, f"myc:{{{topic}}}:dlq", 1), what="the corrupt entry dead-lettered")
            (did, f), = await r.xrange(f"myc:{{{topic}}}:dlq")
            assert f[b"reason"] == b"malformed" and b"compressed payload" in f[b"error"]
        assert c.stats.dead_lettered >= 1


async def _xlen(r, key: str, want: int) -> bool:
    return int(await r.xlen(key)) == want
