"""Telemetry registry behind ``GET /v1/agent/metrics`` (JSON and ``?format=prometheus``).

Consul feeds every metric to go-metrics' sinks; this module plays two of them:

* the InmemSink (``inmem.go``, ``inmem_endpoint.go``): aggregates per fixed
  interval (10 s), aligned to the wall clock, keeps ``retain / interval``
  intervals, and the JSON endpoint shows the most recent *finished* interval
  (the one before the current), or the current one when it is the only one.
  Intervals exist only once something was recorded or read in them, so after an
  idle gap "most recent finished" is the last interval that saw activity.
* the PrometheusSink (``prometheus/prometheus.go``): cumulative counters, last
  gauge values, and samples as summaries with quantiles 0.5/0.9/0.99 over a
  10 s window (client_golang ``MaxAge``), ``_sum``/``_count`` since start.

Invariants:

* One lock guards all state. ``incr``/``observe``/``set_gauge`` build a key,
  read the clock, and under the lock do one dict lookup and a few adds; slow
  work (new series, a new interval) happens on the first hit only. Any thread
  may record (the Raft thread does); nothing here blocks or does I/O.
* Recording does not raise on misuse: a name used with two kinds keeps its
  first kind and the other kind's records are dropped with one warning,
  because an exception on the Raft apply path would wedge the node.
* Memory is bounded: at most ``retain / interval`` intervals; at most
  ``max_series`` label sets per name. Beyond the cap, a counter, sample or
  histogram update is folded into one overflow series labelled
  ``{"overflow": "true"}`` (so totals stay right); a gauge update is dropped
  (a folded last-value would be meaningless). Each summary keeps a ring of the
  last ``SUMMARY_RING_SIZE`` observations (two C double arrays, 8 KiB).
* Quantiles are nearest-rank over the ring's observations younger than
  ``SUMMARY_MAX_AGE``: exact while a series sees fewer than ``SUMMARY_RING_SIZE``
  observations per window, else over the most recent ones. An empty window
  gives NaN, as client_golang's summaries do.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import threading
import time
from array import array
from decimal import Decimal
from typing import Callable, Iterable

log = logging.getLogger("proconsul.metrics")

# client_golang's prometheus.DefBuckets, in seconds.
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# go-metrics' PrometheusSink summaries: Objectives {0.5, 0.9, 0.99}, MaxAge 10 s.
SUMMARY_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
SUMMARY_MAX_AGE = 10.0
SUMMARY_RING_SIZE = 512
DEFAULT_MAX_SERIES = 1000
OVERFLOW_LABELS: tuple[tuple[str, str], ...] = (("overflow", "true"),)
# What promhttp answers for the text format 0.0.4.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_COUNTER, _GAUGE, _SAMPLE, _HISTOGRAM = "counter", "gauge", "sample", "histogram"

Labels = tuple[tuple[str, str], ...]
Key = str | tuple[str, Labels]
GaugeSource = Callable[[], Iterable[tuple[str, float, dict[str, str]]]]


class _Agg:
    """go-metrics' AggregateSample for one series in one interval (SumSq kept for Stddev)."""

    __slots__ = ("count", "sum", "sumsq", "min", "max")

    def __init__(self, v: float) -> None:
        self.count = 1
        self.sum = v
        self.sumsq = v * v
        self.min = v
        self.max = v


class _Cell:
    """A gauge's last value within one interval, frozen once the interval ends."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


class _Interval:
    """One InmemSink interval: what each series did between ``start`` and ``start + interval``."""

    __slots__ = ("start", "gauges", "counters", "samples")

    def __init__(self, start: float) -> None:
        self.start = start
        # Lists, not dicts: a series registers once per interval (guarded by
        # ``_Series.iv``), so appending is enough and costs no hashing.
        self.gauges: list[tuple[_Series, _Cell]] = []
        self.counters: list[tuple[_Series, _Agg]] = []
        self.samples: list[tuple[_Series, _Agg]] = []


class _Series:
    """One (name, labels) of one kind: cumulative state for Prometheus, a link to this interval's aggregate."""

    __slots__ = (
        "kind", "labels", "full", "hash", "prom",
        "iv", "agg", "cell",
        "total", "value", "count", "sum",
        "ts", "vs", "pos", "filled",
        "bounds", "buckets",
    )

    def __init__(self, kind: str, full: str, labels: Labels) -> None:
        self.kind = kind
        self.labels = labels
        self.full = full
        # InmemSink's map key: it sorts the JSON output by this string.
        self.hash = _inmem_hash(full, labels)
        self.prom = _prom_name(full)
        self.iv: _Interval | None = None
        self.agg: _Agg | None = None
        self.cell: _Cell | None = None
        self.total = 0.0
        self.value = 0.0
        self.count = 0
        self.sum = 0.0
        self.ts: array | None = None
        self.vs: array | None = None
        self.pos = 0
        self.filled = 0
        self.bounds: tuple[float, ...] = ()
        self.buckets: list[int] = []


class _Timer:
    """Context manager that observes the elapsed wall time in milliseconds, as go-metrics' MeasureSince."""

    __slots__ = ("_metrics", "_name", "_labels", "_t0")

    def __init__(self, metrics: Metrics, name: str, labels: dict[str, str] | None) -> None:
        self._metrics = metrics
        self._name = name
        self._labels = labels
        self._t0 = 0.0

    def __enter__(self) -> _Timer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._metrics.observe(self._name, (time.perf_counter() - self._t0) * 1000.0, self._labels)


class Metrics:
    """Counters, gauges, samples and histograms, shown as Consul's InmemSink JSON and Prometheus text."""

    def __init__(
        self,
        prefix: str = "consul",
        interval: float = 10.0,
        retain: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._prefix = prefix
        self._interval = float(interval)
        # InmemSink: maxIntervals = int(retain / interval), older ones truncated.
        self._max_intervals = max(1, int(retain / interval))
        self._clock = clock
        self._max_series = max_series
        self._lock = threading.Lock()
        self._counters: dict[Key, _Series] = {}
        self._gauges: dict[Key, _Series] = {}
        self._samples: dict[Key, _Series] = {}
        self._histograms: dict[Key, _Series] = {}
        self._kinds: dict[str, str] = {}
        self._nseries: dict[tuple[str, str], int] = {}
        self._conflicts: set[tuple[str, str]] = set()
        self._help: dict[str, str] = {}
        self._sources: list[GaugeSource] = []
        self._intervals: list[_Interval] = []
        self._iv: _Interval = _Interval(-math.inf)
        self._iv_end = -math.inf
        self.dropped = 0  # gauge updates dropped by the series cap or a kind conflict

    # -- recording (hot paths) ---------------------------------------------

    def incr(self, name: str, value: float = 1.0, labels: dict[str, str] | None = None) -> None:
        """Add to a counter, as go-metrics' IncrCounterWithLabels."""
        key: Key = name if not labels else (name, tuple(sorted(labels.items())))
        now = self._clock()
        with self._lock:
            if now >= self._iv_end:
                self._roll(now)
            s = self._counters.get(key)
            if s is None:
                s = self._new_series(self._counters, _COUNTER, key, name)
                if s is None:
                    return
            # The Prometheus sink refuses negative increments (counters only go up).
            if value >= 0:
                s.total += value
            iv = self._iv
            if s.iv is iv:
                a = s.agg
                a.count += 1
                a.sum += value
                a.sumsq += value * value
                if value < a.min:
                    a.min = value
                elif value > a.max:
                    a.max = value
            else:
                s.iv = iv
                s.agg = a = _Agg(value)
                iv.counters.append((s, a))

    def set_gauge(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        """Set a gauge's value, as go-metrics' SetGaugeWithLabels."""
        key: Key = name if not labels else (name, tuple(sorted(labels.items())))
        now = self._clock()
        with self._lock:
            if now >= self._iv_end:
                self._roll(now)
            s = self._gauges.get(key)
            if s is None:
                s = self._new_series(self._gauges, _GAUGE, key, name)
                if s is None:
                    return
            s.value = value
            iv = self._iv
            if s.iv is iv:
                s.cell.value = value
            else:
                s.iv = iv
                s.cell = c = _Cell(value)
                iv.gauges.append((s, c))

    def observe(self, name: str, value: float, labels: dict[str, str] | tuple[tuple[str, str], ...] | None = None) -> None:
        """Record a sample (timers in milliseconds), as go-metrics' AddSampleWithLabels.

        Hot callers pass ``labels`` already as sorted (name, value) pairs, which skips the sort."""
        key: Key = name if not labels else (name, labels if type(labels) is tuple else tuple(sorted(labels.items())))
        now = self._clock()
        with self._lock:
            if now >= self._iv_end:
                self._roll(now)
            s = self._samples.get(key)
            if s is None:
                s = self._new_series(self._samples, _SAMPLE, key, name)
                if s is None:
                    return
            s.count += 1
            s.sum += value
            i = s.pos
            s.ts[i] = now
            s.vs[i] = value
            i += 1
            s.pos = 0 if i == SUMMARY_RING_SIZE else i
            if s.filled < SUMMARY_RING_SIZE:
                s.filled += 1
            self._ingest_sample(s, value)

    def observe_histogram(
        self,
        name: str,
        value_seconds: float,
        labels: dict[str, str] | None = None,
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        """Record a latency in seconds into fixed buckets; a series keeps the buckets of its first call."""
        key: Key = name if not labels else (name, tuple(sorted(labels.items())))
        now = self._clock()
        with self._lock:
            if now >= self._iv_end:
                self._roll(now)
            s = self._histograms.get(key)
            if s is None:
                s = self._new_series(self._histograms, _HISTOGRAM, key, name, buckets)
                if s is None:
                    return
            s.count += 1
            s.sum += value_seconds
            # bisect_left: the first bound >= value, since "le" is inclusive.
            s.buckets[bisect.bisect_left(s.bounds, value_seconds)] += 1
            self._ingest_sample(s, value_seconds)

    def timer(self, name: str, labels: dict[str, str] | None = None) -> _Timer:
        """Context manager observing the block's duration in milliseconds, as go-metrics' MeasureSince."""
        return _Timer(self, name, labels)

    def add_gauge_source(self, fn: GaugeSource) -> None:
        """Register a callable yielding ``(name, value, labels)`` gauges computed at scrape time."""
        with self._lock:
            self._sources.append(fn)

    def describe(self, name: str, help: str) -> None:
        """Set a family's Prometheus HELP text (default: the metric name, as go-metrics' sink)."""
        with self._lock:
            self._help[_prom_name(self._full(name))] = help

    # -- rendering ---------------------------------------------------------

    def to_json(self) -> dict:
        """Consul's ``/v1/agent/metrics`` body: go-metrics' DisplayMetrics summary of one interval."""
        extra = self._collect_sources()
        now = self._clock()
        with self._lock:
            # Data() forces the current interval into existence before choosing.
            if now >= self._iv_end:
                self._roll(now)
            ivs = self._intervals
            iv = ivs[-1] if len(ivs) == 1 else ivs[-2]
            gauges = {s.hash: (s.full, s.labels, c.value) for s, c in iv.gauges}
            counters = [(s.hash, s.full, s.labels, a.count, a.sum, a.sumsq, a.min, a.max) for s, a in iv.counters]
            samples = [(s.hash, s.full, s.labels, a.count, a.sum, a.sumsq, a.min, a.max) for s, a in iv.samples]
            start = iv.start
        for name, value, labels in extra:
            full = self._full(name)
            lt = tuple(sorted(labels.items())) if labels else ()
            gauges[_inmem_hash(full, lt)] = (full, lt, value)
        return {
            "Timestamp": _go_time_string(start),
            "Gauges": [
                {"Name": full, "Value": _num(value), "Labels": dict(lt)}
                for _, (full, lt, value) in sorted(gauges.items())
            ],
            "Points": [],
            "Counters": [self._sampled_value(row) for row in sorted(counters)],
            "Samples": [self._sampled_value(row) for row in sorted(samples)],
        }

    def to_prometheus(self) -> str:
        """Text exposition 0.0.4 as Consul's PrometheusSink via promhttp: families sorted, HELP then TYPE."""
        extra = self._collect_sources()
        now = self._clock()
        with self._lock:
            counters = [(s.prom, s.labels, s.total) for s in self._counters.values()]
            gauges = [(s.prom, s.labels, s.value) for s in self._gauges.values()]
            summaries = [
                (s.prom, s.labels, s.count, s.sum, s.ts[: s.filled], s.vs[: s.filled])
                for s in self._samples.values()
            ]
            histograms = [
                (s.prom, s.labels, s.bounds, list(s.buckets), s.count, s.sum) for s in self._histograms.values()
            ]
            helps = dict(self._help)
        for name, value, labels in extra:
            gauges.append((_prom_name(self._full(name)), tuple(sorted(labels.items())) if labels else (), value))

        families: dict[str, tuple[str, dict[Labels, list[str]]]] = {}

        def family(prom: str, kind: str) -> dict[Labels, list[str]] | None:
            fam = families.setdefault(prom, (kind, {}))
            # Two dotted names can flatten to one family name; promhttp would
            # drop the inconsistent one, so the first kind wins.
            return fam[1] if fam[0] == kind else None

        for prom, labels, total in counters:
            rows = family(prom, "counter")
            if rows is not None:
                pl = _prom_labels(labels)
                rows[pl] = [_sample_line(prom, pl, total)]
        for prom, labels, value in gauges:
            rows = family(prom, "gauge")
            if rows is not None:
                pl = _prom_labels(labels)
                rows[pl] = [_sample_line(prom, pl, value)]
        cutoff = now - SUMMARY_MAX_AGE
        for prom, labels, count, total, ts, vs in summaries:
            rows = family(prom, "summary")
            if rows is None:
                continue
            pl = _prom_labels(labels)
            window = sorted(v for t, v in zip(ts, vs) if t >= cutoff)
            lines = [_sample_line(prom, pl, _nearest_rank(window, q), ("quantile", q)) for q in SUMMARY_QUANTILES]
            lines.append(_sample_line(prom + "_sum", pl, total))
            lines.append(_sample_line(prom + "_count", pl, count))
            rows[pl] = lines
        for prom, labels, bounds, buckets, count, total in histograms:
            rows = family(prom, "histogram")
            if rows is None:
                continue
            pl = _prom_labels(labels)
            lines = []
            cumulative = 0
            for le, n in zip(bounds + (math.inf,), buckets):
                cumulative += n
                lines.append(_sample_line(prom + "_bucket", pl, cumulative, ("le", le)))
            lines.append(_sample_line(prom + "_sum", pl, total))
            lines.append(_sample_line(prom + "_count", pl, count))
            rows[pl] = lines

        out: list[str] = []
        for prom in sorted(families):
            kind, rows = families[prom]
            out.append(f"# HELP {prom} {_escape_help(helps.get(prom, prom))}")
            out.append(f"# TYPE {prom} {kind}")
            # promhttp's registry sorts a family's metrics by label values.
            for pl in sorted(rows, key=lambda pl: tuple(v for _, v in pl)):
                out.extend(rows[pl])
        return "\n".join(out) + "\n" if out else ""

    # -- internals ---------------------------------------------------------

    def _ingest_sample(self, s: _Series, value: float) -> None:
        # Called with the lock held, from observe and observe_histogram.
        iv = self._iv
        if s.iv is iv:
            a = s.agg
            a.count += 1
            a.sum += value
            a.sumsq += value * value
            if value < a.min:
                a.min = value
            elif value > a.max:
                a.max = value
        else:
            s.iv = iv
            s.agg = a = _Agg(value)
            iv.samples.append((s, a))

    def _roll(self, now: float) -> None:
        # Lock held. Intervals are aligned like Go's time.Truncate on wall time;
        # a clock that steps back keeps recording into the current interval.
        start = math.floor(now / self._interval) * self._interval
        iv = _Interval(start)
        self._intervals.append(iv)
        if len(self._intervals) > self._max_intervals:
            del self._intervals[: len(self._intervals) - self._max_intervals]
        self._iv = iv
        self._iv_end = start + self._interval

    def _new_series(
        self, table: dict[Key, _Series], kind: str, key: Key, name: str, buckets: tuple[float, ...] = ()
    ) -> _Series | None:
        # Lock held; the slow path, taken once per series (and on every
        # over-cap update, which then lands on the overflow series).
        first = self._kinds.setdefault(name, kind)
        if first != kind:
            if (name, kind) not in self._conflicts:
                self._conflicts.add((name, kind))
                log.warning("metric %s is a %s; dropping its %s updates", name, first, kind)
            self.dropped += 1
            return None
        count = self._nseries.get((kind, name), 0)
        labels: Labels = key[1] if isinstance(key, tuple) else ()
        if count >= self._max_series:
            if kind == _GAUGE:
                self.dropped += 1
                return None
            key = (name, OVERFLOW_LABELS)
            s = table.get(key)
            if s is not None:
                return s
            labels = OVERFLOW_LABELS
        else:
            self._nseries[(kind, name)] = count + 1
        s = _Series(kind, self._full(name), labels)
        if kind == _SAMPLE:
            s.ts = array("d", bytes(8 * SUMMARY_RING_SIZE))
            s.vs = array("d", bytes(8 * SUMMARY_RING_SIZE))
        elif kind == _HISTOGRAM:
            s.bounds = tuple(sorted({float(b) for b in buckets if not math.isinf(b)}))
            s.buckets = [0] * (len(s.bounds) + 1)
        table[key] = s
        return s

    def _full(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def _collect_sources(self) -> list[tuple[str, float, dict[str, str]]]:
        # Outside the lock: a source may take the state store's lock.
        with self._lock:
            sources = list(self._sources)
        out: list[tuple[str, float, dict[str, str]]] = []
        for fn in sources:
            try:
                out.extend((name, float(value), dict(labels or {})) for name, value, labels in fn())
            except Exception:
                log.exception("gauge source %r failed", fn)
        return out

    def _sampled_value(self, row: tuple) -> dict:
        _, full, labels, count, total, sumsq, lo, hi = row
        return {
            "Name": full,
            "Count": count,
            "Rate": _num(total / self._interval),
            "Sum": _num(total),
            "Min": _num(lo),
            "Max": _num(hi),
            "Mean": _num(total / count if count else 0.0),
            "Stddev": _num(_stddev(count, total, sumsq)),
            "Labels": dict(labels),
        }


# -- formatting helpers ------------------------------------------------------


_PROM_REPLACE = str.maketrans({" ": "_", ".": "_", "=": "_", "-": "_", "/": "_"})
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def _inmem_hash(full: str, labels: Labels) -> str:
    """InmemSink's flattenKeyLabels key: ``name;k=v;...`` with spaces as underscores."""
    return (full + "".join(f";{k}={v}" for k, v in labels)).replace(" ", "_")


def _prom_name(full: str) -> str:
    """go-metrics' Prometheus flattenKey (" .=-/" to "_"); other invalid characters also become "_"."""
    name = _INVALID_NAME.sub("_", full.translate(_PROM_REPLACE))
    return "_" + name if name[:1].isdigit() else name


def _prom_labels(labels: Labels) -> Labels:
    fixed = []
    for k, v in labels:
        k = _INVALID_LABEL.sub("_", k)
        fixed.append(("_" + k if k[:1].isdigit() else k, v))
    return tuple(sorted(fixed))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _sample_line(name: str, labels: Labels, value: float, extra: tuple[str, float] | None = None) -> str:
    parts = [f'{k}="{_escape_label(v)}"' for k, v in labels]
    if extra is not None:
        parts.append(f'{extra[0]}="{go_float(extra[1])}"')
    if parts:
        return f"{name}{{{','.join(parts)}}} {go_float(value)}"
    return f"{name} {go_float(value)}"


def go_float(x: float) -> str:
    """Format like Go's ``strconv.FormatFloat(x, 'g', -1, 64)``, as Prometheus' text encoder writes values."""
    x = float(x)
    if x != x:
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    sign, digits, exp = Decimal(repr(x)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    nd = len(ds)
    dp = nd + exp  # digits before the decimal point
    e = dp - 1
    neg = "-" if sign else ""
    # Shortest 'g' switches to %e when the exponent is < -4 or >= 6 (ftoa.go).
    if e < -4 or e >= 6:
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{neg}{mant}e{'+' if e >= 0 else '-'}{abs(e):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return f"{neg}{ds}{'0' * (dp - nd)}"
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def _go_time_string(start: float) -> str:
    """Go's ``t.Round(time.Second).UTC().String()``: ``2017-08-08 02:55:10 +0000 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(math.floor(start + 0.5))) + " +0000 UTC"


def _num(x: float) -> float | int:
    """Integral floats as ints, so the JSON reads ``1`` where Go's encoder writes ``1``."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e21:
        return int(x)
    return x


def _stddev(count: int, total: float, sumsq: float) -> float:
    """AggregateSample.Stddev (sample stddev); rounding can make the variance a hair negative."""
    div = count * (count - 1)
    if div == 0:
        return 0.0
    return math.sqrt(max((count * sumsq - total * total) / div, 0.0))


def _nearest_rank(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]
