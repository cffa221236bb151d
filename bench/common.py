"""Shared pieces of the cluster benchmarks (kv, catalog, fanout, events).

* ``Procs``: every process a benchmark starts itself, stopped by PID in ``finally``.
* ``proconsul_cluster``: the tests' ``Cluster`` harness (real ``proconsul agent``
  subprocesses, free loopback ports, ``retry_join``, ``bootstrap_expect`` 3),
  with its data dirs on tmpfs so neither side of a comparison pays for a disk.
* ``wrk_lua``: one wrk run driven by a Lua script: req/s, p50/p99, errors and
  wrk's own CPU.
* ``spread``, ``verdict``: medians with min-max, and PASS/MISS against a target.
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import AgentProc, Cluster, free_ports  # noqa: E402,F401  (the tests' process harness)

REPO = Path(__file__).resolve().parent.parent
PROCONSUL = str(Path(sys.executable).parent / "proconsul")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") else None


@dataclass
class Procs:
    """Every process a benchmark started, stopped by PID (its own process group) in ``finally``."""

    started: list[subprocess.Popen] = field(default_factory=list)

    def start(self, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group we started, SIGKILL it if it lingers, and reap it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        proc.wait()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def ensure_apt(tools: dict[str, str]) -> None:
    """apt-get install the Debian package of each missing tool (we run as root)."""
    missing = [pkg for tool, pkg in tools.items() if not shutil.which(tool)]
    if missing:
        r = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, capture_output=True)


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proconsul_cluster(workdir: Path, **extra: Any) -> Cluster:
    """A started 3-server cluster (the tests' harness), log level warn."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(workdir, size=3, **({"log_level": "warn"} | extra))
    try:
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    return cluster


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, all threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def others_cpu(ours: set[int]) -> dict[int, float]:
    """CPU seconds so far of every process on the box but ours: a run they load is a noisy run."""
    return {int(d): cpu_seconds(int(d)) for d in os.listdir("/proc") if d.isdigit() and int(d) not in ours}


def others_cores(before: dict[int, float], ours: set[int], wall: float) -> float:
    """Cores the other processes (present at both samples) used since ``before``."""
    after = others_cpu(ours)
    return sum(v - before[p] for p, v in after.items() if p in before) / wall


def wait_idle(pid: int, below: float = 0.05, window: float = 0.3, timeout: float = 20.0) -> float:
    """Wait until a process uses less than ``below`` cores over ``window`` seconds; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        c0 = cpu_seconds(pid)
        time.sleep(window)
        if (cpu_seconds(pid) - c0) / window < below:
            break
    return time.monotonic() - start


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of a list."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else {"median": float("nan"), "min": float("nan"), "max": float("nan")}


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    if value != value:  # nan
        return "MISS (no figure)"
    return "PASS" if (value >= target if higher_is_better else value < target) else "MISS"


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_lua(url: str, connections: int, duration: float, script: Path, args: list[str] | None = None, timeout: str = "5s") -> dict[str, float]:
    """One wrk run (-t1) with a Lua script: req/s, p50/p99 ms, requests, errors, wrk's CPU in cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", timeout, "-s", str(script), url]
    if args:
        cmd += ["--", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    out = proc.stdout
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"wrk printed no Requests/sec: {out[-300:]!r} {proc.stderr[-300:]!r}")
    lat = {q: float(v) * _UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockerr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sockerr.groups())) if sockerr else 0)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": lat.get("50", float("nan")),
        "p99_ms": lat.get("99", float("nan")),
        "requests": float(total.group(1)) if total else 0.0,
        "errors": float(errors),
        "wrk_cpu": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall,
    }


def summarize_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    """Medians of every figure over the rounds, with the min and max of req/s."""
    if not runs:
        return {}
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["rps_min"] = min(r["rps"] for r in runs)
    out["rps_max"] = max(r["rps"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    return out


def eventually(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Call ``fn`` until it returns something truthy without raising; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = fn()
            if result:
                return result
            last = result
        except Exception as err:  # the fact is not true yet
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s{': ' + what if what else ''} (last: {last!r})")
        time.sleep(interval)
