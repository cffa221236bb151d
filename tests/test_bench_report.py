"""bench/report.py: the README's Performance section from a synthetic bench/results directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not an installed package
from bench import report  # noqa: E402
from bench.__main__ import BENCHMARKS, REPORT  # noqa: E402

META = {"date": "2026-11-25 05:25:16", "machine": "x86_64, cpu, python 3.11.7", "seconds": 1.0}


def write(results: Path, name: str, result: dict[str, Any]) -> None:
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps({"meta": META | {"command": f"python -m bench {name}"}, "result": result}))


def kv_result(stored: dict[str, str] | None = None) -> dict[str, Any]:
    """PUT @1 2.00x, @16 0.90x, @64 0.90x; GET default @16 2.50x; GET ?stale @16 3.50x; with kv.py's own verdicts."""
    rps = {
        "PUT @1 proconsul": 2000, "PUT @1 etcd": 1000,
        "PUT @16 proconsul": 900, "PUT @16 etcd": 1000,
        "PUT @64 proconsul": 900, "PUT @64 etcd": 1000,
        "GET consistent @16 proconsul default": 5000, "GET consistent @16 etcd linearizable": 2000,
        "GET stale @16 proconsul ?stale": 7000, "GET stale @16 etcd serializable": 2000,
    }
    verdicts = {"PUT @1": "PASS", "PUT @16": "MISS", "PUT @64": "PASS", "GET consistent @16": "PASS", "GET stale @16": "PASS"} | (stored or {})
    wants = {"PUT @1": 1.0, "PUT @16": 1.0, "PUT @64": 0.8, "GET consistent @16": 2.0, "GET stale @16": 2.0}
    return {
        "setup": {"cores": 2},
        "rows": {k: {"rps": float(v), "p50_ms": 1.0, "p99_ms": 2.0} for k, v in rps.items()},
        "targets": [{"row": row, "pair": "", "ratio": 0.0, "target": want, "verdict": verdicts[row]} for row, want in wants.items()],
    }


def cells(md: str, workload: str) -> list[str]:
    """The cells of the main-table row whose first cell is ``workload``."""
    for line in md.splitlines():
        if line.startswith(f"| {workload} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {workload!r} in:\n{md}")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    write(out, "kv", kv_result())
    write(out, "dns", {
        "SRV": {"proconsul": {"qps_median": 25000.0}, "dnsmasq": {"qps_median": 100000.0}},
        "A": {"proconsul": {"qps_median": 10000.0}, "dnsmasq": {"qps_median": 100000.0}},
    })
    write(out, "events", {
        "failover": {"recovery_s": {"median": 1.2, "min": 1.0, "max": 1.4}},
        "dev_start": {"leader_s": {"median": 0.8, "min": 0.7, "max": 0.9}},
        "targets": [
            {"row": "leader kill -9 -> first accepted write", "value_s": 1.2, "target_s": 3.0, "verdict": "PASS"},
            {"row": "agent -dev start -> /v1/status/leader", "value_s": 0.8, "target_s": 1.0, "verdict": "PASS"},
        ],
    })
    return out


def test_kv_rows_show_medians_ratio_and_verdict(results: Path) -> None:
    md = report.render(results)
    assert cells(md, "KV PUT vs etcd, 1 client (req/s)") == ["KV PUT vs etcd, 1 client (req/s)", "2,000", "1,000", "2.00", "≥ 1.0×", "≥ 1.0×", "goal"]
    assert cells(md, "KV PUT vs etcd, 16 clients (req/s)")[3:] == ["0.90", "≥ 1.0×", "≥ 1.0×", "MISS"]
    assert cells(md, "KV PUT vs etcd, 64 clients (req/s)")[3:] == ["0.90", "≥ 0.8×", "≥ 1.0×", "pass"]
    assert cells(md, "KV GET default vs etcd linearizable, 16 clients (req/s)")[1:] == ["5,000", "2,000", "2.50", "≥ 2.0×", "≥ 3.0×", "pass"]
    assert cells(md, "KV GET `?stale` vs etcd serializable, 16 clients (req/s)")[3:] == ["3.50", "≥ 2.0×", "≥ 3.0×", "goal"]


def test_other_levels_appear_only_when_measured(results: Path) -> None:
    md = report.render(results)
    assert "KV GET default vs etcd linearizable, 1 client" not in md
    rs = kv_result()
    rs["rows"] |= {"GET consistent @64 proconsul default": {"rps": 3000.0}, "GET consistent @64 etcd linearizable": {"rps": 1000.0}}
    write(results, "kv", rs)
    assert cells(report.render(results), "KV GET default vs etcd linearizable, 64 clients (req/s)")[1:] == ["3,000", "1,000", "3.00", "—", "—", "—"]


def test_dns_ratios_judged_here_when_the_benchmark_did_not(results: Path) -> None:
    md = report.render(results)
    assert cells(md, "DNS `web.service.consul SRV` vs dnsmasq (q/s)")[1:] == ["25,000", "100,000", "0.25", "≥ 0.2×", "≥ 0.3×", "pass"]
    assert cells(md, "DNS `web.service.consul A` vs dnsmasq (q/s)")[3:] == ["0.10", "≥ 0.2×", "≥ 0.3×", "MISS"]


def test_time_rows_have_no_peer(results: Path) -> None:
    md = report.render(results)
    assert cells(md, "leader `kill -9` → first accepted write")[1:] == ["1.20 s", "—", "—", "< 3 s", "< 1.5 s", "goal"]
    assert cells(md, "`proconsul agent -dev` start → ready (a leader elected)")[1:] == ["0.800 s", "—", "—", "< 1 s", "< 0.5 s", "pass"]


def test_the_benchmarks_own_verdict_is_reused(results: Path) -> None:
    write(results, "kv", kv_result(stored={"PUT @1": "MISS"}))  # 2.00x, but kv.py said MISS: the README says so too
    assert cells(report.render(results), "KV PUT vs etcd, 1 client (req/s)")[-1] == "MISS"


def test_missing_results_say_not_measured(results: Path) -> None:
    md = report.render(results)  # no mesh, fanout, catalog or raft file
    for workload in (
        "mesh sidecar pair vs HAProxy pair, 16 connections (req/s)",
        "mesh sidecar pair vs HAProxy pair, bulk, one connection (MB/s)",
        "blocking fan-out, 2,000 KV watchers: write → all returned",
        "`/v1/health/service` of 1,000 instances, p50 (leader)",
    ):
        row = cells(md, workload)
        assert row[1] == "not measured" and row[-1] == "—", row
    assert cells(md, "blocking fan-out, 2,000 KV watchers: write → all returned")[4:6] == ["< 1 s", "< 0.3 s"]
    assert "mesh sidecar pair vs HAProxy pair, 1 connection" not in md  # an optional level
    assert "`python -m bench catalog`: no results in `bench/results/catalog.json`" in md
    assert "Mesh detail: not measured" in md and "Raft layer: not measured" in md


def test_unreadable_or_reshaped_files_do_not_crash(results: Path) -> None:
    (results / "dns.json").write_text("{not json")
    write(results, "kv", {"rows": "reshaped"})
    write(results, "mesh", {"small": {"16 connections": {"proconsul": {"skipped": "no proxy"}, "haproxy": {"rps": 1.0}}}, "bulk": []})
    md = report.render(results)
    assert cells(md, "DNS `web.service.consul A` vs dnsmasq (q/s)")[1] == "not measured"
    assert cells(md, "KV PUT vs etcd, 1 client (req/s)")[1] == "not measured"
    assert cells(md, "mesh sidecar pair vs HAProxy pair, 16 connections (req/s)")[1] == "not measured"


def test_provenance_names_date_machine_cores_and_command(results: Path) -> None:
    md = report.render(results)
    assert "- `python -m bench kv`, 2026-11-25 05:25:16 UTC, x86_64, cpu, python 3.11.7, 2 cores" in md
    assert "- `python -m bench dns`, 2026-11-25 05:25:16 UTC, x86_64, cpu, python 3.11.7\n" in md


def test_detail_tables(results: Path) -> None:
    row = {"rps": 30000.0, "p50_ms": 0.538, "p99_ms": 1.2, "proxy_cpu": 0.99}
    write(results, "mesh", {
        "setup": {"cores": 2, "haproxy": "HAProxy version 2.6.12"},
        "small": {"16 connections": {"direct": {"rps": 140000.0}, "proconsul": row, "haproxy": row | {"rps": 33000.0}}},
        "bulk": {"direct": {"mb_s": 5432.8}, "proconsul": {"mb_s": 759.7}, "haproxy": {"mb_s": 748.3}},
    })
    write(results, "raft", {"raft_layer": {"proconsul @16": {"commits_per_s": 3592.1, "p50_ms": 4.3416, "p99_ms": 8.0}}})
    md = report.render(results)
    assert "| small GETs, 16 connections (req/s, p50) | 30,000, 0.538 ms | 33,000, 0.538 ms | 0.91 | 140,000 |" in md
    assert "| bulk, one connection (MB/s) | 760 | 748 | 1.02 | 5,433 |" in md
    assert "16 connections: proconsul 33 µs, HAProxy 30 µs" in md
    assert cells(md, "mesh sidecar pair vs HAProxy pair, 16 connections (req/s)")[3:] == ["0.91", "≥ 1.0×", "≥ 1.2×", "MISS"]
    assert cells(md, "mesh sidecar pair vs HAProxy pair, p99 at 16 connections")[1:] == ["1.20 ms", "1.20 ms", "1.00", "≤ 2.0×", "—", "pass"]
    assert "| proconsul (unbatched), 16 proposers | 3,592 | 4.34 ms | 8.00 ms |" in md
    assert "`python -m bench raft`, 2026-11-25 05:25:16 UTC, x86_64, cpu, python 3.11.7." in md


def test_number_formats() -> None:
    assert [report.count(x) for x in (74635.36, 9.86, 156.0)] == ["74,635", "9.9", "156"]
    assert [report.ms(x) for x in (1680.0, 19.49, 4.3416, 0.6854, 0.053)] == ["1,680 ms", "19.5 ms", "4.34 ms", "0.685 ms", "0.053 ms"]
    assert [report.secs(x) for x in (0.1012, 1.149, float("inf"))] == ["0.101 s", "1.15 s", "timed out"]
    assert report.ratio(0.66567) == "0.67"


README = """# proconsul

intro

## Performance

Hand-written intro.

<!-- bench:begin -->
| old | table |
<!-- bench:end -->

Prose that stays.

## Layout
"""


def test_update_readme_rewrites_only_between_the_markers(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert report.update_readme(readme, results) is True
    first = readme.read_text()
    before, _, rest = first.partition(report.BEGIN + "\n")
    body, _, after = rest.partition(report.END + "\n")
    assert before == README.partition(report.BEGIN + "\n")[0]
    assert after == README.partition(report.END + "\n")[2]
    assert "| old | table |" not in body and body == "\n" + report.render(results) + "\n"
    assert report.update_readme(readme, results) is False
    assert readme.read_text() == first  # idempotent


def test_update_readme_without_markers_refuses(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="bench:begin"):
        report.update_readme(readme, results)
    assert readme.read_text() == "# no markers\n"


def test_report_is_a_pseudo_name_not_a_benchmark() -> None:
    assert REPORT == "report" and REPORT not in BENCHMARKS
