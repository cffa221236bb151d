"""Telemetry registry: go-metrics' InmemSink JSON per interval and PrometheusSink text, on an injected clock."""

from __future__ import annotations

import json
import math
import re
import threading
import time

import pytest

from proconsul.agent.metrics import DEFAULT_BUCKETS, SUMMARY_RING_SIZE, Metrics, go_float

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC, a multiple of 10 s


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(**kw) -> tuple[Metrics, Clock]:
    clock = Clock()
    return Metrics(clock=clock, **kw), clock


# -- a tiny Prometheus text-format parser ------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)\}})? (\S+)$")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_SUFFIXES = {"counter": ("",), "gauge": ("",), "summary": ("", "_sum", "_count"), "histogram": ("_bucket", "_sum", "_count")}


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def parse(text: str) -> dict[str, dict]:
    """Families by name: {"type", "help", "samples": [(name, labels, value)]}; asserts the format."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current, family = None, ""
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in families, f"family {name} twice"
            current = families[name] = {"help": help_, "type": None, "samples": []}
            family = name
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is families.get(name) and current["type"] is None, f"TYPE without HELP: {line}"
            assert kind in _SUFFIXES
            current["type"] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name, labels, value = m.groups()
        assert current is not None and current["type"] is not None, f"sample before HELP/TYPE: {line}"
        assert name in {family + s for s in _SUFFIXES[current["type"]]}, f"{name} outside family {family}"
        pairs = {k: _unescape(v) for k, v in _LABEL_PAIR.findall(labels or "")}
        current["samples"].append((name, pairs, float(value)))
    return families


def value(fams: dict, name: str, **labels: str) -> float:
    family = fams[re.sub(r"_(sum|count|bucket)$", "", name)] if name not in fams else fams[name]
    hits = [v for n, ls, v in family["samples"] if n == name and ls == labels]
    assert len(hits) == 1, (name, labels, family["samples"])
    return hits[0]


# -- JSON: InmemSink's DisplayMetrics ------------------------------------------


def test_json_field_names_order_and_timestamp_match_consul():
    m, clock = make()
    clock.t = T0 + 3.4
    m.incr("raft.apply", labels={"b": "2", "a": "1"})
    m.set_gauge("runtime.alloc_bytes", 4704344)
    m.observe("http.request", 2.5)
    body = m.to_json()
    assert list(body) == ["Timestamp", "Gauges", "Points", "Counters", "Samples"]
    assert body["Timestamp"] == "2023-11-14 22:13:20 +0000 UTC"  # Go's Time.String() of the interval start
    assert body["Points"] == []
    assert body["Gauges"] == [{"Name": "consul.runtime.alloc_bytes", "Value": 4704344, "Labels": {}}]
    (counter,) = body["Counters"]
    assert list(counter) == ["Name", "Count", "Rate", "Sum", "Min", "Max", "Mean", "Stddev", "Labels"]
    assert counter["Name"] == "consul.raft.apply"
    assert counter["Labels"] == {"a": "1", "b": "2"}
    (sample,) = body["Samples"]
    assert list(sample) == list(counter)
    # Go writes integral float64s without a fraction.
    text = json.dumps(body)
    assert '"Count": 1, "Rate": 0.1, "Sum": 1, "Min": 1, "Max": 1, "Mean": 1, "Stddev": 0' in text


def test_json_counters_and_samples_aggregate_within_an_interval():
    m, clock = make()
    for v in (1.0, 2.0, 3.0, 6.0):
        m.incr("rpc.request", v)
        m.observe("raft.commit_time", v * 10)
        clock.t += 1
    body = m.to_json()  # only the current interval exists yet, so it is shown
    c = body["Counters"][0]
    assert (c["Count"], c["Sum"], c["Min"], c["Max"], c["Mean"]) == (4, 12, 1, 6, 3)
    assert c["Rate"] == pytest.approx(1.2)  # Sum / 10 s
    assert c["Stddev"] == pytest.approx(math.sqrt(((1 - 3) ** 2 + 1 + 0 + 9) / 3))
    s = body["Samples"][0]
    assert (s["Count"], s["Sum"], s["Min"], s["Max"], s["Mean"]) == (4, 120, 10, 60, 30)


def test_json_shows_most_recent_finished_interval():
    m, clock = make()
    m.incr("a")
    clock.t = T0 + 12
    m.incr("a", 5)
    m.incr("a", 5)
    # Current interval is T0+10; the finished one is T0.
    body = m.to_json()
    assert body["Timestamp"] == "2023-11-14 22:13:20 +0000 UTC"
    assert body["Counters"][0]["Sum"] == 1
    clock.t = T0 + 25
    body = m.to_json()  # the read itself opens T0+20, so T0+10 is the finished one
    assert body["Timestamp"] == "2023-11-14 22:13:30 +0000 UTC"
    assert body["Counters"][0]["Count"] == 2 and body["Counters"][0]["Sum"] == 10


def test_json_after_idle_gap_shows_last_interval_that_existed():
    m, clock = make()
    m.incr("a", 7)
    clock.t = T0 + 95  # intervals only exist once touched, as in InmemSink
    body = m.to_json()
    assert body["Timestamp"] == "2023-11-14 22:13:20 +0000 UTC"
    assert body["Counters"][0]["Sum"] == 7
    clock.t = T0 + 105
    assert m.to_json()["Counters"] == []  # now the empty T0+90 interval is the finished one


def test_gauges_belong_to_the_interval_they_were_set_in_but_sources_are_always_shown():
    m, clock = make()
    m.set_gauge("raft.peers", 3)
    m.set_gauge("raft.peers", 5)
    m.add_gauge_source(lambda: [("catalog.services", 12, {}), ("catalog.service.instances", 2, {"service": "web"})])
    assert [(g["Name"], g["Value"]) for g in m.to_json()["Gauges"]] == [
        ("consul.catalog.service.instances", 2),
        ("consul.catalog.services", 12),
        ("consul.raft.peers", 5),
    ]
    clock.t = T0 + 10
    m.incr("x")
    clock.t = T0 + 20
    names = [g["Name"] for g in m.to_json()["Gauges"]]
    assert names == ["consul.catalog.service.instances", "consul.catalog.services"]
    # Prometheus keeps the gauge's last value.
    assert value(parse(m.to_prometheus()), "consul_raft_peers") == 5


def test_json_sorted_by_inmem_key_and_labels_shown_as_map():
    m, _ = make()
    m.incr("b")
    m.incr("a.b", labels={"x": "1"})
    m.incr("a.b.c")
    m.incr("a.b")
    names = [(c["Name"], c["Labels"]) for c in m.to_json()["Counters"]]
    # InmemSink sorts by "name;label=value": "." sorts before ";".
    assert names == [
        ("consul.a.b", {}),
        ("consul.a.b.c", {}),
        ("consul.a.b", {"x": "1"}),
        ("consul.b", {}),
    ]


def test_old_intervals_are_pruned_to_retain():
    m, clock = make(interval=10, retain=60)
    for i in range(50):
        clock.t = T0 + 10 * i
        m.incr("a")
    assert len(m._intervals) == 6


def test_no_prefix():
    m, _ = make(prefix="")
    m.incr("serf.member.join")
    assert m.to_json()["Counters"][0]["Name"] == "serf.member.join"
    assert "serf_member_join 1\n" in m.to_prometheus()


# -- Prometheus ----------------------------------------------------------------


def test_prometheus_names_help_type_and_cumulative_counters():
    m, clock = make()
    m.incr("http.request", labels={"method": "GET", "path": "v1/kv"})
    clock.t = T0 + 500  # counters never reset across intervals
    m.incr("http.request", 2, labels={"path": "v1/kv", "method": "GET"})
    m.incr("http.request", labels={"method": "PUT", "path": "v1/kv"})
    m.incr("rpc.cross-dc/x=y")
    m.incr("neg", -1)  # the Prometheus sink ignores negative increments
    m.set_gauge("runtime.goroutines", 1234567)
    m.describe("runtime.goroutines", "Number of running goroutines\\threads\nper agent")
    text = m.to_prometheus()
    fams = parse(text)
    assert list(fams) == sorted(fams)
    assert fams["consul_http_request"]["type"] == "counter"
    assert fams["consul_http_request"]["help"] == "consul_http_request"  # go-metrics: help defaults to the name
    assert value(fams, "consul_http_request", method="GET", path="v1/kv") == 3
    assert value(fams, "consul_http_request", method="PUT", path="v1/kv") == 1
    assert 'consul_http_request{method="GET",path="v1/kv"} 3\n' in text
    assert value(fams, "consul_rpc_cross_dc_x_y") == 1
    assert value(fams, "consul_neg") == 0
    assert fams["consul_runtime_goroutines"]["type"] == "gauge"
    assert "# HELP consul_runtime_goroutines Number of running goroutines\\\\threads\\nper agent\n" in text
    assert "consul_runtime_goroutines 1.234567e+06\n" in text  # Go's 'g' formatting


def test_prometheus_label_values_are_escaped():
    m, _ = make()
    nasty = 'a "quoted" \\path\\\nnext'
    m.incr("kv.apply", labels={"key": nasty, "bad-name": "x"})
    fams = parse(m.to_prometheus())
    assert value(fams, "consul_kv_apply", key=nasty, bad_name="x") == 1


def test_summary_quantiles_sum_count_and_window():
    m, clock = make()
    for v in range(1, 101):
        m.observe("raft.apply", float(v), labels={"op": "kv"})
    fams = parse(m.to_prometheus())
    assert fams["consul_raft_apply"]["type"] == "summary"
    assert value(fams, "consul_raft_apply", op="kv", quantile="0.5") == pytest.approx(50, abs=5)
    assert value(fams, "consul_raft_apply", op="kv", quantile="0.9") == pytest.approx(90, abs=1)
    assert value(fams, "consul_raft_apply", op="kv", quantile="0.99") == pytest.approx(99, abs=1)
    assert value(fams, "consul_raft_apply_sum", op="kv") == 5050
    assert value(fams, "consul_raft_apply_count", op="kv") == 100
    text = m.to_prometheus()
    assert 'consul_raft_apply{op="kv",quantile="0.5"}' in text  # quantile label last
    clock.t = T0 + 11  # past the 10 s window: quantiles NaN, totals stay
    fams = parse(m.to_prometheus())
    assert math.isnan(value(fams, "consul_raft_apply", op="kv", quantile="0.99"))
    assert value(fams, "consul_raft_apply_count", op="kv") == 100
    m.observe("raft.apply", 7.0, labels={"op": "kv"})
    fams = parse(m.to_prometheus())
    assert value(fams, "consul_raft_apply", op="kv", quantile="0.5") == 7
    assert value(fams, "consul_raft_apply_count", op="kv") == 101


def test_summary_window_is_bounded_to_the_most_recent_observations():
    m, _ = make()
    for v in range(SUMMARY_RING_SIZE * 3):
        m.observe("x", float(v))
    fams = parse(m.to_prometheus())
    lo = SUMMARY_RING_SIZE * 2
    assert value(fams, "consul_x", quantile="0.5") == pytest.approx(lo + SUMMARY_RING_SIZE / 2, abs=2)
    assert value(fams, "consul_x_count") == SUMMARY_RING_SIZE * 3


def test_histogram_buckets_are_cumulative_and_end_with_inf_equal_count():
    m, _ = make()
    data = [0.001, 0.005, 0.02, 0.3, 0.3, 4.0, 11.0, 60.0]
    for v in data:
        m.observe_histogram("proxy.upstream.latency", v, labels={"upstream": "db"})
    text = m.to_prometheus()
    fams = parse(text)
    fam = fams["consul_proxy_upstream_latency"]
    assert fam["type"] == "histogram"
    buckets = [(ls["le"], v) for n, ls, v in fam["samples"] if n.endswith("_bucket")]
    assert [le for le, _ in buckets] == [go_float(b) for b in DEFAULT_BUCKETS] + ["+Inf"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert dict(buckets)["0.005"] == 2  # le is inclusive
    assert dict(buckets)["10"] == 6
    assert counts[-1] == len(data) == value(fams, "consul_proxy_upstream_latency_count", upstream="db")
    assert value(fams, "consul_proxy_upstream_latency_sum", upstream="db") == pytest.approx(sum(data))
    assert 'consul_proxy_upstream_latency_bucket{upstream="db",le="+Inf"} 8\n' in text
    (sample,) = m.to_json()["Samples"]
    assert sample["Name"] == "consul.proxy.upstream.latency" and sample["Count"] == 8 and sample["Max"] == 60


def test_custom_buckets_and_timer():
    m, _ = make()
    m.observe_histogram("h", 3.0, buckets=(1, 5, float("inf")))
    fams = parse(m.to_prometheus())
    assert [ls["le"] for n, ls, _ in fams["consul_h"]["samples"] if n == "consul_h_bucket"] == ["1", "5", "+Inf"]
    with m.timer("kvs.apply", labels={"op": "set"}):
        time.sleep(0.002)
    (s,) = m.to_json()["Samples"][1:]
    assert s["Name"] == "consul.kvs.apply" and s["Count"] == 1 and 1.5 <= s["Sum"] < 1000  # milliseconds


def test_kind_conflict_is_dropped_not_raised():
    m, _ = make()
    m.incr("x")
    m.set_gauge("x", 5)
    m.observe("x", 1)
    fams = parse(m.to_prometheus())
    assert fams["consul_x"]["type"] == "counter"
    assert m.dropped == 2


def test_series_cap_folds_into_overflow_and_drops_gauges():
    m, _ = make(max_series=5)
    for i in range(20):
        m.incr("http.request", labels={"path": f"/p{i}"})
        m.observe_histogram("upstream.latency", 0.01, labels={"upstream": f"u{i}"})
        m.set_gauge("g", i, labels={"n": str(i)})
    fams = parse(m.to_prometheus())
    counter = fams["consul_http_request"]["samples"]
    assert len(counter) == 6
    assert value(fams, "consul_http_request", overflow="true") == 15
    assert sum(v for _, _, v in counter) == 20
    assert value(fams, "consul_upstream_latency_count", overflow="true") == 15
    assert len(fams["consul_g"]["samples"]) == 5
    assert m.dropped == 15
    assert len(m.to_json()["Counters"]) == 6


def test_counters_from_many_threads_are_exact():
    m, _ = make()
    n_threads, n = 8, 5000
    barrier = threading.Barrier(n_threads)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(n):
            m.incr("raft.apply")
            m.observe("raft.commit_time", 1.0, labels={"t": str(i % 2)})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fams = parse(m.to_prometheus())
    assert value(fams, "consul_raft_apply") == n_threads * n
    assert value(fams, "consul_raft_commit_time_count", t="0") + value(
        fams, "consul_raft_commit_time_count", t="1"
    ) == n_threads * n
    assert m.to_json()["Counters"][0]["Count"] == n_threads * n


def test_failing_gauge_source_is_skipped():
    m, _ = make()

    def boom():
        raise RuntimeError("store closed")

    m.add_gauge_source(boom)
    m.add_gauge_source(lambda: [("catalog.nodes", 3, {})])
    assert value(parse(m.to_prometheus()), "consul_catalog_nodes") == 3


@pytest.mark.parametrize(
    "x,want",
    [
        (1.0, "1"), (0.0, "0"), (2.5, "2.5"), (123456.0, "123456"), (1e6, "1e+06"), (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"), (0.00001, "1e-05"), (-0.5, "-0.5"), (1e100, "1e+100"), (0.005, "0.005"),
        (float("nan"), "NaN"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"),
    ],
)
def test_go_float_matches_strconv_g(x: float, want: str):
    assert go_float(x) == want


def test_empty_registry():
    m, _ = make()
    assert m.to_prometheus() == ""
    body = m.to_json()
    assert body["Gauges"] == body["Counters"] == body["Samples"] == body["Points"] == []
