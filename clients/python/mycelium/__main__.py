"""``python -m mycelium serve|request|publish``: a worker and a caller on the
command line, for trying the client and for the conformance suite."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys

from .consumer import Consumer, Handler, Message
from .errors import MyceliumError, RemoteError
from .producer import Producer
from ._cache import CacheConfig


def _handler(spec: str) -> Handler:
    if spec == "echo":
        async def echo(m: Message) -> bytes:
            return m.payload
        return echo
    if spec.startswith("fail:"):
        code = spec[5:] or "handler_error"

        async def fail(m: Message) -> bytes:
            raise RemoteError(code, "failed on purpose")
        return fail
    if spec.startswith("sleep:"):
        secs = float(spec[6:])

        async def sleep(m: Message) -> bytes:
            await asyncio.sleep(secs)
            return m.payload
        return sleep
    if spec == "headers":
        async def headers(m: Message) -> bytes:
            return json.dumps(m.headers, sort_keys=True).encode()
        return headers
    raise SystemExit(f"mycelium: --handler {spec!r}: want echo, fail:<code>, sleep:<seconds> or headers")


def _conn(a: argparse.Namespace) -> dict[str, object]:
    return dict(password_file=a.redis_password_file or None, cluster=a.cluster, prefix=a.prefix)


def _addr(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"mycelium: --http-addr {s!r}: want host:port (empty disables)")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(a: argparse.Namespace) -> None:
    """Serves until SIGTERM or SIGINT, then drains: running handlers finish
    (within the shutdown timeout), the worker leaves its group and the
    presence set, and the process exits 0. /healthz, /readyz, /stats and
    /metrics answer on --http-addr, as bus-worker's do."""
    metrics = None
    if a.http_addr:
        host, port = _addr(a.http_addr)
        try:
            from .metrics import Metrics
            metrics = Metrics()
        except (ImportError, MyceliumError) as e:  # prometheus_client is optional: /metrics answers 404 then
            print(f"mycelium: metrics off: {e}", file=sys.stderr)
    c = Consumer(a.redis, a.topic, _handler(a.handler), group=a.group, concurrency=a.concurrency,
                 claim_idle=a.claim_idle, block=min(2.0, a.claim_idle / 4), shutdown_timeout=a.shutdown_timeout,
                 metrics=metrics, **_conn(a))  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await c.start()
    server = None
    if a.http_addr:
        from .health import close_ops, serve_ops

        async def ready() -> tuple[bool, str]:
            if stop.is_set():
                return False, "stopping"
            if not c.serving.is_set():
                return False, "not serving yet"
            try:
                await c.redis.ping()
            except Exception as e:  # noqa: BLE001 - the reason is the answer
                return False, f"redis: {e}"
            return True, ""

        try:
            server = await serve_ops(host, port, ready=ready, stats=lambda: dataclasses.asdict(c.stats), metrics=metrics)
        except OSError as e:
            await c.stop()
            raise SystemExit(f"mycelium: --http-addr {a.http_addr}: {e.strerror or e} (another process holds it? give another, or empty to disable)") from None
    print("serving", flush=True)
    try:
        await stop.wait()
    finally:
        if server is not None:
            await close_ops(server)
        await c.stop()


async def _request(a: argparse.Namespace) -> int:
    headers = dict(h.split("=", 1) for h in a.header)
    cache = {a.topic: CacheConfig()} if a.cache else None
    async with Producer(a.redis, cache=cache, **_conn(a)) as p:  # type: ignore[arg-type]
        try:
            if a.cmd == "publish":
                print(await p.publish(a.topic, a.data.encode(), headers=headers or None, after=a.after or None))
                return 0
            if a.stream:
                async for chunk in p.stream(a.topic, a.data.encode(), timeout=a.timeout, headers=headers or None):
                    sys.stdout.buffer.write(chunk + (b"\n" if a.lines else b""))
                    sys.stdout.flush()
                if not a.lines:
                    sys.stdout.buffer.write(b"\n")
                return 0
            out = await p.request(a.topic, a.data.encode(), timeout=a.timeout, headers=headers or None,
                                  cache_key=a.cache_key or None)
        except RemoteError as e:
            print(json.dumps({"error": {"kind": "remote", "code": e.code, "message": e.message}}))
            return 1
        except MyceliumError as e:
            print(json.dumps({"error": {"kind": type(e).__name__, "message": str(e)}}))
            return 1
    sys.stdout.buffer.write(out + b"\n")
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m mycelium")
    ap.add_argument("cmd", choices=["serve", "request", "publish"])
    ap.add_argument("--redis", default="redis://127.0.0.1:6379",
                    help="redis://[user:pass@]host:port[/db], rediss:// for TLS; several hosts: Cluster seeds; ?master_set=NAME: Sentinels")
    ap.add_argument("--redis-password-file", default="", help="read the password from this file (else MYCELIUM_REDIS_PASSWORD[_FILE], else the URL's)")
    ap.add_argument("--cluster", action="store_true", help="a URL of one host is a Redis Cluster seed")
    ap.add_argument("--prefix", default="myc")
    ap.add_argument("--topic", default="reasoning")
    ap.add_argument("--group", default="workers")
    ap.add_argument("--handler", default="echo")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--claim-idle", type=float, default=30.0)
    ap.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds running handlers get to finish on SIGTERM")
    ap.add_argument("--http-addr", default="127.0.0.1:9464", help="serve: address of /healthz, /readyz, /stats and /metrics; empty disables")
    ap.add_argument("--data", default="")
    ap.add_argument("--header", action="append", default=[], help="K=V, repeatable")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--cache", action="store_true", help="request: use the topic's response cache")
    ap.add_argument("--cache-key", default="", help="request --cache: what counts as the same request (default: the payload)")
    ap.add_argument("--stream", action="store_true", help="request: print the streamed reply's chunks as they arrive")
    ap.add_argument("--lines", action="store_true", help="request --stream: every chunk on a line of its own")
    ap.add_argument("--after", type=float, default=0.0, help="publish: deliver after this many seconds")
    a = ap.parse_args()
    if any("=" not in h for h in a.header):
        raise SystemExit("mycelium: --header wants K=V")
    try:
        if a.cmd == "serve":
            asyncio.run(_serve(a))
        else:
            raise SystemExit(asyncio.run(_request(a)))
    except KeyboardInterrupt:
        pass
    except MyceliumError as e:
        raise SystemExit(f"mycelium: {e}") from None


if __name__ == "__main__":
    main()
