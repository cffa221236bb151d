"""The cluster key: pysyncobj unpickles what reaches its raft port, so off loopback a key is mandatory."""

from __future__ import annotations

import pickle
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PROCONSUL, Cluster, eventually

pytestmark = pytest.mark.cluster


class _CreatesFile:
    """Unpickling this calls open(path, "w"): a file appears if anyone unpickles it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def send_crafted_pickle(port: int, marker: Path) -> None:
    """Frame a malicious pickle the way pysyncobj frames messages and send it to a raft port."""
    payload = zlib.compress(pickle.dumps(_CreatesFile(str(marker)), protocol=2), 3)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack("i", len(payload)) + payload)
        time.sleep(0.3)


def raft_port(agent) -> int:
    return agent.config["ports"]["raft"]


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    key = subprocess.run([PROCONSUL, "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    c = Cluster(tmp_path_factory.mktemp("encrypted"), encrypt=key)
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_keygen_prints_a_32_byte_base64_key():
    import base64

    out = subprocess.run([PROCONSUL, "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    assert len(base64.b64decode(out, validate=True)) == 32


def test_crafted_pickle_on_an_encrypted_raft_port_does_nothing(encrypted: Cluster, tmp_path: Path):
    marker = tmp_path / "pwned"
    for s in encrypted.servers:
        send_crafted_pickle(raft_port(s), marker)
    time.sleep(0.5)
    assert not marker.exists()
    leader = encrypted.wait_for_leader()
    r = leader.http.put("/v1/kv/still/serving", content=b"yes")
    assert r.json() is True
    for s in encrypted.servers:
        assert eventually(lambda: s.http.get("/v1/kv/still/serving", params={"stale": ""}).status_code == 200)


def test_control_an_unencrypted_raft_port_does_unpickle(cluster3: Cluster, tmp_path: Path):
    """Why the key matters (and proof the test above can fail): without one, the pickle runs."""
    marker = tmp_path / "pwned"
    send_crafted_pickle(raft_port(cluster3.servers[0]), marker)
    assert eventually(marker.exists, 5, what="control: unencrypted port unpickled the payload")


def test_non_loopback_raft_without_a_key_refuses_to_start(tmp_path: Path):
    out = subprocess.run(
        [PROCONSUL, "agent", "-server", "-bootstrap", "-data-dir", str(tmp_path / "d"), "-bind", "0.0.0.0"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "without a cluster key" in lines[0] and "-encrypt" in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("key,fragment", [("not base64!", "not a base64 key"), ("c2hvcnQ=", "must be 16, 24 or 32")])
def test_bad_keys_are_refused(tmp_path: Path, key: str, fragment: str):
    out = subprocess.run(
        [PROCONSUL, "agent", "-server", "-bootstrap", "-data-dir", str(tmp_path / "d"), "-encrypt", key],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 1 and fragment in out.stderr and "Traceback" not in out.stderr
