"""Reaching Redis as the Go packages do (bus.Config, cmd/internal/cli).

URL forms (Go's ``bus.Config.URL``; an empty URL means
``redis://127.0.0.1:6379``)::

    redis://[user[:password]@]host[:port][/db][?query]   one server
    rediss://...                                         the same over TLS
    redis://h1:p1,h2:p2,h3:p3                            Redis Cluster seeds
    redis://s1:p1,s2:p2?master_set=NAME                  Sentinels watching NAME

The userinfo runs to the last ``@``: a password holding ``/ ? # @``
unencoded is refused (percent-encode it, or pass ``password=`` /
``password_file=``). Query values read as Go reads them: ``db`` (wins
over the path), ``client_name``, ``master_set``, ``addr`` (one more host,
repeatable); ``dial_timeout`` and ``write_timeout`` are checked (Go
durations) and, as in Go, the options win (here: ``connect_timeout``);
``protocol``, ``client_cache``, ``max_retries`` and unknown keys are
ignored; ``skip_verify`` is refused. Every bad URL raises
:class:`InvalidConfig` with a one-line reason and the URL redacted.

What each form gives with redis-py 4.3 (``redis.asyncio``):

- one host: :class:`redis.asyncio.Redis` over a ``BlockingConnectionPool``
  of ``max_connections``: a command that finds every connection busy waits
  for one (cancellable; no timeout of its own) instead of opening more.
  ``open_client`` asks the server ``INFO cluster``: a cluster node gets the
  cluster client instead (Go: a single host that turns out to be a cluster
  node).
- several hosts, or ``cluster=True``: :class:`redis.asyncio.cluster.RedisCluster`
  (a subclass, see below) seeded with every host. redis-py 4.3's asyncio
  cluster client takes no ``max_connections`` (its nodes open one
  connection per concurrent command, without bound, and would raise
  "Too many connections" rather than wait if given one): this client
  admits at most ``max_connections`` commands and pipelines at once
  (others wait), so no node ever holds more than ``max_connections``
  connections. Its pipelines are serialised: 4.3's ``ClusterPipeline``
  keeps each node's queued commands on the shared node object, so two
  pipelines running at once on one node could read each other's replies.
  Database 0 only. No TLS in 4.3 (its asyncio cluster client drops the SSL
  options): ``rediss://`` with a cluster raises InvalidConfig there.
- ``master_set``: the master of that set, through
  ``redis.asyncio.sentinel.Sentinel(...).master_for(name)``: a
  :class:`redis.asyncio.Redis` whose pool (blocking, ``max_connections``)
  asks a sentinel for the master's address at every new connection; a
  master demoted by a failover answers READONLY, which drops the
  connection (``Unavailable`` once), and the next connection reaches the
  new master. No push notification of failovers (Go's client subscribes).
  ``sentinel_username`` / ``sentinel_password`` authenticate to the
  sentinels, ``username`` / ``password`` to the master. Closing the client
  closes the sentinel connections too.

Every client has ``decode_responses=False``, TCP keepalive, a
``connect_timeout`` (default 5 s) on each new connection and no read
timeout (blocking XREAD must not time out). ``wrap_error`` turns redis-py
errors into :class:`MyceliumError` s; no message carries a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from redis.asyncio import Redis  # redis-py 4.3 ships no py.typed: its API is Any here (pyproject.toml)
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    ClusterDownError,
    ClusterError,
    NoPermissionError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import InvalidConfig, MyceliumError, PermissionDenied, RedisFailed, Unavailable
from .keys import validate_name

__all__ = [
    "DEFAULT_URL", "PASSWORD_ENV", "PASSWORD_FILE_ENV", "SENTINEL_PASSWORD_ENV", "SENTINEL_PASSWORD_FILE_ENV",
    "Client", "build_client", "check_client", "is_cluster", "open_client", "redact_url", "resolve_password",
    "resolve_sentinel_password", "wrap_error",
]

DEFAULT_URL = "redis://127.0.0.1:6379"
#: The environment the Go commands read (cmd/internal/cli: PasswordEnv,
#: SentinelPasswordEnv; the *_FILE ones are their --redis-password-file and
#: --sentinel-password-file flags, which bus-worker and bus-bench take from
#: MYCELIUM_<FLAG> when not given).
PASSWORD_ENV = "MYCELIUM_REDIS_PASSWORD"
PASSWORD_FILE_ENV = "MYCELIUM_REDIS_PASSWORD_FILE"
SENTINEL_PASSWORD_ENV = "MYCELIUM_SENTINEL_PASSWORD"
SENTINEL_PASSWORD_FILE_ENV = "MYCELIUM_SENTINEL_PASSWORD_FILE"
MAX_SECRET_FILE = 4 << 10  # Go's ReadSecret: at most 4 KiB
DEFAULT_CONNECT_TIMEOUT = 5.0  # Go's cli.ConnectTimeout

#: What build_client returns: redis.asyncio.Redis or RedisCluster (both
#: Any to mypy: redis-py 4.3 has no type information).
Client = Union[Redis, RedisCluster]


# -- URLs -----------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with its password replaced by xxxxx. The userinfo is taken to
    run to the last '@' (not the first '/', '?' or '#', as a URL parser
    reads it), so a password holding one of those unencoded never shows
    (Go: bus.redactURL)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at < 0 or ":" not in rest[:at]:
        return url
    user = rest[:at].split(":", 1)[0]
    return (scheme + "://" if sep else "") + user + ":xxxxx" + rest[at:]


_GO_DURATION = re.compile(r"[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass
class _Target:
    """A parsed URL and the options that complete it."""

    shown: str
    tls: bool
    hosts: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    db: int = 0
    client_name: str | None = None
    master_set: str | None = None
    secrets: list[str] = field(default_factory=list)


def _unquote(s: str) -> str:
    if _ESCAPE.search(s):
        raise ValueError("invalid URL escape")
    return urllib.parse.unquote(s, errors="strict")


def _host_port(h: str) -> tuple[str, int | None]:
    """Go's net.SplitHostPort, with the port optional: (host, port or None)."""
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            raise ValueError("missing ']'")
        host, rest = h[1:end], h[end + 1:]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("want host:port")
        port = rest[1:]
    else:
        if h.count(":") > 1:
            raise ValueError("want host:port (an IPv6 address goes in brackets)")
        host, sep, port = h.partition(":")
        if not sep:
            return host, None
    if port == "":
        raise ValueError("empty port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r}")
    return host, int(port)


def _parse(url: str) -> _Target:
    raw = url or DEFAULT_URL
    if not isinstance(raw, str):
        raise InvalidConfig(f"redis URL must be a string, not {type(raw).__name__}")
    shown = redact_url(raw)
    has_password = shown != raw

    def bad(why: str) -> InvalidConfig:
        return InvalidConfig(f"redis URL {shown!r}: {why}")

    def secret_safe(why: str) -> InvalidConfig:
        # Go: secretSafe. A reason that might quote part of the password
        # is not shown.
        return bad("malformed URL (details not shown: it holds a password)" if has_password else why)

    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise secret_safe("invalid control character in URL")
    scheme, sep, rest = raw.partition("://")
    if not sep:
        head, colon, _ = raw.partition(":")
        if colon and head.lower() in ("redis", "rediss"):
            raise bad("missing host")
        raise bad("scheme must be redis:// or rediss://")
    at = rest.rfind("@")
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=-1)
    if at >= 0 and 0 <= cut < at and ":" in rest[:at]:
        raise bad("its password holds '/', '?', '#' or '@' unencoded: percent-encode it (%2F, %3F, %23, %40), "
                  "or pass it with password=, password_file= or " + PASSWORD_ENV)
    scheme = scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise bad("scheme must be redis:// or rediss://")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at_sign, hostlist = netloc.rpartition("@")
    t = _Target(shown=shown, tls=scheme == "rediss", hosts=[])
    if at_sign:
        user, colon, pw = userinfo.partition(":")
        try:
            t.username = _unquote(user) or None
            if colon:
                t.password = _unquote(pw) or None
        except (ValueError, UnicodeDecodeError):
            raise secret_safe("invalid URL escape in the user or password") from None
        if t.password:
            t.secrets.append(t.password)
            t.secrets.append(pw)
    if hostlist == "":
        raise bad("missing host")
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    if "skip_verify" in q:
        raise bad("skip_verify is not accepted in a URL: a certificate that is not checked protects nothing")
    names = hostlist.split(",")
    for i, h in enumerate(names, 1):
        if h == "":
            raise bad("empty host in the host list")
        try:
            h = _unquote(h)
            host, port = _host_port(h)
        except (ValueError, UnicodeDecodeError) as e:
            if len(names) == 1 and str(e) == "empty port":
                raise bad("empty port") from None
            raise bad(f"host {i} ({h!r}): {e}") from None
        if host == "":
            raise bad(f"host {i} ({h!r}): empty host name")
        if port is None and len(names) > 1:
            raise bad(f"host {i} ({h!r}): want host:port")
        t.hosts.append((host, port or 6379))
    for a in q.get("addr", []):
        try:
            host, port = _host_port(a)
        except ValueError as e:
            raise bad(f"addr {a!r}: {e}") from None
        t.hosts.append((host or t.hosts[0][0], port or 6379))
    path = slash + path
    if path not in ("", "/"):
        parts = path.split("/")
        if len(parts) > 2:
            raise secret_safe(f"invalid URL path: {path!r}")
        t.db = _db(parts[1], secret_safe)
    if "db" in q:
        t.db = _db(q["db"][0], secret_safe)
    for key, what in (("dial_timeout", "dial timeout"), ("write_timeout", "write timeout")):
        if key in q and not _GO_DURATION.fullmatch(q[key][0]):
            raise secret_safe(f"invalid {what}: {q[key][0]!r} (a Go duration such as 2s or 500ms)")
    t.client_name = q["client_name"][0] if q.get("client_name", [""])[0] else None
    t.master_set = q["master_set"][0] if q.get("master_set", [""])[0] else None
    return t


def _db(s: str, bad: Any) -> int:
    try:
        n = int(s)
    except ValueError:
        raise bad(f"invalid database number: {s!r}") from None
    if n < 0:
        raise bad(f"invalid database number: {s!r}")
    return n


# -- passwords --------------------------------------------------------------


def _read_secret(path: str, origin: str) -> str:
    """Go's cli.ReadSecret: the file's content without its trailing CR/LF,
    at most 4 KiB, not empty. Errors name the file, never its content."""
    try:
        with open(path, "rb") as f:
            b = f.read(MAX_SECRET_FILE + 1)
    except OSError as e:
        raise InvalidConfig(f"{origin} {path!r}: {e.strerror or type(e).__name__}") from None
    if len(b) > MAX_SECRET_FILE:
        raise InvalidConfig(f"{origin} {path!r}: larger than 4 KiB: not a password file")
    try:
        pw = b.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise InvalidConfig(f"{origin} {path!r}: not UTF-8 text") from None
    if pw == "":
        raise InvalidConfig(f"{origin} {path!r}: empty")
    return pw


def _resolve(password: str | None, password_file: str | None, file_env: str, env: str, origin: str) -> str | None:
    if password:
        return password
    if password_file:
        return _read_secret(password_file, origin)
    path = os.environ.get(file_env)
    if path:
        return _read_secret(path, file_env)
    return os.environ.get(env) or None


def resolve_password(password: str | None, password_file: str | None) -> str | None:
    """The Redis password that replaces the URL's, as the Go commands choose
    it: ``password``, else the content of ``password_file`` (its trailing
    newline removed; at most 4 KiB; unreadable, empty or larger:
    InvalidConfig naming the file, never its content), else the file named
    by ``MYCELIUM_REDIS_PASSWORD_FILE`` (the environment form of Go's
    --redis-password-file, which therefore wins over the next one, as in
    Go), else ``MYCELIUM_REDIS_PASSWORD``, else None (the URL's). Empty
    values count as unset."""
    return _resolve(password, password_file, PASSWORD_FILE_ENV, PASSWORD_ENV, "password file")


def resolve_sentinel_password(password: str | None, password_file: str | None) -> str | None:
    """The sentinels' password, as :func:`resolve_password` but from
    ``MYCELIUM_SENTINEL_PASSWORD_FILE`` and ``MYCELIUM_SENTINEL_PASSWORD``
    (Go: --sentinel-password-file, SentinelPasswordEnv)."""
    return _resolve(password, password_file, SENTINEL_PASSWORD_FILE_ENV, SENTINEL_PASSWORD_ENV, "sentinel password file")


# -- errors -------------------------------------------------------------------

_PERMISSION_CODES = ("WRONGPASS", "NOAUTH", "NOPERM")


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out and len(out) < 8:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _is_permission(e: BaseException) -> bool:
    if isinstance(e, (AuthenticationError, AuthorizationError, NoPermissionError, AuthenticationWrongNumberOfArgsError)):
        return True
    return isinstance(e, ResponseError) and str(e).split(" ", 1)[0] in _PERMISSION_CODES


def _is_unavailable(e: BaseException) -> bool:
    return isinstance(e, (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, ClusterError, TryAgainError,
                          ReadOnlyError)) or (
        isinstance(e, RedisClusterException) and "cannot be connected" in str(e))


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if s and len(s) >= 1:
            text = text.replace(s, "xxxxx")
    return text


def wrap_error(e: BaseException, *, url: str | None = None, secrets: Iterable[str] = ()) -> BaseException:
    """The :class:`MyceliumError` a redis-py error means (Go: bus's error
    mapping): refused credentials or commands (AuthenticationError,
    AuthorizationError, NoPermissionError, replies WRONGPASS / NOAUTH /
    NOPERM, also when a cluster client wrapped them) are
    :class:`PermissionDenied`; a connection that failed, timed out, or a
    cluster or sentinel set without a usable master (ConnectionError,
    TimeoutError, OSError, ClusterDownError, MasterNotFoundError,
    TryAgain, READONLY after a failover) :class:`Unavailable`; any other
    RedisError (and RedisClusterException) :class:`RedisFailed`.
    MyceliumErrors, cancellation and non-Redis errors come back unchanged.
    ``url`` (shown redacted) names the server; ``secrets`` are replaced by
    xxxxx in the text."""
    if isinstance(e, MyceliumError) or not isinstance(e, (RedisError, RedisClusterException, OSError)):
        return e
    chain = _chain(e)
    where = f" at {redact_url(url)}" if url else ""
    text = _scrub(str(e) or type(e).__name__, secrets)
    if any(_is_permission(c) for c in chain):
        return PermissionDenied(f"redis{where} refused: {text}")
    if isinstance(e, RedisClusterException) and "Cluster mode is not enabled" in str(e):
        return InvalidConfig(f"redis{where}: not a Redis Cluster node (cluster mode is not enabled): give a standalone URL, or no cluster=True")
    if any(_is_unavailable(c) for c in chain):
        return Unavailable(f"redis unavailable{where}: {text}")
    return RedisFailed(f"redis{where} failed: {text}")


# -- clients ------------------------------------------------------------------


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):  # type: ignore[misc]  # redis-py classes are Any here
    """A sentinel-managed pool that waits for a free connection (4.3's
    SentinelConnectionPool raises "Too many connections" instead)."""


class _SentinelMaster(Redis):  # type: ignore[misc]
    """The master of a sentinel set; close() also closes the sentinels'
    connections (4.3's master_for leaves them open)."""

    sentinel_manager: Any = None

    async def close(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().close(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                for s in self.sentinel_manager.sentinels:
                    with contextlib.suppress(Exception):
                        await s.close(close_connection_pool=True)


class _BoundedCluster(RedisCluster):  # type: ignore[misc]
    """RedisCluster admitting at most ``max_connections`` commands and
    pipelines at once (callers wait), and one pipeline at a time (see the
    module doc). A call made while its task already holds a slot (a
    pipeline retrying a redirected command) does not take a second one."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._pipeline_lock = asyncio.Lock()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if _HOLDING.get():
            return await super().execute_command(*args, **kwargs)
        async with self._slots:
            token = _HOLDING.set(True)
            try:
                return await super().execute_command(*args, **kwargs)
            finally:
                _HOLDING.reset(token)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        if transaction:
            raise RedisClusterException("transaction is deprecated in cluster mode")
        return _BoundedPipeline(self)


class _BoundedPipeline(ClusterPipeline):  # type: ignore[misc]
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client: _BoundedCluster = self._client
        if _HOLDING.get():
            async with client._pipeline_lock:
                return await super().execute(raise_on_error, allow_redirections)
        async with client._slots:
            token = _HOLDING.set(True)
            try:
                async with client._pipeline_lock:
                    return await super().execute(raise_on_error, allow_redirections)
            finally:
                _HOLDING.reset(token)


_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("mycelium_cluster_slot", default=False)


def _cluster_has_tls() -> bool:
    return "ssl" in inspect.signature(RedisCluster.__init__).parameters


def _plan(url: str, *, password: str | None, password_file: str | None, username: str | None, cluster: bool,
          master_set: str | None, sentinel_username: str | None, sentinel_password: str | None,
          sentinel_password_file: str | None, max_connections: int, client_name: str | None) -> tuple[_Target, str, str | None]:
    """The parsed target, its kind (standalone, cluster, sentinel) and the
    sentinels' password."""
    t = _parse(url)
    if not isinstance(max_connections, int) or isinstance(max_connections, bool) or max_connections < 1:
        raise InvalidConfig(f"max_connections must be a positive integer, got {max_connections!r}")
    pw = resolve_password(password, password_file)
    if pw:
        t.password = pw
        t.secrets.append(pw)
    if username:
        t.username = username
    if client_name:
        t.client_name = client_name
    if master_set:
        t.master_set = master_set
    spw: str | None = None
    if t.master_set:
        if cluster:
            raise InvalidConfig(f"redis URL {t.shown!r}: a master set (Sentinel) and Cluster exclude each other")
        validate_name("master set", t.master_set)
        spw = resolve_sentinel_password(sentinel_password, sentinel_password_file)
        if spw:
            t.secrets.append(spw)
        return t, "sentinel", spw
    if cluster or len(t.hosts) > 1:
        if t.db != 0:
            raise InvalidConfig(f"redis URL {t.shown!r}: Redis Cluster has database 0 only")
        if t.tls and not _cluster_has_tls():
            raise InvalidConfig(f"redis URL {t.shown!r}: rediss:// with Redis Cluster: the asyncio cluster client of "
                                "this redis-py (4.3) has no TLS; use a newer redis-py or a plain redis:// URL")
        return t, "cluster", None
    return t, "standalone", None


def _conn_kwargs(t: _Target, connect_timeout: float) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "username": t.username, "password": t.password, "client_name": t.client_name,
        "socket_connect_timeout": connect_timeout, "socket_keepalive": True, "decode_responses": False,
    }
    return kw


_TLS = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}


def build_client(
    url: str = DEFAULT_URL,
    *,
    password: str | None = None,
    password_file: str | None = None,
    username: str | None = None,
    cluster: bool = False,
    master_set: str | None = None,
    sentinel_username: str | None = None,
    sentinel_password: str | None = None,
    sentinel_password_file: str | None = None,
    max_connections: int = 8,
    client_name: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Any:
    """The client of ``url`` (see the module doc for the forms), without
    I/O: a :class:`redis.asyncio.Redis` (one server, or a sentinel set's
    master) or a :class:`redis.asyncio.cluster.RedisCluster` (several
    hosts, or ``cluster=True``). ``password`` (see :func:`resolve_password`:
    a file, then the environment), ``username``, ``client_name`` and
    ``master_set`` replace the URL's when given. At most
    ``max_connections`` connections (per node for a cluster); callers wait
    for one. A bad URL or option raises :class:`InvalidConfig` (never
    showing a password); cluster with a database other than 0, or with a
    master set, is refused. Close it with ``await client.close()``."""
    if connect_timeout <= 0:
        raise InvalidConfig("connect_timeout must be positive")
    t, kind, spw = _plan(url, password=password, password_file=password_file, username=username, cluster=cluster,
                         master_set=master_set, sentinel_username=sentinel_username, sentinel_password=sentinel_password,
                         sentinel_password_file=sentinel_password_file, max_connections=max_connections,
                         client_name=client_name)
    kw = _conn_kwargs(t, connect_timeout)
    if kind == "standalone":
        host, port = t.hosts[0]
        cls = SSLConnection if t.tls else Connection
        pool = BlockingConnectionPool(max_connections=max_connections, timeout=None, connection_class=cls,
                                      host=host, port=port, db=t.db, **kw, **(_TLS if t.tls else {}))
        client = Redis(connection_pool=pool)
        client.auto_close_connection_pool = True  # the pool is ours: close() disconnects it
        return client
    if kind == "cluster":
        if t.tls:  # a redis-py with TLS on its asyncio cluster client (4.4+)
            kw.update(ssl=True, **_TLS)
        host, port = t.hosts[0]
        rc = _BoundedCluster(host=host, port=port, max_connections=max_connections, **kw)
        for h, p in t.hosts[1:]:  # more seeds, with the same connection options (passwords) as the first
            node = ClusterNode(h, p, **rc.connection_kwargs)
            rc.nodes_manager.startup_nodes.setdefault(node.name, node)
        return rc
    sentinel_kw: dict[str, Any] = {
        "username": sentinel_username or None, "password": spw, "client_name": t.client_name,
        "socket_connect_timeout": connect_timeout, "socket_keepalive": True,
    }
    master_kw = dict(kw, db=t.db)
    if t.tls:
        sentinel_kw.update(ssl=True, **_TLS)
        master_kw.update(ssl=True, **_TLS)
    s = Sentinel(t.hosts, sentinel_kwargs=sentinel_kw, **master_kw)
    assert t.master_set is not None
    client = s.master_for(t.master_set, redis_class=_SentinelMaster, connection_pool_class=_BlockingSentinelPool,
                          max_connections=max_connections, timeout=None)
    client.sentinel_manager = s
    client.auto_close_connection_pool = True
    return client


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


async def xinfo(client: Any, sub: str, key: str) -> Any:
    """``XINFO GROUPS|STREAM key``, parsed, on any client: redis-py 4.3's
    cluster client cannot route XINFO's subcommands by their key itself."""
    if is_cluster(client):
        return await client.execute_command(f"XINFO {sub}", key, target_nodes=client.get_node_from_key(key))
    if sub == "GROUPS":
        return await client.xinfo_groups(key)
    return await client.xinfo_stream(key)


def check_client(client: Any) -> None:
    """Refuses, with :class:`InvalidConfig`, a client this package cannot
    use: not a ``redis.asyncio`` Redis or RedisCluster (a synchronous
    ``redis.Redis`` would block the event loop), or one made with
    ``decode_responses=True`` (envelopes are bytes)."""
    if not isinstance(client, (Redis, RedisCluster)):
        raise InvalidConfig(f"client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster, not {type(client).__module__}.{type(client).__qualname__}")
    try:
        decodes = bool(client.get_encoder().decode_responses)
    except Exception:  # an unusual pool: read the options
        kw = client.connection_kwargs if isinstance(client, RedisCluster) else client.connection_pool.connection_kwargs
        decodes = bool(kw.get("decode_responses"))
    if decodes:
        raise InvalidConfig("the redis client was made with decode_responses=True: Mycelium reads envelopes as bytes; "
                            "make it with decode_responses=False (the default)")


async def close_client(client: Any) -> None:
    """Closes ``client`` and every connection it opened (its pool, a
    cluster's nodes, a sentinel set's sentinels); errors are ignored."""
    with contextlib.suppress(Exception):
        if isinstance(client, RedisCluster):
            await client.close()
            await client.nodes_manager.close("startup_nodes")
        else:
            await client.close(close_connection_pool=True)


async def open_client(
    url: str = DEFAULT_URL,
    *,
    password: str | None = None,
    password_file: str | None = None,
    username: str | None = None,
    cluster: bool = False,
    master_set: str | None = None,
    sentinel_username: str | None = None,
    sentinel_password: str | None = None,
    sentinel_password_file: str | None = None,
    max_connections: int = 8,
    client_name: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Any:
    """:func:`build_client`, then PING within ``connect_timeout`` (5 s):
    a wrong password or a refused command raises :class:`PermissionDenied`,
    a server that cannot be reached or does not answer :class:`Unavailable`
    (a cluster=True URL whose server is no cluster node
    :class:`InvalidConfig`). A single-host URL whose server answers
    ``cluster_enabled:1`` to INFO cluster is reopened as a cluster client
    (Go: Connect asks the same). What it opened is closed on failure."""
    opts: dict[str, Any] = dict(password=password, password_file=password_file, username=username,
                                master_set=master_set, sentinel_username=sentinel_username,
                                sentinel_password=sentinel_password, sentinel_password_file=sentinel_password_file,
                                max_connections=max_connections, client_name=client_name, connect_timeout=connect_timeout)
    held = [build_client(url, cluster=cluster, **opts)]  # what is open now (a cluster client may replace it)
    t = _parse(url)
    secrets = list(t.secrets) + [s for s in (password, sentinel_password) if s]

    async def connect() -> None:
        client = held[0]
        if is_cluster(client):
            await client.initialize()
            await client.ping()
            return
        await client.ping()
        if isinstance(client, _SentinelMaster):
            return
        try:
            info = await client.info("cluster")
        except ResponseError:  # INFO refused (an ACL): taken as standalone
            info = {}
        if str(info.get("cluster_enabled", "0")) == "1":
            await close_client(client)
            held[0] = client = build_client(url, cluster=True, **opts)
            await client.initialize()
            await client.ping()

    # asyncio.wait_for, not asyncio.timeout: with redis-py 4.3 a PING
    # interrupted by asyncio.timeout came out as a CancelledError (the task
    # still marked cancelling), not a TimeoutError; wait_for runs the open
    # in a task of its own and raises TimeoutError here.
    try:
        await asyncio.wait_for(connect(), connect_timeout)
    except BaseException as e:
        await close_client(held[0])
        if isinstance(e, TimeoutError) and not isinstance(e, RedisError):  # wait_for's
            raise Unavailable(f"cannot reach Redis at {t.shown}: no answer within {connect_timeout:g}s") from None
        if isinstance(e, Exception):
            w = wrap_error(e, url=url, secrets=secrets)
            if w is not e:
                raise w from None
        raise
    return held[0]
