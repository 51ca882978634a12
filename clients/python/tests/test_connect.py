"""mycelium.connect: URL forms and their errors, passwords from files and the
environment, error mapping, and real servers: a password-protected
redis-server, an unreachable port, a silent server, the cluster rig
(test/redis-cluster.sh), the sentinel rig (test/redis-sentinel.sh), and the
connection bound. The rigs start once per module."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import AuthenticationError, ClusterDownError, ConnectionError, NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mycelium import connect
from mycelium.connect import build_client, check_client, is_cluster, open_client, redact_url, resolve_password, wrap_error
from mycelium.errors import InvalidConfig, PermissionDenied, RedisFailed, Unavailable
from mycelium.producer import redact_url as producer_redact_url

REPO = pathlib.Path(__file__).resolve().parents[3]
SECRET = "s3cr3t-PW"
ENV = (connect.PASSWORD_ENV, connect.PASSWORD_FILE_ENV, connect.SENTINEL_PASSWORD_ENV, connect.SENTINEL_PASSWORD_FILE_ENV)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ENV:
        monkeypatch.delenv(k, raising=False)


def _need_redis() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("MYCELIUM_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is required (MYCELIUM_REQUIRE_REDIS=1)")
        pytest.skip("redis-server not installed: the tests against real servers need it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- URL forms ------------------------------------------------------------------


@pytest.mark.parametrize("url, hosts, user, pw, db, tls, name, master", [
    ("", [("127.0.0.1", 6379)], None, None, 0, False, None, None),
    ("redis://h", [("h", 6379)], None, None, 0, False, None, None),
    ("redis://h:7/", [("h", 7)], None, None, 0, False, None, None),
    ("redis://u:p%40ss%2F@h:7/3?client_name=me", [("h", 7)], "u", "p@ss/", 3, False, "me", None),
    ("redis://:pw@h:7?db=2", [("h", 7)], None, "pw", 2, False, None, None),
    ("rediss://h:7", [("h", 7)], None, None, 0, True, None, None),
    ("REDIS://h:7", [("h", 7)], None, None, 0, False, None, None),
    ("redis://[::1]:7", [("::1", 7)], None, None, 0, False, None, None),
    ("redis://h1:1,h2:2,h3:3", [("h1", 1), ("h2", 2), ("h3", 3)], None, None, 0, False, None, None),
    ("redis://h1:1?addr=h2:2", [("h1", 1), ("h2", 2)], None, None, 0, False, None, None),
    ("redis://s1:1,s2:2?master_set=mymaster", [("s1", 1), ("s2", 2)], None, None, 0, False, None, "mymaster"),
    ("redis://h:7?dial_timeout=2s&write_timeout=500ms&protocol=3&unknown=x", [("h", 7)], None, None, 0, False, None, None),
])
def test_url_forms(url: str, hosts: list[tuple[str, int]], user: str | None, pw: str | None, db: int, tls: bool,
                   name: str | None, master: str | None) -> None:
    t = connect._parse(url)
    assert (t.hosts, t.username, t.password, t.db, t.tls, t.client_name, t.master_set) == (hosts, user, pw, db, tls, name, master)


@pytest.mark.parametrize("url, why", [
    ("http://h:1", "scheme must be redis:// or rediss://"),
    ("h:1", "scheme must be redis:// or rediss://"),
    ("redis:h", "missing host"),
    ("redis://", "missing host"),
    ("redis:///0", "missing host"),
    ("redis://h:", "empty port"),
    ("redis://h:x", "bad port"),
    ("redis://h:70000", "bad port"),
    ("redis://h1:1,,h2:2", "empty host in the host list"),
    ("redis://h1,h2:2", "host 1 ('h1'): want host:port"),
    ("redis://h1:1,h2", "host 2 ('h2'): want host:port"),
    ("redis://::1", "want host:port"),
    ("redis://h/x", "invalid database number"),
    ("redis://h/-1", "invalid database number"),
    ("redis://h?db=x", "invalid database number"),
    ("redis://h/1/2", "invalid URL path"),
    ("redis://h?skip_verify=1", "skip_verify is not accepted"),
    ("redis://h?dial_timeout=soon", "invalid dial timeout"),
    ("redis://h?write_timeout=5", "invalid write timeout"),
    ("redis://h\n", "invalid control character"),
])
def test_bad_urls(url: str, why: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        build_client(url)
    msg = str(e.value)
    assert why in msg and "\n" not in msg and msg.startswith("redis URL ")


@pytest.mark.parametrize("url, why", [
    (f"redis://u:{SECRET}/x@h:1", "unencoded"),
    (f"redis://u:{SECRET}?x@h:1", "unencoded"),
    (f"redis://u:{SECRET}#x@h:1", "unencoded"),
    (f"redis://u:{SECRET}%zz@h:1", "details not shown"),
    (f"redis://u:{SECRET}@h:1/x", "details not shown"),
    (f"redis://u:{SECRET}@h:", "empty port"),
    (f"redis://u:{SECRET}@", "missing host"),
    (f"http://u:{SECRET}@h", "scheme"),
    (f"redis://u:{SECRET}@h1:1,h2:2/4", "database 0 only"),
])
def test_bad_urls_never_show_the_password(url: str, why: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        build_client(url)
    assert why in str(e.value)
    assert SECRET not in str(e.value) and SECRET not in repr(e.value)
    assert "u:xxxxx@" in str(e.value)


@pytest.mark.parametrize("url", [
    "redis://u:pw@h:1", "redis://u:p/w@h:1/0", "redis://u:p@w@h", "redis://h:1", "u:pw@h", "redis://u@h", "",
    "rediss://:pw@h1:1,h2:2?master_set=m",
])
def test_redact_url_as_producer(url: str) -> None:
    assert redact_url(url) == producer_redact_url(url)
    assert "pw" not in redact_url(url).replace("xxxxx", "") or "pw" not in url


def test_topologies() -> None:
    assert type(build_client("redis://h:1")) is aioredis.Redis
    assert isinstance(build_client("redis://h1:1,h2:2"), RedisCluster)
    assert isinstance(build_client("redis://h:1", cluster=True), RedisCluster)
    assert is_cluster(build_client("redis://h:1?addr=h2:2"))
    s = build_client("redis://s1:1,s2:2?master_set=mymaster")
    assert isinstance(s, aioredis.Redis) and not is_cluster(s)
    s = build_client("redis://s1:1", master_set="other")
    assert s.connection_pool.service_name == "other"
    with pytest.raises(InvalidConfig, match="exclude each other"):
        build_client("redis://s1:1?master_set=m", cluster=True)
    with pytest.raises(InvalidConfig, match="database 0 only"):
        build_client("redis://h:1/2", cluster=True)
    with pytest.raises(InvalidConfig, match="max_connections"):
        build_client("redis://h:1", max_connections=0)
    with pytest.raises(InvalidConfig, match="master set"):
        build_client("redis://h:1", master_set="x" * 300)


def test_options_replace_the_urls() -> None:
    c = build_client("redis://u:urlpw@h:1/2?client_name=a", password="opt", username="v", client_name="b", max_connections=3)
    kw = c.connection_pool.connection_kwargs
    assert (kw["username"], kw["password"], kw["client_name"], kw["db"], kw["decode_responses"]) == ("v", "opt", "b", 2, False)
    assert c.connection_pool.max_connections == 3 and c.connection_pool.timeout is None
    rc = build_client("redis://:pw@h1:1,h2:2", client_name="n")
    for node in rc.nodes_manager.startup_nodes.values():  # every seed has the password, not only the first
        assert node.connection_kwargs["password"] == "pw" and node.connection_kwargs["client_name"] == "n"
    assert rc.get_encoder().decode_responses is False


def test_tls_options() -> None:
    c = build_client("rediss://h:1")
    kw = c.connection_pool.connection_kwargs
    assert c.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kw["ssl_cert_reqs"] == "required" and kw["ssl_check_hostname"] is True
    if not connect._cluster_has_tls():
        with pytest.raises(InvalidConfig, match="no TLS"):
            build_client("rediss://h1:1,h2:2")


# -- passwords ----------------------------------------------------------------


def test_password_precedence(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file\r\n\n")
    g = tmp_path / "pw-env"
    g.write_text("from-env-file\n")
    assert resolve_password(None, None) is None
    monkeypatch.setenv(connect.PASSWORD_ENV, "from-env")
    assert resolve_password(None, None) == "from-env"
    monkeypatch.setenv(connect.PASSWORD_FILE_ENV, str(g))  # as in Go: the file flag's env form wins over the password env
    assert resolve_password(None, None) == "from-env-file"
    assert resolve_password(None, str(f)) == "from-file"
    assert resolve_password("explicit", str(f)) == "explicit"
    monkeypatch.setenv(connect.PASSWORD_FILE_ENV, "")  # empty: unset
    assert resolve_password(None, None) == "from-env"
    monkeypatch.setenv(connect.PASSWORD_ENV, "")
    assert resolve_password("", "") is None


def test_password_file_errors_name_the_file_not_its_content(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(InvalidConfig, match="missing"):
        resolve_password(None, str(missing))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InvalidConfig, match="empty"):
        resolve_password(None, str(empty))
    big = tmp_path / "big"
    big.write_text(SECRET * 1000)
    with pytest.raises(InvalidConfig, match="4 KiB") as e:
        resolve_password(None, str(big))
    assert SECRET not in str(e.value)
    monkeypatch.setenv(connect.PASSWORD_FILE_ENV, str(missing))
    with pytest.raises(InvalidConfig, match=connect.PASSWORD_FILE_ENV):
        resolve_password(None, None)
    with pytest.raises(InvalidConfig, match="missing"):
        build_client("redis://h:1")  # build_client resolves the same way


def test_sentinel_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(connect.SENTINEL_PASSWORD_ENV, "spw")
    c = build_client("redis://s1:1?master_set=m")
    assert c.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "spw"
    assert c.connection_pool.connection_kwargs.get("password") is None  # the master's is another


# -- clients given by the user, errors --------------------------------------------


async def test_check_client_refuses_decoding_clients() -> None:
    with pytest.raises(InvalidConfig, match="decode_responses=True"):
        check_client(aioredis.Redis(decode_responses=True))
    with pytest.raises(InvalidConfig, match="decode_responses=True"):
        check_client(aioredis.Redis.from_url("redis://h:1", decode_responses=True))
    with pytest.raises(InvalidConfig, match="decode_responses=True"):
        check_client(RedisCluster(host="127.0.0.1", port=1, decode_responses=True))
    with pytest.raises(InvalidConfig, match="redis.asyncio"):
        check_client(redis.Redis())
    check_client(aioredis.Redis())
    check_client(build_client("redis://h1:1,h2:2"))
    check_client(build_client("redis://s:1?master_set=m"))


@pytest.mark.parametrize("err, cls", [
    (AuthenticationError("invalid password"), PermissionDenied),
    (NoPermissionError("this user has no permissions to run the 'xadd' command"), PermissionDenied),
    (ResponseError("WRONGPASS invalid username-password pair or user is disabled."), PermissionDenied),
    (ResponseError("NOAUTH Authentication required."), PermissionDenied),
    (ConnectionError("Error 111 connecting to h:1. Connection refused."), Unavailable),
    (RedisTimeoutError("Timeout reading from h:1"), Unavailable),
    (OSError("boom"), Unavailable),
    (ClusterDownError("CLUSTERDOWN The cluster is down"), Unavailable),
    (MasterNotFoundError("No master found for 'mymaster'"), Unavailable),
    (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), RedisFailed),
])
def test_wrap_error(err: Exception, cls: type) -> None:
    w = wrap_error(err)
    assert type(w) is cls


def test_wrap_error_leaves_others_and_scrubs_secrets() -> None:
    v = ValueError("x")
    assert wrap_error(v) is v
    u = Unavailable("already")
    assert wrap_error(u) is u
    w = wrap_error(ResponseError(f"ERR something {SECRET}"), url=f"redis://u:{SECRET}@h:1", secrets=[SECRET])
    assert isinstance(w, RedisFailed) and SECRET not in str(w) and "u:xxxxx@h:1" in str(w)


# -- real servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_url() -> Iterator[str]:
    """A redis-server with requirepass SECRET (no password in the URL)."""
    _need_redis()
    d = tempfile.mkdtemp()
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", d, "--requirepass", SECRET], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # synchronise on its log, not on time
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail("redis-server with requirepass did not start")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


async def test_wrong_password_is_permission_denied(locked_url: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "not-" + SECRET
    for kw in ({}, {"password": wrong}):
        start = time.monotonic()
        with pytest.raises(PermissionDenied) as e:
            await open_client(locked_url.replace("redis://", f"redis://default:{wrong}@") if not kw else locked_url, **kw)
        assert time.monotonic() - start < 5
        assert wrong not in str(e.value) and SECRET not in str(e.value)
    with pytest.raises(PermissionDenied):
        await open_client(locked_url)  # no password at all: NOAUTH
    c = await open_client(locked_url, password=SECRET)
    assert await c.ping()
    await c.close()
    f = tmp_path / "pw"
    f.write_text(SECRET + "\n")
    c = await open_client(locked_url, password_file=str(f))
    assert await c.set("k", "v")
    await c.close()
    monkeypatch.setenv(connect.PASSWORD_ENV, SECRET)
    c = await open_client(locked_url.replace("redis://", f"redis://:{wrong}@"))  # the environment replaces the URL's
    assert await c.ping()
    await c.close()


async def test_unreachable_is_unavailable_quickly() -> None:
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(Unavailable) as e:
        await open_client(f"redis://u:{SECRET}@127.0.0.1:{port}")
    assert time.monotonic() - start < 2
    assert SECRET not in str(e.value) and "u:xxxxx@" in str(e.value)


async def test_silent_server_is_unavailable_within_the_timeout() -> None:
    with socket.socket() as s:  # accepts connections (the backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(Unavailable, match="no answer within 0.5s"):
            await open_client(f"redis://127.0.0.1:{port}", connect_timeout=0.5)
        assert time.monotonic() - start < 2


async def test_redis_failed(redis_url: str) -> None:
    c = await open_client(redis_url)
    try:
        await c.set("py-connect-str", "x")
        with pytest.raises(ResponseError) as e:
            await c.xlen("py-connect-str")
        assert isinstance(wrap_error(e.value), RedisFailed)
    finally:
        await c.close()


async def _client_count(url: str, name: str, **kw: Any) -> int:
    admin = await open_client(url, **kw)
    try:
        return sum(1 for c in await admin.client_list() if c.get("name") == name)
    finally:
        await admin.close()


async def test_connection_bound_standalone(redis_url: str) -> None:
    name = "py-bound-standalone"
    c = await open_client(redis_url, max_connections=8, client_name=name)
    try:
        # 50 commands that each hold their connection 100 ms: they must wait
        # for one another, never open a ninth connection.
        res = await asyncio.gather(*(c.xread({"py-bound-none": "$"}, block=100) for _ in range(50)))
        assert res == [[]] * 50
        assert len(c.connection_pool._connections) == 8
        assert await _client_count(redis_url, name) == 8
    finally:
        await c.close()
    assert await _client_count(redis_url, name) == 0  # close() closed them all


async def test_cluster_url(cluster_url: str) -> None:
    c = await open_client(cluster_url, client_name="py-cluster")
    try:
        assert is_cluster(c)
        keys = [f"py-connect-{i}" for i in range(12)]
        slots = {c.keyslot(k) for k in keys}
        nodes = {c.get_node_from_key(k).name for k in keys}
        assert len(slots) == 12 and len(nodes) == 3  # keys on every master
        ids = [await c.xadd(k, {b"m": k.encode()}) for k in keys]
        for k, i in zip(keys, ids):
            got = await c.xread({k: "0"})
            assert got == [[k.encode(), [(i, {b"m": k.encode()})]]]
        await c.delete(*keys[:1])
    finally:
        await c.close()


async def test_single_cluster_node_is_detected(cluster_url: str) -> None:
    one = cluster_url.split(",")[0]  # redis://127.0.0.1:PORT
    c = await open_client(one)
    try:
        assert is_cluster(c)
        assert await c.set("py-detect-a", "1") and await c.set("py-detect-b", "2")  # keys of other nodes too
        assert await c.get("py-detect-b") == b"2"
    finally:
        await c.close()


async def test_cluster_true_on_a_standalone_server(redis_url: str) -> None:
    with pytest.raises(InvalidConfig, match="not a Redis Cluster node"):
        await open_client(redis_url, cluster=True)


async def test_cluster_connection_bound_and_pipelines(cluster_url: str) -> None:
    name = "py-bound-cluster"
    c = await open_client(cluster_url, max_connections=8, client_name=name)
    try:
        res = await asyncio.gather(*(c.xread({f"py-bound-{i % 3}": "$"}, block=100) for i in range(50)))
        assert res == [[]] * 50
        for node in c.get_nodes():
            assert len(node._connections) <= 8, node

        async def pipe(i: int) -> list[Any]:
            p = c.pipeline()
            for j in range(10):
                p.set(f"py-pipe-{i % 4}-{j}", f"{i}:{j}")
                p.get(f"py-pipe-{i % 4}-{j}")
            return list(await p.execute())

        # redis-py 4.3's cluster pipelines running at once on one node mix
        # their replies up; this client runs them one at a time.
        for i, r in enumerate(await asyncio.gather(*(pipe(i) for i in range(20)))):
            assert r[1::2] == [f"{i}:{j}".encode() for j in range(10)]
        with pytest.raises(Exception, match="transaction"):
            c.pipeline(transaction=True)
    finally:
        await c.close()
    for port in (u.rsplit(":", 1)[1] for u in cluster_url.split(",")):
        assert await _client_count(f"redis://127.0.0.1:{port}", name) == 0


async def test_sentinel_url(sentinel_url: str) -> None:
    name = "py-sentinel"
    c = await open_client(sentinel_url, max_connections=8, client_name=name)
    try:
        assert not is_cluster(c)
        assert await c.set("py-sentinel-k", "v")  # a write: the master
        assert (await c.info("replication"))["role"] == "master"
        await c.xadd("py-sentinel-s", {b"m": b"1"})
        assert await c.xlen("py-sentinel-s") == 1
        res = await asyncio.gather(*(c.xread({"py-sentinel-none": "$"}, block=100) for _ in range(50)))
        assert res == [[]] * 50
        assert await _client_count(sentinel_url, name) == 8
    finally:
        await c.close()
    assert await _client_count(sentinel_url, name) == 0


async def test_sentinel_unknown_master_set(sentinel_url: str) -> None:
    with pytest.raises(Unavailable, match="No master found"):
        await open_client(sentinel_url.replace("master_set=mymaster", "master_set=nosuch"))
