"""Server metrics in the Prometheus text exposition format (version 0.0.4), written here: no dependency.

Counters, gauges and histograms live on a :class:`Metrics` instance (no module globals) and are safe to update
from the event loop and the render thread alike.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass
class _Metric:
    name: str
    help: str
    labelnames: tuple[str, ...] = ()
    kind: str = "untyped"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


@dataclass
class Counter(_Metric):
    kind: str = "counter"
    values: dict[LabelValues, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self.values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


@dataclass
class Gauge(_Metric):
    """A value read when scraped (``read`` returns ``{label values: value}``)."""

    kind: str = "gauge"
    read: Callable[[], dict[LabelValues, float]] = dict

    def lines(self) -> list[str]:
        items = sorted(self.read().items())
        if not items:
            return []
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


@dataclass
class Histogram(_Metric):
    kind: str = "histogram"
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: dict[LabelValues, list[int]] = field(default_factory=dict)
    sums: dict[LabelValues, float] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self.sums[key] = self.sums.get(key, 0.0) + value

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(c), self.sums[k]) for k, c in self.counts.items())
        out = self.header()
        for key, counts, total in items:
            for bound, count in zip((*self.buckets, math.inf), counts):
                le = f'le="{_number(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {count}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {counts[-1]}")
        return out


class Metrics:
    """Everything ``GET /metrics`` reports."""

    def __init__(self, gauges: Iterable[Gauge] = ()) -> None:
        self.requests = Counter("gscache_requests_total", "HTTP requests and WebSocket connections by route, "
                                "method and status", ("route", "method", "status"))
        self.request_seconds = Histogram("gscache_request_duration_seconds", "Time to answer an HTTP request",
                                         ("route",))
        self.frames = Counter("gscache_frames_rendered_total", "Frames rendered and encoded", ("source",))
        self.render_seconds = Histogram("gscache_render_seconds", "Render time per frame (render thread)")
        self.encode_seconds = Histogram("gscache_encode_seconds", "Encode time per frame", ("format",))
        self.stream_poses = Counter("gscache_stream_poses_total", "Poses received on streams by outcome "
                                    "(rendered, dropped as stale, invalid)", ("outcome",))
        self.errors = Counter("gscache_errors_total", "Requests refused or failed, by kind", ("kind",))
        self.gauges = list(gauges)
        self.extra: list[Counter | Gauge | Histogram] = []  # e.g. the frame cache's counter

    def observe_frame(self, source: str, render_ms: float, encode_ms: float, fmt: str) -> None:
        self.frames.inc(source=source)
        self.render_seconds.observe(render_ms / 1e3)
        self.encode_seconds.observe(encode_ms / 1e3, format=fmt)

    def text(self) -> str:
        metrics = [self.requests, self.request_seconds, self.frames, self.render_seconds, self.encode_seconds,
                   self.stream_poses, self.errors, *self.gauges, *self.extra]
        return "\n".join(line for metric in metrics for line in metric.lines()) + "\n"
