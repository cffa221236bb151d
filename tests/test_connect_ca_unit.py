"""The Connect CA without a server: crypto (server/ca.py), config validation, the store part and its FSM commands."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from catls import certs, tls_handshake, uri_sans, verify_with_cryptography
from proconsul.server import ca
from proconsul.server.commands import CAConfigRecord, CALeafRequest, CARequest, CARootRecord, decode, encode
from proconsul.server.errors import StoreError
from proconsul.server.fsm import FSM
from proconsul.server.snapshot import read_snapshot, write_snapshot
from proconsul.server.state import StateStore
from proconsul.server.state.ca import CAConfig, CARoot

CLUSTER = "11111111-2222-3333-4444-555555555555"
DOMAIN = f"{CLUSTER}.consul"


def make_root(serial: int = 1, key_type: str = "ec", bits: int = 256) -> tuple[str, ca.PrivateKey]:
    key, _ = ca.generate_key(key_type, bits)
    return ca.generate_root(key, CLUSTER, serial, 87600 * 3600.0), key


def make_leaf(root_pem: str, root_key: ca.PrivateKey, service: str, serial: int, ttl: float = 72 * 3600.0) -> dict:
    key, key_pem = ca.generate_key()
    info = ca.check_csr(ca.make_csr(key, ca.service_uri(DOMAIN, "dc1", service)))
    return {"CertPEM": ca.sign_leaf(info, ca.parse_cert(root_pem), root_key, serial, ttl), "PrivateKeyPEM": key_pem}


# ---------------------------------------------------------------- certificates


def test_root_is_consuls_shape():
    pem, key = make_root(serial=7)
    cert = ca.parse_cert(pem)
    info = ca.root_info(pem)
    assert info.name == "Consul CA Primary Cert"
    assert info.serial_number == 7 and cert.serial_number == 7
    assert info.id == ca.hex_string(cert.fingerprint(ca.hashes.SHA1())) and len(info.id.split(":")) == 20
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert info.signing_key_id == ca.hex_string(ski) == ca.hex_string(ca.key_id(key.public_key()))
    assert len(ski) == 32  # sha256 of the public key, as Consul's KeyId
    assert uri_sans(cert) == [f"spiffe://{DOMAIN}"]
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn.startswith("pri-") and cn.endswith(f".consul.ca.{CLUSTER[:8]}.consul")
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    assert (info.private_key_type, info.private_key_bits) == ("ec", 256)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)


def test_leaf_verifies_with_cryptography_and_ssl(tmp_path: Path):
    root, key = make_root()
    web, db = make_leaf(root, key, "web", 2), make_leaf(root, key, "db", 3)
    assert verify_with_cryptography(web["CertPEM"], [root]) == [f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/web"]
    seen_by_client, seen_by_server = tls_handshake(web, db, tmp_path, [root], [root])
    assert seen_by_client == [f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/web"]
    assert seen_by_server == [f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/db"]
    leaf = certs(web["CertPEM"])[0]
    assert leaf.subject == x509.Name([])
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical  # empty subject: RFC 5280
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, x509.oid.ExtendedKeyUsageOID.SERVER_AUTH}
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=72)


def test_a_leaf_from_another_ca_does_not_verify(tmp_path: Path):
    root, key = make_root()
    other, other_key = make_root()
    leaf = make_leaf(other, other_key, "web", 2)
    with pytest.raises(Exception):
        verify_with_cryptography(leaf["CertPEM"], [root])
    with pytest.raises(Exception):
        tls_handshake(leaf, make_leaf(root, key, "db", 3), tmp_path, [root], [root])


def test_cross_signed_root_chains_new_leaves_to_the_old_root(tmp_path: Path):
    old, old_key = make_root(1)
    new, new_key = make_root(2, "rsa", 2048)
    xc = ca.cross_sign(ca.parse_cert(new), ca.parse_cert(old), old_key, 3)
    xcert = ca.parse_cert(xc)
    assert xcert.subject == ca.parse_cert(new).subject and xcert.issuer == ca.parse_cert(old).subject
    assert xcert.not_valid_after_utc - xcert.not_valid_before_utc <= dt.timedelta(days=7, minutes=1)
    new_leaf = make_leaf(new, new_key, "web", 4)
    new_leaf["CertPEM"] += xc  # what Sign appends: the new root's IntermediateCerts
    old_leaf = make_leaf(old, old_key, "db", 5)
    uri = f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/web"
    assert verify_with_cryptography(new_leaf["CertPEM"], [old]) == [uri]  # an agent that only knows the old root
    assert verify_with_cryptography(new_leaf["CertPEM"], [new]) == [uri]
    assert verify_with_cryptography(old_leaf["CertPEM"], [old, new])
    # New leaf (through the cross-signed cert) against a peer that trusts only the old root, and back.
    assert tls_handshake(new_leaf, old_leaf, tmp_path, [old, new], [old])[0] == [uri]


def test_csr_checks_use_consuls_words():
    key, _ = ca.generate_key()
    good = ca.make_csr(key, ca.service_uri(DOMAIN, "dc1", "web"))
    assert ca.check_csr(good).spiffe == ca.SpiffeService(DOMAIN, "default", "dc1", "web")
    tampered = good.replace(good.splitlines()[5], good.splitlines()[5][:-4] + "AAAA")
    cases = {
        "": "no PEM-encoded data found",
        "garbage": "no PEM-encoded data found",
        make_root()[0]: "first PEM-block should be CERTIFICATE REQUEST type",
        ca.make_csr(key, "https://example.com/web"): "SPIFFE ID must have 'spiffe' scheme",
        ca.make_csr(key, f"spiffe://{DOMAIN}/web"): "SPIFFE ID is not in the expected format",
        ca.make_csr(key, f"spiffe://{DOMAIN}"): "SPIFFE ID in CSR must be a service ID",
    }
    for pem, message in cases.items():
        with pytest.raises(ca.CAError, match=message):
            ca.check_csr(pem)
    with pytest.raises(ca.CAError):
        ca.check_csr(tampered)
    two = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ca.service_uri(DOMAIN, "dc1", "a")), x509.UniformResourceIdentifier(ca.service_uri(DOMAIN, "dc1", "b"))]),
        critical=True,
    ).sign(key, ca.hashes.SHA256())
    with pytest.raises(ca.CAError, match="CSR SAN contains an invalid number of URIs: 2"):
        ca.check_csr(two.public_bytes(ca.serialization.Encoding.PEM).decode())


def test_service_uri_escapes_like_go():
    assert ca.service_uri(DOMAIN, "dc1", "web") == f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/web"
    uri = ca.service_uri(DOMAIN, "dc1", "we b/x")
    assert uri.endswith("/svc/we%20b%2Fx")
    assert ca.parse_spiffe(uri).service == "we b/x"


def test_serial_and_key_ids_are_colon_hex():
    assert ca.serial_hex(8) == "08" and ca.serial_hex(300) == "01:2c" and ca.serial_hex(0) == "00"
    assert ca.hex_string(b"\x00\xab") == "00:ab"


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "config,message",
    [
        ({"PrivateKeyType": "dsa"}, "private key type must be either 'ec' or 'rsa'"),
        ({"PrivateKeyType": "ec", "PrivateKeyBits": 1000}, "EC key length must be one of (224, 256, 384, 521) bits"),
        ({"PrivateKeyType": "rsa", "PrivateKeyBits": 1024}, "RSA key length must be 2048 or 4096 bits"),
        ({"PrivateKeyBits": "many"}, "cannot parse 'PrivateKeyBits' as int"),
        ({"LeafCertTTL": "soon"}, "error decoding config: error decoding 'LeafCertTTL': time: invalid duration \"soon\""),
        ({"LeafCertTTL": "30m"}, "leaf cert TTL must be greater or equal than 1h0m0s"),
        ({"LeafCertTTL": "9000h"}, "leaf cert TTL must be less than 8760h0m0s"),
        ({"IntermediateCertTTL": "2h"}, "Intermediate Cert TTL must be greater or equal than 3h"),
        ({"LeafCertTTL": "72h", "IntermediateCertTTL": "100h"}, "Intermediate Cert TTL must be greater or equal than 3 * LeafCertTTL (>=216h0m0s)."),
        ({"RootCertTTL": "100h"}, "root cert TTL is set and is not greater than intermediate cert ttl. root cert ttl: 100h0m0s, intermediate cert ttl: 8760h0m0s"),
        ({"RootCert": "x"}, "must provide a private key when providing a root cert"),
        ({"Frobnicate": 1}, 'unknown key "Frobnicate"'),
        ({"LeafCertTTL": True}, "expected type 'duration'"),
    ],
)
def test_config_validation_messages(config, message):
    with pytest.raises(ca.CAError) as err:
        ca.parse_ca_config(config)
    assert message in str(err.value)


def test_config_defaults_and_weak_types():
    pc = ca.parse_ca_config({})
    assert (pc.leaf_cert_ttl, pc.private_key_type, pc.private_key_bits) == (72 * 3600.0, "ec", 256)
    pc = ca.parse_ca_config({"leaf_cert_ttl": 7_200_000_000_000, "PrivateKeyType": "rsa", "PrivateKeyBits": "2048"})
    assert (pc.leaf_cert_ttl, pc.private_key_bits) == (7200.0, 2048)
    assert ca.parse_ca_config({"LeafCertTTL": "10s", "SkipValidate": True}).leaf_cert_ttl == 10.0
    assert ca.parse_ca_config({"RotationPeriod": "2160h"}).key_identity == ca.parse_ca_config({}).key_identity


# ---------------------------------------------------------------- store and FSM


def root_record(pem: str, key: ca.PrivateKey, active: bool = True) -> CARootRecord:
    info = ca.root_info(pem)
    return CARootRecord(
        id=info.id, name=info.name, serial_number=info.serial_number, signing_key_id=info.signing_key_id,
        external_trust_domain=CLUSTER, not_before=info.not_before, not_after=info.not_after, root_cert=pem,
        signing_key=ca.key_pem(key), active=active, private_key_type=info.private_key_type, private_key_bits=info.private_key_bits,
    )


def test_fsm_bootstrap_rotation_and_cas():
    st = StateStore()
    fsm = FSM(st)
    r1 = root_record(*make_root(1))
    config = CAConfigRecord(CLUSTER, "consul", {"LeafCertTTL": "72h"})
    boot = CARequest(op="set-roots-config", index=0, config_index=0, roots=[r1], config=config)
    assert decode(encode(boot)) == boot
    assert fsm.apply(encode(boot), 10) is True
    assert fsm.apply(encode(boot), 11) is False  # the roots moved on: a stale leader's bootstrap loses
    index, roots, cfg = st.ca_roots_and_config()
    assert index == 10 and [r.id for r in roots] == [r1.id]
    assert (cfg.cluster_id, cfg.create_index, cfg.modify_index) == (CLUSTER, 10, 10)
    assert roots[0].signing_key.startswith("-----BEGIN EC PRIVATE KEY-----")

    assert fsm.apply(encode(CALeafRequest()), 12) == 12
    assert st.max_index() == 12

    r2 = root_record(*make_root(2))
    old = CARootRecord(**{**r1.__dict__, "active": False, "rotated_out_at": 1_700_000_000})
    rotate = CARequest(op="set-roots-config", index=10, config_index=10, roots=[old, r2], config=CAConfigRecord(CLUSTER, "consul", {"PrivateKeyType": "ec"}))
    assert fsm.apply(encode(rotate), 13) is True
    _, roots = st.ca_roots()
    by_id = {r.id: r for r in roots}
    assert by_id[r1.id].create_index == 10 and by_id[r1.id].modify_index == 13 and not by_id[r1.id].active
    assert by_id[r2.id].create_index == 13 and by_id[r2.id].active
    assert st.ca_active_root().id == r2.id
    assert [r.id for r in roots] == sorted(by_id)  # Consul's memdb order: by ID

    both_active = CARequest(op="set-roots", index=13, roots=[r1, r2])
    result = fsm.apply(encode(both_active), 14)
    assert isinstance(result, StoreError) and "exactly one active CA" in str(result)
    assert st.ca_roots()[0] == 13  # nothing changed
    assert fsm.apply(encode(CARequest(op="set-config", config_index=3, config=config)), 15) is False


def test_ca_tables_survive_a_snapshot(tmp_path: Path):
    st = StateStore()
    r1 = root_record(*make_root(1))
    st.ca_set_roots_and_config(
        5, 0,
        [CARoot(r1.id, r1.name, r1.serial_number, r1.signing_key_id, CLUSTER, r1.not_before, r1.not_after, r1.root_cert, ("x",), r1.signing_key, True)],
        CAConfig(CLUSTER, "consul", {"LeafCertTTL": "72h"}), 0,
    )
    st.ca_increment_leaf_index(6)
    path = str(tmp_path / "snap.db")
    write_snapshot(path, st.dump(), {"index": 6})
    tables, _ = read_snapshot(path)
    copy = StateStore()
    copy.load(tables)
    assert copy.checksum() == st.checksum()
    assert copy.ca_active_root() == st.ca_active_root()
    assert copy.ca_config()[1] == st.ca_config()[1]
