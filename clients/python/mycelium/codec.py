"""The Mycelium envelope (docs/wire.md): encode and decode, byte for byte as
the Go codec does.

An envelope is a msgpack array of 15 elements (16 with request_entry, 18
with seq and flags, 19 with a request's cancel token). The Go encoder uses the shortest form of every integer
and string, ``bin`` for the payload and ``nil`` for no headers; so does
:func:`encode` (the golden files written by the Go tests check it).
:func:`decode` accepts what the Go decoder accepts and refuses the rest with
:class:`~mycelium.errors.MalformedError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import MalformedError

VERSION = 1

EVENT = 0
REQUEST = 1
REPLY = 2
CONTROL = 3
CHUNK = 4
_KIND_END = 5

#: request flag: the caller reads a streamed reply
FLAG_STREAM = 1

MIN_FIELDS = 11
FIELDS = 15
STREAM_FIELDS = FIELDS + 3
MAX_FIELDS = FIELDS + 4
#: length of a request's cancel token (Envelope.token)
TOKEN_SIZE = 16
MAX_HEADERS = 1024

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_U64_MAX = (1 << 64) - 1


@dataclass
class Envelope:
    """One message on the bus (see docs/wire.md for each field)."""

    kind: int = EVENT
    id: str = ""
    reply_to: str = ""
    deadline: int = 0  # unix ns after which the caller gave up; 0: none
    sent: int = 0  # unix ns when the sender encoded it
    attempt: int = 0
    headers: dict[str, str] | None = None
    payload: bytes = b""
    err_code: str = ""
    err_msg: str = ""
    queue_wait: int = 0
    handler: int = 0
    cache_key: str = ""
    cache_ttl: int = 0
    request_entry: str = ""
    seq: int = 0
    flags: int = 0
    token: bytes = b""  # a request's cancel token (TOKEN_SIZE random bytes; b"": none)
    extra: list[Any] = field(default_factory=list, repr=False)  # trailing elements of a later revision (kept, not written)

    def replace(self, **changes: Any) -> "Envelope":
        return dataclasses.replace(self, **changes)


def encode(env: Envelope) -> bytes:
    """Encode ``env`` as the Go encoder does."""
    if not 0 <= env.kind < 256:
        raise ValueError("kind out of range")
    for name in ("deadline", "sent", "queue_wait", "handler", "cache_ttl"):
        v = getattr(env, name)
        if not _I64_MIN <= v <= _I64_MAX:
            raise ValueError(f"{name} out of the int64 range")
    if not 0 <= env.attempt < (1 << 32):
        raise ValueError("attempt out of the uint32 range")
    if not 0 <= env.seq <= _U64_MAX or not 0 <= env.flags <= _U64_MAX:
        raise ValueError("seq or flags out of the uint64 range")
    token = bytes(env.token)
    if token == bytes(TOKEN_SIZE):
        token = b""
    if len(token) not in (0, TOKEN_SIZE):
        raise ValueError(f"token must be {TOKEN_SIZE} bytes")
    arr: list[Any] = [
        VERSION,
        env.kind,
        env.id,
        env.reply_to,
        env.deadline,
        env.sent,
        env.attempt,
        env.headers,
        bytes(env.payload),
        env.err_code,
        env.err_msg,
        env.queue_wait,
        env.handler,
        env.cache_key,
        env.cache_ttl,
    ]
    streamed = env.seq != 0 or env.flags != 0 or bool(token)
    if env.request_entry or streamed:
        arr.append(env.request_entry)
    if streamed:
        arr += [env.seq, env.flags]
    if token:
        arr.append(token)
    out: bytes = msgpack.packb(arr, use_bin_type=True)
    return out


def _str(v: Any, name: str) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    raise MalformedError(name, "not a string")


def _int(v: Any, name: str, *, unsigned: bool = False, bits: int = 64) -> int:
    if type(v) is int and ((0 <= v < (1 << (bits - 1))) if bits == 64 or not unsigned else 0 <= v < (1 << bits)):
        return v  # the common case: a small non-negative value, in range whatever the kind
    if type(v) is not int:  # noqa: E721 - bool is an int subclass and is not allowed
        raise MalformedError(name, "not an integer")
    lo = 0 if unsigned else -(1 << (bits - 1))
    hi = (1 << bits) - 1 if unsigned else (1 << (bits - 1)) - 1
    if not lo <= v <= hi:
        raise MalformedError(name, "out of range")
    return v


def decode(data: bytes | bytearray | memoryview) -> Envelope:
    """Decode one envelope; anything the Go decoder refuses raises
    :class:`~mycelium.errors.MalformedError`."""
    try:
        arr = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=False,
            unicode_errors="surrogateescape",
            use_list=True,
            max_map_len=MAX_HEADERS,
        )
    except MalformedError:
        raise
    except Exception as e:  # msgpack raises ExtraData, ValueError, FormatError, StackError...
        raise MalformedError("envelope", f"not msgpack: {e}") from None
    if not isinstance(arr, list):
        raise MalformedError("envelope", "not a msgpack array")
    n = len(arr)
    if n < MIN_FIELDS:
        raise MalformedError("envelope", f"array of {n} elements, want at least {MIN_FIELDS}")
    if type(arr[0]) is not int or arr[0] < 0:  # noqa: E721
        raise MalformedError("version", "not an unsigned integer")
    if arr[0] != VERSION:
        raise MalformedError("version", f"unsupported version {arr[0]}")
    if type(arr[1]) is not int or not 0 <= arr[1] < _KIND_END:  # noqa: E721
        raise MalformedError("kind", "unknown kind")
    env = Envelope(kind=arr[1])
    env.id = _str(arr[2], "id")
    env.reply_to = _str(arr[3], "reply_to")
    env.deadline = _int(arr[4], "deadline")
    env.sent = _int(arr[5], "sent")
    env.attempt = _int(arr[6], "attempt", unsigned=True, bits=32)
    h = arr[7]
    if h is not None:
        if not isinstance(h, dict):
            raise MalformedError("headers", "not a map")
        if len(h) > MAX_HEADERS:
            raise MalformedError("headers", f"{len(h)} headers, max {MAX_HEADERS}")
        for k, v in h.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise MalformedError("headers", "not a map of strings")
        env.headers = h
    p = arr[8]
    if p is None:
        env.payload = b""
    elif isinstance(p, bytes):
        env.payload = p
    elif isinstance(p, str):
        env.payload = p.encode("utf-8", "surrogateescape")
    else:
        raise MalformedError("payload", "not binary data")
    env.err_code = _str(arr[9], "err_code")
    env.err_msg = _str(arr[10], "err_msg")
    if n >= MIN_FIELDS + 2:
        env.queue_wait = _int(arr[11], "queue_wait")
        env.handler = _int(arr[12], "handler")
    if n >= FIELDS:
        env.cache_key = _str(arr[13], "cache_key")
        env.cache_ttl = _int(arr[14], "cache_ttl")
    if n >= FIELDS + 1:
        env.request_entry = _str(arr[15], "request_entry")
    if n >= STREAM_FIELDS:
        env.seq = _int(arr[16], "seq", unsigned=True)
        env.flags = _int(arr[17], "flags", unsigned=True)
    if n >= MAX_FIELDS:
        t = arr[18]
        if isinstance(t, str):
            t = t.encode("utf-8", "surrogateescape")
        if not isinstance(t, bytes) or len(t) not in (0, TOKEN_SIZE):
            raise MalformedError("token", f"not {TOKEN_SIZE} bytes of binary data")
        env.token = b"" if t == bytes(TOKEN_SIZE) else t
    env.extra = arr[MAX_FIELDS:]
    return env


# Compression (docs/wire.md, "Compression"): a flag in the envelope says how
# the payload is compressed, so every reader knows. Snappy's block format (what
# Go's s2.EncodeSnappy writes; python3-snappy) or one zstd frame stating its
# content size (python3-zstandard). The modules are imported when first needed.

#: the payload is in Snappy's block format
FLAG_SNAPPY = 2
#: the payload is one zstd frame that states its content size
FLAG_ZSTD = 4
_FLAG_COMPRESSED = FLAG_SNAPPY | FLAG_ZSTD
#: payloads under this many bytes are never compressed
DEFAULT_COMPRESS_MIN = 1024
#: the most any compressed payload decodes to (Redis's bulk-string limit)
_MAX_DECODED = 512 << 20
#: no valid Snappy block decodes to more than about 21 times its size
_SNAPPY_EXPANSION = 24
COMPRESSIONS = ("none", "s2", "zstd")


def check_compression(how: str | None) -> str:
    """``how`` as a compression's name ("none", "s2" or "snappy", "zstd"), or ValueError."""
    h = "none" if how in (None, "") else ("s2" if how == "snappy" else how)
    if h not in COMPRESSIONS:
        raise ValueError(f"compression {how!r}: want none, s2 or zstd")
    return str(h)


def _snappy() -> Any:
    """python3-snappy, imported when first needed (it has no type stubs)."""
    import snappy  # type: ignore[import]

    return snappy


def require(how: str | None) -> None:
    """Imports the module compression ``how`` needs: ImportError now, at a
    producer's construction, rather than at its first large payload."""
    h = check_compression(how)
    if h == "s2":
        _snappy()
    elif h == "zstd":
        import zstandard  # noqa: F401


def compression_of(env: Envelope) -> str:
    """How ``env``'s payload is compressed: "none", "s2" or "zstd"."""
    f = env.flags & _FLAG_COMPRESSED
    return "s2" if f == FLAG_SNAPPY else "zstd" if f == FLAG_ZSTD else "none"


def compress(env: Envelope, how: str | None, least: int = DEFAULT_COMPRESS_MIN) -> Envelope:
    """``env`` with its payload compressed by ``how`` when it is at least
    ``least`` bytes and that pays (it shrinks by an eighth or more), as the Go
    producer does; else ``env`` itself."""
    h = check_compression(how)
    if least <= 0:
        least = DEFAULT_COMPRESS_MIN
    p = env.payload
    if h == "none" or len(p) < least or env.flags & _FLAG_COMPRESSED:
        return env
    if h == "s2":
        snappy = _snappy()

        out, flag = bytes(snappy.compress(p)), FLAG_SNAPPY
    else:
        import zstandard

        out, flag = bytes(zstandard.ZstdCompressor(level=1, write_content_size=True).compress(p)), FLAG_ZSTD
    if len(out) > len(p) - len(p) // 8:
        return env
    return env.replace(payload=out, flags=env.flags | flag)


def _snappy_len(b: bytes) -> int | None:
    """The decoded length a Snappy block states (its leading varint), or None."""
    n, shift = 0, 0
    for i in range(min(len(b), 5)):
        n |= (b[i] & 0x7F) << shift
        if b[i] < 0x80:
            return n if n < 1 << 32 else None
        shift += 7
    return None


def decompress(env: Envelope, limit: int) -> Envelope:
    """``env`` with its payload decompressed (and the flag cleared); ``env``
    itself when it is not compressed. A payload that does not decode, would
    decode to more than ``limit`` bytes (``limit`` <= 0: no bound but 512 MiB),
    or has both flags raises MalformedError; nothing is allocated for a size a
    payload claims but cannot hold. A missing python3-snappy or
    python3-zstandard raises ImportError (not a malformed message)."""
    f = env.flags & _FLAG_COMPRESSED
    if f == 0:
        return env
    if f == _FLAG_COMPRESSED:
        raise MalformedError("flags", "both compression flags set")
    bound = min(limit, _MAX_DECODED) if limit > 0 else _MAX_DECODED
    if f == FLAG_SNAPPY:
        snappy = _snappy()

        n = _snappy_len(env.payload)
        if n is None or n > bound or n > _SNAPPY_EXPANSION * len(env.payload) + 64:
            raise MalformedError("payload", f"compressed payload (snappy) claims {n} bytes decoded from {len(env.payload)}, limit {bound}")
        try:
            out = bytes(snappy.uncompress(env.payload))
        except Exception as e:  # the library's own errors: corrupt input
            raise MalformedError("payload", f"compressed payload (snappy) is corrupt: {e}") from e
        if len(out) != n:
            raise MalformedError("payload", "compressed payload (snappy): decoded size differs from the block's")
    else:
        import zstandard

        try:
            size = zstandard.get_frame_parameters(env.payload).content_size
        except Exception as e:
            raise MalformedError("payload", f"compressed payload (zstd) is corrupt: {e}") from e
        if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) or size < 0 or size > bound:
            raise MalformedError("payload", f"compressed payload (zstd): a frame stating its content size within {bound} bytes is needed")
        d = zstandard.ZstdDecompressor().decompressobj()
        try:
            out = d.decompress(env.payload)  # grows with what the data holds, not what the header claims
        except Exception as e:
            raise MalformedError("payload", f"compressed payload (zstd) is corrupt: {e}") from e
        if len(out) != size or d.unused_data:
            raise MalformedError("payload", "compressed payload (zstd): not one frame of the size it states")
    return env.replace(payload=out, flags=env.flags & ~_FLAG_COMPRESSED)
