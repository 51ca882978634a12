"""mycelium.metrics: Go's names, labels and buckets in the exposition text,
read from fake producers and consumers (no Redis)."""

from __future__ import annotations

import builtins
import dataclasses
import re
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client", reason="python3-prometheus-client not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mycelium import consumer, producer  # noqa: E402
from mycelium.errors import InvalidConfig  # noqa: E402
from mycelium.metrics import BUCKETS, CONSUMER_STAGES, PRODUCER_STAGES, Metrics  # noqa: E402


class FakeProducer:
    def __init__(self, pid: str) -> None:
        self.id = pid
        self.stats = producer.Stats()


class FakeConsumer:
    def __init__(self, topic: str, group: str = "workers") -> None:
        self.topic, self.group = topic, group
        self.stats = consumer.Stats()


@dataclasses.dataclass
class GrownStats:
    """Stats with fields the Python client does not have today."""

    published: int = 0
    brand_new: int = 0
    in_flight: int = 0
    depth: int = dataclasses.field(default=0, metadata={"gauge": True})
    ok: bool = True  # not an int counter
    name: str = "x"


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def lines(m: Metrics, prefix: str) -> list[str]:
    return [ln for ln in m.exposition().decode().splitlines() if ln.startswith(prefix)]


def test_producer_counters_have_go_names_and_labels() -> None:
    m = Metrics()
    p = FakeProducer("p1")
    m.watch_producer(p)
    p.stats.published = 3
    p.stats.requests = 5
    p.stats.remote_errors = 1
    s = samples(m)
    lab = frozenset({("producer", "p1")})
    assert s[("mycelium_producer_published_total", lab)] == 3
    assert s[("mycelium_producer_requests_total", lab)] == 5
    assert s[("mycelium_producer_remote_errors_total", lab)] == 1
    assert s[("mycelium_producer_forged_total", lab)] == 0
    for f in dataclasses.fields(producer.Stats):  # every field, read on each scrape
        assert (f"mycelium_producer_{f.name}_total", lab) in s
    text = m.exposition().decode()
    assert "# TYPE mycelium_producer_published_total counter" in text  # as Go writes it
    assert "# HELP mycelium_producer_published_total Events accepted by Redis." in text
    p.stats.published = 4
    assert samples(m)[("mycelium_producer_published_total", lab)] == 4


def test_consumer_counters_labelled_topic_and_group() -> None:
    m = Metrics()
    a, b = FakeConsumer("orders"), FakeConsumer("audit", "g2")
    m.watch_consumer(a)
    m.watch_consumer(b)
    a.stats.handled, b.stats.handled = 7, 2
    a.stats.dead_lettered = 1
    s = samples(m)
    assert s[("mycelium_consumer_handled_total", frozenset({("topic", "orders"), ("group", "workers")}))] == 7
    assert s[("mycelium_consumer_handled_total", frozenset({("topic", "audit"), ("group", "g2")}))] == 2
    assert s[("mycelium_consumer_dead_lettered_total", frozenset({("topic", "orders"), ("group", "workers")}))] == 1
    assert len(lines(m, "mycelium_consumer_handled_total{")) == 2  # one family, two series
    assert "# HELP mycelium_consumer_expired_total Requests acknowledged unprocessed" in m.exposition().decode()


def test_unknown_fields_generically_and_go_gauges() -> None:
    m = Metrics()
    p = FakeProducer("p2")
    p.stats = GrownStats(published=1, brand_new=9, in_flight=4, depth=-2)  # type: ignore[assignment]
    m.watch_producer(p)
    s = samples(m)
    lab = frozenset({("producer", "p2")})
    assert s[("mycelium_producer_brand_new_total", lab)] == 9
    assert s[("mycelium_producer_in_flight", lab)] == 4  # a gauge in Go: no _total
    assert s[("mycelium_producer_depth", lab)] == -2
    text = m.exposition().decode()
    assert "# TYPE mycelium_producer_in_flight gauge" in text
    assert "# HELP mycelium_producer_brand_new_total producer brand new" in text  # Go's fallback help
    assert "mycelium_producer_ok" not in text and "mycelium_producer_name" not in text


def test_stage_histogram_go_buckets() -> None:
    m = Metrics()
    m.watch_consumer(FakeConsumer("t"))
    m.observe_stage("handler", 40e-6, role="consumer", topic="t")  # le 5e-05
    m.observe_stage("handler", 100e-6, role="consumer", topic="t")  # exactly on le 0.0001
    m.observe_stage("handler", 120.0, role="consumer", topic="t")  # +Inf only
    s = samples(m)

    def get(suffix: str, stage: str, **extra: str) -> float:
        return s[(f"mycelium_stage_duration_seconds{suffix}",
                  frozenset({("role", "consumer"), ("topic", "t"), ("stage", stage), *extra.items()}))]

    assert get("_count", "handler") == 3
    assert abs(get("_sum", "handler") - 120.00014) < 1e-9
    assert get("_bucket", "handler", le="5e-05") == 1
    assert get("_bucket", "handler", le="0.0001") == 2
    assert get("_bucket", "handler", le="60.0") == 2
    assert get("_bucket", "handler", le="+Inf") == 3
    les = [ln for ln in lines(m, "mycelium_stage_duration_seconds_bucket{") if 'stage="handler"' in ln]
    assert len(les) == len(BUCKETS) + 1
    for st in CONSUMER_STAGES:  # exported empty, as in Go
        assert get("_count", st) == (3 if st == "handler" else 0)
    assert not any('stage="decode"' in ln and 'role="consumer"' in ln for ln in lines(m, "mycelium_stage"))


def test_producer_stages_exported_empty() -> None:
    m = Metrics()
    m.watch_producer(FakeProducer("p"))
    m.observe_stage("end_to_end", 0.003, role="producer")
    s = samples(m)
    for st in PRODUCER_STAGES:
        key = ("mycelium_stage_duration_seconds_count", frozenset({("role", "producer"), ("topic", ""), ("stage", st)}))
        assert s[key] == (1 if st == "end_to_end" else 0)


def test_observe_stage_refuses_unknown_names() -> None:
    m = Metrics()
    with pytest.raises(InvalidConfig, match="unknown stage"):
        m.observe_stage("whatever", 1.0)
    with pytest.raises(InvalidConfig, match="role"):
        m.observe_stage("handler", 1.0, role="boss")
    m.observe_stage("handler", -1.0, role="consumer", topic="t")  # counted as 0
    assert samples(m)[("mycelium_stage_duration_seconds_bucket",
                       frozenset({("role", "consumer"), ("topic", "t"), ("stage", "handler"), ("le", "5e-05")}))] == 1


def test_watch_rules_and_unwatch() -> None:
    m = Metrics()
    p = FakeProducer("same")
    m.watch_producer(p)
    m.watch_producer(p)  # twice: once
    assert len(lines(m, "mycelium_producer_published_total{")) == 1
    with pytest.raises(InvalidConfig, match="same labels"):
        m.watch_producer(FakeProducer("same"))
    with pytest.raises(InvalidConfig, match="no stats"):
        m.watch_consumer(object())
    m.unwatch(p)
    assert lines(m, "mycelium_producer_") == []


def test_shared_registry_and_own_registry() -> None:
    reg = prometheus_client.CollectorRegistry()
    m = Metrics(reg)
    m.watch_producer(FakeProducer("x"))
    assert m.registry is reg
    assert "process_" not in m.exposition().decode()  # only what was asked for
    own = Metrics()
    assert re.search(r"^python_info\{", own.exposition().decode(), re.M)  # platform collector on its own registry
    assert own.content_type.startswith("text/plain")
    with pytest.raises(ValueError):  # one Metrics per registry: Go's names are registered once
        Metrics(reg)


def test_missing_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_prom(name: str, *args: Any, **kw: Any) -> Any:
        if name.startswith("prometheus_client"):
            raise ImportError("No module named 'prometheus_client'")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_prom)
    with pytest.raises(InvalidConfig, match="python3-prometheus-client"):
        Metrics()
