"""Watch plans: what ``proconsul watch`` polls and what it hands on (Consul's api/watch).

A plan is one watch type (``funcs.go``): the endpoint it reads with blocking
queries, and the JSON it emits — the data as Consul's Go api decodes it, so a
handler written for ``consul watch`` reads the same thing. ``run`` is the loop of
``plan.go``: every answer whose index moved *and* whose data changed (the first
one always) goes to the handler; an error backs off 5 s × failures², up to 180 s,
and the next good answer fires again.

Types, their flags and their source:

| type      | flags                                   | reads                                          |
| --------- | --------------------------------------- | ---------------------------------------------- |
| key       | -key                                    | GET /v1/kv/<key>: one KVPair, null if missing  |
| keyprefix | -prefix                                 | GET /v1/kv/<prefix>?recurse: KVPairs or null   |
| services  |                                         | GET /v1/catalog/services: name -> tags         |
| nodes     |                                         | GET /v1/catalog/nodes                          |
| service   | -service, -tag, -passingonly            | GET /v1/health/service/<service>               |
| checks    | -service or -state (default any), -tag  | /v1/health/checks/<service>, /v1/health/state/ |
| event     | -name                                   | GET /v1/event/list: only events newer than the last seen |

Events have no Raft index: their index is the last event's ID folded to 64 bits
(``id_to_index``), which is not ordered, so unlike Consul's Go api we never
reset it to 0 when it "goes backwards" (Consul's reset re-sends the whole ring to
the handler after about half of all fires).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from proconsul.agent.client import APIError, Client
from proconsul.agent.signals import run_until_signal, signals_to_pipe

RETRY_INTERVAL = 5.0  # seconds; Consul's retryInterval
MAX_BACKOFF = 180.0  # Consul's maxBackoffTime
TYPES = ("key", "keyprefix", "services", "nodes", "service", "checks", "event")


class WatchError(Exception):
    """A watch that cannot be built or run; the message is Consul's."""


def id_to_index(event_id: str) -> int:
    """Consul's uuidToUint64 (api Event.IDToIndex): the two 64-bit halves of the UUID XORed."""
    lower = event_id[0:8] + event_id[9:13] + event_id[14:18]
    upper = event_id[19:23] + event_id[24:36]
    return int(lower, 16) ^ int(upper, 16)


def go_json(data: Any, indent: bool) -> str:
    """Go's encoding/json text: MarshalIndent with 4 spaces, or compact; <, >, & and U+2028/9 escaped."""
    text = json.dumps(data, indent=4 if indent else None, separators=None if indent else (",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def kv_pair(e: dict[str, Any]) -> dict[str, Any]:
    """An HTTP KV entry as the Go api's KVPair encodes it (its field order; Session always present)."""
    return {
        "Key": e["Key"],
        "CreateIndex": e["CreateIndex"],
        "ModifyIndex": e["ModifyIndex"],
        "LockIndex": e["LockIndex"],
        "Flags": e["Flags"],
        "Value": e.get("Value"),
        "Session": e.get("Session", ""),
    }


@dataclass
class Plan:
    """One watch: ``fetch(client, last)`` does one blocking read and returns (index, data)."""

    type: str
    fetch: Callable[[Client, int | None], tuple[int, Any]]
    ordered_index: bool = True


def _read(client: Client, path: str, params: dict[str, Any], last: int | None, stale: bool, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
    params = dict(params)
    if last:
        params["index"] = last
    if stale:
        params["stale"] = True
    resp = client.request("GET", path, params, ok=ok)
    index = int(resp.headers.get("X-Consul-Index", "0") or 0)
    return index, (resp.json() if resp.status_code == 200 else None)


def _take(params: dict[str, Any], name: str, kind: type = str) -> Any:
    """Consul's assignValue*: consume a parameter, checking its type."""
    if name not in params:
        return kind()
    value = params.pop(name)
    if kind is list:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise WatchError(f"Expecting {name} to be a string or []string")
        return value
    if not isinstance(value, kind):
        raise WatchError(f"Expecting {name} to be a {'boolean' if kind is bool else 'string'}")
    return value


def _key_plan(params: dict[str, Any]) -> Plan:
    stale = _take(params, "stale", bool)
    key = _take(params, "key")
    if not key:
        raise WatchError("Must specify a single key to watch")

    def fetch(client: Client, last: int | None) -> tuple[int, Any]:
        index, entries = _read(client, Client.kv_path(key), {}, last, stale, ok=(200, 404))
        return index, kv_pair(entries[0]) if entries else None

    return Plan("key", fetch)


def _keyprefix_plan(params: dict[str, Any]) -> Plan:
    stale = _take(params, "stale", bool)
    prefix = _take(params, "prefix")
    if not prefix:
        raise WatchError("Must specify a single prefix to watch")

    def fetch(client: Client, last: int | None) -> tuple[int, Any]:
        index, entries = _read(client, Client.kv_path(prefix), {"recurse": True}, last, stale, ok=(200, 404))
        return index, [kv_pair(e) for e in entries] if entries is not None else None

    return Plan("keyprefix", fetch)


def _catalog_plan(kind: str) -> Callable[[dict[str, Any]], Plan]:
    def build(params: dict[str, Any]) -> Plan:
        stale = _take(params, "stale", bool)
        return Plan(kind, lambda client, last: _read(client, f"/v1/catalog/{kind}", {}, last, stale))

    return build


def _service_plan(params: dict[str, Any]) -> Plan:
    stale = _take(params, "stale", bool)
    service = _take(params, "service")
    if not service:
        raise WatchError("Must specify a single service to watch")
    tags = _take(params, "tag", list)
    passing = _take(params, "passingonly", bool)
    query: dict[str, Any] = {"tag": tags or None, "passing": "1" if passing else None}
    path = "/v1/health/service/" + quote(service, safe="")
    return Plan("service", lambda client, last: _read(client, path, query, last, stale))


def _checks_plan(params: dict[str, Any]) -> Plan:
    stale = _take(params, "stale", bool)
    service = _take(params, "service")
    state = _take(params, "state")
    if service and state:
        raise WatchError("Cannot specify service and state")
    if not service and not state:
        state = "any"
    tags = _take(params, "tag", list)
    if state:
        path, query = "/v1/health/state/" + quote(state, safe=""), {"tag": tags or None}
    else:
        path, query = "/v1/health/checks/" + quote(service, safe=""), {}
    return Plan("checks", lambda client, last: _read(client, path, query, last, stale))


def _event_plan(params: dict[str, Any]) -> Plan:
    # Consul's event watch takes no "stale": an agent answers events from what it holds.
    name = _take(params, "name")

    def fetch(client: Client, last: int | None) -> tuple[int, Any]:
        index, events = _read(client, "/v1/event/list", {"name": name or None}, last, False)
        events = events or []
        # Only what is newer than the last event handed on (Consul prunes up to the one whose index is `last`).
        for i, e in enumerate(events):
            if last is not None and id_to_index(e["ID"]) == last:
                events = events[i + 1:]
                break
        return index, events

    return Plan("event", fetch, ordered_index=False)


_FACTORIES: dict[str, Callable[[dict[str, Any]], Plan]] = {
    "key": _key_plan,
    "keyprefix": _keyprefix_plan,
    "services": _catalog_plan("services"),
    "nodes": _catalog_plan("nodes"),
    "service": _service_plan,
    "checks": _checks_plan,
    "event": _event_plan,
}


def parse(params: dict[str, Any]) -> Plan:
    """Consul's watch.Parse: build the plan for params["type"]; every other parameter must be used by it."""
    params = dict(params)
    for generic in ("datacenter", "token"):
        params.pop(generic, None)
    kind = _take(params, "type")
    if not kind:
        raise WatchError("Watch type must be specified")
    factory = _FACTORIES.get(kind)
    if factory is None:
        raise WatchError(f"Unsupported watch type: {kind}")
    plan = factory(params)
    if params:
        raise WatchError(f"Invalid parameters: [{' '.join(sorted(params))}]")
    return plan


def run(plan: Plan, client: Client, handler: Callable[[int, Any], None], stop: threading.Event,
        log: Callable[[str], None] = lambda line: sys.stderr.write(line + "\n")) -> None:
    """Consul's Plan.Run: block on the index, hand on every changed answer, back off on errors, until ``stop``."""
    last: int | None = None
    last_result: Any = None
    failures = 0
    while not stop.is_set():
        try:
            index, result = plan.fetch(client, last)
        except APIError as err:
            failures += 1
            last = None  # Consul drops the index, so the next good answer is handed on again
            retry = min(RETRY_INTERVAL * failures * failures, MAX_BACKOFF)
            log(f"[ERR] consul.watch: Watch (type: {plan.type}) errored: {err}, retry in {retry:g}s")
            stop.wait(retry)
            continue
        if stop.is_set():
            break
        failures = 0
        if last is not None and last == index:
            continue
        previous = last
        # WaitIndexVal.Next: an index that went backwards (a restore, a new cluster) restarts from 0.
        last = 0 if plan.ordered_index and previous is not None and previous > index else index
        if previous is not None and result == last_result:
            continue
        last_result = result
        handler(index, result)


# ----------------------------------------------------------------- handlers


def print_once(out: Callable[[str], None], stop: threading.Event) -> Callable[[int, Any], None]:
    """No child command: print the first result as Go's MarshalIndent would, then stop (Consul's watch exits)."""

    def handler(index: int, data: Any) -> None:
        out(go_json(data, indent=True))
        stop.set()

    return handler


class ChildHandler:
    """Run the child on every result: JSON on stdin (compact, newline-terminated), CONSUL_INDEX in its env.

    With ``shell`` the arguments are joined and run by ``$SHELL -c`` (``/bin/sh`` when unset), as Consul's
    ExecScript does. A child that fails stops the watch (``failed`` holds Consul's message).
    """

    def __init__(self, args: list[str], shell: bool, stop: threading.Event) -> None:
        self.argv = [os.environ.get("SHELL") or "/bin/sh", "-c", " ".join(args)] if shell else list(args)
        self.stop = stop
        self.failed = ""
        self.child: subprocess.Popen | None = None
        self._starting = threading.Lock()  # a child is either started before a shutdown's forward, or not at all

    def __call__(self, index: int, data: Any) -> None:
        env = {**os.environ, "CONSUL_INDEX": str(index)}
        with self._starting:
            if self.stop.is_set():
                return
            try:
                # Its own process group, so a forwarded signal reaches the script even when the shell forks it.
                self.child = subprocess.Popen(self.argv, stdin=subprocess.PIPE, env=env, process_group=0)
            except OSError as err:
                self._fail(f"Error starting handler: {err}")
                return
        try:
            self.child.communicate((go_json(data, indent=False) + "\n").encode())
        except BrokenPipeError:
            self.child.wait()
        rc = self.child.returncode
        self.child = None
        if rc:
            self._fail(f"Error executing handler: {_exit_text(rc)}")

    def _fail(self, message: str) -> None:
        self.failed = message
        self.stop.set()

    def forward(self, sig: int) -> None:
        """Pass a shutdown signal on to a running child, and give it a moment to act on it (``stop`` is set)."""
        with self._starting:
            child = self.child
        if child is None or child.poll() is not None:
            return
        try:
            os.killpg(child.pid, sig)
            child.wait(timeout=2)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _exit_text(rc: int) -> str:
    """Go's ExitError text: "exit status 3", "signal: killed"."""
    if rc > 0:
        return f"exit status {rc}"
    names = {signal.SIGINT: "interrupt", signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGHUP: "hangup"}
    return "signal: " + names.get(signal.Signals(-rc), signal.Signals(-rc).name)


def _stdout_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def execute(plan: Plan, client: Client, child: list[str], shell: bool = True) -> int:
    """`consul watch`: run until SIGINT or SIGTERM (exit 0) or a failed child (exit 1); with no child, print
    the current value once and exit 0. The plan runs in a thread, so a signal stops it wherever it is (see
    ``signals``)."""
    stop = threading.Event()
    handler: Callable[[int, Any], None]
    runner = ChildHandler(child, shell, stop) if child else None
    handler = runner if runner is not None else print_once(_stdout_line, stop)
    with signals_to_pipe() as wake:
        _, sig = run_until_signal(lambda: run(plan, client, handler, stop), wake, "watch")
        if sig is not None:
            stop.set()
            if runner is not None:
                runner.forward(sig)  # inside: a repeated signal while the child stops is ignored
            return 0
    client.close()
    if runner is not None and runner.failed:
        sys.stderr.write(runner.failed + "\n")
        return 1
    return 0
