"""DNS: queries/s for SRV and A lookups of a 5-instance service, proconsul's dev agent vs dnsmasq, one run.

Both serve the same records on 127.0.0.1: ``web.service.consul`` with five
instances (SRV with the node targets' A records in the additional section, and
A). dnsperf (Debian) drives each target for a bounded time, alternating targets
A B A B over several rounds; medians and the paired ratio are reported, with
dnsperf's own CPU use (it shares the 2 cores with the server under test).

Run: ``python -m bench dns`` (installs dnsperf and dnsmasq from Debian when missing).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import free_ports  # noqa: E402

DURATION = 8  # seconds per dnsperf run
ROUNDS = 3
CLIENTS = 16


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("dnsperf", "dnsperf"), ("dnsmasq", "dnsmasq-base")) if not shutil.which(tool)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, capture_output=True)


def start_proconsul(workdir: Path) -> tuple[subprocess.Popen, int]:
    http, server, dns = free_ports(3)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "proconsul"), "agent", "-dev", "-http-port", str(http), "-server-port", str(server), "-dns-port", str(dns), "-log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{base}/v1/status/leader", timeout=1).json():
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("proconsul agent did not start")
        time.sleep(0.1)
    for i in range(1, 6):
        body = {"Name": "web", "ID": f"web{i}", "Port": 8080 + i, "Address": f"10.0.0.{i}", "Check": {"TTL": "1h", "Status": "passing"}}
        httpx.put(f"{base}/v1/agent/service/register", json=body).raise_for_status()
    while len(httpx.get(f"{base}/v1/health/service/web", params={"passing": ""}).json()) < 5:
        time.sleep(0.1)
    return proc, dns


def start_dnsmasq(workdir: Path) -> tuple[subprocess.Popen, int]:
    (port,) = free_ports(1)
    conf = workdir / "dnsmasq.conf"
    lines = ["no-resolv", "no-hosts", "bind-interfaces", "listen-address=127.0.0.1", f"port={port}", "cache-size=10000"]
    for i in range(1, 6):
        lines.append(f"srv-host=web.service.consul,web{i}.node.dc1.consul,{8080 + i},1,1")
        lines.append(f"host-record=web{i}.node.dc1.consul,10.0.0.{i}")
        lines.append(f"host-record=web.service.consul,10.0.0.{i}")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["dnsmasq", "-k", "-C", str(conf), "--user=root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.5)
    return proc, port


def dnsperf(port: int, qtype: str, workdir: Path) -> dict[str, float]:
    data = workdir / f"queries-{qtype}.txt"
    data.write_text(f"web.service.consul {qtype}\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-l", str(DURATION), "-c", str(CLIENTS), "-Q", "200000", "-t", "2"],
        capture_output=True, text=True, timeout=DURATION + 30,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / DURATION
    return {"qps": qps, "lost": float(lost.group(1)) if lost else 0.0, "dnsperf_cpu_cores": cpu}


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str]) -> dict[str, Any]:
    ensure_tools()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="proconsul-bench-dns-") as tmp:
        workdir = Path(tmp)
        ours, our_port = start_proconsul(workdir)
        peer, peer_port = start_dnsmasq(workdir)
        try:
            for qtype in ("SRV", "A"):
                runs: dict[str, list[dict]] = {"proconsul": [], "dnsmasq": []}
                for _ in range(ROUNDS):  # A B A B
                    runs["proconsul"].append(dnsperf(our_port, qtype, workdir))
                    runs["dnsmasq"].append(dnsperf(peer_port, qtype, workdir))
                results[qtype] = {
                    name: {
                        "qps_median": statistics.median(r["qps"] for r in rs),
                        "qps_min": min(r["qps"] for r in rs),
                        "qps_max": max(r["qps"] for r in rs),
                        "lost": sum(r["lost"] for r in rs),
                        "dnsperf_cpu_cores": statistics.median(r["dnsperf_cpu_cores"] for r in rs),
                    }
                    for name, rs in runs.items()
                }
                results[qtype]["ratio"] = results[qtype]["proconsul"]["qps_median"] / results[qtype]["dnsmasq"]["qps_median"]
        finally:
            stop(ours)
            stop(peer)
    print(f"DNS, 5-instance service, dnsperf {CLIENTS} clients x {DURATION}s, {ROUNDS} interleaved rounds (median [min-max] queries/s)")
    for qtype, r in results.items():
        for name in ("proconsul", "dnsmasq"):
            x = r[name]
            print(f"  {qtype:<4}{name:<11}{x['qps_median']:>10.0f}  [{x['qps_min']:.0f}-{x['qps_max']:.0f}]  lost {x['lost']:.0f}  dnsperf cpu {x['dnsperf_cpu_cores']:.2f} cores")
        print(f"  {qtype:<4}ratio      {r['ratio']:.2f}x dnsmasq")
    return results
