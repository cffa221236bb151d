"""Transport security for server RPC and HTTPS (Consul's tlsutil): settings per interface, and SSL contexts from them.

Consul's ``tls`` block has ``defaults`` and per-interface overrides (``https``,
``internal_rpc``, ``grpc``); ``resolve`` merges them into one
``TLSProtocolConfig`` per interface. From one of those:

* ``incoming_context`` is what a listener presents: its cert, and with
  ``verify_incoming`` a client certificate that chains to ``ca_file`` is
  required (Go's RequireAndVerifyClientCert);
* ``outgoing_context`` is what server RPC dials with, only when
  ``verify_outgoing`` is set (Consul's OutgoingRPCConfig): the server must chain
  to ``ca_file``, and with ``verify_server_hostname`` also carry
  ``server.<dc>.<domain>``, so a client certificate cannot pose as a server;
* ``is_server_cert`` is Consul's AuthorizeServerConn: with ``verify_incoming``
  and ``verify_server_hostname`` server-to-server calls need a peer certificate
  naming ``server.<dc>.<domain>``.

Errors are ``TLSConfigError`` with one line in Consul's words where Consul has them.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, fields, replace
from typing import Any


class TLSConfigError(ValueError):
    """A TLS setting cannot be used; one line."""


# Consul's tls_min_version values (types.TLSVersion).
TLS_VERSIONS = {
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}

# Consul's tls_cipher_suites names (Go's) and OpenSSL's for them; TLS 1.3 suites are not configurable, as in Go.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
}

# Keys each block of Consul's tls stanza takes (grpc's are accepted; proconsul serves no gRPC).
_COMMON_KEYS = {"ca_file", "ca_path", "cert_file", "key_file", "tls_min_version", "tls_cipher_suites", "verify_incoming"}
BLOCK_KEYS = {
    "defaults": _COMMON_KEYS | {"verify_outgoing"},
    "https": _COMMON_KEYS | {"verify_outgoing"},
    "internal_rpc": _COMMON_KEYS | {"verify_outgoing", "verify_server_hostname"},
    "grpc": _COMMON_KEYS | {"use_auto_cert"},
}
BOOL_KEYS = {"verify_incoming", "verify_outgoing", "verify_server_hostname", "use_auto_cert"}


@dataclass(frozen=True)
class TLSProtocolConfig:
    """One interface's TLS settings after ``defaults`` are merged in (Consul's tlsutil.ProtocolConfig)."""

    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_min_version: str = "TLSv1_2"
    tls_cipher_suites: str = ""
    verify_incoming: bool = False
    verify_outgoing: bool = False
    verify_server_hostname: bool = False

    @property
    def has_cert(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def has_ca(self) -> bool:
        return bool(self.ca_file or self.ca_path)


def resolve(block: dict[str, dict[str, Any]], interface: str) -> TLSProtocolConfig:
    """``tls.defaults`` overlaid with ``tls.<interface>`` (Consul's per-interface override)."""
    known = {f.name for f in fields(TLSProtocolConfig)}
    merged = {**block.get("defaults", {}), **block.get(interface, {})}
    return replace(TLSProtocolConfig(), **{k: v for k, v in merged.items() if k in known})


def server_name(datacenter: str, domain: str) -> str:
    """Consul's ServerSNI: ``server.<dc>.<domain>``, the name every server certificate carries."""
    return f"server.{datacenter}.{domain.strip('.')}"


def _read_cas(pc: TLSProtocolConfig) -> str:
    """The PEM of ca_file, else of every file under ca_path (Consul's LoadCAs walks the tree)."""
    paths = [pc.ca_file] if pc.ca_file else []
    if not paths and pc.ca_path:
        if not os.path.isdir(pc.ca_path):
            raise TLSConfigError(f"Error loading from {pc.ca_path}: not a directory")
        for root, _, names in os.walk(pc.ca_path):
            paths += [os.path.join(root, n) for n in sorted(names)]
        if not paths:
            raise TLSConfigError("Error loading from CAPath: no CAs found")
    pems = []
    for path in paths:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                pems.append(f.read())
        except OSError as err:
            raise TLSConfigError(f"Error loading from {path}: {err.strerror or err}") from None
    return "\n".join(pems)


def _context(pc: TLSProtocolConfig, side: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    version = TLS_VERSIONS.get(pc.tls_min_version)
    if version is None:
        raise TLSConfigError(f"tls_min_version: {pc.tls_min_version!r} is not one of {', '.join(TLS_VERSIONS)}")
    ctx.minimum_version = version
    if pc.tls_cipher_suites:
        if pc.tls_min_version == "TLSv1_3":
            raise TLSConfigError("tls_cipher_suites: cannot be set with tls_min_version TLSv1_3 (TLS 1.3 suites are fixed)")
        names = []
        for name in (s.strip() for s in pc.tls_cipher_suites.split(",")):
            if name not in CIPHER_SUITES:
                raise TLSConfigError(f"tls_cipher_suites: unsupported cipher suite {name!r}")
            names.append(CIPHER_SUITES[name])
        try:
            ctx.set_ciphers(":".join(names))
        except ssl.SSLError:
            raise TLSConfigError("tls_cipher_suites: none of these suites is available here") from None
    if bool(pc.cert_file) != bool(pc.key_file):
        raise TLSConfigError("cert_file and key_file must be set together")
    if pc.has_cert:
        for what, path in (("cert_file", pc.cert_file), ("key_file", pc.key_file)):
            if not os.path.isfile(path):
                raise TLSConfigError(f"Failed to load cert/key pair: {what} {path}: no such file")
        try:
            ctx.load_cert_chain(pc.cert_file, pc.key_file)
        except (ssl.SSLError, OSError) as err:
            reason = getattr(err, "reason", None)
            why = "the private key does not match the certificate" if reason == "KEY_VALUES_MISMATCH" else (
                f"not a PEM certificate and private key ({reason or err.strerror or err})"
            )
            raise TLSConfigError(f"Failed to load cert/key pair ({pc.cert_file}, {pc.key_file}): {why}") from None
    cas = _read_cas(pc) if pc.has_ca else ""
    if cas:
        try:
            ctx.load_verify_locations(cadata=cas)
        except (ssl.SSLError, ValueError):
            raise TLSConfigError(f"failed to parse the CA certificates in {pc.ca_file or pc.ca_path}: no PEM certificate found") from None
    return ctx


def check(pc: TLSProtocolConfig) -> None:
    """Consul's loadProtocolConfig checks: files readable, and a CA (and cert) wherever verification needs one."""
    if pc.verify_incoming:
        if not pc.has_ca:
            raise TLSConfigError("VerifyIncoming set but no CA certificates were provided")
        if not pc.has_cert:
            raise TLSConfigError("VerifyIncoming requires a Cert and Key pair in the configuration file (cert_file and key_file)")
    if pc.verify_outgoing and not pc.has_ca:
        raise TLSConfigError("VerifyOutgoing set but no CA certificates were provided")
    # Builds a context even with nothing to load, so tls_min_version and tls_cipher_suites are checked too.
    _context(pc, ssl.PROTOCOL_TLS_SERVER)


def incoming_context(pc: TLSProtocolConfig) -> ssl.SSLContext | None:
    """A listener's context (Consul's IncomingRPCConfig / IncomingHTTPSConfig); None without a certificate."""
    if not pc.has_cert:
        return None
    ctx = _context(pc, ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED if pc.verify_incoming else ssl.CERT_NONE
    return ctx


def outgoing_context(pc: TLSProtocolConfig) -> ssl.SSLContext | None:
    """What server RPC dials with; None (plain TCP) unless verify_outgoing, as Consul's OutgoingRPCConfig."""
    if not pc.verify_outgoing:
        return None
    ctx = _context(pc, ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Without verify_server_hostname any certificate from the CA will do, as in Consul.
    ctx.check_hostname = pc.verify_server_hostname
    return ctx


def peer_dns_names(ssl_object: Any) -> list[str]:
    """The DNS SANs of a verified peer certificate (empty when the peer sent none)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    return [v for k, v in (cert or {}).get("subjectAltName", ()) if k == "DNS"]


def is_server_cert(names: list[str], expected: str) -> bool:
    """Does one of ``names`` cover ``expected`` (exactly, or as a one-label ``*.`` wildcard)? AuthorizeServerConn's test."""
    expected = expected.lower()
    for name in (n.lower() for n in names):
        if name == expected:
            return True
        if name.startswith("*.") and "." in expected and expected.split(".", 1)[1] == name[2:]:
            return True
    return False
