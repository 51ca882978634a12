"""Prometheus metrics under the Go names (package prom), for a Python
producer's and consumer's counters and stage timings.

``prometheus_client`` is optional: it is imported when a :class:`Metrics`
is made, and its absence raises :class:`InvalidConfig` saying what to
install (Debian: python3-prometheus-client; PyPI: prometheus-client).

Names, as Go's prom.statsCollector builds them from a Stats struct: every
int field of ``producer.stats`` / ``consumer.stats`` (dataclasses) is a
counter ``mycelium_<role>_<field>_total``, except the fields Go exports as
gauges (signed integers there: ``in_flight``, ``waiting``,
``cache_local_bytes``, ``cache_local_entries``; or a field whose metadata
has ``gauge=True``), which are ``mycelium_<role>_<field>``. Fields are read
generically on each scrape: a field added to a Stats dataclass appears
with no change here. Labels as Go's: ``producer`` (the producer's id) on
producer metrics; ``topic`` and ``group`` on consumer metrics. Help texts
are Go's where Go has the metric.

Go's names (prom/stats.go over producer.Stats and consumer.Stats; * marks
those the Python Stats have today, + the Python-only ones)::

    mycelium_producer_{published*, requests*, replies*, late*, timeouts*,
      remote_errors*, malformed*, write_errors, breaker_rejected,
      no_responders, writes, reply_reads, forged*, cancelled*, cancel_errors,
      streams, chunks, streams_broken, delayed, cache_hits_local,
      cache_hits_shared, cache_misses, coalesced_local, coalesced_remote,
      cache_takeovers, cache_corrupt, cache_evictions, backlog_waits*,
      backlog_full*, backlog_dropped*}_total
    mycelium_producer_{in_flight, cache_local_bytes, cache_local_entries}
    mycelium_consumer_{received*, handled*, failed*, replied*,
      reply_dropped*, acked*, expired*, dead_lettered*, panics,
      groups_created, retried*, reclaimed*, deleted_pending, heartbeats*,
      trimmed, consumers_removed, reads, flushes, cache_stores,
      coalesced_replies, cache_errors, cache_stale, chunks, cancelled*,
      delayed_retries, promoted, control_malformed*, write_errors+,
      lag_repaired*, permits_granted*, permit_waits*, permit_wait_seconds*,
      pauses*}_total
    mycelium_consumer_{in_flight, waiting}

Stage timings: ``mycelium_stage_duration_seconds{role, topic, stage}``, a
histogram with Go's buckets (metrics.ClassicBounds, 50 µs to 60 s). Stage
names are Go's (admission, cache, encode, redis_write, queue_wait,
retry_wait, handler, reply_write, reply_transit, decode, end_to_end,
first_chunk, chunk_transit, chunk_write); Go labels a producer's timings
role="producer", topic="" and a consumer's role="consumer" and its topic.
As in Go, watching a producer or consumer exports its role's stages empty
until observed, so dashboards see every stage.

Without a registry, :class:`Metrics` makes its own, with
prometheus_client's process, platform and GC collectors (the bus-worker's
registry has the Go runtime's and the process's). Go's stream, cache and
breaker gauges (mycelium_stream_*, mycelium_group_*, mycelium_cache_*,
mycelium_breaker_*, mycelium_redis_up) are not exported here.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .errors import InvalidConfig

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.metrics_core import Metric

__all__ = ["Metrics", "STAGES", "PRODUCER_STAGES", "CONSUMER_STAGES", "BUCKETS", "NAMESPACE"]

NAMESPACE = "mycelium"
#: Go's metrics.ClassicBounds, in seconds.
BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Go's stage names (metrics.Stage.String).
STAGES = ("admission", "cache", "encode", "redis_write", "queue_wait", "retry_wait", "handler", "reply_write",
          "reply_transit", "decode", "end_to_end", "first_chunk", "chunk_transit", "chunk_write")
#: The stages each role records (prom.producerStages, prom.consumerStages).
PRODUCER_STAGES = ("admission", "cache", "encode", "redis_write", "queue_wait", "retry_wait", "handler",
                   "reply_transit", "decode", "end_to_end", "first_chunk", "chunk_transit")
CONSUMER_STAGES = ("queue_wait", "retry_wait", "handler", "reply_write", "chunk_write")
ROLES = ("producer", "consumer")
STAGE_HELP = 'Time spent in each stage of the data path (see the README\'s "Timings and metrics" section).'

# Go's help tags (producer/stats.go, consumer/consumer.go), for the fields
# Python has or may grow; a field not here gets Go's fallback help.
_HELP: dict[str, dict[str, str]] = {
    "producer": {
        "published": "Events accepted by Redis.",
        "requests": "Requests accepted by Redis.",
        "replies": "Replies delivered to a waiting caller.",
        "late": "Replies dropped because no caller waited any more.",
        "timeouts": "Requests that ended with a timeout (bus.ErrTimeout).",
        "remote_errors": "Replies carrying a handler error.",
        "malformed": "Undecodable entries on the reply stream (skipped).",
        "in_flight": "Requests waiting for a reply now.",
        "write_errors": "Writes that failed: Redis refused them or did not answer (bus.ErrUnavailable).",
        "breaker_rejected": "Calls refused at once by an open circuit breaker (bus.ErrBreakerOpen).",
        "no_responders": "Requests refused at once because no worker served their topic (bus.ErrNoResponders).",
        "writes": "Pipelined XADD writes, each one round trip ((published + requests) / writes = entries per write).",
        "reply_reads": "Reply-stream reads that returned entries (replies / reply_reads = replies per read).",
        "forged": "Replies dropped because they answered a request entry this producer did not write with that correlation id (someone else wrote it).",
        "cancelled": "Cancel notices sent for requests their callers gave up (ctx cancelled, stream closed early, or abandoned by Close).",
        "cancel_errors": "Cancel notices Redis did not take (those handlers run until their deadline).",
        "backlog_waits": "Writes that waited for room in their topic's backlog (Backpressure Block).",
        "backlog_full": "Writes refused because their topic's backlog was full (bus.ErrBacklogFull: Reject, or Block past its wait).",
        "backlog_dropped": "Entries estimated trimmed before any worker finished them (Backpressure DropOldest: writes past StreamMaxLen).",
    },
    "consumer": {
        "received": "Entries read from the stream (new and reclaimed).",
        "handled": "Handler calls that returned.",
        "failed": "Handler calls that returned an error or panicked.",
        "replied": "Replies written to a live reply stream.",
        "reply_dropped": "Replies not written because the requester's reply stream is gone.",
        "acked": "Entries acknowledged.",
        "expired": "Requests acknowledged unprocessed because their caller's deadline had passed on arrival.",
        "dead_lettered": "Entries moved to the dead-letter stream.",
        "retried": "Failed entries left pending for another delivery.",
        "reclaimed": "Entries taken over after ClaimIdle (from dead or slow consumers, or retries).",
        "heartbeats": "Idle-time resets of long-running entries.",
        "in_flight": "Entries held now: read and not yet acknowledged.",
        "reads": "XREADGROUP calls that returned entries (received / reads = entries per read).",
        "flushes": "Pipelined writes of replies and acknowledgements (acked / flushes = entries per write).",
        "cancelled": "Requests their callers cancelled: handlers cancelled while running, and requests acknowledged unhandled at pick-up.",
        "waiting": "Delayed retries this consumer holds now, waiting for their due time.",
        "control_malformed": "Malformed notices skipped on the topic's control stream.",
        "permits_granted": "Permits granted by the topic's fleet-wide limits (one per entry read while a limit is set).",
        "permit_waits": "Times a read waited for permits: a limit (rate, tokens, concurrency) held, or the topic was paused.",
        "permit_wait_seconds": "Seconds spent waiting for permits (summed over the reader and the reclaimers).",
        "pauses": "Times a handler paused the topic for the fleet (PauseTopic, or RetryAfter with Retry.PauseOnRetryAfter).",
        "lag_repaired": "Times the group's lag was put right after entries had been trimmed before it read them (Redis 7 overcounts it; producers' backpressure reads it).",
    },
}
# Signed integer fields in Go: gauges, without _total.
_GAUGES = frozenset({"in_flight", "waiting", "cache_local_bytes", "cache_local_entries"})


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise InvalidConfig("Prometheus metrics need the prometheus_client package: install python3-prometheus-client "
                            "(Debian) or prometheus-client (PyPI)") from None
    return prometheus_client


def _fields(stats: Any) -> Iterator[tuple[str, float, bool]]:
    """(name, value, is_gauge) of every number field of a Stats object
    (a float is seconds, counted: a counter, as Go's float64 fields)."""
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        items = [(f.name, getattr(stats, f.name), bool(f.metadata.get("gauge"))) for f in dataclasses.fields(stats)]
    else:
        items = [(k, v, False) for k, v in vars(stats).items()]
    for name, value, gauge in items:
        if name.startswith("_") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        yield name, value, gauge or name in _GAUGES


class Metrics:
    """Prometheus metrics of producers and consumers, under Go's names (see
    the module doc). ``registry`` defaults to a registry of its own (with
    the process, platform and GC collectors); pass
    ``prometheus_client.REGISTRY`` to share the global one. Scrapes read
    the watched objects' ``stats`` on the spot: recording costs nothing
    more than the counters they keep already."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prom = _prometheus()
        if registry is None:
            registry = prom.CollectorRegistry()
            prom.ProcessCollector(registry=registry)
            prom.PlatformCollector(registry=registry)
            prom.GCCollector(registry=registry)
        self.registry: CollectorRegistry = registry
        self.content_type: str = prom.CONTENT_TYPE_LATEST
        self._lock = threading.Lock()  # scrapes may run on another thread (prometheus_client's own server)
        self._watched: list[tuple[str, Any, dict[str, str]]] = []
        self._stages: Histogram = prom.Histogram(
            f"{NAMESPACE}_stage_duration_seconds", STAGE_HELP, labelnames=("role", "topic", "stage"),
            buckets=BUCKETS, registry=registry)
        registry.register(_collector(self))

    # -- watching ---------------------------------------------------------

    def watch_producer(self, p: Any) -> None:
        """Exports ``p.stats`` as mycelium_producer_* (label producer=``p.id``)
        and its role's stages, empty until observed."""
        self._watch("producer", p, {"producer": str(getattr(p, "id", ""))}, PRODUCER_STAGES, "")

    def watch_consumer(self, c: Any) -> None:
        """Exports ``c.stats`` as mycelium_consumer_* (labels topic, group)
        and its role's stages, empty until observed."""
        topic = str(getattr(c, "topic", ""))
        self._watch("consumer", c, {"topic": topic, "group": str(getattr(c, "group", ""))}, CONSUMER_STAGES, topic)

    def unwatch(self, obj: Any) -> None:
        """Stops exporting ``obj``'s counters (its stage series stay)."""
        with self._lock:
            self._watched = [w for w in self._watched if w[1] is not obj]

    def _watch(self, role: str, obj: Any, labels: dict[str, str], stages: Iterable[str], topic: str) -> None:
        if not hasattr(obj, "stats"):
            raise InvalidConfig(f"watch_{role}: {type(obj).__name__} has no stats")
        with self._lock:
            if any(w[1] is obj for w in self._watched):
                return
            if any(w[0] == role and w[2] == labels for w in self._watched):
                raise InvalidConfig(f"watch_{role}: another {role} with the same labels {labels} is watched already")
            self._watched.append((role, obj, labels))
        for st in stages:
            self._stages.labels(role, topic, st)

    # -- timings ------------------------------------------------------------

    def observe_stage(self, stage: str, seconds: float, *, role: str = "", topic: str = "") -> None:
        """Records ``seconds`` spent in ``stage`` (one of :data:`STAGES`;
        another name raises InvalidConfig: label values stay bounded).
        Pass ``role`` ("producer" or "consumer") and, for a consumer, its
        ``topic``, as Go labels them; negative durations count as 0."""
        if stage not in STAGES:
            raise InvalidConfig(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
        if role not in ROLES and role != "":
            raise InvalidConfig(f"role {role!r}: producer or consumer")
        if math.isnan(seconds):
            return
        self._stages.labels(role, topic, stage).observe(max(0.0, seconds))

    # -- exposition ---------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format (``content_type``)."""
        prom = _prometheus()
        out: bytes = prom.generate_latest(self.registry)
        return out

    def _collect(self) -> list[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            watched = list(self._watched)
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for role, obj, labels in watched:
            names = list(labels)
            for name, value, gauge in _fields(obj.stats):
                full = f"{NAMESPACE}_{role}_{name}"
                fam = families.get(full)
                if fam is None:
                    help_ = _HELP[role].get(name) or f"{role} {name.replace('_', ' ')}"
                    fam = families[full] = (GaugeMetricFamily(full, help_, labels=names) if gauge
                                            else CounterMetricFamily(full, help_, labels=names))
                fam.add_metric([labels[n] for n in names], float(value))
        return list(families.values())


def _collector(m: Metrics) -> Any:
    """A prometheus_client Collector reading ``m``'s watched objects (made
    here: prometheus_client is imported lazily)."""
    from prometheus_client.registry import Collector

    class StatsCollector(Collector):
        def collect(self) -> Iterable[Metric]:
            return m._collect()

        def describe(self) -> Iterable[Metric]:
            return []  # names vary with what is watched: no collision check at registration

    return StatsCollector()
