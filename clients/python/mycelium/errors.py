"""Errors, mirroring the Go sentinels (package bus): catch the class."""

from __future__ import annotations


class MyceliumError(Exception):
    """Base of every error this package raises."""


class BusTimeout(MyceliumError, TimeoutError):
    """The deadline passed before a reply arrived (Go: bus.ErrTimeout)."""


class RemoteError(MyceliumError):
    """The handler failed: its code and message (Go: *bus.RemoteError).

    A Python handler raises one to choose the code the caller sees; any
    other exception arrives as ``handler_error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"remote error ({code}): {message}")
        self.code = code
        self.message = message


class PayloadTooLarge(MyceliumError, ValueError):
    """A payload or its headers exceed the configured maximum."""


class Closed(MyceliumError):
    """The producer or consumer was closed."""


class NoResponders(MyceliumError):
    """No worker serves the topic: the request failed at once and nothing
    was written (Go: bus.ErrNoResponders)."""


class Unavailable(MyceliumError, ConnectionError):
    """Redis could not be reached or did not answer (Go: bus.ErrUnavailable)."""


class PermissionDenied(MyceliumError, PermissionError):
    """Redis refused the credentials or a command (WRONGPASS, NOAUTH,
    NOPERM): retrying will not help (Go: bus.ErrPermission)."""


class InvalidConfig(MyceliumError, ValueError):
    """A bad name, option or URL."""


class MalformedError(MyceliumError, ValueError):
    """Bytes that are not a Mycelium envelope (Go: codec.ErrMalformed)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"malformed envelope: {field}: {reason}")
        self.field = field
        self.reason = reason


#: Remote error codes the Go and Python workers set.
CODE_HANDLER = "handler_error"
CODE_PANIC = "panic"


class RedisFailed(MyceliumError):
    """Redis answered a command with an error that is neither a refusal
    (PermissionDenied) nor unavailability (Unavailable): a wrong type, a
    command the server does not know, a script error."""
