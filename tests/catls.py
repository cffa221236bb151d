"""Checks the Connect tests share: verify a leaf with cryptography and with Python's ssl (a real handshake)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509

try:
    from cryptography.x509 import verification
except ImportError:  # cryptography < 42: fall back to walking the chain's signatures
    verification = None


def certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def verify_with_cryptography(chain_pem: str, root_pems: list[str]) -> list[str]:
    """Path-validate the leaf (first in ``chain_pem``, intermediates after) to one of the roots; its URI SANs."""
    leaf, *intermediates = certs(chain_pem)
    roots = [c for pem in root_pems for c in certs(pem)]
    if verification is not None:
        verifier = verification.PolicyBuilder().store(verification.Store(roots)).build_client_verifier()
        result = verifier.verify(leaf, intermediates)
        return [g.value for g in result.subjects if isinstance(g, x509.UniformResourceIdentifier)]
    # Signature checks along issuer links, up to a trusted root.
    current, pool = leaf, [*intermediates, *roots]
    for _ in range(5):
        issuers = [c for c in pool if c.subject == current.issuer]
        for issuer in issuers:
            try:
                current.verify_directly_issued_by(issuer)
            except Exception:  # noqa: BLE001 (try the next candidate)
                continue
            if issuer in roots:
                return uri_sans(leaf)
            current = issuer
            break
        else:
            raise AssertionError("no issuer verifies")
    raise AssertionError("chain too long")


def _context(side: int, chain_pem: str, key_pem: str, ca_pems: list[str], workdir: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    if side == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False  # SPIFFE leaves carry URI SANs only; the test checks the URI itself
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata="".join(ca_pems))
    cert_file, key_file = workdir / f"{name}.crt", workdir / f"{name}.key"
    cert_file.write_text(chain_pem)
    key_file.write_text(key_pem)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def tls_handshake(
    server: dict, client: dict, workdir: Path, server_trusts: list[str], client_trusts: list[str]
) -> tuple[list[str], list[str]]:
    """An mTLS handshake on 127.0.0.1 between two leaves (Consul's leaf JSON); each side's view of the other's URI SANs."""
    sctx = _context(ssl.PROTOCOL_TLS_SERVER, server["CertPEM"], server["PrivateKeyPEM"], server_trusts, workdir, "server")
    cctx = _context(ssl.PROTOCOL_TLS_CLIENT, client["CertPEM"], client["PrivateKeyPEM"], client_trusts, workdir, "client")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with sctx.wrap_socket(conn, server_side=True) as tls:
                seen["client"] = tls.getpeercert()
                tls.sendall(tls.recv(5))
        except Exception as err:  # noqa: BLE001 (reported to the test below)
            seen["error"] = err

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with cctx.wrap_socket(raw) as tls:
                peer = tls.getpeercert()
                tls.sendall(b"hello")
                assert tls.recv(5) == b"hello"
    finally:
        thread.join(10)
        listener.close()
    if "error" in seen:
        raise seen["error"]  # type: ignore[misc]

    def uris(peercert: object) -> list[str]:
        return [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]  # type: ignore[union-attr]

    return uris(peer), uris(seen["client"])
