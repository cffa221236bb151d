"""The config-entries part of the state store: Consul's config entries, and intentions read from them.

* One table keyed by (kind, lowercased name), as Consul's memdb ``id`` index
  lowercases both: writing ``Web`` replaces ``web``. Rows hold the normalized
  entry in Consul's JSON shape (``proconsul.server.config_entries``).
* Writes run Consul's ensureConfigEntryTxn: CAS (``cas`` 0 means create only),
  CreateIndex kept across updates, service-intentions' UpdateOver (legacy IDs
  cannot be set or changed, LegacyCreateTime survives updates), and the graph
  check that L7 permissions only target http/http2/grpc services — re-run when
  service-defaults or proxy-defaults change, so a protocol cannot be switched
  out from under them.
* Intentions are the sources of ``service-intentions`` entries
  (Consul's ``state/intention.go`` and ``config_entry_intention.go``). The
  intention mutations (legacy create/update/delete by ID, upsert/delete by
  name) rebuild the destination's entry and re-normalize and re-validate it
  inside the same write, so a bad or duplicate intention fails whole.

Index ``config_entries``. Watch keys: ``config:<kind>`` (any entry of a kind)
and ``config:<kind>:<lowercased name>``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from proconsul.server import config_entries as ce
from proconsul.server import intentions as ixns
from proconsul.server.errors import NotFound, StoreError
from proconsul.server.state.base import TableSchema, WriteTxn
from proconsul.server.watch import WatchChannel, WatchSet

Key = tuple[str, str]
TABLE = "config_entries"


class ConfigEntry(NamedTuple):
    """One config entry: ``entry`` is its normalized JSON shape without the Raft indexes."""

    kind: str
    key: str
    entry: dict
    create_index: int = 0
    modify_index: int = 0

    def json(self) -> dict[str, Any]:
        """The entry as /v1/config returns it."""
        return {**self.entry, "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}


def update_over(new: dict[str, Any], prev: dict[str, Any]) -> dict[str, Any]:
    """ServiceIntentionsConfigEntry.UpdateOver: legacy IDs keep their sources; LegacyCreateTime carries over."""
    by_name = {s["Name"]: s for s in prev.get("Sources") or []}
    by_id = {s["LegacyID"]: s for s in prev.get("Sources") or [] if s.get("LegacyID")}
    sources = []
    for i, src in enumerate(new.get("Sources") or []):
        lid = src.get("LegacyID")
        if lid:
            before = by_name.get(src["Name"])
            if before is not None:
                if not before.get("LegacyID"):
                    raise StoreError(f"Sources[{i}].LegacyID: cannot set this field")
                if before["LegacyID"] != lid:
                    raise StoreError(f"Sources[{i}].LegacyID: cannot set this field to a different value")
            prior = by_id.get(lid)
            if prior is not None and prior.get("LegacyCreateTime"):
                src = {**src, "LegacyCreateTime": prior["LegacyCreateTime"]}
        sources.append(src)
    return {**new, "Sources": sources}


class ConfigEntriesStore:
    """Mixed into StateStore (see base.StoreBase for the machinery)."""

    CONFIG_ENTRIES_SCHEMA = {
        TABLE: TableSchema(
            (("kind", "text"), ("key", "text"), ("entry", "json"), ("create_index", "int"), ("modify_index", "int")),
            pk=2,
        )
    }

    # Provided by StoreBase.
    _lock: Any
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _watch: Callable[..., None]

    def _config_entries_init(self) -> None:
        self._config_entries: dict[Key, ConfigEntry] = {}
        self._build_config_indexes()

    def _build_config_indexes(self) -> None:
        # Legacy intention ID (lowercased) -> entry key; source name -> keys of the entries naming it.
        self._ixn_legacy_ids: dict[str, Key] = {}
        self._ixn_sources: dict[str, frozenset[Key]] = {}
        for key, row in self._config_entries.items():
            self._index_row(key, row, add=True)

    def _index_row(self, key: Key, row: ConfigEntry, add: bool) -> None:
        if row.kind != ce.SERVICE_INTENTIONS:
            return
        for src in row.entry.get("Sources") or []:
            if src.get("LegacyID"):
                if add:
                    self._ixn_legacy_ids[src["LegacyID"].lower()] = key
                else:
                    self._ixn_legacy_ids.pop(src["LegacyID"].lower(), None)
            name = src["Name"]
            keys = self._ixn_sources.get(name, frozenset())
            keys = keys | {key} if add else keys - {key}
            if keys:
                self._ixn_sources[name] = keys
            else:
                self._ixn_sources.pop(name, None)

    def _config_entries_dump(self) -> dict[str, list[tuple]]:
        return {TABLE: [(r.kind, r.key, r.entry, r.create_index, r.modify_index) for _, r in sorted(self._config_entries.items())]}

    def _config_entries_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        rows = {(r[0], r[1]): ConfigEntry(*r) for r in tables.get(TABLE, ())}

        def swap() -> None:
            self._config_entries = rows
            self._build_config_indexes()

        return swap

    def _config_entries_abandon(self) -> list[WatchChannel]:
        return []

    def _config_entries_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        return []

    # ------------------------------------------------------------- write helpers

    def _replace_entry(self, key: Key, old: ConfigEntry | None, new: ConfigEntry | None) -> None:
        if old is not None:
            self._index_row(key, old, add=False)
            del self._config_entries[key]
        if new is not None:
            self._config_entries[key] = new
            self._index_row(key, new, add=True)

    def _replace_entry_txn(self, tx: WriteTxn, key: Key, new: ConfigEntry | None) -> None:
        old = self._config_entries.get(key)
        self._replace_entry(key, old, new)
        tx.undo.append(lambda: self._replace_entry(key, new, old))
        self._set_index_txn(tx, TABLE)
        tx.watch_keys.update((f"config:{key[0]}", f"config:{key[0]}:{key[1]}"))

    def _entry(self, kind: str, name: str) -> ConfigEntry | None:
        return self._config_entries.get((kind, name.lower()))

    def _check_graph(self, kind: str, name: str, new: dict[str, Any] | None) -> None:
        """validateProposedConfigEntryInServiceGraph, for what our kinds affect: L7 permissions need an HTTP-like protocol."""
        if kind == ce.SERVICE_INTENTIONS:
            if new is None:
                return
            check = [new]
        else:
            check = [r.entry for (k, _), r in sorted(self._config_entries.items()) if k == ce.SERVICE_INTENTIONS]
        override = (kind, name.lower())

        def lookup(k: str, n: str) -> dict[str, Any] | None:
            if (k, n.lower()) == override:
                return new
            row = self._entry(k, n)
            return row.entry if row is not None else None

        for e in check:
            if e["Name"] == ce.WILDCARD or not ce.has_permissions(e):
                continue
            proto = ce.protocol_of(lookup(ce.SERVICE_DEFAULTS, e["Name"]), lookup(ce.PROXY_DEFAULTS, ce.PROXY_CONFIG_GLOBAL))
            if proto not in ce.HTTP_LIKE:
                raise StoreError(f'service "{e["Name"]}" has protocol "{proto}", which is incompatible with L7 intentions permissions')

    def config_entry_ensure_txn(self, tx: WriteTxn, entry: dict[str, Any], cas: int | None = None) -> bool:
        """Consul's ensureConfigEntryTxn / EnsureConfigEntryCAS for a normalized, validated entry."""
        kind, name = entry["Kind"], entry["Name"]
        key = (kind, name.lower())
        existing = self._config_entries.get(key)
        if cas is not None:
            if cas == 0 and existing is not None:
                return False
            if cas != 0 and (existing is None or existing.modify_index != cas):
                return False
        if existing is not None and kind == ce.SERVICE_INTENTIONS:
            entry = update_over(entry, existing.entry)
        self._check_graph(kind, name, entry)
        create = existing.create_index if existing is not None else tx.index
        self._replace_entry_txn(tx, key, ConfigEntry(kind, key[1], entry, create, tx.index))
        return True

    def config_entry_delete_txn(self, tx: WriteTxn, kind: str, name: str, cas: int | None = None) -> bool:
        """Consul's deleteConfigEntryTxn / DeleteConfigEntryCAS; deleting a missing entry is a no-op."""
        key = (kind, name.lower())
        existing = self._config_entries.get(key)
        if cas is not None and (existing is None or existing.modify_index != cas):
            return False
        if existing is None:
            return True
        self._check_graph(kind, name, None)
        self._replace_entry_txn(tx, key, None)
        return True

    # ------------------------------------------------------------- writes

    def config_entry_set(self, index: int, entry: dict[str, Any], cas: int | None = None) -> bool:
        """Upsert (or CAS) one normalized entry; re-validated here so a replayed log cannot store a bad one."""
        entry = ce.prepare(entry)
        return self._write(index, lambda tx: self.config_entry_ensure_txn(tx, entry, cas))

    def config_entry_delete(self, index: int, kind: str, name: str, cas: int | None = None) -> bool:
        """Delete one entry (or CAS on its ModifyIndex)."""
        return self._write(index, lambda tx: self.config_entry_delete_txn(tx, kind, name, cas))

    def intention_mutation(self, index: int, op: str, legacy_id: str, destination: str, source: str, value: dict[str, Any]) -> None:
        """Consul's IntentionMutation: rebuild the destination's service-intentions entry and write it (or delete it)."""

        def body(tx: WriteTxn) -> None:
            kind_name, entry = self._intention_change(op, legacy_id, destination, source, value)
            if kind_name is None:
                return
            if entry is None:
                self.config_entry_delete_txn(tx, ce.SERVICE_INTENTIONS, kind_name)
            else:
                self.config_entry_ensure_txn(tx, entry)

        self._write(index, body)

    def intention_mutation_check(self, op: str, legacy_id: str, destination: str, source: str, value: dict[str, Any]) -> None:
        """Run a mutation's checks without writing (the leader's pre-flight, so bad writes never reach the log)."""
        with self._lock:
            kind_name, entry = self._intention_change(op, legacy_id, destination, source, value)
            if kind_name is None:
                return
            key = (ce.SERVICE_INTENTIONS, kind_name.lower())
            existing = self._config_entries.get(key)
            if entry is None:
                self._check_graph(ce.SERVICE_INTENTIONS, kind_name, None)
                return
            if existing is not None:
                entry = update_over(entry, existing.entry)
            self._check_graph(ce.SERVICE_INTENTIONS, kind_name, entry)

    def _legacy_entry(self, legacy_id: str, missing: str) -> ConfigEntry:
        key = self._ixn_legacy_ids.get(legacy_id.lower())
        row = self._config_entries.get(key) if key is not None else None
        if row is None:
            raise NotFound(missing)
        if not all(s.get("LegacyID") for s in row.entry.get("Sources") or []):
            raise StoreError(
                f'cannot use legacy intention API to edit intentions with a destination of "{row.entry["Name"]}" '
                "after editing them via a service-intentions config entry"
            )
        return row

    def _intention_change(self, op: str, legacy_id: str, destination: str, source: str, value: dict[str, Any]) -> tuple[str | None, dict | None]:
        """The entry a mutation produces: (destination name, new entry or None to delete it); (None, None) for a no-op."""
        kind = ce.SERVICE_INTENTIONS
        if op == "create":
            row = self._entry(kind, destination)
            if row is None:
                entry = {"Kind": kind, "Name": destination, "Sources": [value]}
            else:
                if not all(s.get("LegacyID") for s in row.entry.get("Sources") or []):
                    raise StoreError(
                        f'cannot use legacy intention API to edit intentions with a destination of "{row.entry["Name"]}" '
                        "after editing them via a service-intentions config entry"
                    )
                entry = {**row.entry, "Sources": [*row.entry["Sources"], value]}
            return entry["Name"], ce.prepare(entry, legacy=True)
        if op == "update":
            row = self._legacy_entry(legacy_id, f"Cannot modify non-existent intention: '{legacy_id}'")
            sources = [value if s.get("LegacyID") == legacy_id else s for s in row.entry["Sources"]]
            return row.entry["Name"], ce.prepare({**row.entry, "Sources": sources}, legacy=True)
        if op == "upsert":
            row = self._entry(kind, destination)
            if row is None:
                entry = {"Kind": kind, "Name": destination, "Sources": [value]}
            else:
                sources = list(row.entry["Sources"])
                for i, s in enumerate(sources):
                    if s["Name"] == source:
                        sources[i] = value
                        break
                else:
                    sources.append(value)
                entry = {**row.entry, "Sources": sources}
            return entry["Name"], ce.prepare(entry)
        if op == "delete" and legacy_id:
            row = self._legacy_entry(legacy_id, f"Cannot delete non-existent intention: '{legacy_id}'")
            sources = [s for s in row.entry["Sources"] if s.get("LegacyID") != legacy_id]
            if not sources:
                return row.entry["Name"], None
            return row.entry["Name"], ce.prepare({**row.entry, "Sources": sources}, legacy=True)
        if op == "delete":
            row = self._entry(kind, destination)
            if row is None:
                return None, None
            sources = [s for s in row.entry["Sources"] if s["Name"] != source]
            if len(sources) == len(row.entry["Sources"]):
                return None, None
            if not sources:
                return row.entry["Name"], None
            return row.entry["Name"], ce.prepare({**row.entry, "Sources": sources})
        raise StoreError(f"Invalid Intention mutation operation '{op}'")

    # ------------------------------------------------------------- reads

    def config_entry_get(self, kind: str, name: str, ws: WatchSet | None = None) -> tuple[int, ConfigEntry | None]:
        """One entry (Consul's ConfigEntry), with the table's index."""
        with self._lock:
            self._watch(ws, f"config:{kind}:{name.lower()}")
            return self._max_index(TABLE) or 1, self._entry(kind, name)

    def config_entry_list(self, kind: str, ws: WatchSet | None = None) -> tuple[int, list[ConfigEntry]]:
        """Every entry of a kind, by lowercased name (Consul's ConfigEntriesByKind)."""
        with self._lock:
            self._watch(ws, f"config:{kind}")
            return self._max_index(TABLE) or 1, [r for (k, _), r in sorted(self._config_entries.items()) if k == kind]

    def service_protocol(self, service: str) -> str:
        """The protocol a service's discovery chain would compile to (service-defaults, proxy-defaults, tcp)."""
        with self._lock:
            sd = self._entry(ce.SERVICE_DEFAULTS, service)
            pd = self._entry(ce.PROXY_DEFAULTS, ce.PROXY_CONFIG_GLOBAL)
            return ce.protocol_of(sd.entry if sd else None, pd.entry if pd else None)

    def _intentions_of(self, row: ConfigEntry, names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        return [
            ixns.intention_json(row.entry, s, row.create_index, row.modify_index)
            for s in row.entry.get("Sources") or []
            if names is None or s["Name"] in names
        ]

    def intention_list(self, ws: WatchSet | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Every intention, highest precedence first (Consul's configIntentionsListTxn)."""
        with self._lock:
            self._watch(ws, f"config:{ce.SERVICE_INTENTIONS}")
            out = [i for (k, _), r in self._config_entries.items() if k == ce.SERVICE_INTENTIONS for i in self._intentions_of(r)]
            return self._max_index(TABLE) or 1, sorted(out, key=ixns.sort_key)

    def intention_get(self, legacy_id: str, ws: WatchSet | None = None) -> tuple[int, dict[str, Any] | None]:
        """An intention by its legacy ID (Consul's configIntentionGetTxn)."""
        with self._lock:
            self._watch(ws, f"config:{ce.SERVICE_INTENTIONS}")
            index = self._max_index(TABLE) or 1
            key = self._ixn_legacy_ids.get(legacy_id.lower())
            row = self._config_entries.get(key) if key is not None else None
            if row is None:
                return index, None
            for s in row.entry["Sources"]:
                if s.get("LegacyID", "").lower() == legacy_id.lower():
                    return index, ixns.intention_json(row.entry, s, row.create_index, row.modify_index)
            return index, None

    def intention_get_exact(self, source: str, destination: str, ws: WatchSet | None = None) -> tuple[int, dict[str, Any] | None]:
        """The intention from ``source`` to ``destination`` (Consul's configIntentionGetExactTxn)."""
        with self._lock:
            self._watch(ws, f"config:{ce.SERVICE_INTENTIONS}:{destination.lower()}")
            index = self._max_index(TABLE) or 1
            row = self._entry(ce.SERVICE_INTENTIONS, destination)
            found = self._intentions_of(row, (source,)) if row is not None else []
            return index, found[0] if found else None

    def intention_match_one(self, match_type: str, name: str, ws: WatchSet | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Intentions whose source (or destination) is ``name`` or ``*``, highest precedence first (configIntentionMatchOneTxn)."""
        with self._lock:
            return self._match_one_locked(match_type, name, ws)

    def _match_one_locked(self, match_type: str, name: str, ws: WatchSet | None) -> tuple[int, list[dict[str, Any]]]:
        kind = ce.SERVICE_INTENTIONS
        names = (ce.WILDCARD,) if name == ce.WILDCARD else (name, ce.WILDCARD)
        out: list[dict[str, Any]] = []
        if match_type == "destination":
            for n in names:
                self._watch(ws, f"config:{kind}:{n.lower()}")
                row = self._entry(kind, n)
                if row is not None:
                    out += self._intentions_of(row)
        elif match_type == "source":
            self._watch(ws, f"config:{kind}")
            keys = set().union(*(self._ixn_sources.get(n, frozenset()) for n in names))
            for key in sorted(keys):
                out += self._intentions_of(self._config_entries[key], names)
        else:
            raise StoreError(f"invalid intention match type: {match_type}")
        return self._max_index(TABLE) or 1, sorted(out, key=ixns.sort_key)

    def intention_match(self, match_type: str, names: list[str], ws: WatchSet | None = None) -> tuple[int, list[list[dict[str, Any]]]]:
        """IntentionMatch: one precedence-ordered list per name, in the order asked."""
        with self._lock:
            results = [self._match_one_locked(match_type, n, ws)[1] for n in names]
            return self._max_index(TABLE) or 1, results
