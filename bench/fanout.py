"""Blocking-query fan-out: 2,000 parked blocking queries on one server, one write, time until all have returned.

The server is a proconsul dev agent (``proconsul agent -dev``: one server, its
own leader), started with RLIMIT_NOFILE raised to the hard limit. A separate
client process (``python -m bench.fanout client PORT N``, raw asyncio
HTTP/1.1, one keep-alive connection per query) opens ``WATCHERS`` connections
and parks one blocking query on each:

* KV: ``GET /v1/kv/fan/key?index=N&wait=60s``, then ``PUT /v1/kv/fan/key``;
* health: ``GET /v1/health/service/fan?index=N&wait=60s``, then a
  ``PUT /v1/catalog/register`` of one more ``fan`` instance.

Once every request is sent and the server is idle again (its CPU below 5% over
0.3 s: all queries parked), this process makes the write and notes the time
its acknowledgement arrived; the client notes when each query returns with an
index above N (CLOCK_MONOTONIC is shared by the two processes). A query that
returns without a new index (timeout, spurious wake) is counted and re-issued.
Figures: from sending the write to its acknowledgement and to the first,
median and last return. The targets are judged on "write sent -> last
return", stricter than "ack -> last return": the server sends the woken
queries' answers before the write's own, so the latter is often negative.
Repeated ``REPS`` times per kind, interleaved KV, health, KV, health ...

Run: ``python -m bench fanout``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, TMPFS, PROCONSUL, Procs, free_ports, pct, raise_nofile, spread, verdict, wait_idle

WATCHERS = 2000
REPS = 3
WAIT = "60s"
RETURN_TIMEOUT = 20.0  # seconds after the write for every query to come back
TARGET_S, GOAL_S = 1.0, 0.3


# --- the client process


class Watcher:
    """One keep-alive connection carrying one blocking query at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def send(self, path: str) -> None:
        if self.writer is None or self.writer.is_closing():
            await self.connect()
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await self.writer.drain()

    async def response(self) -> tuple[int, int]:
        """(status, X-Consul-Index) of the next response on this connection."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        if headers.get("connection", "").lower() == "close":
            self.writer.close()
            self.writer = None
        return status, int(headers.get("x-consul-index", "0"))

    async def watch(self, path: str, index: int, deadline: float) -> dict[str, Any]:
        """Park ``path?index=`` until it returns an index above ``index``; re-issue otherwise."""
        sep = "&" if "?" in path else "?"
        spurious = 0
        await self.send(f"{path}{sep}index={index}&wait={WAIT}")
        while True:
            status, got = await asyncio.wait_for(self.response(), max(deadline - time.monotonic(), 0.1))
            now = time.monotonic()
            if status == 200 and got > index:
                return {"t": now, "index": got, "spurious": spurious}
            spurious += 1
            if now > deadline:
                return {"t": None, "index": got, "spurious": spurious, "status": status}
            await self.send(f"{path}{sep}index={index}&wait={WAIT}")


async def client(port: int, n: int) -> None:
    """Connect n watchers, then obey stdin: ``watch PATH INDEX`` ... ``written T_ACK``; answer JSON on stdout."""
    loop = asyncio.get_running_loop()
    watchers = [Watcher(port) for _ in range(n)]
    gate = asyncio.Semaphore(100)

    async def connect(w: Watcher) -> None:
        async with gate:
            await w.connect()

    await asyncio.gather(*(connect(w) for w in watchers))
    print(json.dumps({"connected": n}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.startswith("quit"):
            return
        _, path, index = line.split()
        deadline = time.monotonic() + 120  # the write comes within the parent's bounded wait; this only bounds a lost run
        tasks = [asyncio.create_task(w.watch(path, int(index), deadline)) for w in watchers]
        await asyncio.sleep(0)
        print(json.dumps({"sent": time.monotonic()}), flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)  # "written T_SEND T_ACK"
        t_send = float(line.split()[1])
        done, pending = await asyncio.wait(tasks, timeout=RETURN_TIMEOUT)
        for t in pending:
            t.cancel()
        out = [t.result() if not t.cancelled() and t.exception() is None else {"t": None, "error": repr(t.exception())} for t in done]
        for w, t in zip(watchers, tasks):
            if t in pending:  # its connection now carries an unanswered request: start afresh
                if w.writer is not None:
                    w.writer.close()
                w.writer = None
        times = sorted(r["t"] - t_send for r in out if r.get("t") is not None)
        errors = [r.get("error") for r in out if r.get("error")]
        print(json.dumps({
            "returned": len(times), "missing": n - len(times), "times": times,
            "spurious": sum(r.get("spurious", 0) for r in out), "errors": errors[:3], "n_errors": len(errors),
        }), flush=True)


# --- the benchmark


def start_dev_agent(procs: Procs, workdir: Path) -> tuple[subprocess.Popen, str]:
    http, server = free_ports(2)
    proc = procs.start([PROCONSUL, "agent", "-dev", "-http-port", str(http), "-server-port", str(server), "-dns-port", "-1", "-log-level", "warn"], workdir / "agent.log")
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/v1/status/leader", timeout=1).json():
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"dev agent did not start: {(workdir / 'agent.log').read_text()[-2000:]}")
        time.sleep(0.05)


def read_json(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """The client's next JSON line (bounded by a watchdog on the pipe)."""
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"fan-out client said nothing for {timeout:.0f}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"fan-out client exited ({proc.poll()})")
    return json.loads(line)


def main(argv: list[str]) -> dict[str, Any]:
    nofile = raise_nofile()
    procs = Procs()
    results: dict[str, Any] = {"setup": {"server": "proconsul agent -dev (one server)", "watchers": WATCHERS, "nofile": nofile, "cores": os.cpu_count()}}
    runs: dict[str, list[dict]] = {"kv": [], "health": []}
    with tempfile.TemporaryDirectory(prefix="proconsul-bench-fanout-", dir=TMPFS) as tmp:
        workdir = Path(tmp)
        try:
            agent, url = start_dev_agent(procs, workdir)
            port = int(url.rsplit(":", 1)[1])
            http = httpx.Client(base_url=url, timeout=30)
            http.put("/v1/kv/fan/key", content=b"v0").raise_for_status()
            for i in range(3):
                http.put("/v1/catalog/register", json={"Node": "fan-node", "Address": "10.9.9.9", "Service": {"ID": f"fan-{i}", "Service": "fan", "Port": 9000 + i}}).raise_for_status()
            cl = subprocess.Popen([sys.executable, "-m", "bench.fanout", "client", str(port), str(WATCHERS)], cwd=REPO,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(workdir / "client.log", "wb"), text=True, start_new_session=True)
            procs.started.append(cl)
            t = time.monotonic()
            read_json(cl, 60)
            results["setup"]["connect_s"] = time.monotonic() - t
            serial = 3
            for rep in range(REPS):
                for kind in ("kv", "health"):  # A B A B
                    path = "/v1/kv/fan/key" if kind == "kv" else "/v1/health/service/fan"
                    index = int(http.get(path).headers["X-Consul-Index"])
                    cl.stdin.write(f"watch {path} {index}\n")
                    cl.stdin.flush()
                    t_sent = read_json(cl, 30)["sent"]
                    settle = wait_idle(agent.pid, below=0.05, window=0.3, timeout=30)
                    parked_s = time.monotonic() - t_sent
                    t_write = time.monotonic()
                    if kind == "kv":
                        r = http.put("/v1/kv/fan/key", content=f"v{rep + 1}".encode())
                    else:
                        r = http.put("/v1/catalog/register", json={"Node": "fan-node", "Address": "10.9.9.9", "Service": {"ID": f"fan-{serial}", "Service": "fan", "Port": 9000 + serial}})
                        serial += 1
                    t_ack = time.monotonic()
                    r.raise_for_status()
                    cl.stdin.write(f"written {t_write} {t_ack}\n")
                    cl.stdin.flush()
                    out = read_json(cl, RETURN_TIMEOUT + 30)
                    times = out.pop("times")
                    runs[kind].append(out | {
                        "parked_s": parked_s, "settle_s": settle, "ack_s": t_ack - t_write,
                        "last_after_ack_s": (times[-1] - (t_ack - t_write)) if times else float("nan"),
                        "first_s": times[0] if times else float("nan"),
                        "median_s": pct(times, 0.5),
                        "last_s": times[-1] if times and out["missing"] == 0 else float("inf"),
                    })
            cl.stdin.write("quit\n")
            cl.stdin.flush()
            http.close()
        finally:
            procs.stop_all()
    results["runs"] = runs
    results["summary"] = {kind: {k: spread([r[k] for r in rs]) for k in ("ack_s", "first_s", "median_s", "last_s", "last_after_ack_s", "parked_s")} | {"missing": sum(r["missing"] for r in rs), "spurious": sum(r["spurious"] for r in rs)} for kind, rs in runs.items()}
    results["targets"] = []
    for kind in runs:
        last = results["summary"][kind]["last_s"]["median"]
        # judged from the write's send, not its ack: the ack can arrive after every query has returned
        results["targets"].append({"row": f"{kind}: all {WATCHERS} returned", "value_s": last, "target_s": TARGET_S, "verdict": verdict(last, TARGET_S, higher_is_better=False)})
        results["targets"].append({"row": f"{kind}: all {WATCHERS} returned (goal)", "value_s": last, "target_s": GOAL_S, "verdict": verdict(last, GOAL_S, higher_is_better=False)})
    report(results)
    return results


def report(results: dict[str, Any]) -> None:
    s = results["setup"]
    print(f"Blocking-query fan-out: {s['watchers']} parked queries (one connection each) on a {s['server']}, {s['cores']} cores, RLIMIT_NOFILE {s['nofile']}")
    print(f"  client: separate asyncio process; {s['watchers']} connections opened in {s['connect_s']:.1f}s; {REPS} reps per kind, interleaved")
    print("  seconds from sending the write until its acknowledgement, and until the first / median / last query returned with the new index;")
    print("  'last-ack' is last minus ack (negative: every query had returned before the write's own answer). Median [min-max] over reps.")
    print(f"  {'kind':<8}{'ack':>22}{'first':>22}{'median':>22}{'last':>22}{'last-ack':>24}  missing spurious")
    for kind, m in results["summary"].items():
        cell = lambda x: f"{x['median']:.3f} [{x['min']:.3f}-{x['max']:.3f}]"  # noqa: E731
        print(f"  {kind:<8}{cell(m['ack_s']):>22}{cell(m['first_s']):>22}{cell(m['median_s']):>22}{cell(m['last_s']):>22}{cell(m['last_after_ack_s']):>24}  {m['missing']:>7} {m['spurious']:>8}")
    print("  targets:")
    for t in results["targets"]:
        print(f"    {t['row']:<36}{t['value_s']:>8.3f} s  target < {t['target_s']:.1f} s  {t['verdict']}")


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    asyncio.run(client(int(sys.argv[2]), int(sys.argv[3])))
