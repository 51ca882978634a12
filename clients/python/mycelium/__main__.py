"""``python -m mycelium serve|request|publish``: a worker and a caller on the
command line, for trying the client and for the conformance suite."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from .consumer import Consumer, Message
from .errors import MyceliumError, RemoteError
from .producer import Producer


def _handler(spec: str):
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


async def _serve(a: argparse.Namespace) -> None:
    """Serves until SIGTERM or SIGINT, then drains: running handlers finish
    (within the shutdown timeout), the worker leaves its group and the
    presence set, and the process exits 0."""
    c = Consumer(a.redis, a.topic, _handler(a.handler), group=a.group, prefix=a.prefix, concurrency=a.concurrency,
                 claim_idle=a.claim_idle, block=min(2.0, a.claim_idle / 4), shutdown_timeout=a.shutdown_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await c.start()
    print("serving", flush=True)
    try:
        await stop.wait()
    finally:
        await c.stop()


async def _request(a: argparse.Namespace) -> int:
    headers = dict(h.split("=", 1) for h in a.header)
    async with Producer(a.redis, prefix=a.prefix) as p:
        try:
            if a.cmd == "publish":
                print(await p.publish(a.topic, a.data.encode(), headers=headers or None))
                return 0
            out = await p.request(a.topic, a.data.encode(), timeout=a.timeout, headers=headers or None)
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
    ap.add_argument("--redis", default="redis://127.0.0.1:6379")
    ap.add_argument("--prefix", default="myc")
    ap.add_argument("--topic", default="reasoning")
    ap.add_argument("--group", default="workers")
    ap.add_argument("--handler", default="echo")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--claim-idle", type=float, default=30.0)
    ap.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds running handlers get to finish on SIGTERM")
    ap.add_argument("--data", default="")
    ap.add_argument("--header", action="append", default=[], help="K=V, repeatable")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
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
