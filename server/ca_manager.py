"""The leader's side of the Connect CA (Consul's CAManager, agent/consul/leader_connect_ca.go).

* ``initialize``: on first leadership, write the initial CA config (the agent
  config's ``connect.ca_config`` over Consul's defaults, with a new ClusterID)
  and a root made from it, in one Raft entry; a later leader finds both and does
  nothing. The leader keeps watching: a snapshot restored without a CA gets one.
* ``update_configuration``: a config whose key settings (PrivateKey, RootCert,
  PrivateKeyType, PrivateKeyBits — what Consul's provider ID hashes) are
  unchanged is just stored; otherwise the root rotates: a new root is made, the
  old root cross-signs it (the cross-signed certificate goes first in the new
  root's IntermediateCerts, so new leaves chain to the old root too), the old
  root stays listed as inactive with the time it was rotated out, and roots and
  config are written in one entry.
* ``sign``: vet a CSR (Consul's AuthorizeAndSignCertificate texts), take a serial
  from Raft (a CALeafRequest's index), sign with the active root and append its
  intermediates.
* ``prune``: every ``ca_prune_interval`` drop inactive roots rotated out more than
  twice the leaf TTL ago (Consul's pruneCARoots) or expired, and expired
  intermediates.

One administrative operation runs at a time (an asyncio lock stands in for
Consul's caState). Keys and certificates are made here, in a thread, and travel
in the commands: apply does no crypto. Writes are check-and-set, so a leader that
lost a race learns it rather than overwriting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from proconsul.server.commands import CAConfigRecord, CALeafRequest, CARequest, CARootRecord
from proconsul.server.errors import BadRequest, ProconsulError
from proconsul.server.state.ca import CAConfig, CARoot

if TYPE_CHECKING:
    from proconsul.server import ca

# proconsul.server.ca (and cryptography with it) is imported when the CA first does
# something: ~70 ms that a client agent, which never signs, should not pay at start-up.

log = logging.getLogger("proconsul.connect.ca")

CONNECT_NOT_ENABLED = "Connect must be enabled in order to use this endpoint"  # Consul's ErrConnectNotEnabled
STATE_READ_ONLY = "Provider State is read-only. It must be omitted or identical to the current value"
SUPPORTED_PROVIDERS = ("consul",)


class ConnectNotEnabled(ProconsulError):
    """Connect must be enabled in order to use this endpoint"""


def config_json(c: CAConfig) -> dict[str, Any]:
    """Consul's structs.CAConfiguration JSON (ClusterID is json:"-")."""
    return {
        "Provider": c.provider,
        "Config": c.config,
        "State": c.state,
        "ForceWithoutCrossSigning": c.force_without_cross_signing,
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    }


def root_json(r: CARoot) -> dict[str, Any]:
    """Consul's structs.CARoot JSON as getCARoots copies it out: never the signing key."""
    return {
        "ID": r.id,
        "Name": r.name,
        "SerialNumber": r.serial_number,
        "SigningKeyID": r.signing_key_id,
        "ExternalTrustDomain": r.external_trust_domain,
        "NotBefore": r.not_before,
        "NotAfter": r.not_after,
        "RootCert": r.root_cert if r.root_cert.endswith("\n") else r.root_cert + "\n",
        "IntermediateCerts": list(r.intermediate_certs) if r.intermediate_certs is not None else None,
        "Active": r.active,
        "PrivateKeyType": r.private_key_type,
        "PrivateKeyBits": r.private_key_bits,
        "CreateIndex": r.create_index,
        "ModifyIndex": r.modify_index,
    }


def roots_json(roots: tuple[CARoot, ...], config: CAConfig | None) -> dict[str, Any]:
    """Consul's IndexedCARoots: ActiveRootID, TrustDomain, Roots."""
    if config is None or not config.cluster_id:
        raise ProconsulError("CA has not finished initializing")
    active = next((r.id for r in roots if r.active), "")
    return {"ActiveRootID": active, "TrustDomain": f"{config.cluster_id}.consul", "Roots": [root_json(r) for r in roots]}


def _root_record(r: CARoot) -> CARootRecord:
    return CARootRecord(
        r.id, r.name, r.serial_number, r.signing_key_id, r.external_trust_domain, r.not_before, r.not_after,
        r.root_cert, list(r.intermediate_certs) if r.intermediate_certs is not None else None, r.signing_key,
        r.active, r.rotated_out_at, r.private_key_type, r.private_key_bits,
    )


def _config_record(c: CAConfig) -> CAConfigRecord:
    return CAConfigRecord(c.cluster_id, c.provider, dict(c.config), c.state, c.force_without_cross_signing)


def check_provider(provider: str) -> None:
    """Only the built-in provider exists here; anything else is a 400 (Consul: "unknown CA provider")."""
    if provider not in SUPPORTED_PROVIDERS:
        if provider in ("vault", "aws-pca"):
            raise BadRequest(f'could not initialize provider: CA provider "{provider}" is not available here; only "consul" is')
        raise BadRequest(f'could not initialize provider: unknown CA provider "{provider}"')


def check_config(raw: Any) -> ca.ProviderConfig:
    """Parse a provider config and its key material up front: any problem is a 400 before anything changes."""
    from proconsul.server import ca

    try:
        pc = ca.parse_ca_config(raw)
        if pc.private_key:
            key = ca.parse_key(pc.private_key)
            if pc.root_cert:
                ca.check_supplied_root(key, pc.root_cert)
    except ca.CAError as err:
        raise BadRequest(f"error configuring provider: {err}") from None
    return pc


class CAManager:
    """See the module docstring."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self._lock = asyncio.Lock()
        self._signer: tuple[str, Any, Any] | None = None  # (root ID, parsed cert, parsed key) of the active root

    @property
    def enabled(self) -> bool:
        """This server's connect.enabled."""
        return self.srv.config.connect_enabled

    async def _propose(self, cmd: Any) -> Any:
        from proconsul.server.endpoints.kv import propose

        return await propose(self.srv, cmd)

    async def _next_serial(self) -> int:
        """A fresh serial number: the Raft index of a CALeafRequest (unique and increasing across leaders)."""
        return await self._propose(CALeafRequest())

    # ------------------------------------------------------------- leadership

    async def leader_loop(self) -> None:
        """While leader: bootstrap the CA whenever the store has none (first leadership, or a restored
        snapshot without one), retrying as Consul's backgroundCAInitialization does; prune on a timer."""
        from proconsul.server import ca
        from proconsul.server.watch import WatchSet

        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + self.srv.config.ca_prune_interval
        delay = 0.1
        while True:
            ws = WatchSet()
            _, roots, config = self.srv.state.ca_roots_and_config(ws)
            try:
                if config is None or not any(r.active for r in roots):
                    await self.initialize()
                    delay = 0.1
                    continue
                if loop.time() >= next_prune:
                    next_prune = loop.time() + self.srv.config.ca_prune_interval
                    await self.prune()
                    continue
            except (ProconsulError, ca.CAError) as err:
                log.error("Connect CA leader duty failed, will retry: %s", err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            await ws.wait(max(next_prune - loop.time(), 0.0))

    async def initialize(self) -> None:
        """Consul's CAManager.Initialize for the primary datacenter: config and first root, once per cluster."""
        if not self.enabled:
            return
        async with self._lock:
            await self._initialize_locked()

    async def _initialize_locked(self) -> None:
        from proconsul.server import ca

        st = self.srv.state
        _, config = st.ca_config()
        if config is not None and st.ca_active_root() is not None:
            return
        if config is None:
            cfg = self.srv.config
            record = CAConfigRecord(str(uuid.uuid4()), cfg.ca_provider, {**ca.default_ca_config(), **cfg.ca_config})
            config_index = 0
        else:
            record = _config_record(config)
            config_index = config.modify_index
        pc = ca.parse_ca_config(record.config)
        root = await self._new_root(pc, record.cluster_id)
        _, existing = st.ca_roots()
        roots = [dataclasses.replace(_root_record(r), active=False) for r in existing] + [root]
        ok = await self._propose(
            CARequest(op="set-roots-config", index=st.ca_roots_index(), config_index=config_index, roots=roots, config=record)
        )
        if not ok:
            raise ProconsulError("could not atomically update roots and config")
        log.info("initialized primary datacenter CA with provider %s (trust domain %s)", record.provider, ca.trust_domain(record.cluster_id))

    async def _new_root(self, pc: ca.ProviderConfig, cluster_id: str) -> CARootRecord:
        """A root for this config: from the supplied key and certificate, or a new key and self-signed root."""
        from proconsul.server import ca

        serial = await self._next_serial()

        def build() -> CARootRecord:
            if pc.private_key:
                key = ca.parse_key(pc.private_key)
                key_pem = pc.private_key
            else:
                key, key_pem = ca.generate_key(pc.private_key_type, pc.private_key_bits)
            if pc.root_cert:
                ca.check_supplied_root(key, pc.root_cert)
                pem = pc.root_cert
            else:
                pem = ca.generate_root(key, cluster_id, serial, pc.root_cert_ttl)
            info = ca.root_info(pem)
            return CARootRecord(
                id=info.id,
                name=info.name,
                serial_number=info.serial_number,
                signing_key_id=info.signing_key_id,
                external_trust_domain=cluster_id,
                not_before=info.not_before,
                not_after=info.not_after,
                root_cert=info.root_cert,
                intermediate_certs=None,
                signing_key=key_pem,
                active=True,
                private_key_type=info.private_key_type,
                private_key_bits=info.private_key_bits,
            )

        return await asyncio.to_thread(build)

    # ------------------------------------------------------------- configuration

    async def update_configuration(self, provider: str, raw: Any, state: dict | None, force: bool) -> None:
        """Consul's CAManager.UpdateConfiguration (primary DC); BadRequest for anything the user got wrong."""
        from proconsul.server import ca

        if not self.enabled:
            raise ConnectNotEnabled(CONNECT_NOT_ENABLED)
        check_provider(provider)
        if not isinstance(raw, dict):
            raise BadRequest("error configuring provider: error decoding config: Config must be an object")
        # Parsing a supplied RSA key checks it, which takes milliseconds: off the loop.
        pc = await asyncio.to_thread(check_config, raw)
        async with self._lock:
            await self._initialize_locked()
            st = self.srv.state
            _, stored = st.ca_config()
            if state and state != (stored.state or {}):
                raise BadRequest(STATE_READ_ONLY)
            if provider == stored.provider and raw == stored.config:
                return
            record = CAConfigRecord(stored.cluster_id, provider, dict(raw), stored.state, force)
            active = st.ca_active_root()
            try:
                previous = ca.parse_ca_config(stored.config).key_identity
            except ca.CAError:
                previous = None
            if active is not None and previous == pc.key_identity:
                await self._set_config(record, stored.modify_index)
                log.info("CA provider config updated")
                return
            await self._rotate(pc, record, stored, active)

    async def _set_config(self, record: CAConfigRecord, config_index: int) -> None:
        if not await self._propose(CARequest(op="set-config", config_index=config_index, config=record)):
            raise ProconsulError("could not atomically update the CA configuration")

    async def _rotate(self, pc: ca.ProviderConfig, record: CAConfigRecord, stored: CAConfig, active: CARoot | None) -> None:
        from proconsul.server import ca

        st = self.srv.state
        new_root = await self._new_root(pc, stored.cluster_id)
        if active is not None and new_root.id == active.id:
            await self._set_config(record, stored.modify_index)
            return
        if active is not None and not record.force_without_cross_signing:
            serial = await self._next_serial()

            def sign() -> str:
                return ca.cross_sign(ca.parse_cert(new_root.root_cert), ca.parse_cert(active.root_cert), ca.parse_key(active.signing_key), serial)

            new_root.intermediate_certs = [await asyncio.to_thread(sign)]
        elif record.force_without_cross_signing:
            log.warning("ForceWithoutCrossSigning set, CA reconfiguration skipping cross-signing")
        now = int(time.time())
        _, existing = st.ca_roots()
        roots = []
        for r in existing:
            rec = _root_record(r)
            if rec.active:
                rec.active = False
                rec.rotated_out_at = now
            roots.append(rec)
        roots.append(new_root)
        ok = await self._propose(
            CARequest(op="set-roots-config", index=st.ca_roots_index(), config_index=stored.modify_index, roots=roots, config=record)
        )
        if not ok:
            raise ProconsulError("could not atomically update roots and config")
        log.info("CA rotated to new root %s under provider %s", new_root.id, record.provider)

    # ------------------------------------------------------------- signing

    def _active_signer(self, root: CARoot) -> tuple[Any, Any]:
        from proconsul.server import ca

        cached = self._signer
        if cached is None or cached[0] != root.id:
            cached = (root.id, ca.parse_cert(root.root_cert), ca.parse_key(root.signing_key))
            self._signer = cached
        return cached[1], cached[2]

    async def sign(self, csr_pem: str, service: str = "") -> dict[str, Any]:
        """Consul's ConnectCA.Sign on the leader: the IssuedCert JSON (without PrivateKeyPEM)."""
        from proconsul.server import ca

        if not self.enabled:
            raise ConnectNotEnabled(CONNECT_NOT_ENABLED)
        try:
            info = ca.check_csr(csr_pem)
        except ca.CAError as err:
            raise BadRequest(str(err)) from None
        spiffe = info.spiffe
        dc = self.srv.config.datacenter
        if spiffe.datacenter != dc:
            raise BadRequest(f"SPIFFE ID in CSR from a different datacenter: {spiffe.datacenter}, we are {dc}")
        st = self.srv.state
        _, config = st.ca_config()
        root = st.ca_active_root()
        if config is None or root is None:
            raise ProconsulError("CA is uninitialized and unable to sign certificates yet: no root certificate")
        domain = ca.trust_domain(config.cluster_id)
        if spiffe.host != domain:
            raise BadRequest(f"SPIFFE ID in CSR from a different trust domain: {spiffe.host}, we are {domain}")
        if spiffe.namespace != "default":
            raise BadRequest(f'SPIFFE ID in CSR is in namespace "{spiffe.namespace}"; only "default" exists here')
        if service and spiffe.service != service:
            raise BadRequest(f'SPIFFE ID in CSR is for service "{spiffe.service}", but the request is for "{service}"')
        leaf_ttl = ca.parse_ca_config(config.config).leaf_cert_ttl
        if ca.parse_go_time(root.not_after).timestamp() <= time.time():
            raise ProconsulError(f"root expired: certificate expired, expiration date: {root.not_after}")
        serial = await self._next_serial()

        def sign() -> str:
            cert, key = self._active_signer(root)
            return ca.sign_leaf(info, cert, key, serial, leaf_ttl)

        pem = await asyncio.to_thread(sign)
        leaf = ca.parse_cert(pem)
        for extra in root.intermediate_certs or ():
            pem += ca.ensure_newline(extra)
        return {
            "SerialNumber": ca.serial_hex(serial),
            "CertPEM": pem,
            "Service": spiffe.service,
            "ServiceURI": info.uri,
            "ValidAfter": ca.go_time(leaf.not_valid_before_utc),
            "ValidBefore": ca.go_time(leaf.not_valid_after_utc),
            "CreateIndex": serial,
            "ModifyIndex": serial,
        }

    # ------------------------------------------------------------- pruning

    async def prune(self) -> bool:
        """Consul's pruneCARoots (plus expired intermediates); True when it wrote something."""
        from proconsul.server import ca

        if not self.enabled:
            return False
        async with self._lock:
            st = self.srv.state
            _, roots, config = st.ca_roots_and_config()
            if config is None or not roots:
                return False
            leaf_ttl = ca.parse_ca_config(config.config).leaf_cert_ttl
            now = time.time()
            kept: list[CARootRecord] = []
            changed = False
            for r in roots:
                expired = ca.parse_go_time(r.not_after).timestamp() <= now
                stale = bool(r.rotated_out_at) and now - r.rotated_out_at > 2 * leaf_ttl
                if not r.active and (expired or stale):
                    log.info("pruning old unused root CA (ID: %s)", r.id)
                    changed = True
                    continue
                rec = _root_record(r)
                if rec.intermediate_certs:
                    live = [p for p in rec.intermediate_certs if ca.parse_cert(p).not_valid_after_utc.timestamp() > now]
                    if len(live) != len(rec.intermediate_certs):
                        rec.intermediate_certs = live or None
                        changed = True
                kept.append(rec)
            if not changed:
                return False
            ok = await self._propose(CARequest(op="set-roots", index=st.ca_roots_index(), roots=kept))
            if not ok:
                raise ProconsulError("could not atomically update roots")
            return True
