"""Broken config files: the agent refuses to start with one line naming the file and the key, and a
reload (HTTP, CLI or SIGHUP) of a now-broken file keeps the running config and says why."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PROCONSUL, AgentProc, eventually, free_ports

from proconsul.agent import config


def build(tmp_path: Path, files: dict[str, str | bytes], flags: dict | None = None) -> config.RuntimeConfig:
    """config.build over files written into tmp_path/conf (a config dir, read in name order)."""
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    for name, content in files.items():
        (conf / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return config.build({"data_dir": str(tmp_path / "data"), **(flags or {})}, [], [str(conf)])


@pytest.mark.parametrize(
    "content,key_and_reason",
    [
        ('{"ports": {"http": 8500,}}', "invalid JSON at line 1 column 25"),
        ('{"bogus_key": 1}', "invalid config key bogus_key"),
        ('{"acl": {"tokens": {"bogus": "x"}}}', "invalid config key acl.tokens.bogus"),
        ('{"dns_config": {"soa": {"refresh": 1, "typo": 2}}}', "invalid config key dns_config.soa.typo"),
        ('{"server": "true"}', 'server: expected true or false, got "true"'),
        ('{"ports": {"http": 8500.5}}', "ports.http: expected an integer, got 8500.5"),
        ('{"dns_config": {"udp_answer_limit": "3"}}', 'dns_config.udp_answer_limit: expected an integer, got "3"'),
        ('{"retry_interval": "soon"}', "retry_interval: 'soon' is not a duration"),
        ('{"service": {"name": "web", "check": {"ttl": "10s", "deregister_critical_service_after": NaN}}}',
         "invalid JSON: invalid character 'N' looking for beginning of value"),
        ('{"service": {"name": "web", "check": {"ttl": "10s", "deregister_critical_service_after": 1e999}}}',
         "service: Request decode failed: check DeregisterCriticalServiceAfter: Infinity does not fit a duration"),
        ('{"services": [{"name": "web", "port": "80"}]}', 'services[0]: Request decode failed: service Port: expected an integer'),
        ('{"ports": {"http": 9000, "dns": 9000}}', "ports.dns and ports.http are both 9000"),
        ('{"ports": {"server": 9100, "raft": 9100}}', "ports.raft and ports.server are both 9100"),
        ('{"ports": {"http": 70000}}', "ports.http: 70000 is not a port"),
        ('{"acl": {"down_policy": "maybe"}}', "acl.down_policy: must be one of allow, deny, extend-cache, async-cache, not 'maybe'"),
        ('{"datacenter": "dc 1"}', "datacenter can only contain lowercase alphanumeric, - or _ characters, not 'dc 1'"),
        ('["not", "an", "object"]', "expected a JSON object at the top level"),
        (b'{"node_name": "\xff"}', "cannot read: 'utf-8' codec can't decode byte 0xff"),
    ],
)
def test_one_bad_file_among_good_ones_is_named_with_its_key(tmp_path: Path, content: str | bytes, key_and_reason: str):
    files = {"10-good.json": '{"node_name": "n1"}', "20-bad.json": content, "30-good.json": '{"log_level": "warn"}'}
    with pytest.raises(config.ConfigError) as err:
        build(tmp_path, files, {"server": True})
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'conf' / '20-bad.json'}: "), message
    assert key_and_reason in message, message
    assert "\n" not in message


def test_conflicting_ports_across_files_name_a_file_that_set_one(tmp_path: Path):
    with pytest.raises(config.ConfigError) as err:
        build(tmp_path, {"a.json": '{"ports": {"http": 9200}}', "b.json": '{"ports": {"server": 9200}}'})
    assert str(err.value) == f"{tmp_path / 'conf' / 'b.json'}: ports.server and ports.http are both 9200"
    # A flag that sets the clashing port is not blamed on a file; the file's own key still is.
    with pytest.raises(config.ConfigError) as err:
        build(tmp_path, {"a.json": '{"ports": {"http": 9200}}', "b.json": "{}"}, {"port_server": 9200})
    assert str(err.value) == f"{tmp_path / 'conf' / 'a.json'}: ports.server and ports.http are both 9200"


def test_a_value_set_by_a_flag_is_not_blamed_on_a_file(tmp_path: Path):
    with pytest.raises(config.ConfigError) as err:
        build(tmp_path, {"a.json": '{"log_level": "info"}'}, {"log_level": "loud"})
    assert str(err.value).startswith("log_level: unknown level 'loud'")


def run_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROCONSUL, "agent", *args], capture_output=True, timeout=30)


def assert_one_line(p: subprocess.CompletedProcess, *fragments: str) -> None:
    err = p.stderr.decode()
    assert p.returncode == 1, (p.returncode, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_agent_start_with_a_config_dir_holding_one_bad_file(tmp_path: Path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.json").write_text('{"node_name": "n1"}')
    (conf / "b.json").write_text('{"ports": {"http": 9300, "server": 9300}}')
    p = run_agent("-config-dir", str(conf), "-server", "-data-dir", str(tmp_path / "d"))
    assert_one_line(p, f"{conf / 'b.json'}: ports.server and ports.http are both 9300")


def test_agent_start_with_an_unreadable_config_file(tmp_path: Path):
    p = run_agent("-dev", "-config-file", str(tmp_path))  # a directory where a file should be
    assert_one_line(p, f"{tmp_path}: cannot read: Is a directory")
    p = run_agent("-dev", "-config-file", str(tmp_path / "missing.json"))
    assert_one_line(p, f"{tmp_path / 'missing.json'}: no such file")


# ----------------------------------------------------------------- reload


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[AgentProc, Path]]:
    """A dev agent started from a config file that registers one service; the file can be rewritten."""
    http, server = free_ports(2)
    cfg = {"node_name": "reload", "ports": {"http": http, "server": server, "dns": -1},
           "service": {"name": "from-file", "port": 1}}
    agent = AgentProc("reload", tmp_path, cfg).start(["-dev"]).wait_ready()
    try:
        yield agent, tmp_path / "reload.json"
    finally:
        agent.stop()


def _services(agent: AgentProc) -> set[str]:
    return {s["Service"] for s in agent.http.get("/v1/agent/services").json().values()}


def test_a_bad_reload_keeps_the_running_config(reloadable: tuple[AgentProc, Path]):
    agent, path = reloadable
    good = json.loads(path.read_text())
    assert _services(agent) == {"from-file"}

    path.write_text('{"node_name": "reload", "ports": {')  # broken JSON
    r = agent.http.put("/v1/agent/reload")
    assert r.status_code == 400
    assert r.text == f"Failed to reload configs: {path}: invalid JSON at line 1 column 35: Expecting property name enclosed in double quotes"
    assert f"reload failed, keeping the running configuration: {path}: invalid JSON" in agent.log()

    path.write_text(json.dumps({**good, "sevice": {"name": "typo"}}))  # an unknown key
    p = subprocess.run([PROCONSUL, "reload", "-http-addr", f"127.0.0.1:{agent.http_port}"], capture_output=True, timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{path}: invalid config key sevice" in err and "Traceback" not in err

    path.write_text(json.dumps({**good, "ports": {**good["ports"], "dns": good["ports"]["http"]}}))  # clashing ports
    agent.signal(signal.SIGHUP)
    eventually(lambda: f"{path}: ports.dns and ports.http are both {agent.http_port}" in agent.log(), 10, what="SIGHUP error logged")
    assert agent.running() and _services(agent) == {"from-file"}  # nothing changed
    assert "Traceback" not in agent.log()

    path.write_text(json.dumps({**good, "service": {"name": "from-file-2", "port": 2}}))  # fixed: SIGHUP applies it
    agent.signal(signal.SIGHUP)
    eventually(lambda: _services(agent) == {"from-file-2"}, 10, what="SIGHUP reload applied")
    assert agent.http.put("/v1/agent/reload").status_code == 200


def test_a_port_in_use_stops_the_agent_with_one_line(tmp_path: Path):
    """Found at start, after Raft and the leader's duties already run: they stop before the process exits."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (server,) = free_ports(1)
        p = run_agent("-dev", "-http-port", str(port), "-server-port", str(server), "-dns-port", "-1")
    assert_one_line(p, f"cannot listen for HTTP on 127.0.0.1:{port}: Address already in use")
