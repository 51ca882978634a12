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


class NotStreaming(MyceliumError):
    """``Message.send`` on a request whose caller reads a whole reply, or on
    an event (Go: bus.ErrNotStreaming)."""


class CallerGone(MyceliumError):
    """``Message.send`` found the caller's reply stream gone: it closed or
    its stream expired (Go: bus.ErrCallerGone)."""


class StreamBroken(MyceliumError):
    """A streamed reply cannot go on: a chunk is missing (the reply stream
    was trimmed), the request was delivered again after chunks were read, or
    the caller read too slowly (Go: bus.ErrStreamBroken)."""


class RetryAfter(MyceliumError):
    """Raised by a handler: deliver this message again after at least
    ``delay`` seconds (a model provider's Retry-After, say), counted toward
    ``max_deliveries`` (Go: consumer.RetryAfter). The delay grows with the
    attempts (``retry_backoff`` doubled per delivery up to
    ``retry_backoff_max``; the larger applies) plus up to a twentieth of
    jitter. A request is retried only when its caller's deadline leaves time
    for the delay; otherwise the caller gets the error at once."""

    def __init__(self, delay: float, cause: BaseException | str | None = None, *, pause: bool = False) -> None:
        self.delay = max(float(delay), 0.0)
        self.cause = cause
        #: also pause the topic for every worker of the fleet for the delay
        #: (Go: consumer.PauseTopic; docs/flow-control.md)
        self.pause = pause
        super().__init__(f"retry after {self.delay:g}s" + (f": {cause}" if cause else ""))


class BacklogFull(MyceliumError):
    """A write found its topic stream's backlog (entries its workers have
    not finished) at the limit: refused at once (``backpressure="reject"``)
    or after waiting ``backlog_max_wait`` (``"block"``); nothing was
    written (Go: bus.ErrBacklogFull, *bus.BacklogError)."""

    def __init__(self, topic: str, backlog: int, limit: int, waited: float = 0.0) -> None:
        self.topic, self.backlog, self.limit, self.waited = topic, backlog, limit, waited
        super().__init__(f"backlog of {topic!r} full: {backlog} unfinished entries, limit {limit}"
                         + (f" (waited {waited:.3g}s)" if waited else ""))


class DelayedFull(PayloadTooLarge):
    """A delayed event was refused: its partition's delayed set holds
    ``stream_max_len`` entries (Go: bus.ErrDelayedFull)."""


class RedisFailed(MyceliumError):
    """Redis refused a command for another reason than permissions (a key
    of the wrong type, a script error, OOM): the text says which."""
