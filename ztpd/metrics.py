"""Metrics: a small registry rendered in the Prometheus text format (version 0.0.4).

ztpd's own registry instead of prometheus_client: the whole need is counters, gauges and
histograms with labels, one instance per process handed to services through constructors (no
global default registry), and name checks at definition time so a badly named metric fails
the first test that builds it rather than a scrape. Every metric is safe to update from any
thread (DHCP, TFTP and the store run in threads).

Services get ``Metrics`` (the one set ztpd exposes) and call e.g.
``metrics.dhcp_packets.inc(type="discover", outcome="offered")``. Values that live in the
store (nodes per state, leases in use) are read when /metrics is scraped, not counted.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from ztpd import __version__

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Base units only (Prometheus naming): seconds not milliseconds, bytes not kilobytes.
_BAD_UNITS = ("_milliseconds", "_ms", "_kilobytes", "_megabytes", "_minutes", "_hours")
DEFAULT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)

Labels = tuple[str, ...]
M = TypeVar("M", bound="_Metric")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def _series(name: str, names: Labels, values: Labels, extra: str = "") -> str:
    pairs = [f'{k}="{_escape(v)}"' for k, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return f"{name}{{{','.join(pairs)}}}" if pairs else name


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _NAME.match(name) or name.startswith("__"):
            raise ValueError(f"metric name {name!r} is not a valid Prometheus name")
        if name.endswith(_BAD_UNITS):
            raise ValueError(f"metric {name}: use base units (seconds, bytes)")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"metric {name}: label {label!r} is not allowed")
        if not help:
            raise ValueError(f"metric {name} needs a help text")
        self.name = name
        self.help = help
        self.labels: Labels = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, str]) -> Labels:
        if set(labels) != set(self.labels):
            raise ValueError(f"metric {self.name} takes labels {self.labels}, got {sorted(labels)}")
        return tuple(str(labels[k]) for k in self.labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class _Scalar(_Metric):
    """One number per label combination (counters and gauges)."""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[Labels, float] = {}

    def _add(self, amount: float, labels: Mapping[str, str]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        """The sum over every label combination."""
        with self._lock:
            return sum(self._values.values())

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{_series(self.name, self.labels, k)} {_number(v)}" for k, v in items]


class Counter(_Scalar):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        super().__init__(name, help, labels)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot go down")
        self._add(amount, labels)

    def mirror(self, values: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """Take every series from a service's own monotonic counters (read at scrape time)."""
        fresh = {self._key(labels): v for labels, v in values}
        with self._lock:
            self._values = fresh


class Gauge(_Scalar):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        if name.endswith("_total"):
            raise ValueError(f"gauge {name} must not end in _total (that marks counters)")
        super().__init__(name, help, labels)

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._add(amount, labels)

    def replace(self, values: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """Set every series at once (a snapshot read from the store); others disappear."""
        fresh = {self._key(labels): v for labels, v in values}
        with self._lock:
            self._values = fresh


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help, labels)
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"histogram {name}: buckets must be increasing")
        self.buckets = tuple(float(b) for b in buckets)
        # per series: counts per bucket (not cumulative), sum, count
        self._values: dict[Labels, tuple[list[int], float, int]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total, n = self._values.get(key, ([0] * len(self.buckets), 0.0, 0))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            self._values[key] = (counts, total + value, n + 1)

    def count(self, **labels: str) -> int:
        with self._lock:
            return self._values.get(self._key(labels), ([], 0.0, 0))[2]

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s, n)) for k, (c, s, n) in self._values.items())
        out = []
        for key, (counts, total, n) in items:
            running = 0
            for bound, c in zip(self.buckets, counts, strict=True):
                running += c
                le = f'le="{_number(bound)}"'
                out.append(f"{_series(self.name + '_bucket', self.labels, key, le)} {running}")
            inf = 'le="+Inf"'
            out.append(f"{_series(self.name + '_bucket', self.labels, key, inf)} {n}")
            out.append(f"{_series(self.name + '_sum', self.labels, key)} {_number(total)}")
            out.append(f"{_series(self.name + '_count', self.labels, key)} {n}")
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def _register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is defined twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labels))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._register(Histogram(name, help, labels, buckets))

    def on_collect(self, collector: Callable[[], None]) -> None:
        """Run ``collector`` before each render (it refreshes gauges from their source)."""
        self._collectors.append(collector)

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        lines: list[str] = []
        for metric in sorted(self._metrics.values(), key=lambda m: m.name):
            lines += metric.header() + metric.samples()
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The metrics ztpd exposes. One instance per process, passed to every service."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.build_info = r.gauge("ztpd_build_info", "ztpd version (always 1)", ["version"])
        self.build_info.set(1, version=__version__)
        self.dhcp_packets = r.counter(
            "ztpd_dhcp_packets_total",
            "DHCP packets by message type and what ztpd did with them",
            ["type", "outcome"],
        )
        self.dhcp_store_writes = r.counter(
            "ztpd_dhcp_store_writes_total",
            "Rows the DHCP writer committed: leases (before their ACK) and node sightings",
            ["kind"],
        )
        self.dhcp_leases = r.gauge(
            "ztpd_dhcp_leases_in_use", "Bound, unexpired DHCP leases per subnet", ["subnet"]
        )
        self.boots = r.counter(
            "ztpd_boots_total", "Boot scripts served, by client architecture", ["arch"]
        )
        self.http_requests = r.counter(
            "ztpd_http_requests_total",
            "HTTP requests by method, route and status code",
            ["method", "route", "code"],
        )
        self.http_bytes = r.counter(
            "ztpd_http_response_bytes_total", "HTTP response body bytes by route", ["route"]
        )
        self.tftp_requests = r.counter(
            "ztpd_tftp_requests_total", "TFTP read requests by outcome", ["outcome"]
        )
        self.tftp_bytes = r.counter("ztpd_tftp_sent_bytes_total", "TFTP payload bytes sent")
        self.nodes = r.gauge("ztpd_nodes", "Nodes by lifecycle state", ["state"])
        self.phase_seconds = r.histogram(
            "ztpd_lifecycle_phase_duration_seconds",
            "Time nodes spent in a lifecycle state before leaving it",
            ["state"],
        )
        self.failures = r.counter(
            "ztpd_node_failures_total",
            "Nodes that failed, by the state they failed in and the cause",
            ["state", "cause"],
        )
        self.heartbeats = r.counter(
            "ztpd_agent_heartbeats_total", "Heartbeats received from discovery agents"
        )

    def render(self) -> str:
        return self.registry.render()
