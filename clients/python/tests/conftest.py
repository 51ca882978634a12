"""Fixtures of the conformance suite: a throwaway redis-server on a free
loopback port and the Go bus-worker binary (MYCELIUM_BUS_WORKER, else built
from this repository with `go build`). Without redis-server the suite fails
when MYCELIUM_REQUIRE_REDIS=1 (make test), else it is skipped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import AsyncIterator, Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
REPO = ROOT.parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(what: str) -> None:
    if os.environ.get("MYCELIUM_REQUIRE_REDIS") == "1":
        pytest.fail(f"{what} is required (MYCELIUM_REQUIRE_REDIS=1)")
    pytest.skip(f"{what} not available")


@contextlib.contextmanager
def start_redis(*args: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A throwaway redis-server on a free loopback port (extra args such as
    --requirepass), stopped and its directory removed on exit."""
    if shutil.which("redis-server") is None:
        _missing("redis-server")
    d = tempfile.mkdtemp()
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d, *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # polling a child's port: there is nothing to wait on
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with start_redis() as (port, _):
        yield f"redis://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def bus_worker() -> Iterator[str]:
    path = os.environ.get("MYCELIUM_BUS_WORKER")
    if path:
        yield path
        return
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.path.exists(go):
        _missing("go (to build bus-worker)")
    d = tempfile.mkdtemp()
    out = os.path.join(d, "bus-worker")
    subprocess.run([go, "build", "-o", out, "./cmd/bus-worker"], cwd=REPO, check=True)
    yield out
    shutil.rmtree(d, ignore_errors=True)


def _rig(script: str, base: int) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        _missing("redis-server")
    d = tempfile.mkdtemp()
    rig = os.path.join(d, "rig")
    try:
        r = subprocess.run(["bash", str(REPO / "test" / script), "start", rig, str(base)], capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            pytest.fail(f"{script} start failed: {r.stderr.strip()}")
        yield r.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(REPO / "test" / script), "stop", rig], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A 3-master Redis Cluster (test/redis-cluster.sh): its seed URL."""
    yield from _rig("redis-cluster.sh", 21500)


@pytest.fixture(scope="session")
def sentinel_url() -> Iterator[str]:
    """A master, a replica and three sentinels (test/redis-sentinel.sh):
    redis://S1,S2,S3?master_set=mymaster."""
    yield from _rig("redis-sentinel.sh", 26500)


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic name of its own for each test."""
    return "py-" + request.node.name.replace("[", "-").replace("]", "")[:60]


@pytest.fixture(autouse=True)
async def no_leaked_connections(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fails a test that drops a connected redis-py connection: the
    library's __del__ then schedules a disconnect that the test's event loop
    never runs ("Task was destroyed but it is pending!" at the end of the
    run). Close clients with close(close_connection_pool=True)."""
    yield
    gc.collect()
    leaked = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "Connection.disconnect"]
    for t in leaked:
        await asyncio.wait([t], timeout=2)
    if leaked:
        pytest.fail(f"{request.node.name} dropped {len(leaked)} open redis connection(s) without closing them")
