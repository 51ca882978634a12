"""Key builders (docs/wire.md, "Keys"): every key carries a hash tag."""

from __future__ import annotations

from .errors import InvalidConfig

DEFAULT_PREFIX = "myc"
PARTITION_SEP = "#"
MAX_PARTITIONS = 1024


def validate_name(kind: str, name: str) -> None:
    """Refuse a name the Go side would refuse (bus.ValidateName)."""
    if not name:
        raise InvalidConfig(f"{kind} name is empty")
    if kind == "prefix" and any(c in name for c in "*?[]\\"):
        raise InvalidConfig(f"prefix {name!r} contains a glob character")
    if kind == "topic" and PARTITION_SEP in name:
        raise InvalidConfig(f"topic name {name!r} contains {PARTITION_SEP!r}")
    if kind == "topic" and name.startswith("r."):
        raise InvalidConfig(f"topic name {name!r} starts with 'r.', which reply streams use")
    if len(name.encode("utf-8", "surrogatepass")) > 200:
        raise InvalidConfig(f"{kind} name is longer than 200 bytes")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidConfig(f"{kind} name {name!r} is not valid UTF-8") from None
    for c in name:
        if c in "{}" or ord(c) <= 0x20 or ord(c) == 0x7F:
            raise InvalidConfig(f"{kind} name {name!r} contains {c!r}")


def partition(topic: str, p: int) -> str:
    """The name of partition p of topic (the topic itself for 0)."""
    return topic if p == 0 else f"{topic}{PARTITION_SEP}{p}"


def partition_of(key: bytes | str, n: int) -> int:
    """FNV-1a 32 of the key modulo n: the partition a partition key goes to
    (producer.PartitionOf)."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    h = 2166136261
    for b in key:
        h ^= b
        h = (h * 16777619) & 0xFFFFFFFF
    return h % n


class Keys:
    """Builds the keys under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        validate_name("prefix", prefix)
        self.prefix = prefix

    def topic(self, topic: str) -> str:
        return f"{self.prefix}:{{{topic}}}"

    def reply(self, producer_id: str) -> str:
        return f"{self.prefix}:{{r.{producer_id}}}"

    def dead_letter(self, topic: str) -> str:
        return self.topic(topic) + ":dlq"

    def workers(self, topic: str) -> str:
        return self.topic(topic) + ":workers"

    def meta(self, topic: str) -> str:
        return self.topic(topic) + ":meta"

    def control(self, topic: str) -> str:
        return self.topic(topic) + ":ctl"

    def parse_reply(self, key: str) -> str | None:
        """The producer id of a reply stream key, or None."""
        p = self.prefix + ":{"
        if not key.startswith(p) or not key.endswith("}"):
            return None
        tag = key[len(p) : -1]
        if not tag or "{" in tag or "}" in tag or not tag.startswith("r.") or len(tag) == 2:
            return None
        return tag[2:]
