"""Agent TLS: `proconsul tls` makes the files; HTTPS and server RPC verify with them, as Consul's tls block says.

Real agent subprocesses on 127.0.0.1, certificates from the CLI itself: one CA
for the cluster and another one nobody trusts.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import PROCONSUL, AgentProc, eventually, free_ports


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROCONSUL, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


class PKI:
    """A directory of CLI-made files: the CA, two server and two client certificates, and a stranger CA's client cert."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pki"
        self.other = root / "other"
        self.dir.mkdir()
        self.other.mkdir()
        for cwd in (self.dir, self.other):
            assert run(cwd, "tls", "ca", "create").returncode == 0
        for args in (["-server"], ["-server"], ["-client"], ["-client"]):
            assert run(self.dir, "tls", "cert", "create", *args).returncode == 0
        assert run(self.other, "tls", "cert", "create", "-client").returncode == 0

    @property
    def ca(self) -> str:
        return str(self.dir / "consul-agent-ca.pem")

    def pair(self, kind: str, n: int = 0, other: bool = False) -> tuple[str, str]:
        d = self.other if other else self.dir
        return str(d / f"dc1-{kind}-consul-{n}.pem"), str(d / f"dc1-{kind}-consul-{n}-key.pem")

    def tls(self, kind: str, n: int = 0, other: bool = False, **flags: bool) -> dict[str, Any]:
        """A tls block: this CA, the named pair, and the verify_* flags given."""
        cert, key = self.pair(kind, n, other)
        rpc = {k: v for k, v in flags.items() if k == "verify_server_hostname"}
        defaults = {k: v for k, v in flags.items() if k != "verify_server_hostname"}
        block: dict[str, Any] = {"defaults": {"ca_file": self.ca, "cert_file": cert, "key_file": key, **defaults}}
        if rpc:
            block["internal_rpc"] = rpc
        return block


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("tls"))


def server(workdir: Path, name: str, tls: dict[str, Any], join: list[str] | None = None, **extra: Any) -> AgentProc:
    http, server_port, raft = free_ports(3)
    cfg = {
        "node_name": name,
        "server": True,
        "data_dir": str(workdir / name),
        "bind_addr": "127.0.0.1",
        "client_addr": "127.0.0.1",
        "ports": {"http": http, "dns": -1, "server": server_port, "raft": raft},
        "retry_join": join or [],
        "tls": tls,
        **extra,
    }
    return AgentProc(name, workdir, cfg)


def client(workdir: Path, name: str, join: list[str], tls: dict[str, Any] | None) -> AgentProc:
    (http,) = free_ports(1)
    cfg = {
        "node_name": name,
        "data_dir": str(workdir / name),
        "bind_addr": "127.0.0.1",
        "client_addr": "127.0.0.1",
        "ports": {"http": http, "dns": -1},
        "retry_join": join,
        **({"tls": tls} if tls is not None else {}),
    }
    return AgentProc(name, workdir, cfg)


def member_names(agent: AgentProc) -> set[str]:
    return {m["Name"] for m in agent.http.get("/v1/agent/members").json()}


def refused(agent: AgentProc) -> bool:
    """The client said once why it cannot reach a server."""
    return "cannot reach the servers" in agent.log()


# ----------------------------------------------------------------- the CLI


def test_cli_makes_a_ca_and_certificates_that_verify(pki: PKI) -> None:
    ca = x509.load_pem_x509_certificate(Path(pki.ca).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for kind, want in (("server", "server.dc1.consul"), ("client", "client.dc1.consul")):
        cert = x509.load_pem_x509_certificate(Path(pki.pair(kind)[0]).read_bytes())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [want, "localhost"]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    # The key is private and the next certificate takes the next number, as Consul's.
    assert (Path(pki.pair("server")[1]).stat().st_mode & 0o077) == 0
    assert Path(pki.pair("server", 1)[0]).exists()
    stranger = x509.load_pem_x509_certificate(Path(pki.pair("client", other=True)[0]).read_bytes())
    with pytest.raises(Exception):
        stranger.verify_directly_issued_by(ca)


def test_cli_output_and_refusals(tmp_path: Path) -> None:
    out = run(tmp_path, "tls", "ca", "create", "-days", "30")
    assert out.stdout.splitlines() == ["==> Saved consul-agent-ca.pem", "==> Saved consul-agent-ca-key.pem"]
    again = run(tmp_path, "tls", "ca", "create")
    assert again.returncode == 1 and again.stderr.strip() == "consul-agent-ca.pem already exists."
    none = run(tmp_path, "tls", "cert", "create")
    assert none.returncode == 1 and "Please provide either -server, -client, or -cli" in none.stderr
    made = run(tmp_path, "tls", "cert", "create", "-client", "-dc", "east", "-additional-dnsname", "web.example",
               "-additional-ipaddress", "10.1.2.3")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == [
        "==> Using consul-agent-ca.pem and consul-agent-ca-key.pem",
        "==> Saved east-client-consul-0.pem",
        "==> Saved east-client-consul-0-key.pem",
    ]
    cert = x509.load_pem_x509_certificate((tmp_path / "east-client-consul-0.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web.example", "client.east.consul", "localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "127.0.0.1"}
    missing = run(tmp_path, "tls", "cert", "create", "-server", "-ca", "nope.pem")
    assert missing.returncode == 1 and "Error reading CA: open nope.pem: no such file or directory" in missing.stderr


# ----------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "tls, ports, error",
    [
        ({"defaults": {"verify_incoming": True, "cert_file": "S", "key_file": "SK"}}, {},
         "tls.internal_rpc: VerifyIncoming set but no CA certificates were provided"),
        ({"defaults": {"verify_outgoing": True}}, {}, "tls.internal_rpc: VerifyOutgoing set but no CA certificates were provided"),
        ({"defaults": {"ca_file": "CA", "cert_file": "missing.pem", "key_file": "SK"}}, {},
         "tls.internal_rpc: Failed to load cert/key pair: cert_file missing.pem: no such file"),
        ({"defaults": {"ca_file": "CA", "cert_file": "S", "key_file": "CK"}}, {},
         "the private key does not match the certificate"),
        ({"defaults": {"ca_file": "SK"}}, {}, "failed to parse the CA certificates"),
        ({"https": {"verify_server_hostname": True}}, {}, "invalid config key tls.https.verify_server_hostname"),
        ({"defaults": {"tls_min_version": "TLSv9"}}, {}, "tls_min_version: 'TLSv9' is not one of"),
        ({}, {"https": 8501}, "ports.https: 8501 needs a certificate"),
    ],
)
def test_bad_tls_config_stops_the_agent_with_one_line(pki: PKI, tmp_path: Path, tls: dict, ports: dict, error: str) -> None:
    names = {"CA": pki.ca, "S": pki.pair("server")[0], "SK": pki.pair("server")[1], "CK": pki.pair("client")[1]}
    block = {sec: {k: names.get(v, v) if isinstance(v, str) else v for k, v in kv.items()} for sec, kv in tls.items()}
    cfg = tmp_path / "agent.json"
    http, server_port = free_ports(2)
    cfg.write_text(json.dumps({"tls": block, "ports": {"http": http, "server": server_port, "dns": -1, **ports}}))
    out = subprocess.run([PROCONSUL, "agent", "-dev", "-config-file", str(cfg)], capture_output=True, text=True, timeout=15)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and error in lines[0], out.stderr


# ----------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def https_agent(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    http, https, server_port = free_ports(3)
    cfg = {
        "node_name": "secure",
        "ports": {"http": http, "https": https, "server": server_port, "dns": -1},
        "tls": pki.tls("server", verify_incoming=True),
    }
    agent = AgentProc("secure", tmp_path_factory.mktemp("https"), cfg).start(["-dev"]).wait_ready()
    yield agent
    agent.stop()


def https_get(agent: AgentProc, ctx: ssl.SSLContext, path: str = "/v1/status/leader") -> httpx.Response:
    with httpx.Client(verify=ctx, timeout=10) as c:
        return c.get(f"https://127.0.0.1:{agent.config['ports']['https']}{path}")


def context(pki: PKI, pair: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca)
    if pair is not None:
        ctx.load_cert_chain(*pair)
    return ctx


def test_https_with_a_client_certificate_from_the_ca_works(https_agent: AgentProc, pki: PKI) -> None:
    resp = https_get(https_agent, context(pki, pki.pair("client")))
    assert resp.status_code == 200 and resp.json() == https_agent.leader()
    kv = httpx.Client(verify=context(pki, pki.pair("client")), timeout=10)
    base = f"https://127.0.0.1:{https_agent.config['ports']['https']}"
    assert kv.put(f"{base}/v1/kv/tls/ok", content=b"yes").json() is True
    assert https_agent.http.get("/v1/kv/tls/ok?raw").content == b"yes"
    kv.close()


def test_https_without_a_client_certificate_is_refused_when_verify_incoming(https_agent: AgentProc, pki: PKI) -> None:
    with pytest.raises(httpx.TransportError):
        https_get(https_agent, context(pki))


def test_https_refuses_a_certificate_from_another_ca(https_agent: AgentProc, pki: PKI) -> None:
    with pytest.raises(httpx.TransportError):
        https_get(https_agent, context(pki, pki.pair("client", other=True)))


def test_the_cli_speaks_https_with_consul_tls_variables(https_agent: AgentProc, pki: PKI, tmp_path: Path) -> None:
    import os

    cert, key = pki.pair("client")
    env = {**os.environ, "CONSUL_HTTP_ADDR": f"https://127.0.0.1:{https_agent.config['ports']['https']}", "CONSUL_CACERT": pki.ca}
    for var in ("PROCONSUL_HTTP_ADDR", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"):
        env.pop(var, None)
    cmd = [PROCONSUL, "kv", "put", "tls/cli", "hello"]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "cannot reach the agent" in refused.stderr
    env.update(CONSUL_CLIENT_CERT=cert, CONSUL_CLIENT_KEY=key)
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30).returncode == 0
    got = subprocess.run([PROCONSUL, "kv", "get", "tls/cli"], env=env, capture_output=True, text=True, timeout=30)
    assert got.stdout.strip() == "hello", got.stderr


def test_plain_http_to_the_https_port_gets_no_answer(https_agent: AgentProc) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{https_agent.config['ports']['https']}/v1/status/leader", timeout=5)


# ----------------------------------------------------------------- server RPC


@pytest.fixture(scope="module")
def secure_server(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    """One server: mutual TLS on server RPC, checking server hostnames."""
    workdir = tmp_path_factory.mktemp("rpc")
    tls = pki.tls("server", verify_incoming=True, verify_outgoing=True, verify_server_hostname=True)
    srv = server(workdir, "s1", tls, bootstrap_expect=1).start().wait_ready()
    yield srv
    srv.stop()


def test_a_client_with_a_certificate_from_the_ca_joins_over_tls(secure_server: AgentProc, pki: PKI) -> None:
    tls = pki.tls("client", verify_incoming=True, verify_outgoing=True, verify_server_hostname=True)
    c = client(secure_server.workdir, "good", [secure_server.server_addr], tls).start()
    try:
        c.wait_ready()
        assert c.http.put("/v1/kv/over-tls", content=b"1").json() is True
        assert secure_server.http.get("/v1/kv/over-tls?raw").content == b"1"
    finally:
        c.stop()


def test_agents_with_a_foreign_certificate_or_no_tls_cannot_join(secure_server: AgentProc, pki: PKI) -> None:
    foreign = client(secure_server.workdir, "foreign", [secure_server.server_addr],
                     {"defaults": {"ca_file": pki.ca, "cert_file": pki.pair("client", other=True)[0],
                                   "key_file": pki.pair("client", other=True)[1], "verify_outgoing": True}})
    plain = client(secure_server.workdir, "plain", [secure_server.server_addr], None)
    try:
        foreign.start()
        plain.start()
        eventually(lambda: refused(foreign) and refused(plain), 20, what="both clients refused")
        log = secure_server.log()
        assert "TLS handshake failed" in log
        assert "Non-TLS connection attempted with VerifyIncoming set" in log
        assert not {"foreign", "plain"} & member_names(secure_server)
    finally:
        foreign.stop()
        plain.stop()


def test_a_client_certificate_cannot_join_as_a_server(secure_server: AgentProc, pki: PKI) -> None:
    """verify_server_hostname: a server presenting client.dc1.consul is refused Server.Hello, so never joins Raft."""
    tls = pki.tls("client", 1, verify_incoming=True, verify_outgoing=True, verify_server_hostname=True)
    rogue = server(secure_server.workdir, "rogue", tls, join=[secure_server.server_addr]).start()
    try:
        eventually(lambda: "refusing Server.Hello" in secure_server.log(), 20, what="the server refuses the rogue")
        peers = secure_server.http.get("/v1/operator/raft/configuration").json()["Servers"]
        assert [p["Node"] for p in peers] == ["s1"]
        assert "rogue" not in member_names(secure_server)
    finally:
        rogue.stop()


def test_a_client_does_not_take_a_client_certificate_for_a_server(pki: PKI, tmp_path: Path) -> None:
    """A server that presents a client certificate: refused with verify_server_hostname, accepted on CA trust alone."""
    tls = pki.tls("client", 1, verify_incoming=True, verify_outgoing=True)
    impostor = server(tmp_path, "impostor", tls, bootstrap_expect=1).start()
    checking = client(tmp_path, "checking", [impostor.server_addr],
                      pki.tls("client", verify_outgoing=True, verify_server_hostname=True))
    trusting = client(tmp_path, "trusting", [impostor.server_addr], pki.tls("client", verify_outgoing=True))
    try:
        impostor.wait_ready()
        checking.start()
        trusting.start()
        trusting.wait_ready()
        eventually(lambda: refused(checking), 20, what="the checking client refuses the impostor")
        assert "server.dc1.consul" in checking.log() or "CERTIFICATE_VERIFY_FAILED" in checking.log()
        assert "checking" not in member_names(impostor)
    finally:
        for a in (checking, trusting, impostor):
            a.stop()


@pytest.mark.anyio
async def test_the_rpc_port_takes_tls_and_plain_tcp_unless_verify_incoming(pki: PKI) -> None:
    """Consul's RPCTLS: one port, told apart by the first byte; verify_incoming leaves only TLS with a CA client cert."""
    from proconsul.server import tls as tlsutil
    from proconsul.server.errors import PermissionDenied, RPCError
    from proconsul.server.rpc import IncomingTLS, RPCPool, RPCServer

    async def handler(method: str, args: Any, hops: int) -> Any:
        return {"m": method}

    cert, key = pki.pair("server")
    server_pc = tlsutil.TLSProtocolConfig(ca_file=pki.ca, cert_file=cert, key_file=key)
    client_pc = tlsutil.TLSProtocolConfig(ca_file=pki.ca, cert_file=pki.pair("client")[0], key_file=pki.pair("client")[1],
                                          verify_outgoing=True, verify_server_hostname=True)
    name = tlsutil.server_name("dc1", "consul.")
    for required in (False, True):
        (port,) = free_ports(1)
        ctx = tlsutil.incoming_context(replace(server_pc, verify_incoming=required))
        srv = RPCServer(handler, IncomingTLS(ctx, required=required, server_name=name if required else None),
                        frozenset({"Server.Hello"}))
        await srv.start("127.0.0.1", port)
        plain, secure = RPCPool(), RPCPool(ssl=tlsutil.outgoing_context(client_pc), server_name=name)
        try:
            addr = f"127.0.0.1:{port}"
            assert await secure.call(addr, "Status.Ping", None, timeout=5) == {"m": "Status.Ping"}
            if required:
                with pytest.raises(RPCError):
                    await plain.call(addr, "Status.Ping", None, timeout=5)
                with pytest.raises(PermissionDenied):  # a client certificate is not a server's
                    await secure.call(addr, "Server.Hello", None, timeout=5)
            else:
                assert await plain.call(addr, "Status.Ping", None, timeout=5) == {"m": "Status.Ping"}
        finally:
            plain.close()
            secure.close()
            await srv.stop()


def test_the_http_api_binds_to_loopback_by_default(tmp_path: Path) -> None:
    from proconsul.agent import config

    cfg = config.build({"dev": True}, [], [])
    assert cfg.client_addr == "127.0.0.1" and cfg.ports.https == -1
    cfg = config.build({"dev": True, "client_addr": "0.0.0.0"}, [], [])
    assert cfg.client_addr == "0.0.0.0"
