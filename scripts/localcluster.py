"""docker-compose.yml's topology as local processes: for people without Docker, and for the fault tests.

``scripts/local-cluster`` runs it: every service of the compose file becomes a
process on this machine, started from the same config files in deploy/. Agents
get one merged JSON config each, rewritten for the host: compose's fixed
addresses become 127.0.0.1 (or, for the fault tests, each node's own network
namespace), ports are remapped to free ones so nothing collides on one
loopback, data dirs go under a work dir. App and one-shot commands are
rewritten the same way (container paths, addresses, ports). Ctrl-C stops
everything.

The fault tests import ``plan()`` to start their clusters from the same files,
with more servers when they want five.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
# Ports an agent listens on when its config does not say (Consul's defaults).
DEFAULT_PORTS = {"http": 8500, "dns": 8600, "server": 8300, "raft": 8305}
SIDECAR_MIN = 21000
_IPV4_PORT = re.compile(r"^(\d+\.\d+\.\d+\.\d+):(\d+)$")
_URL = re.compile(r"^(https?://)([^/:]+):(\d+)(.*)$")


@dataclass
class Service:
    """One compose service, as far as running it goes."""

    name: str
    command: list[str]
    ip: str | None  # its fixed address on the compose network
    owner: str  # whose network namespace it runs in (network_mode: service:X), else itself
    mounts: list[tuple[str, str]]  # (host path, container path)
    restart: str = ""

    @property
    def kind(self) -> str:
        if self.command[:2] == ["proconsul", "agent"]:
            return "server" if "server" in self.name else "client"
        return "task" if self.restart == "on-failure" else "app"

    def host_path(self, path: str) -> str | None:
        """The host file a container path is mounted from, or None."""
        for host, container in self.mounts:
            if path == container or path.startswith(container.rstrip("/") + "/"):
                return host + path[len(container.rstrip("/")) :]
        return None


def load(compose: Path = COMPOSE) -> list[Service]:
    """The compose file's services, in file order."""
    data = yaml.safe_load(compose.read_text())
    out = []
    for name, svc in data["services"].items():
        nets = svc.get("networks") or {}
        ip = None
        if isinstance(nets, dict):
            for net in nets.values():
                if net and net.get("ipv4_address"):
                    ip = net["ipv4_address"]
        mode = svc.get("network_mode") or ""
        owner = mode.split(":", 1)[1] if mode.startswith("service:") else name
        mounts = []
        for vol in svc.get("volumes") or []:
            src, dst = vol.split(":")[:2]
            if src.startswith("."):
                mounts.append((str((compose.parent / src).resolve()), dst))
        out.append(Service(name, list(svc["command"]), ip, owner, mounts, svc.get("restart", "")))
    return out


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free for TCP and for UDP (held together while chosen, so they differ).

    Both, because an agent's DNS port takes both: a port free for TCP can still be some process's ephemeral
    UDP port (a DNS client's, a recursor query's), and the agent would stop with "Address already in use"."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(100 * n):
            if len(ports) == n:
                break
            tcp = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            tcp.bind((host, 0))
            socks.append(tcp)
            port = tcp.getsockname()[1]
            udp = socket.socket(tcp.family, socket.SOCK_DGRAM)
            try:
                udp.bind((host, port))
            except OSError:
                udp.close()
                continue
            socks.append(udp)
            ports.append(port)
        if len(ports) < n:
            raise RuntimeError(f"found {len(ports)} of {n} ports free for both TCP and UDP on {host}")
        return ports
    finally:
        for s in socks:
            s.close()


def free_range(n: int, host: str = "127.0.0.1", taken: set[int] = frozenset()) -> int:
    """The first of ``n`` consecutive free TCP ports, none of them in ``taken``."""
    for base in range(22000, 60000, 97):
        if taken & set(range(base, base + n)):
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


@dataclass
class NodePlan:
    """How to run one compose service here: an agent's config, or an app's or task's argv."""

    name: str
    kind: str  # server | client | app | task
    host: str  # the address it listens on
    argv: list[str] = field(default_factory=list)  # apps and tasks
    config: dict[str, Any] = field(default_factory=dict)  # agents
    health_url: str = ""  # apps: GET this for 200

    @property
    def http(self) -> str:
        return f"{self.host}:{self.config['ports']['http']}" if self.config else ""


class Ports:
    """Where each (network namespace, port) of the compose file lands here."""

    def __init__(self, remap: bool) -> None:
        self.remap = remap
        self._map: dict[tuple[str, int], int] = {}

    def __call__(self, owner: str, port: int) -> int:
        if not self.remap:
            return port
        key = (owner, port)
        if key not in self._map:
            taken = set(self._map.values())
            while True:
                (p,) = free_ports(1)
                if p not in taken:
                    break
            self._map[key] = p
        return self._map[key]

    def known(self, owner: str, port: int) -> bool:
        return not self.remap or (owner, port) in self._map

    def block(self, owner: str, n: int, host: str) -> int:
        """The first of ``n`` consecutive ports for ``owner`` (its sidecar proxies' range)."""
        base = free_range(n, host, set(self._map.values()))
        for i in range(n):
            self._map[(owner, -1 - i)] = base + i  # held, under keys no compose port uses
        return base


def _merge(files: list[str]) -> dict[str, Any]:
    """Config files merged as the agent merges them: later keys win, ports merge, definitions accumulate."""
    merged: dict[str, Any] = {}
    for path in files:
        data = json.loads(Path(path).read_text())
        for key, value in data.items():
            if key == "ports":
                merged["ports"] = {**merged.get("ports", {}), **value}
            elif key in ("services", "checks"):
                merged[key] = [*merged.get(key, []), *value]
            elif key in ("service", "check"):
                merged[key + "s"] = [*merged.get(key + "s", []), value]
            else:
                merged[key] = value
    return merged


def plan(
    workdir: Path,
    services: list[Service] | None = None,
    host_of: Callable[[str], str] = lambda name: "127.0.0.1",
    remap_ports: bool = True,
    servers: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[NodePlan]:
    """Every compose service as a NodePlan: agents first (servers, then clients), then apps, then tasks.

    ``host_of(name)`` is the address a node gets (default 127.0.0.1); ``servers`` clones the last
    server to run more of them (bootstrap_expect and retry_join follow); ``overrides`` are config
    keys set on every agent (timings for tests, say).
    """
    services = list(services or load())
    by_ip = {s.ip: s.name for s in services if s.ip}
    ports = Ports(remap_ports)
    agent_services = [s for s in services if s.kind == "server"]
    if servers is not None and servers > len(agent_services):
        last = agent_services[-1]
        for k in range(len(agent_services) + 1, servers + 1):
            clone = copy.deepcopy(last)
            clone.name, clone.ip, clone.owner = f"server{k}", None, f"server{k}"
            services.insert(services.index(last) + 1, clone)
            last = clone
    server_names = [s.name for s in services if s.kind == "server"]

    def rewrite(token: str, owner: str, svc: Service) -> str:
        """One argv token or config string, for here: container paths, compose addresses, ports."""
        host_file = svc.host_path(token) if token.startswith("/") else None
        if host_file is not None:
            return host_file
        m = _IPV4_PORT.match(token)
        if m and m.group(1) in by_ip:
            target = by_ip[m.group(1)]
            return f"{host_of(target)}:{ports(target, int(m.group(2)))}"
        m = _URL.match(token)
        if m:
            host, port = m.group(2), int(m.group(3))
            target = by_ip.get(host, owner)
            if host in by_ip:
                host = host_of(target)
            return f"{m.group(1)}{host}:{ports(target, port)}{m.group(4)}"
        if token == "0.0.0.0":
            return host_of(owner)
        if token.isdigit() and 1 <= int(token) < 65536 and ports.known(owner, int(token)):
            return str(ports(owner, int(token)))
        return token

    plans: list[NodePlan] = []
    for svc in services:
        if svc.kind not in ("server", "client"):
            continue
        cfg = _merge(_config_files(svc))  # a cloned server has the last one's files; its name is set below
        name, host = svc.name, host_of(svc.name)
        cfg["node_name"] = name
        cfg["bind_addr"] = cfg["client_addr"] = host
        cfg.pop("advertise_addr", None)
        cfg["data_dir"] = str(workdir / name / "data")
        cfg["ports"] = {**{k: ports(name, v) for k, v in {**DEFAULT_PORTS, **cfg.get("ports", {})}.items() if k in DEFAULT_PORTS or k == "https"}}
        sidecars = sum(1 for d in cfg.get("services", []) if (d.get("connect") or {}).get("sidecar_service") is not None)
        if sidecars and remap_ports:
            base = ports.block(name, sidecars, host)
            cfg["ports"].update(sidecar_min_port=base, sidecar_max_port=base + sidecars - 1)
        if svc.kind == "server" and servers is not None:
            cfg["bootstrap_expect"] = len(server_names)
        cfg["retry_join"] = [f"{host_of(s)}:{ports(s, DEFAULT_PORTS['server'])}" for s in server_names if s != name]
        for defn in cfg.get("services", []):
            defn["port"] = ports(name, defn["port"])
            check = defn.get("check") or {}
            if "http" in check:
                check["http"] = rewrite(check["http"], name, svc)
            sidecar = (defn.get("connect") or {}).get("sidecar_service") or {}
            for up in (sidecar.get("proxy") or {}).get("upstreams", []):
                up["local_bind_port"] = ports(name, up["local_bind_port"])
        cfg.update(overrides or {})
        plans.append(NodePlan(name, svc.kind, host, config=cfg))
    plans.sort(key=lambda p: p.kind != "server")
    for svc in services:
        if svc.kind in ("server", "client"):
            continue
        argv = [rewrite(t, svc.owner, svc) for t in svc.command]
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == "proconsul":
            argv[0] = shutil.which("proconsul", path=str(Path(sys.executable).parent)) or "proconsul"
        health = ""
        if svc.kind == "app" and "-port" in argv:
            health = f"http://{host_of(svc.owner)}:{argv[argv.index('-port') + 1]}/health"
        plans.append(NodePlan(svc.name, svc.kind, host_of(svc.owner), argv=argv, health_url=health))
    return plans


def _config_files(svc: Service) -> list[str]:
    files = []
    for i, token in enumerate(svc.command):
        if token == "-config-file":
            files.append(svc.host_path(svc.command[i + 1]) or svc.command[i + 1])
    return files


# ----------------------------------------------------------------- running it


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def _until(fact: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if fact():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class Runner:
    """Starts the planned processes in order, waits until each is usable, and stops them all."""

    def __init__(self, plans: list[NodePlan], workdir: Path) -> None:
        self.plans = plans
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, p: NodePlan) -> subprocess.Popen:
        (self.workdir / p.name).mkdir(parents=True, exist_ok=True)
        argv = p.argv
        if p.config:
            cfg_path = self.workdir / p.name / "config.json"
            cfg_path.write_text(json.dumps(p.config, indent=1))
            argv = [_proconsul(), "agent", "-config-file", str(cfg_path)]
        log = open(self.workdir / p.name / "output.log", "ab")
        try:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def start(self, timeout: float = 60.0) -> None:
        for p in self.plans:
            if p.kind != "task":
                self.procs[p.name] = self._spawn(p)
        for p in self.plans:
            if p.kind == "server":
                _until(lambda: json.loads(_get(f"http://{p.http}/v1/status/leader")[1]) != "", timeout, f"{p.name} to see a leader")
        for p in self.plans:
            if p.kind == "client":
                _until(lambda: any(m["Name"] == p.name and m["Status"] == 1 for m in json.loads(_get(f"http://{p.http}/v1/agent/members")[1])), timeout, f"{p.name} to join")
            elif p.kind == "app":
                _until(lambda: _get(p.health_url)[0] == 200, timeout, f"{p.name} to answer")
        for p in self.plans:
            if p.kind == "task":  # compose's restart: on-failure, until it succeeds
                _until(lambda: self._run_task(p) == 0, timeout, f"{p.name} to succeed")

    def _run_task(self, p: NodePlan) -> int:
        proc = self._spawn(p)
        self.procs[p.name] = proc
        return proc.wait(timeout=30)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT every process group (apps first, servers last), then SIGKILL what is left."""
        for name in reversed(list(self.procs)):
            _signal(self.procs[name], signal.SIGINT)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal(proc, signal.SIGKILL)
            proc.wait()

    def describe(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "nodes": [
                {
                    "name": p.name,
                    "kind": p.kind,
                    "pid": self.procs[p.name].pid if p.name in self.procs else None,
                    "http": f"http://{p.http}" if p.config else "",
                    "dns": p.config["ports"]["dns"] if p.config else None,
                    "url": p.health_url.rsplit("/health", 1)[0] + "/" if p.health_url else "",
                }
                for p in self.plans
            ],
        }


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _proconsul() -> str:
    return shutil.which("proconsul", path=str(Path(sys.executable).parent)) or "proconsul"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="local-cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("-compose", default=str(COMPOSE), help="the compose file (default: the repo's docker-compose.yml)")
    ap.add_argument("-workdir", help="where configs, data and logs go (default: a temporary dir, removed on exit)")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="proconsul-local-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(plan(workdir, load(Path(args.compose))), workdir)
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        runner.start()
        info = runner.describe()
        (workdir / "cluster.json").write_text(json.dumps(info, indent=1))
        print(_summary(info), flush=True)
        while True:
            for name, proc in runner.procs.items():
                if proc.poll() is not None and not any(p.name == name and p.kind == "task" for p in runner.plans):
                    print(f"{name} exited with {proc.returncode}; see {workdir / name / 'output.log'}", flush=True)
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping...", flush=True)
    except RuntimeError as err:
        print(f"local-cluster: {err}; logs in {workdir}", file=sys.stderr, flush=True)
        code = 1
    finally:
        runner.stop()
        if not args.workdir and code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
    print("stopped", flush=True)
    return code


def _summary(info: dict[str, Any]) -> str:
    lines = ["local cluster ready (Ctrl-C stops everything)", ""]
    for n in info["nodes"]:
        if n["http"]:
            lines.append(f"  {n['name']:<9} {n['kind']:<7} HTTP {n['http']}   DNS 127.0.0.1:{n['dns']}")
        elif n["url"]:
            lines.append(f"  {n['name']:<9} {n['kind']:<7} {n['url']}")
    first = next(n for n in info["nodes"] if n["http"])
    web = next((n["url"] for n in info["nodes"] if n["name"] == "web"), "")
    lines += [
        "",
        f"  export CONSUL_HTTP_ADDR={first['http']}",
        "  proconsul members",
        f"  dig @127.0.0.1 -p {first['dns']} api.service.consul",
    ]
    if web:
        lines.append(f"  curl {web}      # web -> its sidecar -> api's sidecar -> api")
    lines.append(f"  configs, data and logs: {info['workdir']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
