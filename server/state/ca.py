"""The Connect CA part of the state store: the trusted roots, the CA configuration, the leaf index.

* ``ca_roots``: Consul's structs.CARoot rows, keyed by ID (the sha1 fingerprint
  of the root certificate), read in ID order as Consul's memdb returns them.
  Each row also keeps ``signing_key``, the root's private key PEM (Consul keeps it
  in the provider state, in Raft too): the signer uses it and no reader serves
  it. Exactly one root is active whenever there are any.
* ``ca_config``: one row, Consul's structs.CAConfiguration with its ClusterID
  (the trust domain is ``<cluster-id>.consul``).
* ``ca-leaf`` in the index table: the Raft index of the last leaf-index
  increment (Consul's CALeafOpIncrementIndex), which the leader uses as an
  issued certificate's serial number and ModifyIndex, so both are unique and
  increasing across leaders.

Writes come whole from the leader, which generated every key, certificate and
timestamp before proposing (apply does no crypto): ``ca_set_config``,
``ca_set_roots`` and ``ca_set_roots_and_config`` are check-and-set on the roots
table index and the config's ModifyIndex, as Consul's CARootSetCAS /
CACheckAndSetConfig are, and answer False when someone else got there first.

Indexes ``ca-roots``, ``ca-config``, ``ca-leaf``; watch keys ``ca-roots``, ``ca-config``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from proconsul.server.errors import StoreError
from proconsul.server.state.base import TableSchema, WriteTxn
from proconsul.server.watch import WatchChannel, WatchSet


class CARoot(NamedTuple):
    """Consul's structs.CARoot (times as Go's JSON text); ``signing_key`` is never served."""

    id: str
    name: str = ""
    serial_number: int = 0
    signing_key_id: str = ""
    external_trust_domain: str = ""
    not_before: str = ""
    not_after: str = ""
    root_cert: str = ""
    intermediate_certs: tuple[str, ...] | None = None
    signing_key: str = ""
    active: bool = False
    rotated_out_at: int = 0  # unix seconds on the leader's clock; 0 while active or never rotated out
    private_key_type: str = ""
    private_key_bits: int = 0
    create_index: int = 0
    modify_index: int = 0


class CAConfig(NamedTuple):
    """Consul's structs.CAConfiguration; ``config`` is the provider's raw Config map as the user gave it."""

    cluster_id: str
    provider: str = "consul"
    config: dict = {}
    state: dict | None = None
    force_without_cross_signing: bool = False
    create_index: int = 0
    modify_index: int = 0


class CAStore:
    """Mixed into StateStore (see base.StoreBase for the machinery)."""

    CA_SCHEMA = {
        "ca_roots": TableSchema(
            (
                ("id", "text"),
                ("name", "text"),
                ("serial_number", "u64"),
                ("signing_key_id", "text"),
                ("external_trust_domain", "text"),
                ("not_before", "text"),
                ("not_after", "text"),
                ("root_cert", "text"),
                ("intermediate_certs", "json"),
                ("signing_key", "text"),
                ("active", "bool"),
                ("rotated_out_at", "int"),
                ("private_key_type", "text"),
                ("private_key_bits", "int"),
                ("create_index", "int"),
                ("modify_index", "int"),
            )
        ),
        "ca_config": TableSchema(
            (
                ("name", "text"),
                ("cluster_id", "text"),
                ("provider", "text"),
                ("config", "json"),
                ("state", "json"),
                ("force_without_cross_signing", "bool"),
                ("create_index", "int"),
                ("modify_index", "int"),
            )
        ),
    }

    # Provided by StoreBase.
    _lock: Any
    _index: dict[str, int]
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _watch: Callable[..., None]

    def _ca_init(self) -> None:
        # Both replaced whole on every write (copy on write), so a reader may keep what it got.
        self._ca_roots: tuple[CARoot, ...] = ()
        self._ca_config: CAConfig | None = None

    def _ca_dump(self) -> dict[str, list[tuple]]:
        roots = [tuple(list(v) if isinstance(v, tuple) else v for v in r) for r in self._ca_roots]
        config = []
        if self._ca_config is not None:
            config = [("config", *self._ca_config)]
        return {"ca_roots": roots, "ca_config": config}

    def _ca_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        roots = []
        for r in tables.get("ca_roots", ()):
            row = CARoot(*r)
            certs = row.intermediate_certs
            roots.append(row._replace(intermediate_certs=tuple(certs) if certs is not None else None))
        roots.sort(key=lambda r: r.id)
        config = None
        for r in tables.get("ca_config", ()):
            config = CAConfig(*r[1:])

        def swap() -> None:
            self._ca_roots = tuple(roots)
            self._ca_config = config

        return swap

    def _ca_abandon(self) -> list[WatchChannel]:
        return []

    def _ca_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        return []

    # ------------------------------------------------------------- writes

    def _ca_config_cas_ok(self, cas: int | None) -> bool:
        if cas is None:
            return True
        current = self._ca_config.modify_index if self._ca_config is not None else 0
        return current == cas

    def _ca_set_config_txn(self, tx: WriteTxn, config: CAConfig) -> None:
        old = self._ca_config
        create = old.create_index if old is not None else tx.index
        self._ca_config = config._replace(create_index=create, modify_index=tx.index)
        tx.undo.append(lambda: setattr(self, "_ca_config", old))
        self._set_index_txn(tx, "ca-config")
        tx.watch_keys.add("ca-config")

    def _ca_set_roots_txn(self, tx: WriteTxn, roots: list[CARoot]) -> None:
        ids = set()
        for r in roots:
            if not r.id:
                raise StoreError("Missing CA Root ID")
            if r.id in ids:
                raise StoreError(f"duplicate CA root ID {r.id}")
            ids.add(r.id)
        if roots and sum(1 for r in roots if r.active) != 1:
            raise StoreError("there must be exactly one active CA")
        old = self._ca_roots
        created = {r.id: r.create_index for r in old}
        rows = [r._replace(create_index=created.get(r.id, tx.index), modify_index=tx.index) for r in roots]
        self._ca_roots = tuple(sorted(rows, key=lambda r: r.id))
        tx.undo.append(lambda: setattr(self, "_ca_roots", old))
        self._set_index_txn(tx, "ca-roots")
        tx.watch_keys.add("ca-roots")

    def ca_set_config(self, index: int, config: CAConfig, cas: int | None = None) -> bool:
        """Replace the CA configuration; with ``cas``, only if its ModifyIndex is still that (0: none yet)."""

        def body(tx: WriteTxn) -> bool:
            if not self._ca_config_cas_ok(cas):
                return False
            self._ca_set_config_txn(tx, config)
            return True

        return self._write(index, body)

    def ca_set_roots(self, index: int, cas: int, roots: list[CARoot]) -> bool:
        """Replace every root, if the roots table index is still ``cas`` (Consul's CARootSetCAS)."""

        def body(tx: WriteTxn) -> bool:
            if self._max_index("ca-roots") != cas:
                return False
            self._ca_set_roots_txn(tx, roots)
            return True

        return self._write(index, body)

    def ca_set_roots_and_config(self, index: int, cas: int, roots: list[CARoot], config: CAConfig, config_cas: int | None) -> bool:
        """Roots and config in one write (Consul's CAOpSetRootsAndConfig): a bootstrap or a rotation."""

        def body(tx: WriteTxn) -> bool:
            if self._max_index("ca-roots") != cas or not self._ca_config_cas_ok(config_cas):
                return False
            self._ca_set_config_txn(tx, config)
            self._ca_set_roots_txn(tx, roots)
            return True

        return self._write(index, body)

    def ca_increment_leaf_index(self, index: int) -> int:
        """Consul's CALeafOpIncrementIndex: moves ``ca-leaf`` to this entry's index and returns it."""

        def body(tx: WriteTxn) -> int:
            self._set_index_txn(tx, "ca-leaf")
            return tx.index

        return self._write(index, body)

    # ------------------------------------------------------------- reads

    def ca_roots(self, ws: WatchSet | None = None) -> tuple[int, tuple[CARoot, ...]]:
        """Every trusted root in ID order, with the roots index."""
        with self._lock:
            self._watch(ws, "ca-roots")
            return self._max_index("ca-roots") or 1, self._ca_roots

    def ca_config(self, ws: WatchSet | None = None) -> tuple[int, CAConfig | None]:
        """The CA configuration (None before the first leader bootstrapped the CA)."""
        with self._lock:
            self._watch(ws, "ca-config")
            return self._max_index("ca-config") or 1, self._ca_config

    def ca_roots_and_config(self, ws: WatchSet | None = None) -> tuple[int, tuple[CARoot, ...], CAConfig | None]:
        """Roots and config read together (Consul's CARootsAndConfig); the index is the roots table's."""
        with self._lock:
            self._watch(ws, "ca-roots", "ca-config")
            return self._max_index("ca-roots") or 1, self._ca_roots, self._ca_config

    def ca_active_root(self) -> CARoot | None:
        """The root that signs leaves now."""
        with self._lock:
            for r in self._ca_roots:
                if r.active:
                    return r
            return None

    def ca_roots_index(self) -> int:
        """The roots table's index as a CAS value (0 before the first root)."""
        with self._lock:
            return self._max_index("ca-roots")
