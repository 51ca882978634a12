"""``python tools/bench.py`` (from clients/python): the before/after the
plan asked for, in Python. It lives beside the package, not in it (a
benchmark is not part of the client). The old design as the system this bus replaces built it (a PubSub
subscription per request, JSON payloads with the bytes base64-encoded, a
circuit breaker taking one lock per call) against this client over
Mycelium, same scenarios as the Go suite, each against Go workers: the Go
``bus-worker`` for Mycelium, ``bus-bench --serve-pubsub`` (the Go suite's
own baseline workers) for PubSub. It starts both (and, with no --redis, a
throwaway redis-server) and prints one line per run, or JSON lines with
--json.

    python tools/bench.py --bin ../../bin            # from clients/python, after make build
    python tools/bench.py --redis redis://127.0.0.1:6379 --scenarios single,concurrent-20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import sys
import time
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable, Iterator

import redis.asyncio as aioredis

# A tool beside the package, not in it: the package is found from here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mycelium.producer import Producer  # noqa: E402

KIB = 1024


@dataclass
class Scenario:
    name: str
    concurrency: int
    requests: int
    payload: int
    rate: float = 0.0  # continuous: requests per second, open loop


SCENARIOS = [
    Scenario("single", 1, 500, KIB),
    Scenario("concurrent-5", 5, 1000, KIB),
    Scenario("concurrent-10", 10, 2000, KIB),
    Scenario("concurrent-20", 20, 4000, KIB),
    Scenario("concurrent-50", 50, 10000, KIB),
    Scenario("payload-64KiB", 4, 400, 64 * KIB),
    Scenario("continuous", 64, 100, KIB, rate=20.0),
]


@dataclass
class Result:
    system: str
    scenario: str
    concurrency: int
    payload: int
    requests: int
    ok: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_us: int
    p99_us: int
    max_us: int
    connections: int = -1  # the most connections the caller held at once (-1: not measured)


class OldDesign:
    """The replaced system's caller: a fresh PubSub subscription (its own
    connection, as redis-py's pubsub() takes) per request, JSON payloads,
    one lock around its breaker."""

    def __init__(self, url: str, channel: str, timeout: float) -> None:
        self.r = aioredis.from_url(url)
        self.channel, self.timeout = channel, timeout
        self._lock = asyncio.Lock()
        self._fails = 0

    async def request(self, payload: bytes) -> bytes:
        async with self._lock:  # the old breaker: one lock per call
            if self._fails > 1000:
                raise RuntimeError("breaker open")
        rid = secrets.token_hex(8)
        reply = f"{self.channel}:reply:{rid}"
        ps = self.r.pubsub()
        try:
            await ps.subscribe(reply)
            await ps.get_message(timeout=self.timeout)  # the subscription confirmed
            msg = json.dumps({"id": rid, "reply_to": reply, "payload": base64.b64encode(payload).decode()})
            await self.r.publish(self.channel, msg)
            deadline = time.monotonic() + self.timeout
            while True:
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=max(deadline - time.monotonic(), 0.001))
                if m is not None and m["type"] == "message":
                    out = json.loads(m["data"])
                    if out.get("error"):
                        raise RuntimeError(out["error"])
                    async with self._lock:
                        self._fails = 0
                    return base64.b64decode(out.get("payload") or "")
                if time.monotonic() >= deadline:
                    async with self._lock:
                        self._fails += 1
                    raise TimeoutError("no reply")
        finally:
            await ps.unsubscribe()
            await ps.close()

    async def close(self) -> None:
        await self.r.close(close_connection_pool=True)


async def run_scenario(system: str, sc: Scenario, call: Callable[[bytes], Awaitable[bytes]]) -> Result:
    body = os.urandom(sc.payload)
    lats: list[int] = []
    errors = 0
    # warm up: connections, the reply stream, the first subscription
    for _ in range(min(sc.concurrency, 8)):
        with contextlib.suppress(Exception):
            await call(body)

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter_ns()
        try:
            out = await call(body)
            if out != body:
                raise AssertionError("reply does not match the request")
            lats.append(time.perf_counter_ns() - t0)
        except Exception:  # noqa: BLE001 - counted
            errors += 1

    start = time.perf_counter()
    if sc.rate > 0:
        tasks = []
        for i in range(sc.requests):
            await asyncio.sleep(max(0.0, start + i / sc.rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
    else:
        left = sc.requests

        async def loop() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await asyncio.gather(*(loop() for _ in range(sc.concurrency)))
    secs = time.perf_counter() - start
    lats.sort()

    def pct(p: float) -> int:
        return lats[min(len(lats) - 1, int(p * len(lats)))] // 1000 if lats else 0

    return Result(system, sc.name, sc.concurrency, sc.payload, sc.requests, len(lats), errors, round(secs, 3),
                  round(len(lats) / secs, 1) if secs else 0.0, pct(0.5), pct(0.99), lats[-1] // 1000 if lats else 0)


@contextlib.contextmanager
def _process(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def _wait_line(p: subprocess.Popen[bytes], want: bytes, what: str, within: float = 20) -> None:
    box: list[bool] = []

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            if want in line:
                box.append(True)
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(within)
    if not box:
        err = p.stderr.read().decode() if p.poll() is not None and p.stderr else ""
        raise SystemExit(f"tools/bench.py: {what} did not start: {err.strip()[:500]}")


def _wait_ready(addr: str, within: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://{addr}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.05)
    raise SystemExit("tools/bench.py: bus-worker did not get ready")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("tools/bench.py: give --redis URL, or install redis-server")
    d = tempfile.mkdtemp()
    port = _free_port()
    with _process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d]):
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    shutil.rmtree(d, ignore_errors=True)


def go_caller(bus_bench: str, url: str, sc: Scenario, topic: str) -> Result:
    """The same scenario from the Go producer (bus-bench --no-workers),
    against the same Go worker: Python caller + Go worker next to Go caller
    + Go worker."""
    args = [bus_bench, "--redis", url, "--no-workers", "--topic", topic, "--concurrency", str(sc.concurrency),
            "--requests", str(sc.requests), "--payload", str(sc.payload), "--json"]
    if sc.rate > 0:
        args += ["--scenario", "continuous", "--rate", str(sc.rate)]
    r = subprocess.run(args, capture_output=True, timeout=300)
    try:
        j = json.loads(r.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise SystemExit(f"tools/bench.py: bus-bench failed: {r.stderr.decode().strip()[:500]}") from None
    return Result("mycelium-go", sc.name, sc.concurrency, sc.payload, j["requests"], j["ok"], j["errors"], round(j["seconds"], 3),
                  round(j["throughput_rps"], 1), j["p50_us"], j["p99_us"], j["max_us"])


async def _count_connections(url: str, stop: asyncio.Event) -> int:
    """The most connections Redis saw at once while stop was unset (the
    sampling connection not counted)."""
    r = aioredis.from_url(url)
    most = 0
    try:
        while not stop.is_set():
            most = max(most, len(await r.client_list()) - 1)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await r.close(close_connection_pool=True)
    return most


async def bench(url: str, scenarios: list[Scenario], timeout: float, out: Callable[[Result], None], bus_bench: str = "",
                rounds: int = 1, pubsub: bool = True) -> None:
    topic = "pybench"
    for sc in scenarios:
        for _ in range(rounds):  # alternating: Go caller, Python caller (, the old design), again
            if bus_bench:
                out(await asyncio.get_running_loop().run_in_executor(None, go_caller, bus_bench, url, sc, topic))
            base = len(await _client_list(url))  # the workers' connections, before this producer's
            stop = asyncio.Event()
            counting = asyncio.ensure_future(_count_connections(url, stop))
            async with Producer(url, max_in_flight=max(sc.concurrency, 64), request_timeout=timeout) as p:
                r = await run_scenario("mycelium-python", sc, lambda b: p.request(topic, b))
            stop.set()
            r.connections = await counting - base
            out(r)
            if pubsub:
                old = OldDesign(url, f"myc:pubsub:{topic}", timeout)
                try:
                    out(await run_scenario("pubsub-baseline-python", sc, old.request))
                finally:
                    await old.close()


async def _client_list(url: str) -> list[dict]:  # type: ignore[type-arg]
    r = aioredis.from_url(url)
    try:
        return list(await r.client_list())[1:]  # without this one
    finally:
        await r.close(close_connection_pool=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python tools/bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", help="Redis URL (default: start a throwaway redis-server)")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "bin"),
                    help="directory holding bus-worker and bus-bench (make build)")
    ap.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--json", action="store_true", help="one JSON line per run")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of each scenario (Go caller, Python caller, ...)")
    ap.add_argument("--no-pubsub", action="store_true", help="skip the old design (Python caller against the Go caller only)")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop (Debian's python3-uvloop) instead of asyncio's loop")
    a = ap.parse_args()
    want = a.scenarios.split(",")
    scs = [s for s in SCENARIOS if s.name in want]
    if len(scs) != len(want):
        raise SystemExit(f"tools/bench.py: --scenarios: want some of {','.join(s.name for s in SCENARIOS)}")
    bw, bb = os.path.join(a.bin, "bus-worker"), os.path.join(a.bin, "bus-bench")
    for b in (bw, bb):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"tools/bench.py: {b} not found: run make build, or give --bin")

    def out(r: Result) -> None:
        if a.json:
            print(json.dumps(asdict(r)), flush=True)
        else:
            print(f"{r.system:24} {r.scenario:14} c={r.concurrency:<3} {r.payload:>6} B  {r.ok}/{r.requests} ok  "
                  f"{r.throughput_rps:8.1f}/s  p50 {r.p50_us / 1000:7.2f} ms  p99 {r.p99_us / 1000:7.2f} ms"
                  + (f"  {r.connections} conns" if r.connections >= 0 else ""), flush=True)

    with _redis(a.redis) as url:
        addr = f"127.0.0.1:{_free_port()}"
        with _process([bw, "serve", "--redis", url, "--topic", "pybench", "--http-addr", addr, "--log-level", "warn"]), \
                _process([bb, "--redis", url, "--serve-pubsub", "--topic", "pybench"]) as ps:
            _wait_ready(addr)
            _wait_line(ps, b"serving", "bus-bench --serve-pubsub")
            if a.uvloop:
                try:
                    import uvloop  # type: ignore[import]
                except ImportError:
                    raise SystemExit("tools/bench.py: --uvloop: install python3-uvloop") from None
                uvloop.install()
            asyncio.run(bench(url, scs, a.timeout, out, bb, rounds=a.rounds, pubsub=not a.no_pubsub))


if __name__ == "__main__":
    main()
