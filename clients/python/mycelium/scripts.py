"""The bus's Lua scripts, run as the Go packages run them (docs/security.md,
"Scripts"): by ``FCALL`` of the bus's Redis Functions library, loaded when
missing and the user may load it, else by ``EVALSHA`` where Redis has no
functions or the user may run scripts. ``functions.json`` is the Go build's
library (``go test ./internal/redisx -run FunctionsFile -update`` writes it,
and fails when it is stale): one library for a mixed fleet, so the ACL roles
(``+fcall``, never ``+eval``) fit Python clients too."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any, Sequence

from redis.exceptions import NoPermissionError, ResponseError

from .errors import PermissionDenied

_DOC: dict[str, Any] = json.loads(resources.files(__package__).joinpath("functions.json").read_text("utf-8"))
LIBRARY: str = _DOC["library"]
CODE: str = _DOC["code"]
_SCRIPTS: dict[str, dict[str, str]] = _DOC["scripts"]

_FCALL, _EVAL = 1, 2


class FunctionsNotLoaded(PermissionDenied):
    """The bus's functions are not loaded and this user may neither load
    them nor run scripts: load them as the operator (``bus-worker functions
    load``)."""


def _is(e: BaseException, text: str) -> bool:
    return isinstance(e, ResponseError) and text in str(e).lower()


def _perm(e: BaseException) -> bool:
    return isinstance(e, NoPermissionError) or (isinstance(e, ResponseError) and str(e).startswith("NOPERM"))


class Scripts:
    """Runs the bus's scripts on one client (standalone, Sentinel's master or
    a cluster: every key a script touches is among its KEYS, one slot)."""

    def __init__(self, client: Any) -> None:
        self._r = client
        self._mode = 0

    async def call(self, name: str, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        s = _SCRIPTS[name]
        if self._mode == _EVAL:
            return await self._eval(s["body"], keys, args)
        try:
            out = await self._r.execute_command("FCALL", s["function"], len(keys), *keys, *args)
            self._mode = _FCALL
            return out
        except ResponseError as e:
            if _is(e, "unknown command"):
                self._mode = _EVAL  # no functions in this server
                return await self._eval(s["body"], keys, args)
            if not _is(e, "function not found"):
                raise
        # The library is missing (a fresh server, a restart without
        # persistence, another release's): load it if this user may.
        try:
            await self.load()
        except ResponseError as e:
            if not _perm(e):
                raise
            try:
                return await self._eval(s["body"], keys, args)
            except ResponseError as e2:
                if _perm(e2):
                    raise FunctionsNotLoaded(
                        "the bus's Redis functions are not loaded and this user may neither load them nor run "
                        f"scripts: load them as the operator (bus-worker functions load) ({e2})") from None
                raise
        return await self._r.execute_command("FCALL", s["function"], len(keys), *keys, *args)

    async def load(self) -> None:
        """Loads the library (on every master of a cluster), unless there."""
        kw: dict[str, Any] = {}
        if hasattr(self._r, "get_primaries"):
            kw["target_nodes"] = self._r.get_primaries()
        try:
            await self._r.execute_command("FUNCTION", "LOAD", CODE, **kw)
        except ResponseError as e:
            if "already exists" not in str(e):
                raise

    async def _eval(self, body: str, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        sha = hashlib.sha1(body.encode()).hexdigest()
        try:
            return await self._r.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as e:
            if "NOSCRIPT" not in str(e):
                raise
        return await self._r.execute_command("EVAL", body, len(keys), *keys, *args)
