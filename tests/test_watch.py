"""`proconsul watch` as a real subprocess against a dev agent: every -type fires at start and on each change,
feeds a handler its JSON and CONSUL_INDEX, exits 0 on SIGINT, and without a handler prints Go-style JSON once
and exits (as Consul's does). Most tests use `cat` as the handler, so each change arrives as one JSON line."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import PROCONSUL, AgentProc, eventually

NO_DATA = object()


class Watch:
    """One `proconsul watch` process; its stdout parsed into JSON documents by a reader thread."""

    def __init__(self, agent: AgentProc, *args: str, handler: str | None = "cat") -> None:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_HTTP_ADDR")}
        self.proc = subprocess.Popen(
            [PROCONSUL, "watch", "-http-addr", f"127.0.0.1:{agent.http_port}", *args, *([handler] if handler else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        self.docs: queue.Queue = queue.Queue()
        self.raw: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf: list[str] = []
        for line in iter(self.proc.stdout.readline, b""):
            text = line.decode()
            self.raw.append(text)
            buf.append(text)
            if not text[:1].isspace():  # a top-level line: maybe the end of a document
                try:
                    self.docs.put(json.loads("".join(buf)))
                    buf = []
                except ValueError:
                    pass

    def next(self, timeout: float = 10.0) -> Any:
        try:
            return self.docs.get(timeout=timeout)
        except queue.Empty:
            err = self.proc.stderr.read1(65536).decode() if self.proc.poll() is not None else ""
            raise AssertionError(f"no JSON from the watch within {timeout}s (exit {self.proc.poll()}, stderr {err!r})") from None

    def until(self, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Skip documents until one satisfies ``pred``."""
        while True:
            doc = self.next(timeout)
            if pred(doc):
                return doc

    def quiet(self, seconds: float = 0.5) -> bool:
        try:
            self.docs.get(timeout=seconds)
            return False
        except queue.Empty:
            return True

    def stop(self, sig: int = signal.SIGINT) -> int:
        """SIGINT (as Ctrl-C would) or SIGTERM: Consul's watch exits 0 on both."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self.reap()

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def watch(dev_agent: AgentProc) -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(*args: str, handler: str | None = "cat") -> Watch:
        w = Watch(dev_agent, *args, handler=handler)
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            w.reap()


def put(agent: AgentProc, key: str, value: bytes) -> None:
    assert agent.http.put(f"/v1/kv/{key}", content=value).json() is True


def test_without_a_handler_the_watch_prints_once_and_exits(dev_agent, watch):
    put(dev_agent, "w/once", b"one")
    w = watch("-type", "key", "-key", "w/once", handler=None)
    assert w.proc.wait(timeout=15) == 0
    assert w.next()["Value"] == "b25l"
    assert '    "Key": "w/once",\n' in "".join(w.raw)  # MarshalIndent's 4-space indent


def test_key_watch_hands_on_the_kvpair_as_go_does(dev_agent, watch):
    w = watch("-type", "key", "-key", "w/key")
    assert w.next() is None  # missing key: Consul's watch hands on nil
    put(dev_agent, "w/key", b"one")
    pair = w.next()
    assert list(pair) == ["Key", "CreateIndex", "ModifyIndex", "LockIndex", "Flags", "Value", "Session"]
    assert (pair["Key"], pair["Value"], pair["Session"]) == ("w/key", "b25l", "")
    put(dev_agent, "w/key", b"<two>")
    assert w.next()["Value"] == "PHR3bz4="
    put(dev_agent, "w/unrelated", b"x")
    assert w.quiet(0.7)
    assert '"Key":"w/key"' in "".join(w.raw)  # compact JSON on the handler's stdin
    assert w.stop() == 0


def test_keyprefix_watch(dev_agent, watch):
    w = watch("-type=keyprefix", "-prefix=w/pre/")
    assert w.next() is None
    put(dev_agent, "w/pre/a", b"1")
    assert [p["Key"] for p in w.next()] == ["w/pre/a"]
    put(dev_agent, "w/pre/b", b"2")
    assert [p["Key"] for p in w.next()] == ["w/pre/a", "w/pre/b"]
    dev_agent.http.delete("/v1/kv/w/pre/", params={"recurse": ""})
    assert w.next() is None
    assert w.stop() == 0


def test_services_and_nodes_watches(dev_agent, watch):
    svcs = watch("-type", "services")
    nodes = watch("-type", "nodes")
    first = svcs.next()
    assert "consul" in first and "w-svc" not in first
    assert any(n["Node"] == "dev" for n in nodes.next())
    r = dev_agent.http.put("/v1/agent/service/register", json={"Name": "w-svc", "Tags": ["b", "a"]})
    assert r.status_code == 200, r.text
    assert sorted(svcs.until(lambda d: "w-svc" in d)["w-svc"]) == ["a", "b"]
    r = dev_agent.http.put("/v1/catalog/register", json={"Node": "w-ext", "Address": "10.9.9.9"})
    assert r.status_code == 200, r.text
    assert "w-ext" in [n["Node"] for n in nodes.until(lambda d: any(n["Node"] == "w-ext" for n in d))]
    assert svcs.stop() == 0 and nodes.stop() == 0


def test_service_watch_with_tag_and_passingonly(dev_agent, watch):
    w = watch("-type", "service", "-service", "w-api", "-tag", "blue", "-passingonly=true")
    assert w.next() == []

    def register(node: str, tags: list[str], status: str) -> None:
        body = {
            "Node": node, "Address": "10.0.0.7",
            "Service": {"Service": "w-api", "ID": f"w-api-{node}", "Tags": tags, "Port": 80},
            "Check": {"CheckID": f"w-api-{node}", "Name": "up", "Status": status, "ServiceID": f"w-api-{node}"},
        }
        assert dev_agent.http.put("/v1/catalog/register", json=body).status_code == 200

    register("w-n1", ["blue"], "passing")
    [entry] = w.next()
    assert list(entry) == ["Node", "Service", "Checks"] and entry["Service"]["ID"] == "w-api-w-n1"
    register("w-n2", ["green"], "passing")  # not tagged blue: same answer, nothing handed on
    register("w-n3", ["blue"], "critical")  # not passing: same answer again
    assert w.quiet(0.7)
    register("w-n3", ["blue"], "passing")
    assert sorted(e["Node"]["Node"] for e in w.next()) == ["w-n1", "w-n3"]
    assert w.stop() == 0


def test_checks_watch_by_state_and_by_service(dev_agent, watch):
    by_state = watch("-type", "checks", "-state", "warning")
    by_service = watch("-type", "checks", "-service", "w-chk")
    assert by_state.next() == [] and by_service.next() == []
    body = {
        "Node": "w-cn", "Address": "10.0.0.8",
        "Service": {"Service": "w-chk", "ID": "w-chk-1"},
        "Check": {"CheckID": "w-chk-1", "Name": "probe", "Status": "warning", "ServiceID": "w-chk-1"},
    }
    assert dev_agent.http.put("/v1/catalog/register", json=body).status_code == 200
    [warn] = by_state.next()
    assert (warn["CheckID"], warn["Status"]) == ("w-chk-1", "warning")
    assert [c["CheckID"] for c in by_service.next()] == ["w-chk-1"]
    body["Check"]["Status"] = "passing"
    assert dev_agent.http.put("/v1/catalog/register", json=body).status_code == 200
    assert by_state.next() == []
    assert by_service.next()[0]["Status"] == "passing"
    assert by_state.stop() == 0 and by_service.stop() == 0


def test_event_watch_hands_on_only_new_events(dev_agent, watch):
    w = watch("-type", "event", "-name", "w-ev")
    assert w.next() == []
    first = dev_agent.http.put("/v1/event/fire/w-ev", content=b"1").json()
    assert [e["ID"] for e in w.next()] == [first["ID"]]
    dev_agent.http.put("/v1/event/fire/w-other")
    assert w.quiet(0.7)
    second = dev_agent.http.put("/v1/event/fire/w-ev", content=b"2").json()
    [got] = w.next()
    assert got["ID"] == second["ID"] and got["Payload"] == "Mg==" and got["LTime"] > 0
    assert w.stop(signal.SIGTERM) == 0


def test_handler_gets_the_json_on_stdin_and_consul_index(dev_agent, watch, tmp_path: Path):
    out = tmp_path / "calls.log"
    script = tmp_path / "handler.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        {{ echo "INDEX=$CONSUL_INDEX"; cat; }} >> {out}
        """))
    script.chmod(0o755)
    w = watch("-type", "key", "-key", "w/handled", handler=str(script))

    def calls() -> list[tuple[int, Any]]:
        lines = out.read_text().splitlines() if out.exists() else []
        return [(int(lines[i][6:]), json.loads(lines[i + 1])) for i in range(0, len(lines) - 1, 2)]

    [(index0, data0)] = eventually(calls, what="the first handler call")
    assert data0 is None and index0 >= 1
    put(dev_agent, "w/handled", b"v")
    _, (index1, data1) = eventually(lambda: len(calls()) == 2 and calls(), what="the second handler call")
    assert data1["Key"] == "w/handled" and index1 == data1["ModifyIndex"]
    assert out.read_text().count("\n") == 4  # compact JSON, one line each, newline-terminated (json.Encoder)
    assert w.stop() == 0


def test_failing_handler_stops_the_watch_with_exit_1(watch):
    w = watch("-type", "services", handler="exit 3")
    assert w.proc.wait(timeout=15) == 1
    assert w.proc.stderr.read().decode().strip() == "Error executing handler: exit status 3"


@pytest.mark.parametrize(
    "args,message",
    [
        ((), "Watch type must be specified"),
        (("-type", "bogus"), "Unsupported watch type: bogus"),
        (("-type", "key"), "Must specify a single key to watch"),
        (("-type", "keyprefix"), "Must specify a single prefix to watch"),
        (("-type", "service"), "Must specify a single service to watch"),
        (("-type", "checks", "-service", "a", "-state", "passing"), "Cannot specify service and state"),
        (("-type", "services", "-key", "k"), "Invalid parameters: [key]"),
        (("-type", "event", "-stale"), "Invalid parameters: [stale]"),
        (("-type", "service", "-service", "a", "-passingonly", "maybe"),
         'Failed to parse passingonly flag: strconv.ParseBool: parsing "maybe": invalid syntax'),
    ],
)
def test_bad_watches_fail_with_consuls_message(dev_agent, watch, args, message):
    w = watch(*args)
    assert w.proc.wait(timeout=15) == 1
    assert w.proc.stderr.read().decode().strip() == message


def test_unreachable_agent(tmp_path: Path):
    p = subprocess.run([PROCONSUL, "watch", "-type", "nodes", "-http-addr", "127.0.0.1:1"], capture_output=True, timeout=30)
    assert p.returncode == 1 and p.stderr.decode().startswith("Error querying Consul agent: ")


def test_interrupt_while_the_handler_runs_is_passed_on_and_exits_0(watch, tmp_path: Path):
    marks = tmp_path / "marks"
    script = tmp_path / "slow.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        trap 'kill $pid; echo interrupted >> {marks}; exit 0' INT
        sleep 30 >/dev/null 2>&1 &
        pid=$!
        echo started >> {marks}
        wait
        """))
    script.chmod(0o755)
    # "; :" makes the shell fork the script rather than exec it: the signal must reach the script anyway.
    w = watch("-type", "nodes", handler=f"{script}; :")
    eventually(lambda: marks.exists() and "started" in marks.read_text(), what="the handler started")
    assert w.stop() == 0
    assert eventually(lambda: "interrupted" in marks.read_text(), what="the handler got the SIGINT")


def test_a_signal_stops_the_watch_whatever_the_plan_is_doing(tmp_path: Path):
    """The watch must not depend on its plan noticing a signal. Raised in the plan's code (as a KeyboardInterrupt
    from a Python handler), a signal that landed just before a blocking read began was lost, and the read went on
    until the agent answered: a clean-clone CI run's watch ignored SIGTERM for 10 s, ~1 in 300 runs under load.
    Here the plan blocks both signals in its thread, then reads a pipe nobody writes to: only a main thread that
    waits on the signals itself can stop it (the old code hung here every time)."""
    ready = tmp_path / "ready"
    program = textwrap.dedent(f"""\
        import os, signal, sys
        from pathlib import Path
        from proconsul.agent import watch
        from proconsul.agent.client import Client

        def fetch(client, last):
            signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT, signal.SIGTERM}})
            r, _ = os.pipe()
            Path({str(ready)!r}).write_text("in the read")
            os.read(r, 1)

        sys.exit(watch.execute(watch.Plan("test", fetch), Client("127.0.0.1:1"), ["true"]))
        """)
    for sig in (signal.SIGTERM, signal.SIGINT):
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", program], stderr=subprocess.PIPE)
        try:
            eventually(ready.exists, what="the plan's blocking read")
            proc.send_signal(sig)
            assert proc.wait(timeout=10) == 0, proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            proc.stderr.close()
