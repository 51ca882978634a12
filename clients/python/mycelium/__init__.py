"""Mycelium for Python: call Mycelium workers and serve Mycelium topics over
Redis Streams, on the same wire as the Go packages (docs/wire.md)."""

from ._cache import CacheConfig
from .breaker import BreakerConfig, BreakerOpen
from .codec import Envelope
from ._limits import COST_HEADER
from .consumer import Consumer, Message, Serving
from .errors import (
    BacklogFull,
    BusTimeout,
    CallerGone,
    Closed,
    DelayedFull,
    InvalidConfig,
    MalformedError,
    MyceliumError,
    NoResponders,
    NotStreaming,
    PayloadTooLarge,
    PermissionDenied,
    RedisFailed,
    RemoteError,
    RetryAfter,
    StreamBroken,
    Unavailable,
)
from .producer import Producer, PublishInfo, Reply

__all__ = [
    "COST_HEADER", "BacklogFull", "BreakerConfig", "BreakerOpen", "BusTimeout", "CacheConfig", "CallerGone", "Closed", "Consumer", "DelayedFull", "Envelope", "InvalidConfig",
    "MalformedError", "Message", "MyceliumError", "NoResponders", "NotStreaming", "PayloadTooLarge", "PermissionDenied",
    "Producer", "PublishInfo", "RedisFailed", "RemoteError", "Reply", "RetryAfter", "Serving", "StreamBroken", "Unavailable",
]
__version__ = "0.1.0"
