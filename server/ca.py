"""The built-in Connect CA's crypto: keys, roots, cross-signing, CSRs, leaf signing, and its config.

Pure functions over ``cryptography``, with no server, store or event loop in
sight; the leader calls them (in a thread: RSA keys take a while) and carries
what they made through Raft. What Consul does and we copy
(agent/connect/ca/provider_consul.go, agent/connect/*.go):

* keys: EC P-224/256/384/521 or RSA 2048/4096, PEM as Go writes them
  ("EC PRIVATE KEY" SEC1, "RSA PRIVATE KEY" PKCS#1); signatures ECDSA-SHA256 or
  SHA256-RSA whatever the curve.
* key IDs (SubjectKeyId/AuthorityKeyId): sha256 of the DER SubjectPublicKeyInfo;
  shown as colon-separated lower-case hex (``hex_string``), as are serial
  numbers and root IDs (the sha1 fingerprint of the root's DER).
* a root: CN ``pri-<uid>.consul.ca.<cluster-id[:8]>.consul``, the URI SAN
  ``spiffe://<cluster-id>.consul``, CA basic constraints, KeyUsage
  certSign|CRLSign|digitalSignature, SKI = AKI = its key ID.
* a leaf: empty subject, the CSR's URI (and DNS/IP) SANs marked critical,
  KeyUsage digitalSignature|keyEncipherment|dataEncipherment|keyAgreement, EKU
  clientAuth+serverAuth, valid from a minute ago for the leaf TTL.
* a cross-signed root: the new root's subject, key and extensions, issued by the
  old root for at most 7 days.
* the provider config (``parse_ca_config``): Consul's keys, defaults and
  validation messages.

Where we differ: roots are valid from a minute ago too (clock drift between
servers), a CSR's signature is checked, and a supplied RootCert must be a CA
certificate matching the supplied PrivateKey.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import secrets
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proconsul.server.durations import format_duration, parse_duration

DEFAULT_LEAF_CERT_TTL = "72h"
DEFAULT_INTERMEDIATE_CERT_TTL = "8760h"
DEFAULT_ROOT_CERT_TTL = "87600h"
DEFAULT_PRIVATE_KEY_TYPE = "ec"
DEFAULT_PRIVATE_KEY_BITS = 256
MIN_LEAF_CERT_TTL = 3600.0
MAX_LEAF_CERT_TTL = 365 * 24 * 3600.0
INTERMEDIATE_RENEW_INTERVAL = 3600.0
CROSS_SIGN_LIFETIME = 7 * 24 * 3600.0  # Consul's CrossSignCA: rotation only needs it while old leaves live
CLOCK_DRIFT = dt.timedelta(minutes=1)  # Consul's CertificateTimeDriftBuffer
EC_CURVES: dict[int, ec.EllipticCurve] = {224: ec.SECP224R1(), 256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}
RSA_BITS = (2048, 4096)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CAError(ValueError):
    """Bad CA input (config, key, certificate, CSR); the message is what the user sees."""


# ---------------------------------------------------------------- formatting


def hex_string(data: bytes) -> str:
    """Consul's connect.HexString: colon-separated lower-case hex ("0a:1b:...")."""
    return ":".join(f"{b:02x}" for b in data)


def serial_hex(serial: int) -> str:
    """Consul's EncodeSerialNumber: the serial's big-endian bytes (no leading zeros) as HexString."""
    return hex_string(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))


def go_time(when: dt.datetime) -> str:
    """A UTC time as Go's time.Time marshals it in JSON (RFC 3339, "Z", fractions only when present)."""
    when = when.astimezone(dt.timezone.utc)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_go_time(text: str) -> dt.datetime:
    """The inverse of ``go_time``."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def now_utc() -> dt.datetime:
    """Now, in UTC, to the second (certificate times have no fractions)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


# ---------------------------------------------------------------- SPIFFE IDs (agent/connect/uri*.go)

_SERVICE_PATH = re.compile(r"^(?:/ap/([^/]+))?/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$")
_AGENT_PATH = re.compile(r"^(?:/ap/([^/]+))?/agent/client/dc/([^/]+)/id/([^/]+)$")
# Go's url.PathEscape leaves these as they are in a path segment.
_PATH_SAFE = "-._~!$&'()*+,;=:@"


def trust_domain(cluster_id: str) -> str:
    """Consul's SpiffeIDSigningForCluster(...).Host(): ``<cluster-id>.consul``."""
    return f"{cluster_id}.consul"


def signing_uri(cluster_id: str) -> str:
    """The root's URI SAN: ``spiffe://<cluster-id>.consul``."""
    return f"spiffe://{trust_domain(cluster_id)}"


def service_uri(domain: str, datacenter: str, service: str, namespace: str = "default") -> str:
    """Consul's SpiffeIDService.URI: ``spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>``."""
    seg = lambda s: quote(s, safe=_PATH_SAFE)  # noqa: E731
    return f"spiffe://{domain}/ns/{seg(namespace)}/dc/{seg(datacenter)}/svc/{seg(service)}"


class SpiffeService(NamedTuple):
    host: str
    namespace: str
    datacenter: str
    service: str


class SpiffeOther(NamedTuple):
    """A well-formed SPIFFE ID that is not a service's (a signing ID or an agent's)."""

    host: str
    kind: str


def parse_spiffe(uri: str) -> SpiffeService | SpiffeOther:
    """Consul's connect.ParseCertURI, with its error texts; raises CAError."""
    try:
        parts = urlsplit(uri)
    except ValueError as err:
        raise CAError(f"SPIFFE ID is not a URI: {err}") from None
    if parts.scheme != "spiffe":
        raise CAError("SPIFFE ID must have 'spiffe' scheme")
    m = _SERVICE_PATH.match(parts.path)
    if m:
        _, ns, dc, svc = (unquote(g) if g is not None else None for g in m.groups())
        return SpiffeService(parts.netloc, ns, dc, svc)
    if _AGENT_PATH.match(parts.path):
        return SpiffeOther(parts.netloc, "agent")
    if parts.path == "" and "." in parts.netloc and not parts.netloc.startswith("."):
        return SpiffeOther(parts.netloc, "signing")
    raise CAError("SPIFFE ID is not in the expected format")


# ---------------------------------------------------------------- keys


def generate_key(key_type: str = DEFAULT_PRIVATE_KEY_TYPE, bits: int = DEFAULT_PRIVATE_KEY_BITS) -> tuple[PrivateKey, str]:
    """Consul's GeneratePrivateKeyWithConfig: (key, PEM)."""
    if key_type == "ec":
        curve = EC_CURVES.get(bits)
        if curve is None:
            raise CAError(f"error generating ECDSA private key: unknown curve length {bits}")
        key: PrivateKey = ec.generate_private_key(curve)
    elif key_type == "rsa":
        if bits < 2048:
            raise CAError("error generating RSA private key: key size must be at least 2048 bits")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        raise CAError(f"unknown private key type requested: {key_type}")
    return key, key_pem(key)


def key_pem(key: PrivateKey) -> str:
    """Go's encodings: SEC1 "EC PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY"."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def parse_key(pem: str) -> PrivateKey:
    """Consul's ParseSigner: the first PEM block, EC or RSA (PKCS#1, SEC1 or PKCS#8); raises CAError."""
    block = _first_block(pem)
    if block is None:
        raise CAError("no PEM-encoded data found")
    kind, data = block
    if kind not in ("EC PRIVATE KEY", "RSA PRIVATE KEY", "PRIVATE KEY"):
        raise CAError(f"unknown PEM block type for signing key: {kind}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise CAError(f"error parsing private key: {err}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CAError("private key is not a valid format")
    return key


def key_id(public_key: Any) -> bytes:
    """Consul's connect.KeyId: sha256 over the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def key_info(public_key: Any) -> tuple[str, int]:
    """Consul's KeyInfoFromCert: ("ec", curve bits) or ("rsa", modulus bits)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec", public_key.curve.key_size
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa", public_key.key_size
    raise CAError("unsupported key type")


def _same_key(a: Any, b: Any) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


# ---------------------------------------------------------------- PEM


def _first_block(pem: str) -> tuple[str, bytes] | None:
    m = re.search(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----\s*", pem, re.S)
    if m is None:
        return None
    return m.group(1), m.group(0).encode()


def parse_cert(pem: str) -> x509.Certificate:
    """Consul's connect.ParseCert: the first PEM block must be a certificate; raises CAError."""
    block = _first_block(pem)
    if block is None:
        raise CAError("no PEM-encoded data found")
    if block[0] != "CERTIFICATE":
        raise CAError("first PEM-block should be CERTIFICATE type")
    try:
        return x509.load_pem_x509_certificate(block[1])
    except ValueError as err:
        raise CAError(f"x509: malformed certificate: {err}") from None


def parse_certs(pem: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (a leaf then its intermediates)."""
    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError as err:
        raise CAError(f"no PEM-encoded data found: {err}") from None


def cert_pem(cert: x509.Certificate) -> str:
    """A certificate as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def ensure_newline(text: str) -> str:
    """Consul's lib.EnsureTrailingNewline."""
    return text if not text or text.endswith("\n") else text + "\n"


# ---------------------------------------------------------------- certificates


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA256()  # Consul's SigAlgoForKey: ECDSAWithSHA256 or SHA256WithRSA


def compact_uid() -> str:
    """Consul's CompactUID: 8 base36 characters of randomness (the leader calls this, never apply)."""
    n = secrets.randbits(63)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return (out or "0")[:8]


def ca_common_name(uid: str, cluster_id: str) -> str:
    """Consul's CACN("consul", uid, trust domain, primary): ``pri-<uid>.consul.ca.<cluster-id[:8]>.consul``."""
    uid = re.sub(r"[^a-z0-9]", "", uid.lower())[:8]
    return f"pri-{uid}.consul.ca.{cluster_id[:8]}.consul"


def generate_root(key: PrivateKey, cluster_id: str, serial: int, ttl: float, now: dt.datetime | None = None) -> str:
    """A self-signed root for the cluster (Consul's ConsulProvider.generateCA); returns its PEM."""
    now = now or now_utc()
    kid = key_id(key.public_key())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_common_name(compact_uid(), cluster_id))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_DRIFT)
        .not_valid_after(now + dt.timedelta(seconds=ttl))
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(kid), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(kid, None, None), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(signing_uri(cluster_id))]), critical=False)
    )
    return cert_pem(builder.sign(key, _hash_for(key)))


def cross_sign(new_root: x509.Certificate, old_root: x509.Certificate, old_key: PrivateKey, serial: int, now: dt.datetime | None = None) -> str:
    """The new root re-issued by the old one (Consul's CrossSignCA), so leaves of the new root chain to the old."""
    now = now or now_utc()
    not_after = min(now + dt.timedelta(seconds=CROSS_SIGN_LIFETIME), old_root.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(new_root.subject)
        .issuer_name(old_root.subject)
        .public_key(new_root.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_DRIFT)
        .not_valid_after(not_after)
    )
    for ext in new_root.extensions:
        if isinstance(ext.value, x509.AuthorityKeyIdentifier):
            continue
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_extension(x509.AuthorityKeyIdentifier(key_id(old_key.public_key()), None, None), critical=False)
    return cert_pem(builder.sign(old_key, _hash_for(old_key)))


def make_csr(key: PrivateKey, uri: str, dns_names: tuple[str, ...] = ()) -> str:
    """Consul's connect.CreateCSR: an empty subject, so the SAN extension is critical (HackSANExtensionForCSR)."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    names += [x509.DNSName(n) for n in dns_names]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(key, _hash_for(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class CSRInfo:
    """What Sign needs from a checked CSR."""

    csr: x509.CertificateSigningRequest
    uri: str
    spiffe: SpiffeService


def check_csr(pem: str) -> CSRInfo:
    """Parse and vet a CSR as Consul's ParseCSR + AuthorizeAndSignCertificate do; raises CAError with Consul's texts."""
    block = _first_block(pem or "")
    if block is None:
        raise CAError("no PEM-encoded data found")
    if block[0] != "CERTIFICATE REQUEST":
        raise CAError("first PEM-block should be CERTIFICATE REQUEST type")
    try:
        csr = x509.load_pem_x509_csr(block[1])
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CAError(f"x509: malformed certificate request: {err}") from None
    if not valid:
        raise CAError("CSR signature is invalid")
    pub = csr.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.key_size not in (256, 384, 521):
            raise CAError(f"CSR key must be EC P-256, P-384 or P-521 or RSA of 2048 bits or more, not EC P-{pub.curve.key_size}")
    elif isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < 2048:
            raise CAError(f"CSR key must be EC P-256, P-384 or P-521 or RSA of 2048 bits or more, not RSA {pub.key_size}")
    else:
        raise CAError(f"invalid key type: {type(pub).__name__}")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    except ValueError as err:
        raise CAError(f"x509: malformed certificate request extensions: {err}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CAError(f"CSR SAN contains an invalid number of URIs: {len(uris)}")
    if san.get_values_for_type(x509.RFC822Name):
        raise CAError("CSR SAN does not allow specifying email addresses")
    spiffe = parse_spiffe(uris[0])
    if not isinstance(spiffe, SpiffeService):
        raise CAError("SPIFFE ID in CSR must be a service ID")
    return CSRInfo(csr, uris[0], spiffe)


def sign_leaf(info: CSRInfo, ca_cert: x509.Certificate, ca_key: PrivateKey, serial: int, ttl: float, now: dt.datetime | None = None) -> str:
    """Issue the leaf for a checked CSR (Consul's ConsulProvider.Sign); returns its PEM (without intermediates)."""
    now = now or now_utc()
    start = now - CLOCK_DRIFT
    csr = info.csr
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(info.uri)]
    names += [x509.DNSName(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in san.get_values_for_type(x509.IPAddress)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(seconds=ttl))
        .add_extension(x509.KeyUsage(True, False, True, True, True, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(key_id(csr.public_key())), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(key_id(ca_key.public_key()), None, None), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
    )
    return cert_pem(builder.sign(ca_key, _hash_for(ca_key)))


class RootInfo(NamedTuple):
    """The CARoot fields a root certificate determines (Consul's newCARoot)."""

    id: str
    name: str
    serial_number: int
    signing_key_id: str
    not_before: str
    not_after: str
    root_cert: str
    private_key_type: str
    private_key_bits: int


def root_info(pem: str, provider: str = "consul") -> RootInfo:
    """ID (sha1 fingerprint), Name ("Consul CA Primary Cert"), serial, SigningKeyID (its SKI), validity, key type."""
    cert = parse_cert(pem)
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = key_id(cert.public_key())
    key_type, key_bits = key_info(cert.public_key())
    pretty = {"consul": "Consul", "vault": "Vault", "aws-pca": "Aws-Pca"}.get(provider, provider)
    return RootInfo(
        id=hex_string(cert.fingerprint(hashes.SHA1())),
        name=f"{pretty} CA Primary Cert",
        serial_number=cert.serial_number,
        signing_key_id=hex_string(ski),
        not_before=go_time(cert.not_valid_before_utc),
        not_after=go_time(cert.not_valid_after_utc),
        root_cert=ensure_newline(pem),
        private_key_type=key_type,
        private_key_bits=key_bits,
    )


def authority_key_id(cert: x509.Certificate) -> str:
    """A certificate's AuthorityKeyId as HexString: the SigningKeyID of the root that signed it."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return ""
    return hex_string(aki or b"")


def check_supplied_root(key: PrivateKey, pem: str, now: dt.datetime | None = None) -> x509.Certificate:
    """A RootCert given with its PrivateKey: a CA certificate, in date, for that key; raises CAError."""
    cert = parse_cert(pem)
    if not _same_key(cert.public_key(), key.public_key()):
        raise CAError("RootCert does not match PrivateKey: its public key is another key's")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAError("RootCert is not a CA certificate (basic constraints CA:TRUE missing)")
    now = now or now_utc()
    if cert.not_valid_after_utc <= now:
        raise CAError(f"RootCert expired at {go_time(cert.not_valid_after_utc)}")
    return cert


# ---------------------------------------------------------------- provider config (structs.CommonCAProviderConfig)

# Config keys (folded: lower case, no underscores) -> Consul's name and kind.
_CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "leafcertttl": ("LeafCertTTL", "duration"),
    "intermediatecertttl": ("IntermediateCertTTL", "duration"),
    "rootcertttl": ("RootCertTTL", "duration"),
    "privatekeytype": ("PrivateKeyType", "str"),
    "privatekeybits": ("PrivateKeyBits", "int"),
    "privatekey": ("PrivateKey", "str"),
    "rootcert": ("RootCert", "str"),
    "skipvalidate": ("SkipValidate", "bool"),
    # Accepted and stored, without effect here (Consul's rate limits, its deprecated rotation period).
    "csrmaxpersecond": ("CSRMaxPerSecond", "float"),
    "csrmaxconcurrent": ("CSRMaxConcurrent", "int"),
    "rotationperiod": ("RotationPeriod", "duration"),
    "disablecrosssigning": ("DisableCrossSigning", "bool"),
}
# Agent-config (snake_case) names of ca_config, as Consul's config builder translates them.
AGENT_CA_CONFIG_KEYS = {
    "leaf_cert_ttl": "LeafCertTTL",
    "intermediate_cert_ttl": "IntermediateCertTTL",
    "root_cert_ttl": "RootCertTTL",
    "private_key_type": "PrivateKeyType",
    "private_key_bits": "PrivateKeyBits",
    "private_key": "PrivateKey",
    "root_cert": "RootCert",
    "csr_max_per_second": "CSRMaxPerSecond",
    "csr_max_concurrent": "CSRMaxConcurrent",
    "rotation_period": "RotationPeriod",
}


def default_ca_config() -> dict[str, Any]:
    """The Config an agent starts with (Consul's RuntimeConfig.ConnectCAConfiguration defaults)."""
    return {
        "LeafCertTTL": DEFAULT_LEAF_CERT_TTL,
        "IntermediateCertTTL": DEFAULT_INTERMEDIATE_CERT_TTL,
        "RootCertTTL": DEFAULT_ROOT_CERT_TTL,
    }


@dataclass(frozen=True)
class ProviderConfig:
    """Consul's structs.ConsulCAProviderConfig, parsed (durations in seconds)."""

    leaf_cert_ttl: float = 72 * 3600.0
    intermediate_cert_ttl: float = 8760 * 3600.0
    root_cert_ttl: float = 87600 * 3600.0
    private_key_type: str = DEFAULT_PRIVATE_KEY_TYPE
    private_key_bits: int = DEFAULT_PRIVATE_KEY_BITS
    private_key: str = ""
    root_cert: str = ""
    skip_validate: bool = False

    @property
    def key_identity(self) -> tuple[str, str, str, int]:
        """What picks the root: Consul's provider ID hashes exactly these (PrivateKey, RootCert, type, bits)."""
        return (self.private_key, self.root_cert, self.private_key_type, self.private_key_bits)


def _decode_value(name: str, kind: str, value: Any) -> Any:
    """mapstructure's weakly typed decode of one Config value; raises CAError("error decoding config: ...")."""
    bad = CAError(f"error decoding config: '{name}' expected type '{kind}', got unconvertible type '{_go_type(value)}'")
    if kind == "duration":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value) / 1e9  # a bare number is nanoseconds, as Go decodes time.Duration
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError as err:
                raise CAError(f"error decoding config: error decoding '{name}': {err}") from None
        raise bad
    if kind == "int":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip() or "0", 10)
            except ValueError:
                raise CAError(f"error decoding config: cannot parse '{name}' as int: strconv.ParseInt: parsing {value!r}: invalid syntax") from None
        raise bad
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            return value != 0
        if isinstance(value, str) and value in ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False", ""):
            return value in ("1", "t", "T", "TRUE", "true", "True")
        raise bad
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise bad


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "<nil>"


def parse_ca_config(raw: dict[str, Any] | None) -> ProviderConfig:
    """Consul's ParseConsulCAConfig: defaults, a weakly typed decode, then CommonCAProviderConfig.Validate.

    Unknown keys are refused (Consul's mapstructure ignores them silently).
    Raises CAError with Consul's messages.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CAError(f"error decoding config: expected a map, got '{_go_type(raw)}'")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        folded = str(key).replace("_", "").replace("-", "").lower()
        known = _CONFIG_KEYS.get(folded)
        if known is None:
            raise CAError(f'error decoding config: unknown key "{key}"')
        name, kind = known
        values[name] = _decode_value(name, kind, value) if value is not None else None
    cfg = ProviderConfig(
        leaf_cert_ttl=_or(values.get("LeafCertTTL"), 72 * 3600.0),
        intermediate_cert_ttl=_or(values.get("IntermediateCertTTL"), 8760 * 3600.0),
        root_cert_ttl=_or(values.get("RootCertTTL"), 87600 * 3600.0),
        private_key_type=(values.get("PrivateKeyType") or DEFAULT_PRIVATE_KEY_TYPE),
        private_key_bits=values.get("PrivateKeyBits") or DEFAULT_PRIVATE_KEY_BITS,
        private_key=values.get("PrivateKey") or "",
        root_cert=values.get("RootCert") or "",
        skip_validate=bool(values.get("SkipValidate")),
    )
    if not cfg.private_key and cfg.root_cert:
        raise CAError("must provide a private key when providing a root cert")
    _validate(cfg)
    return cfg


def _or(value: float | None, default: float) -> float:
    # mapstructure leaves a zero value in place: an explicit "0s" stays 0 (and fails validation).
    return default if value is None else value


def _validate(c: ProviderConfig) -> None:
    """Consul's CommonCAProviderConfig.Validate; TTLs must be positive and the key type valid even with SkipValidate."""
    if not c.skip_validate:
        if c.root_cert_ttl < c.intermediate_cert_ttl:
            raise CAError(
                "root cert TTL is set and is not greater than intermediate cert ttl. "
                f"root cert ttl: {_go_dur(c.root_cert_ttl)}, intermediate cert ttl: {_go_dur(c.intermediate_cert_ttl)}"
            )
        if c.leaf_cert_ttl < MIN_LEAF_CERT_TTL:
            raise CAError(f"leaf cert TTL must be greater or equal than {_go_dur(MIN_LEAF_CERT_TTL)}")
        if c.leaf_cert_ttl > MAX_LEAF_CERT_TTL:
            raise CAError(f"leaf cert TTL must be less than {_go_dur(MAX_LEAF_CERT_TTL)}")
        if c.intermediate_cert_ttl < 3 * INTERMEDIATE_RENEW_INTERVAL:
            raise CAError("Intermediate Cert TTL must be greater or equal than 3h")
        if c.intermediate_cert_ttl < 3 * c.leaf_cert_ttl:
            raise CAError(f"Intermediate Cert TTL must be greater or equal than 3 * LeafCertTTL (>={_go_dur(3 * c.leaf_cert_ttl)}).")
    for what, ttl in (("leaf", c.leaf_cert_ttl), ("root", c.root_cert_ttl), ("intermediate", c.intermediate_cert_ttl)):
        if ttl <= 0:
            raise CAError(f"{what} cert TTL must be positive")
    if c.private_key_type == "ec":
        if c.private_key_bits not in EC_CURVES:
            raise CAError("EC key length must be one of (224, 256, 384, 521) bits")
    elif c.private_key_type == "rsa":
        if c.private_key_bits not in RSA_BITS:
            raise CAError("RSA key length must be 2048 or 4096 bits")
    else:
        raise CAError("private key type must be either 'ec' or 'rsa'")


def _go_dur(seconds: float) -> str:
    """Go's Duration.String for whole seconds ("1h0m0s", "216h0m0s")."""
    return format_duration(seconds)
