"""README.md's Performance section, generated from bench/results/<name>.json.

``render(results_dir)`` builds the Markdown: one table with a row per target of
issue 9 (proconsul, its peer, the ratio, the must-reach and goal thresholds,
a verdict), the results files it came from, then the detail tables (mesh, Raft
layer), each followed by the date, machine and exact command of its file.
``update_readme(readme, results_dir)`` puts it between the ``<!-- bench:begin -->``
and ``<!-- bench:end -->`` lines and leaves every other byte of the README alone.

Invariants: the output depends on the results files only (no clock), so a
second run gives the same README; a missing or unreadable results file, or a
figure a file does not hold, makes its row say "not measured" instead of
raising. Verdicts are the benchmarks' own: where a results file's ``targets``
list judged the same threshold, its PASS/MISS is used; any other threshold is
judged with the same ``bench.common.verdict``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.common import verdict

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
NOT_MEASURED = "not measured"
DASH = "—"
# what a results file may lack, or hold in another shape, on the way to a figure
MISSING = (LookupError, TypeError, ValueError, ZeroDivisionError, AttributeError)

Result = dict[str, Any]


# --- numbers as the README writes them


def count(x: float) -> str:
    """A rate or count: thousands separators, no decimals above 10."""
    return _finite(x) or (f"{x:,.0f}" if x >= 10 else f"{x:.1f}")


def ms(x: float) -> str:
    """Milliseconds with 2-3 significant digits."""
    return _finite(x) or (f"{x:,.0f} ms" if x >= 100 else f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms" if x >= 1 else f"{x:.3f} ms")


def secs(x: float) -> str:
    """Seconds with 3 significant digits."""
    return _finite(x) or (f"{x:.1f} s" if x >= 10 else f"{x:.2f} s" if x >= 1 else f"{x:.3f} s")


def ratio(x: float) -> str:
    return _finite(x) or f"{x:.2f}"


def _finite(x: float) -> str | None:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "timed out"
    return None


# --- the main table: a row per target


@dataclass(frozen=True)
class Target:
    """A threshold of the issue, and the row name under which its benchmark judged it (if it did)."""

    threshold: float
    higher_is_better: bool
    text: str
    row: str | None = None


def at_least(x: float, row: str | None = None) -> Target:
    return Target(x, True, f"≥ {x:.1f}×", row)


def at_most(x: float, row: str | None = None) -> Target:
    return Target(x, False, f"≤ {x:.1f}×", row)


def below_s(x: float, row: str | None = None) -> Target:
    return Target(x, False, f"< {x:g} s", row)


def below_ms(x: float, row: str | None = None) -> Target:
    return Target(x, False, f"< {x:g} ms", row)


@dataclass(frozen=True)
class Figures:
    """What one row shows, and the figure its targets judge (the ratio, or proconsul's own value)."""

    ours: str
    peer: str = DASH
    ratio: float | None = None
    judged: float = math.nan


@dataclass(frozen=True)
class Spec:
    """One row: its label, results file, how to read its figures, its targets; optional rows vanish when not measured."""

    workload: str
    source: str
    figures: Callable[[Result], Figures]
    must: Target | None = None
    goal: Target | None = None
    optional: bool = False


def _pair(get: Callable[[Result, str], float], ours: str, peer: str, fmt: Callable[[float], str]) -> Callable[[Result], Figures]:
    def figures(r: Result) -> Figures:
        x, y = get(r, ours), get(r, peer)
        return Figures(fmt(x), fmt(y), x / y, x / y)

    return figures


def _value(path: tuple[str, ...], fmt: Callable[[float], str]) -> Callable[[Result], Figures]:
    def figures(r: Result) -> Figures:
        v = float(_dig(r, path))
        return Figures(fmt(v), judged=v)

    return figures


def _dig(r: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        r = r[key]
    return r


def _kv(row: str, conc: int) -> Callable[[Result, str], float]:
    return lambda r, name: r["rows"][f"{row} @{conc} {name}"]["rps"]


def _dns(qtype: str) -> Callable[[Result, str], float]:
    return lambda r, name: r[qtype][name]["qps_median"]


def _conns(n: int) -> str:
    return f"{n} connection{'s' if n > 1 else ''}"


def _live(row: dict[str, Any]) -> dict[str, Any]:
    """A mesh row that ran (mesh.py records ``{"skipped": why}`` for one that did not)."""
    if "skipped" in row:
        raise LookupError(row["skipped"])
    return row


def _mesh_small(conns: int, key: str) -> Callable[[Result, str], float]:
    return lambda r, name: _live(r["small"][_conns(conns)][name])[key]


def _mesh_bulk(r: Result, name: str) -> float:
    return _live(r["bulk"][name])["mb_s"]


# The targets of issue 9. Stored row names are those the benchmarks write in their "targets" lists.
SPECS: list[Spec] = [
    *(
        Spec(f"KV PUT vs etcd, {c} client{'s' if c > 1 else ''} (req/s)", "kv", _pair(_kv("PUT", c), "proconsul", "etcd", count),
             at_least(want, f"PUT @{c}"), at_least(1.0, f"PUT @{c}"))
        for c, want in ((1, 1.0), (16, 1.0), (64, 0.8))
    ),
    *(
        Spec(f"KV GET default vs etcd linearizable, {c} client{'s' if c > 1 else ''} (req/s)", "kv",
             _pair(_kv("GET consistent", c), "proconsul default", "etcd linearizable", count),
             *((at_least(2.0, "GET consistent @16"), at_least(3.0)) if c == 16 else ()), optional=c != 16)
        for c in (1, 16, 64)
    ),
    Spec("KV GET `?stale` vs etcd serializable, 16 clients (req/s)", "kv",
         _pair(_kv("GET stale", 16), "proconsul ?stale", "etcd serializable", count), at_least(2.0, "GET stale @16"), at_least(3.0)),
    Spec("DNS `web.service.consul SRV` vs dnsmasq (q/s)", "dns", _pair(_dns("SRV"), "proconsul", "dnsmasq", count), at_least(0.2), at_least(0.3)),
    Spec("DNS `web.service.consul A` vs dnsmasq (q/s)", "dns", _pair(_dns("A"), "proconsul", "dnsmasq", count), at_least(0.2), at_least(0.3)),
    *(
        Spec(f"mesh sidecar pair vs HAProxy pair, {_conns(c)} (req/s)", "mesh", _pair(_mesh_small(c, "rps"), "proconsul", "haproxy", count),
             *((at_least(1.0), at_least(1.2)) if c == 16 else ()), optional=c != 16)
        for c in (1, 16, 64)
    ),
    Spec("mesh sidecar pair vs HAProxy pair, bulk, one connection (MB/s)", "mesh", _pair(_mesh_bulk, "proconsul", "haproxy", count), at_least(0.9)),
    Spec("mesh sidecar pair vs HAProxy pair, p99 at 16 connections", "mesh", _pair(_mesh_small(16, "p99_ms"), "proconsul", "haproxy", ms), at_most(2.0)),
    *(
        Spec(f"blocking fan-out, 2,000 {label} watchers: write → all returned", "fanout", _value(("summary", kind, "last_s", "median"), secs),
             below_s(1.0, f"{kind}: all 2000 returned"), below_s(0.3, f"{kind}: all 2000 returned (goal)"))
        for kind, label in (("kv", "KV"), ("health", "health"))
    ),
    Spec("`/v1/health/service` of 1,000 instances, p50 (leader)", "catalog", _value(("reads", "leader, default", "p50_ms"), ms),
         below_ms(20.0, "p50 leader, default"), below_ms(5.0, "p50 leader, default (goal)")),
    Spec("leader `kill -9` → first accepted write", "events", _value(("failover", "recovery_s", "median"), secs),
         below_s(3.0, "leader kill -9 -> first accepted write"), below_s(1.5)),
    Spec("`proconsul agent -dev` start → ready (a leader elected)", "events", _value(("dev_start", "leader_s", "median"), secs),
         below_s(1.0, "agent -dev start -> /v1/status/leader"), below_s(0.5)),
]


def _passes(t: Target, value: float, stored: list[Any]) -> bool:
    """The benchmark's own verdict on this threshold if it wrote one, else the same judgement made here."""
    for s in stored:
        if not isinstance(s, dict) or t.row is None or s.get("row") != t.row:
            continue
        threshold = next((v for k, v in s.items() if k.startswith("target") and isinstance(v, (int, float))), None)
        if threshold is not None and math.isclose(threshold, t.threshold):
            return s.get("verdict") == "PASS"
    return verdict(value, t.threshold, t.higher_is_better) == "PASS"


def judge(spec: Spec, value: float, stored: list[Any]) -> str:
    """'goal' when the goal is met, 'pass' when only the must-reach is, 'MISS' otherwise; a row without targets gets a dash."""
    if spec.must is None:
        return DASH
    if not _passes(spec.must, value, stored):
        return "MISS"
    return "goal" if spec.goal is not None and _passes(spec.goal, value, stored) else "pass"


def _main_row(spec: Spec, docs: dict[str, dict]) -> list[str] | None:
    must = spec.must.text if spec.must else DASH
    goal = spec.goal.text if spec.goal else DASH
    try:
        result = docs[spec.source]["result"]
        fig = spec.figures(result)
    except MISSING:
        return None if spec.optional else [spec.workload, NOT_MEASURED, DASH, DASH, must, goal, DASH]
    stored = result.get("targets")
    v = judge(spec, fig.judged, stored if isinstance(stored, list) else [])
    return [spec.workload, fig.ours, fig.peer, DASH if fig.ratio is None else ratio(fig.ratio), must, goal, v]


# --- where each table came from


def provenance(name: str, doc: dict | None) -> str:
    """'`command`, date UTC, machine (, N cores)' of a results file, or why there is none."""
    if doc is None:
        return f"`python -m bench {name}`: no results in `bench/results/{name}.json`"
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    setup = doc["result"].get("setup")
    cores = setup.get("cores") if isinstance(setup, dict) else None
    machine = str(meta.get("machine", "machine not recorded"))
    if cores and "cores" not in machine:  # results written before the machine line named them
        machine += f", {cores} cores"
    command = meta.get("command")
    return f"{f'`{command}`' if command else 'command not recorded'}, {meta.get('date', 'date not recorded')} UTC, {machine}"


def load(results_dir: Path | str) -> dict[str, dict]:
    """Every readable results file by benchmark name; one that does not parse is left out."""
    out = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
            out[path.stem] = doc
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main_table(docs: dict[str, dict]) -> str:
    """The target table, a legend, and one provenance line per results file it read."""
    rows = [r for r in (_main_row(s, docs) for s in SPECS) if r is not None]
    sources = list(dict.fromkeys(s.source for s in SPECS))
    legend = ("Ratios are proconsul / peer of the medians (for the p99 row, lower is better). "
              "Verdict: `goal` meets the goal, `pass` the must-reach only, `MISS` neither; a dash, no target at that level.")
    measured = "Measured:\n\n" + "\n".join(f"- {provenance(n, docs.get(n))}" for n in sources)
    return "\n\n".join([_table(["workload", "proconsul", "peer", "ratio", "must reach", "goal", "verdict"], rows), legend, measured])


# --- the detail tables


def _cell(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except MISSING:
        return NOT_MEASURED


ONE_AGENT = "proconsul, 1 agent"  # mesh.py's extra row: both sidecars in one agent process


def mesh_table(doc: dict | None) -> str:
    """Today's mesh detail table (L4 and L7, small requests and bulk), proxy CPU per request, and its provenance."""
    if doc is None:
        return f"Mesh detail: {NOT_MEASURED} ({provenance('mesh', None)})."
    r = doc["result"]
    small = r.get("small") if isinstance(r.get("small"), dict) else {}
    bulk = r.get("bulk") if isinstance(r.get("bulk"), dict) else {}
    rows, cpu = [], []

    def rps_p50(t: dict, name: str) -> str:
        row = _live(t[name])
        return f"{count(row['rps'])}, {ms(row['p50_ms'])}"

    def per_request(t: dict, name: str) -> str:
        row = _live(t[name])
        return f"{row['proxy_cpu'] / row['rps'] * 1e6:.0f} µs"

    for key in sorted(small, key=lambda k: int(k.split()[0]) if k.split()[0].isdigit() else 0):
        t = small[key]
        for ours, theirs, label, has_direct in (("proconsul", "haproxy", f"small GETs, {key} (req/s, p50)", True),
                                                (ONE_AGENT, "haproxy", f"small GETs, {key}, both sidecars in one agent", False),
                                                ("proconsul L7 (http)", "haproxy L7 (http)", f"small GETs, {key}, L7 (`protocol = http` vs `mode http`)", False)):
            if ours not in t and (theirs not in t or ours == ONE_AGENT):  # the one-agent row is an extra: shown when measured
                continue
            rows.append([label, _cell(lambda: rps_p50(t, ours)), _cell(lambda: rps_p50(t, theirs)),
                         _cell(lambda: ratio(_live(t[ours])["rps"] / _live(t[theirs])["rps"])),
                         _cell(lambda: count(_live(t["direct"])["rps"])) if has_direct else DASH])
            cpu.append(f"{label.split(' (')[0].removeprefix('small GETs, ')}: proconsul {_cell(lambda: per_request(t, ours))}, HAProxy {_cell(lambda: per_request(t, theirs))}")
    for ours, theirs, label, has_direct in (("proconsul", "haproxy", "bulk, one connection (MB/s)", True),
                                            (ONE_AGENT, "haproxy", "bulk, both sidecars in one agent (MB/s)", False),
                                            ("proconsul L7 (http)", "haproxy L7 (http)", "bulk, L7 (MB/s)", False)):
        if ours not in bulk and (theirs not in bulk or ours == ONE_AGENT):
            continue
        rows.append([label, _cell(lambda: count(_live(bulk[ours])["mb_s"])), _cell(lambda: count(_live(bulk[theirs])["mb_s"])),
                     _cell(lambda: ratio(_live(bulk[ours])["mb_s"] / _live(bulk[theirs])["mb_s"])),
                     _cell(lambda: count(_live(bulk["direct"])["mb_s"])) if has_direct else DASH])
    header = ["mesh, 2 sidecars (each in its own agent) vs an HAProxy mTLS pair (`nbthread 1` each), same EC P-256 certs",
              "proconsul", "HAProxy", "ratio", "direct"]
    parts = [_table(header, rows)] if rows else [f"Mesh detail: {NOT_MEASURED}."]
    if cpu:
        parts.append("Proxy CPU per small request (both HAProxy processes together): " + "; ".join(cpu) + ".")
    setup = r.get("setup") if isinstance(r.get("setup"), dict) else {}
    tls = setup.get("tls") if isinstance(setup.get("tls"), dict) else {}
    if setup.get("haproxy") or tls:
        parts.append("; ".join(
            ([f"{setup['haproxy']}"] if setup.get("haproxy") else [])
            + (["TLS each side picks for an OpenSSL client: " + ", ".join(f"{k} {v}" for k, v in tls.items())] if tls else [])
        ) + ".")
    parts.append(provenance("mesh", doc) + ".")
    return "\n\n".join(parts)


def raft_table(doc: dict | None) -> str:
    """Today's Raft-layer table, the end-to-end PUT latencies, the truncation probe, and its provenance."""
    if doc is None:
        return f"Raft layer: {NOT_MEASURED} ({provenance('raft', None)})."
    r = doc["result"]
    label = {"pysyncobj defaults": "pysyncobj defaults (batched appends)", "proconsul": "proconsul (unbatched)"}
    rows = []
    layer = r.get("raft_layer") if isinstance(r.get("raft_layer"), dict) else {}
    for key, row in layer.items():
        name, _, conc = key.rpartition(" @")
        who = f"{label.get(name, name)}, {conc} proposer{'s' if conc != '1' else ''}"
        rows.append([who, _cell(lambda: count(row["commits_per_s"])), _cell(lambda: ms(row["p50_ms"])), _cell(lambda: ms(row["p99_ms"]))])
    parts = [_table(["Raft, 3 in-process nodes, 64-byte KV sets", "commits/s", "p50", "p99"], rows)] if rows else [f"Raft layer: {NOT_MEASURED}."]
    http = r.get("http")
    if isinstance(http, dict) and http:
        parts.append("End to end on a 3-server cluster of processes, one HTTP client, 64-byte PUTs: "
                     + "; ".join(f"{name} p50 {_cell(lambda: ms(x['p50_ms']))}, p99 {_cell(lambda: ms(x['p99_ms']))}" for name, x in http.items()) + ".")
    t = r.get("truncation")
    if isinstance(t, dict):
        parts.append(_cell(lambda: (
            f"Truncation probe (unbatched, under load): {t['critical_messages']} \"truncating already-applied\" "
            f"messages, {t['entries_compared']:,} truncated entries compared with their replacements, {t['mismatched']} different, "
            f"replicas identical: {'yes' if t['replicas_identical'] else 'NO'}."
        )))
    parts.append(provenance("raft", doc) + ".")
    return "\n\n".join(parts)


# --- the section


def render(results_dir: Path | str) -> str:
    """The Markdown between the README's bench markers, from every results file in ``results_dir``."""
    docs = load(results_dir)
    return "\n\n".join([main_table(docs), mesh_table(docs.get("mesh")), raft_table(docs.get("raft"))]) + "\n"


def update_readme(readme_path: Path | str, results_dir: Path | str) -> bool:
    """Replace what lies between the bench marker lines with ``render(results_dir)``; True if the file changed."""
    path = Path(readme_path)
    text = path.read_text()
    lines = text.split("\n")
    try:
        begin = lines.index(BEGIN)
        end = lines.index(END, begin + 1)
    except ValueError:
        raise ValueError(f"{path} has no {BEGIN} ... {END} lines to write between") from None
    body = render(results_dir).rstrip("\n").split("\n")
    new = "\n".join(lines[: begin + 1] + [""] + body + [""] + lines[end:])
    if new == text:
        return False
    path.write_text(new)
    return True
