"""The envelope codec against the Go encoder's golden output, and property
tests (hypothesis) that what encodes decodes to the same envelope."""

from __future__ import annotations

import json
import random
import pathlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mycelium import codec
from mycelium.errors import MalformedError

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "envelopes.json").read_text())


def from_golden(g: dict) -> codec.Envelope:
    return codec.Envelope(
        kind=g["kind"], id=g["id"], reply_to=g["reply_to"], deadline=g["deadline"], sent=g["sent"],
        attempt=g["attempt"], headers=g["headers"], payload=bytes.fromhex(g["payload_hex"]),
        err_code=g["err_code"], err_msg=g["err_msg"], queue_wait=g["queue_wait"], handler=g["handler"],
        cache_key=g["cache_key"], cache_ttl=g["cache_ttl"], request_entry=g["request_entry"],
        seq=g["seq"], flags=g["flags"], token=bytes.fromhex(g.get("token_hex", "")),
    )


@pytest.mark.parametrize("g", GOLDEN, ids=[g["name"] for g in GOLDEN])
def test_golden_encode(g: dict) -> None:
    # Headers are a map: with more than one, Go writes them in any order.
    assert codec.encode(from_golden(g)).hex() == g["encoded_hex"]


@pytest.mark.parametrize("g", GOLDEN, ids=[g["name"] for g in GOLDEN])
def test_golden_decode(g: dict) -> None:
    got = codec.decode(bytes.fromhex(g["encoded_hex"]))
    want = from_golden(g)
    if want.headers == {}:
        assert got.headers == {}
    assert got == want


texts = st.text(max_size=300)
i64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
envelopes = st.builds(
    codec.Envelope,
    kind=st.integers(min_value=0, max_value=4),
    id=texts, reply_to=texts, deadline=i64, sent=i64,
    attempt=st.integers(min_value=0, max_value=(1 << 32) - 1),
    headers=st.one_of(st.none(), st.dictionaries(texts, texts, max_size=20)),
    payload=st.binary(max_size=70_000),
    err_code=texts, err_msg=texts, queue_wait=i64, handler=i64, cache_key=texts, cache_ttl=i64,
    request_entry=texts, seq=u64, flags=u64,
    token=st.one_of(st.just(b""), st.binary(min_size=16, max_size=16).filter(lambda b: b != bytes(16))),
)


@given(envelopes)
@settings(max_examples=300, deadline=None)
def test_round_trip(env: codec.Envelope) -> None:
    b = codec.encode(env)
    got = codec.decode(b)
    assert got == env
    # The msgpack library reads it as a plain array of the documented length.
    arr = msgpack.unpackb(b, raw=False, strict_map_key=False)
    want = 19 if env.token else 18 if (env.seq or env.flags) else 16 if env.request_entry else 15
    assert len(arr) == want


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_decode_never_raises_anything_else(data: bytes) -> None:
    try:
        env = codec.decode(data)
    except MalformedError:
        return
    assert codec.decode(codec.encode(env)) == env


def test_rejects() -> None:
    ok = codec.encode(codec.Envelope(kind=codec.REQUEST, id="x"))
    bad = {
        "not an array": msgpack.packb({"a": 1}),
        "too short": msgpack.packb([1, 0, "", "", 0, 0, 0, None, b""]),
        "version 2": b"\x9f\x02" + ok[2:],
        "kind 9": b"\x9f\x01\x09" + ok[3:],
        "trailing bytes": ok + b"\x00",
        "bool as int": msgpack.packb([1, 0, "", "", True, 0, 0, None, b"", "", ""]),
        "negative attempt": msgpack.packb([1, 0, "", "", 0, 0, -1, None, b"", "", ""]),
        "headers not strings": msgpack.packb([1, 0, "", "", 0, 0, 0, {"a": 1}, b"", "", ""]),
        "garbage": b"garbage",
        "short token": msgpack.packb([1, 1, "", "", 0, 0, 0, None, b"", "", "", 0, 0, "", 0, "", 0, 0, b"12345"], use_bin_type=True),
    }
    for name, b in bad.items():
        with pytest.raises(MalformedError):
            codec.decode(b)
        assert name


def test_trailing_fields_skipped() -> None:
    tok = bytes(range(1, 17))
    arr = msgpack.unpackb(codec.encode(codec.Envelope(kind=codec.REQUEST, seq=2, request_entry="1-1", token=tok)), raw=False)
    arr += [{"future": [1, 2]}, 1.5]
    got = codec.decode(msgpack.packb(arr, use_bin_type=True))
    assert got.seq == 2 and got.request_entry == "1-1" and got.token == tok and len(got.extra) == 2


@pytest.mark.parametrize("url", [
    "redis://user:S3cretPW/ret9@127.0.0.1:6379", "redis://user:S3cretPW#x@127.0.0.1:6379",
    "redis://user:S3cretPW?x@127.0.0.1:6379", "redis://user:S3cretPW@127.0.0.1:abc",
])
def test_bad_url_never_shows_the_password(url: str) -> None:
    """Security issue, point 11: a password holding '/', '#' or '?' leaked the
    part before the character; every bad URL's error hides it."""
    from mycelium.errors import InvalidConfig
    from mycelium.connect import build_client, redact_url

    with pytest.raises(InvalidConfig) as e:
        build_client(url)
    for part in ("S3cretPW", "ret9"):
        assert part not in str(e.value)
        assert part not in redact_url(url)


COMPRESSED = json.loads((pathlib.Path(__file__).parent / "golden" / "compressed.json").read_text())


@pytest.mark.parametrize("g", COMPRESSED, ids=[g["name"] for g in COMPRESSED])
def test_golden_compressed(g: dict) -> None:
    """What the Go producer compresses, Python decompresses (and the limit holds)."""
    env = codec.decode(bytes.fromhex(g["encoded_hex"]))
    plain = bytes.fromhex(g["plain_hex"])
    assert env.flags == g["flags"] and codec.compression_of(env) == g["name"]
    out = codec.decompress(env, len(plain))
    assert out.payload == plain and out.flags == codec.FLAG_STREAM and codec.compression_of(out) == "none"
    with pytest.raises(MalformedError):
        codec.decompress(env, len(plain) - 1)


@pytest.mark.parametrize("how", ["s2", "zstd"])
def test_compress_round_trip_and_skips(how: str) -> None:
    text = b'{"role":"user","content":"summarise the quarterly report"},' * 200
    env = codec.compress(codec.Envelope(kind=codec.REQUEST, payload=text), how)
    assert codec.compression_of(env) == how and len(env.payload) < len(text) // 4
    assert codec.decompress(codec.decode(codec.encode(env)), 0).payload == text
    rnd = random.Random(1).randbytes(64 << 10)
    assert codec.compress(codec.Envelope(payload=rnd), how).payload == rnd  # does not pay: sent as it is
    assert codec.compress(codec.Envelope(payload=text[:500]), how).payload == text[:500]  # under the minimum
    for bad in (codec.Envelope(flags=codec.FLAG_SNAPPY | codec.FLAG_ZSTD, payload=b"x"),
                codec.Envelope(flags=codec.FLAG_ZSTD, payload=b"not zstd"),
                codec.Envelope(flags=codec.FLAG_SNAPPY, payload=b"\xff\xff\xff\xff\x0f")):
        with pytest.raises(MalformedError):
            codec.decompress(bad, 1 << 20)
    with pytest.raises(ValueError):
        codec.check_compression("gzip")


def test_decompress_refuses_claims_it_cannot_back() -> None:
    """A few bytes claiming a huge payload are refused without allocating it."""
    import tracemalloc

    tracemalloc.start()
    try:
        for env in (codec.Envelope(flags=codec.FLAG_SNAPPY, payload=bytes([0x80, 0x80, 0x80, 0x80, 0x02, 0, 0])),
                    codec.Envelope(flags=codec.FLAG_ZSTD, payload=bytes([0x28, 0xB5, 0x2F, 0xFD, 0x84, 0, 0, 0, 0x10, 0, 0, 0]))):
            with pytest.raises(MalformedError):
                codec.decompress(env, 0)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
