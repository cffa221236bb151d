"""The agent's Connect certificates: the CA roots and one leaf per service, kept fresh (Consul's agent/leafcert).

* Roots: the first request starts a loop of blocking ``ConnectCA.Roots``
  queries that keeps the latest IndexedCARoots; ``/v1/agent/connect/ca/roots``
  answers from it (``?index`` waits for the next change).
* Leaves: the first request for a service makes an EC P-256 key and a CSR for
  ``spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`` here, on the
  agent; a server signs it (the leader, reached over server RPC from a client
  agent). The private key never leaves the agent. A task per service then
  re-issues the leaf at about half its life (50% ± 5% of the validity left
  when it was issued; Consul picks a random point between 60% and 90%) and at once when the active root changes, i.e.
  when the active root's SigningKeyID is no longer the leaf's AuthorityKeyId
  (Consul waits a random 0-30 s there to spread the herd; we wait at most
  ``ROOT_CHANGE_JITTER``). Failures retry with backoff while the old leaf is
  still served.
* ``?index=N`` on a leaf blocks until a leaf with a ModifyIndex above N exists
  (or the wait ends); a plain request re-checks that the cached leaf is in date
  and signed by the active root, and re-issues it if not, as Consul's
  MustRevalidate does.
* A leaf nobody asked for in ``LEAF_UNUSED_TTL`` (3 days, Consul's cache TTL)
  is dropped with its task.
* Tokens: the servers' ConnectCA.Sign wants service:write on the service for
  the token it is given. A leaf is signed, and renewed, with the token of the
  last caller that asked for it (an empty one means ``acl.tokens.default``, as
  Consul's parseToken); a managed proxy asks with the token its sidecar was
  registered with. The roots watch reads with the agent token. Whether an
  HTTP caller may have the leaf at all is the HTTP handler's check.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from proconsul.server.errors import NoPathToDatacenter, ProconsulError
from proconsul.server.structs import DatacenterRequest, QueryOptions

log = logging.getLogger("proconsul.agent.leafcerts")

ROOTS_WAIT = 600.0  # Consul's MaxQueryTime for the roots watch
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
ROOT_CHANGE_JITTER = 0.5
RENEW_AT = 0.5  # of the leaf's lifetime
RENEW_JITTER = 0.05
RETRY_MIN, RETRY_MAX = 0.5, 30.0
LEAF_UNUSED_TTL = 3 * 24 * 3600.0


@dataclass
class Leaf:
    """One service's cached leaf: Consul's IssuedCert JSON with PrivateKeyPEM, and what renewal needs."""

    service: str
    cert: dict[str, Any] | None = None
    index: int = 0
    authority_key_id: str = ""
    valid_after: float = 0.0
    valid_before: float = 0.0
    issued_at: float = 0.0  # wall clock
    last_get: float = field(default_factory=time.monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task | None = None
    token: str = field(default="", repr=False)  # the last caller's; signs and renews this leaf
    # Where in the lifetime this leaf is renewed (0.45-0.55), drawn once per leaf.
    renew_fraction: float = field(default_factory=lambda: RENEW_AT + random.uniform(-RENEW_JITTER, RENEW_JITTER))

    @property
    def renew_at(self) -> float:
        """Wall-clock time to re-issue at: that fraction of the validity left when it was issued.

        Counting from issuance rather than ValidAfter (a minute earlier, for clock drift) keeps a
        short-lived leaf from being due the moment it arrives.
        """
        start = max(self.valid_after, self.issued_at)
        return start + (self.valid_before - start) * self.renew_fraction


class LeafCerts:
    """See the module docstring."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._roots: dict[str, Any] | None = None
        self._roots_index = 0
        self._roots_changed = asyncio.Event()
        self._roots_task: asyncio.Task | None = None
        self._leaves: dict[str, Leaf] = {}
        self.issued = 0  # leaves signed for this agent (tests and metrics watch it)

    async def stop(self) -> None:
        """Cancel the roots watch and every leaf's renewal task (agent shutdown)."""
        tasks = [t for t in [self._roots_task, *(leaf.task for leaf in self._leaves.values())] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._roots_task = None
        self._leaves.clear()

    # ------------------------------------------------------------- roots

    def _start_roots_watch(self) -> None:
        if self._roots_task is None or self._roots_task.done():
            self._roots_task = asyncio.create_task(self._watch_roots(), name="connect-ca-roots")

    async def _fetch_roots(self, index: int, wait: float) -> None:
        opts = QueryOptions(index=index, wait=wait if index else 0.0, token=self.agent.agent_token())
        reply = await self.agent.rpc("ConnectCA.Roots", DatacenterRequest(opts=opts))
        self._set_roots(reply.meta.index, reply.value)

    def _set_roots(self, index: int, roots: dict[str, Any]) -> None:
        if roots == self._roots and index == self._roots_index:
            return
        self._roots = roots
        self._roots_index = index
        fired, self._roots_changed = self._roots_changed, asyncio.Event()
        fired.set()

    async def _watch_roots(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                await self._fetch_roots(self._roots_index, ROOTS_WAIT)
                delay = RETRY_MIN
            except Exception as err:  # noqa: BLE001 (the watch must outlive any one failure)
                log.debug("CA roots watch: %s (retrying in %.1fs)", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _current_roots(self) -> dict[str, Any]:
        """The cached roots, read once from the servers if the watch has not delivered any yet."""
        self._start_roots_watch()
        if self._roots is None:
            await self._fetch_roots(0, 0.0)
        assert self._roots is not None
        return self._roots

    async def roots(self, opts: QueryOptions) -> tuple[int, dict[str, Any], bool]:
        """(index, IndexedCARoots, cache hit) for /v1/agent/connect/ca/roots; ``opts.index`` blocks."""
        _check_dc(self.agent, opts)
        hit = self._roots is not None
        await self._current_roots()
        if opts.index and self._roots_index <= opts.index:
            await _wait(self._roots_changed, opts.wait)
        return self._roots_index, self._roots, hit  # type: ignore[return-value]

    def active_signing_key_id(self) -> str:
        """The cached active root's SigningKeyID ("" before any roots arrived)."""
        for root in (self._roots or {}).get("Roots") or ():
            if root.get("Active"):
                return root.get("SigningKeyID", "")
        return ""

    # ------------------------------------------------------------- leaves

    async def leaf(self, service: str, opts: QueryOptions) -> tuple[dict[str, Any], bool]:
        """(IssuedCert JSON, cache hit) for /v1/agent/connect/ca/leaf/<service>; ``opts.index`` blocks."""
        _check_dc(self.agent, opts)
        entry = self._leaves.get(service)
        if entry is None:
            entry = self._leaves[service] = Leaf(service)
        entry.last_get = time.monotonic()
        entry.token = opts.token
        if entry.cert is None:
            await self._issue(entry, 0)
            self._start_maintenance(entry)
            return entry.cert, False  # type: ignore[return-value]
        self._start_maintenance(entry)
        if not opts.index:
            await self._current_roots()
            if entry.valid_before <= time.time() or self._rotated(entry):
                await self._issue(entry, entry.index)
                return entry.cert, False  # type: ignore[return-value]
            return entry.cert, True
        if entry.index <= opts.index:
            await _wait(entry.changed, opts.wait)
        return entry.cert, True  # type: ignore[return-value]

    def _rotated(self, entry: Leaf) -> bool:
        """The active root is no longer the one that signed this leaf."""
        active = self.active_signing_key_id()
        return bool(active) and entry.authority_key_id != active

    def _start_maintenance(self, entry: Leaf) -> None:
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._maintain(entry), name=f"connect-leaf-{entry.service}")

    async def _issue(self, entry: Leaf, seen_index: int) -> None:
        """Make a key and CSR here and have a server sign it (Consul's generateNewLeaf).

        ``seen_index`` is the leaf the caller judged stale: if another caller replaced it
        meanwhile, there is nothing left to do.
        """
        from proconsul.server import ca
        from proconsul.server.endpoints.connect_ca import CASignRequest

        async with entry.lock:
            if entry.index != seen_index:
                return
            roots = await self._current_roots()
            domain = roots.get("TrustDomain") or ""
            if not domain:
                raise ProconsulError("cluster has no CA bootstrapped yet")
            dc = self.agent.config.datacenter
            uri = ca.service_uri(domain, dc, entry.service)

            def make() -> tuple[str, str]:
                key, key_pem = ca.generate_key()
                return key_pem, ca.make_csr(key, uri)

            key_pem, csr = await asyncio.to_thread(make)
            token = entry.token or self.agent.config.acl_token_default
            reply = await self.agent.rpc("ConnectCA.Sign", CASignRequest(csr=csr, service=entry.service, datacenter=dc, token=token))
            cert = ca.parse_cert(reply["CertPEM"])
            out: dict[str, Any] = {}
            for k, v in reply.items():
                out[k] = v
                if k == "CertPEM":
                    out["PrivateKeyPEM"] = key_pem
            entry.cert = out
            entry.index = int(reply.get("ModifyIndex") or 0)
            entry.authority_key_id = ca.authority_key_id(cert)
            entry.valid_after = cert.not_valid_before_utc.timestamp()
            entry.valid_before = cert.not_valid_after_utc.timestamp()
            entry.issued_at = time.time()
            entry.renew_fraction = RENEW_AT + random.uniform(-RENEW_JITTER, RENEW_JITTER)
            self.issued += 1
            fired, entry.changed = entry.changed, asyncio.Event()
            fired.set()
            log.debug("issued leaf for %s (serial %s, index %d)", entry.service, reply.get("SerialNumber"), entry.index)

    async def _maintain(self, entry: Leaf) -> None:
        """Re-issue at ~half life, and soon after the active root changes; forget the leaf when unused."""
        delay = RETRY_MIN
        while True:
            if time.monotonic() - entry.last_get > LEAF_UNUSED_TTL:
                if self._leaves.get(entry.service) is entry:
                    del self._leaves[entry.service]
                return
            roots_changed = self._roots_changed
            self._start_roots_watch()
            seen = entry.index
            due = entry.renew_at - time.time()
            if self._rotated(entry):
                await asyncio.sleep(random.uniform(0, ROOT_CHANGE_JITTER))
            elif due > 0:
                try:
                    await asyncio.wait_for(roots_changed.wait(), min(due, 3600.0))
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                await self._issue(entry, seen)
                delay = RETRY_MIN
            except Exception as err:  # noqa: BLE001 (keep serving the old leaf and try again)
                log.warning("renewing the leaf certificate of %s failed, retrying in %.1fs: %s", entry.service, delay, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)


def _check_dc(agent: Any, opts: QueryOptions) -> None:
    if opts.datacenter and opts.datacenter != agent.config.datacenter:
        raise NoPathToDatacenter("No path to datacenter")


async def _wait(event: asyncio.Event, wait: float) -> None:
    """Wait for ``event`` up to Consul's blocking wait (default 5 min, at most 10, jittered)."""
    wait = min(wait if wait > 0 else DEFAULT_WAIT, MAX_WAIT)
    wait += random.random() * wait / 16
    try:
        await asyncio.wait_for(event.wait(), wait)
    except asyncio.TimeoutError:
        pass
