"""A network of Linux network namespaces for fault tests: one namespace per node, on a bridge.

Each node gets a namespace with one veth whose other end sits on a bridge in the
root namespace; the bridge holds the test's own address, so the test reaches every
node directly. A partition between nodes is a pair of blackhole routes (one in each
namespace): sends fail at once, so both sides see the link die, and the test
itself keeps reaching both sides (Jepsen's clients are never partitioned either).
This needs root and iproute2, and nothing else (no iptables).

Names carry the creating process's PID (namespaces) or an alias naming it
(bridge), so a run never touches another run's network, and ``sweep()`` removes
what a killed run left behind.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger("netlab")

PREFIX = "pcf"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable_reason() -> str:
    """Why network namespaces cannot be used here ("" when they can)."""
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> None:
    """Remove namespaces and bridges left by fault-test runs whose process is gone."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit() and not _alive(int(parts[1])):
            _kill_pids(name)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        if f"alias {PREFIX}-" not in line:
            continue
        dev = line.split(":")[1].strip()
        pid = line.split(f"alias {PREFIX}-")[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            _ip("link", "del", dev, check=False)


def _kill_pids(ns: str) -> None:
    for pid in _ip("netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


@dataclass
class Host:
    name: str
    netns: str
    veth: str
    ip: str


class NetLab:
    """Namespaces for ``names`` on one bridge; see the module docstring. Use as a context manager."""

    def __init__(self, names: list[str]) -> None:
        tag = f"{random.getrandbits(24):06x}"
        self.tag = tag
        self.bridge = f"pcb{tag}"
        self.subnet = self._free_subnet()
        base = self.subnet.network_address
        self.gateway = str(base + 1)
        self.hosts = {
            name: Host(name, f"{PREFIX}-{os.getpid()}-{tag}-{name}", f"pcv{tag}{i:02d}", str(base + 10 + i))
            for i, name in enumerate(names)
        }
        self._cut: set[tuple[str, str]] = set()

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        used = []
        for line in _ip("-4", "-o", "addr", "show", check=False).stdout.splitlines():
            for word in line.split():
                if "/" in word and word[0].isdigit():
                    used.append(ipaddress.ip_network(word, strict=False))
        for _ in range(200):
            net = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
            if not any(net.overlaps(u) for u in used):
                return net
        raise RuntimeError("no free 10.x.y.0/24 subnet for the test network")

    def __enter__(self) -> "NetLab":
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        sweep()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "alias", f"{PREFIX}-{os.getpid()}-{self.tag}")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for h in self.hosts.values():
            _ip("netns", "add", h.netns)
            _ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
            _ip("link", "set", h.veth, "master", self.bridge, "up")
            _ip("-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
            _ip("-n", h.netns, "link", "set", "eth0", "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")

    def teardown(self) -> None:
        """Kill whatever still runs in our namespaces, delete them and the bridge; never raises."""
        for h in self.hosts.values():
            _kill_pids(h.netns)
            _ip("netns", "del", h.netns, check=False)
        _ip("link", "del", self.bridge, check=False)

    def ip(self, name: str) -> str:
        return self.hosts[name].ip

    def wrap(self, name: str) -> list[str]:
        """The command prefix that runs a program inside ``name``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[name].netns]

    # ------------------------------------------------------------- partitions

    def cut(self, a: str, b: str) -> None:
        """No packets between a and b, either way."""
        for x, y in ((a, b), (b, a)):
            if (x, y) not in self._cut:
                _ip("-n", self.hosts[x].netns, "route", "add", "blackhole", f"{self.hosts[y].ip}/32")
                self._cut.add((x, y))

    def isolate(self, name: str, others: list[str] | None = None) -> None:
        """Cut ``name`` off from every other node (or from ``others``); the test still reaches it."""
        for other in others if others is not None else self.hosts:
            if other != name:
                self.cut(name, other)

    def cut_from_test(self, name: str) -> None:
        """Drop whatever ``name`` sends to the test itself (its replies and ACKs vanish silently)."""
        _ip("-n", self.hosts[name].netns, "route", "add", "blackhole", f"{self.gateway}/32")
        self._cut.add((name, ""))

    def heal(self) -> None:
        """Remove every partition."""
        for x, y in sorted(self._cut):
            target = self.hosts[y].ip if y else self.gateway
            _ip("-n", self.hosts[x].netns, "route", "del", "blackhole", f"{target}/32", check=False)
        self._cut.clear()

    def partitioned(self) -> bool:
        return bool(self._cut)
