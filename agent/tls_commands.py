"""``proconsul tls ca create`` and ``proconsul tls cert create``: Consul's commands for the agent TLS files (command/tls/*).

Files land in the current directory under Consul's names: ``consul-agent-ca.pem``
and ``consul-agent-ca-key.pem``, then ``dc1-server-consul-0.pem`` /
``dc1-server-consul-0-key.pem`` (the next free number each time), with Consul's
messages ("==> Saved ..."). Keys are EC P-256, as Consul's. Server certificates
carry ``server.<dc>.<domain>``, client ones ``client.<dc>.<domain>``, both
``localhost`` and 127.0.0.1. The CA is never overwritten. Key files are written
0600.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from typing import Any

from proconsul.agent.cli import CLIError, _flag, _out, _sub


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing one) with ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _serial() -> int:
    from cryptography import x509

    return x509.random_serial_number()


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    # Consul writes "EC PRIVATE KEY" (SEC 1) PEM for its EC keys.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _builder(subject: Any, issuer: Any, public_key: Any, serial: int, days: int, ca: bool) -> Any:
    """What CA and leaf certificates share: names, key, serial, validity from a minute ago, basic
    constraints, and key usage (a CA signs certificates and CRLs; a leaf signs and enciphers keys)."""
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=not ca, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
    )


def generate_ca(days: int, domain: str, constraints: list[str], common_name: str = "") -> tuple[bytes, bytes]:
    """A self-signed EC P-256 CA like Consul's tls.GenerateCA: (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    serial = _serial()
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.POSTAL_CODE, "94105"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "San Francisco"),
        x509.NameAttribute(NameOID.STREET_ADDRESS, "101 Second Street"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HashiCorp Inc."),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"Consul Agent CA {serial}"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _builder(name, name, key.public_key(), serial, days, ca=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    if constraints:
        permitted = [x509.DNSName(c) for c in constraints]
        builder = builder.add_extension(x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def generate_cert(
    ca_pem: bytes, ca_key_pem: bytes, name: str, days: int, dns_names: list[str], ips: list[str], server_auth: bool = True
) -> tuple[bytes, bytes]:
    """A leaf signed by the CA like Consul's tlsutil.GenerateCert: (cert PEM, key PEM). Raises ValueError on bad input."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server_auth else [ExtendedKeyUsageOID.CLIENT_AUTH]
    try:
        ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())  # type: ignore[arg-type]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, ca.subject, key.public_key(), _serial(), days, ca=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def cmd_ca_create(args: argparse.Namespace) -> int:
    """`tls ca create`: <domain>-agent-ca.pem and <domain>-agent-ca-key.pem, refusing to overwrite either."""
    cert_file, key_file = f"{args.domain}-agent-ca.pem", f"{args.domain}-agent-ca-key.pem"
    for path in (cert_file, key_file):
        if os.path.exists(path):
            raise CLIError(f"{path} already exists.")
    constraints = [*(args.additional_name_constraint or []), args.domain, "localhost"] if args.name_constraint else []
    cert, key = generate_ca(args.days, args.domain, constraints, args.common_name or "")
    try:
        _write_new(cert_file, cert, 0o644)
        _out("==> Saved " + cert_file)
        _write_new(key_file, key, 0o600)
        _out("==> Saved " + key_file)
    except OSError as err:
        raise CLIError(f"{err.filename}: {err.strerror}") from None
    return 0


def cmd_cert_create(args: argparse.Namespace) -> int:
    """`tls cert create -server|-client|-cli`: a leaf signed by the CA, under the next free <dc>-<kind>-<domain>-N name."""
    if not args.ca:
        raise CLIError("Please provide the ca")
    if not args.key:
        raise CLIError("Please provide the key")
    if [args.server, args.client, args.cli].count(True) != 1:
        raise CLIError("Please provide either -server, -client, or -cli")
    if args.node and not args.server:
        raise CLIError("-node requires -server")
    dns = [d.strip() for d in args.additional_dnsname or [] if d]
    ips = [i.strip() for i in args.additional_ipaddress or [] if i]
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CLIError(f"-additional-ipaddress: {ip!r} is not an IP address") from None
    kind = "server" if args.server else "client" if args.client else "cli"
    name = f"{kind}.{args.dc}.{args.domain}"
    if args.server and args.node:
        dns.append(f"{args.node}.server.{args.dc}.{args.domain}")
    dns += [name, "localhost"]
    if kind != "cli":
        ips.append("127.0.0.1")
    else:
        dns, ips = [name, "localhost"], []
    prefix = f"{args.dc}-{kind}-{args.domain}"
    for i in range(10001):
        cert_file, key_file = f"{prefix}-{i}.pem", f"{prefix}-{i}-key.pem"
        if not os.path.exists(cert_file) and not os.path.exists(key_file):
            break
    else:
        raise CLIError("Could not find a filename that doesn't already exist")
    ca_file, ca_key_file = args.ca.replace("#DOMAIN#", args.domain, 1), args.key.replace("#DOMAIN#", args.domain, 1)
    ca = _read(ca_file, "Error reading CA")
    ca_key = _read(ca_key_file, "Error reading CA key")
    if args.server:
        _out(
            "==> WARNING: Server Certificates grants authority to become a\n"
            "    server and access all state in the cluster including root keys\n"
            "    and all ACL tokens. Do not distribute them to production hosts\n"
            "    that are not server nodes. Store them as securely as CA keys."
        )
    _out(f"==> Using {ca_file} and {ca_key_file}")
    try:
        cert, key = generate_cert(ca, ca_key, name, args.days, dns, ips, server_auth=kind != "cli")
    except (ValueError, TypeError) as err:
        raise CLIError(f"cannot sign with {ca_file} and {ca_key_file}: {err}") from None
    try:
        _write_new(cert_file, cert, 0o644)
        _out("==> Saved " + cert_file)
        _write_new(key_file, key, 0o600)
        _out("==> Saved " + key_file)
    except OSError as err:
        raise CLIError(f"{err.filename}: {err.strerror}") from None
    return 0


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise CLIError(f"{what}: open {path}: {(err.strerror or str(err)).lower()}") from None


def add_parsers(subs: Any) -> None:
    """The ``tls`` command: ``ca create`` and ``cert create``."""
    top = _sub(subs, "tls", "Make a CA and certificates for agent TLS (HTTPS and server RPC)")
    ts = top.add_subparsers(dest="tls_cmd", metavar="ca|cert", parser_class=type(top))
    ts.required = True
    ca = _sub(ts, "ca", "Helpers for CAs")
    cas = ca.add_subparsers(dest="tls_ca_cmd", metavar="create", parser_class=type(top))
    cas.required = True
    cac = _sub(cas, "create", "Create a new consul CA (<domain>-agent-ca.pem and <domain>-agent-ca-key.pem)")
    _flag(cac, "days", type=int, default=1825, help="number of days the CA is valid for (default 1825, 5 years)")
    _flag(cac, "domain", default="consul", help="domain of the Consul cluster (default consul); names the files")
    _flag(cac, "name-constraint", dest="name_constraint", action="store_true", help="only sign for localhost, -domain and -additional-name-constraint")
    _flag(cac, "additional-name-constraint", dest="additional_name_constraint", action="append", help="another permitted DNS name; repeatable")
    _flag(cac, "common-name", dest="common_name", help="the CA's common name (default Consul Agent CA <serial>)")
    cac.set_defaults(run=cmd_ca_create)
    cert = _sub(ts, "cert", "Helpers for certificates")
    certs = cert.add_subparsers(dest="tls_cert_cmd", metavar="create", parser_class=type(top))
    certs.required = True
    cc = _sub(certs, "create", "Create a new certificate (-server, -client or -cli) signed by the CA")
    _flag(cc, "server", action="store_true", help="a server certificate (server.<dc>.<domain>)")
    _flag(cc, "client", action="store_true", help="a client certificate (client.<dc>.<domain>)")
    _flag(cc, "cli", action="store_true", help="a CLI certificate (cli.<dc>.<domain>)")
    _flag(cc, "dc", default="dc1", help="datacenter (default dc1)")
    _flag(cc, "domain", default="consul", help="domain (default consul)")
    _flag(cc, "days", type=int, default=365, help="number of days the certificate is valid for (default 365)")
    _flag(cc, "ca", default="#DOMAIN#-agent-ca.pem", help="the CA certificate (default #DOMAIN#-agent-ca.pem)")
    _flag(cc, "key", default="#DOMAIN#-agent-ca-key.pem", help="the CA key (default #DOMAIN#-agent-ca-key.pem)")
    _flag(cc, "node", help="with -server: also name <node>.server.<dc>.<domain>")
    _flag(cc, "additional-dnsname", dest="additional_dnsname", action="append", help="another DNS SAN (localhost is always there); repeatable")
    _flag(cc, "additional-ipaddress", dest="additional_ipaddress", action="append", help="another IP SAN (127.0.0.1 is always there); repeatable")
    cc.set_defaults(run=cmd_cert_create)
