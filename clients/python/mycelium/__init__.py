"""Mycelium for Python: call Mycelium workers and serve Mycelium topics over
Redis Streams, on the same wire as the Go packages (docs/wire.md)."""

from .codec import Envelope
from .consumer import Consumer, Message
from .producer import Producer
from .errors import (
    BusTimeout,
    Closed,
    InvalidConfig,
    MalformedError,
    MyceliumError,
    NoResponders,
    PayloadTooLarge,
    PermissionDenied,
    RemoteError,
    Unavailable,
)

__all__ = [
    "BusTimeout", "Closed", "Envelope", "InvalidConfig", "MalformedError", "MyceliumError",
    "NoResponders", "PayloadTooLarge", "PermissionDenied", "RemoteError", "Unavailable", "Producer", "Consumer", "Message",
]
__version__ = "0.1.0"
