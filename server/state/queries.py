"""The prepared-queries part of the state store: Consul's prepared queries and query templates.

* A query is keyed by its UUID, made by the leader before proposing. Names are
  unique case-insensitively (Consul's memdb ``name`` index lowercases), a name
  may not be another query's ID, and only one template may have the empty name.
* A template (``Template.Type`` set) is compiled inside the write, as Consul's
  preparedQuerySetTxn does: a bad type, regexp or interpolation fails the whole
  write. Compiled templates live beside the rows (rebuilt on load), so resolving
  a name renders without recompiling. Rendering is pure (no clock, no I/O).
* A query bound to a session is deleted in the same transaction that
  invalidates the session (Consul's deleteSessionTxn), through
  ``query_delete_session_txn``.
* Resolution for execute and explain (Consul's PreparedQueryResolve): an exact
  ID (templates may not be run by ID), then an exact name, then the template
  with the longest name prefix; templates are rendered for the name asked for.

Index ``queries``; watch keys ``queries`` (the list) and ``query:<id>`` (one query).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from proconsul.server.errors import StoreError
from proconsul.server.state.base import MISSING, TableSchema, WriteTxn, restore_slot
from proconsul.server.watch import WatchChannel, WatchSet

_EMPTY: dict = {}
TEMPLATE_TYPE = "name_prefix_match"  # Consul's structs.QueryTemplateTypeNamePrefixMatch
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_uuid(text: str) -> bool:
    """Consul's isUUID: the 36-character hex form, any case."""
    return len(text) == 36 and _UUID.match(text) is not None


class PreparedQuery(NamedTuple):
    """Consul's structs.PreparedQuery; ``template``, ``service`` and ``dns`` are in Consul's JSON shape."""

    id: str
    name: str = ""
    session: str = ""
    token: str = ""
    template: dict = _EMPTY  # {"Type", "Regexp", "RemoveEmptyTags"}
    service: dict = _EMPTY  # structs.ServiceQuery: {"Service", "Failover", "OnlyPassing", "Tags", ...}
    dns: dict = _EMPTY  # {"TTL"}
    create_index: int = 0
    modify_index: int = 0

    @property
    def is_template(self) -> bool:
        """Consul's prepared_query.IsTemplate."""
        return bool(self.template.get("Type"))


# ---------------------------------------------------------------- templates (Consul's prepared_query package)


class _TemplateError(Exception):
    pass


class _Expr(NamedTuple):
    """One HIL expression: ``var`` (a name), ``int``/``str`` (a literal) or ``call`` (name and args)."""

    kind: str
    value: Any
    args: tuple = ()
    pos: str = ""


def _hil_parse(text: str) -> list:
    """Parse a HIL template ("web-${match(1)}", "$${" escapes "${") into literal strings and expressions."""
    parts: list = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            buf.append("${")
            i += 3
        elif text.startswith("${", i):
            if buf:
                parts.append("".join(buf))
                buf = []
            expr, i = _hil_expr(text, i + 2)
            i = _skip_ws(text, i)
            if i >= len(text) or text[i] != "}":
                raise _TemplateError(f"parse error at 1:{i + 1}: expected \"}}\"")
            parts.append(expr)
            i += 1
        else:
            buf.append(text[i])
            i += 1
    if buf:
        parts.append("".join(buf))
    return parts


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT = re.compile(r"[A-Za-z0-9_.\-*]+")
_INT = re.compile(r"-?[0-9]+")


def _hil_expr(text: str, i: int) -> tuple[_Expr, int]:
    i = _skip_ws(text, i)
    pos = f"1:{i + 1}"
    if i >= len(text) or text[i] == "}":
        raise _TemplateError(f"parse error at {pos}: expected expression")
    m = _INT.match(text, i)
    if m:
        if m.end() < len(text) and text[m.end()] == ".":
            raise _TemplateError(f"parse error at {pos}: only integer literals are supported")
        return _Expr("int", int(m.group()), pos=pos), m.end()
    if text[i] == '"':
        out: list[str] = []
        j = i + 1
        while j < len(text) and text[j] != '"':
            if text[j] == "\\" and j + 1 < len(text):
                j += 1
            out.append(text[j])
            j += 1
        if j >= len(text):
            raise _TemplateError(f"parse error at {pos}: unterminated string literal")
        return _Expr("str", "".join(out), pos=pos), j + 1
    if not _IDENT_START.match(text, i):
        raise _TemplateError(f"parse error at {pos}: invalid character {text[i]!r}")
    m = _IDENT.match(text, i)
    assert m is not None
    name, j = m.group(), _skip_ws(text, m.end())
    if j < len(text) and text[j] == "(":
        args: list[_Expr] = []
        j = _skip_ws(text, j + 1)
        if j < len(text) and text[j] == ")":
            return _Expr("call", name, tuple(args), pos), j + 1
        while True:
            arg, j = _hil_expr(text, j)
            args.append(arg)
            j = _skip_ws(text, j)
            if j < len(text) and text[j] == ",":
                j += 1
                continue
            if j < len(text) and text[j] == ")":
                return _Expr("call", name, tuple(args), pos), j + 1
            raise _TemplateError(f"parse error at 1:{j + 1}: expected \")\" or \",\"")
    return _Expr("var", name, pos=pos), m.end()


def _hil_eval(expr: _Expr, variables: dict[str, str], matches: list[str]) -> Any:
    if expr.kind in ("int", "str"):
        return expr.value
    if expr.kind == "var":
        if expr.value not in variables:
            raise _TemplateError(f"{expr.pos}: unknown variable accessed: {expr.value}")
        return variables[expr.value]
    if expr.value != "match":
        raise _TemplateError(f"{expr.pos}: unknown function called: {expr.value}")
    if len(expr.args) != 1:
        raise _TemplateError(f"{expr.pos}: match: expected 1 arguments, got {len(expr.args)}")
    arg = _hil_eval(expr.args[0], variables, matches)
    if isinstance(arg, str):
        try:
            arg = int(arg)  # HIL converts a numeric string to the int match() takes
        except ValueError:
            raise _TemplateError(f"{expr.pos}: match: argument 1 should be int, got string") from None
    # Consul's match() never fails at run time: out of range is "".
    return matches[arg] if 0 <= arg < len(matches) else ""


def _walk(service: dict, fn: Callable[[str, str], str]) -> dict:
    """Apply ``fn(path, value)`` to every string of a ServiceQuery, as Consul's walk visits its struct fields."""

    def strings(values: Any, path: str) -> Any:
        return None if values is None else [fn(f"{path}[{i}]", v) for i, v in enumerate(values)]

    out = dict(service)
    out["Service"] = fn(".Service", service.get("Service", ""))
    out["SamenessGroup"] = fn(".SamenessGroup", service.get("SamenessGroup", ""))
    failover = dict(service.get("Failover") or {})
    failover["Datacenters"] = strings(failover.get("Datacenters"), ".Failover.Datacenters")
    if failover.get("Targets") is not None:
        failover["Targets"] = [
            {k: fn(f".Failover.Targets[{i}].{k}", t.get(k, "")) for k in ("Peer", "Datacenter")}
            for i, t in enumerate(failover["Targets"])
        ]
    out["Failover"] = failover
    out["IgnoreCheckIDs"] = strings(service.get("IgnoreCheckIDs"), ".IgnoreCheckIDs")
    out["Near"] = fn(".Near", service.get("Near", ""))
    out["Tags"] = strings(service.get("Tags"), ".Tags")
    for key in ("NodeMeta", "ServiceMeta"):
        meta = service.get(key)
        out[key] = None if meta is None else {k: fn(f".{key}[{k}]", v) for k, v in meta.items()}
    out["Peer"] = fn(".Peer", service.get("Peer", ""))
    return out


def _go_regexp_error(pattern: str, err: re.error) -> str:
    """Python's regexp error in the words of Go's regexp/syntax, where they map."""
    msg, pos = err.msg, err.pos if err.pos is not None else 0
    if msg.startswith("missing ), unterminated subpattern"):
        return f"error parsing regexp: missing closing ): `{pattern}`"
    if msg.startswith("unbalanced parenthesis"):
        return f"error parsing regexp: unexpected ): `{pattern}`"
    if msg.startswith("unterminated character set"):
        return f"error parsing regexp: missing closing ]: `{pattern[pos:]}`"
    if msg.startswith("nothing to repeat"):
        return f"error parsing regexp: missing argument to repetition operator: `{pattern[pos:pos + 1]}`"
    if msg.startswith("multiple repeat"):
        return f"error parsing regexp: invalid nested repetition operator: `{pattern[max(pos - 1, 0):pos + 1]}`"
    return f"error parsing regexp: {msg}: `{pattern}`"


_PERL_ONLY = re.compile(r"\(\?(?:=|!|<=|<!)|\\[1-9]")


def _compile_regexp(pattern: str) -> re.Pattern:
    """Compile a template's Regexp, refusing what Go's RE2 refuses (lookaround, backreferences)."""
    m = _PERL_ONLY.search(pattern)
    if m:
        what = "invalid escape sequence" if m.group().startswith("\\") else "invalid or unsupported Perl syntax"
        raise _TemplateError(f"Bad Regexp: error parsing regexp: {what}: `{m.group()}`")
    try:
        return re.compile(pattern)
    except re.error as err:
        raise _TemplateError(f"Bad Regexp: {_go_regexp_error(pattern, err)}") from None


@dataclass(frozen=True)
class CompiledTemplate:
    """Consul's prepared_query.CompiledTemplate: parsed interpolations per string, the regexp, the tag rule."""

    query: PreparedQuery
    trees: dict
    regexp: re.Pattern | None
    remove_empty_tags: bool

    def render(self, name: str, segment: str = "") -> PreparedQuery:
        """The query as it runs for ``name`` (Consul's CompiledTemplate.Render); raises StoreError."""
        matches: list[str] = []
        if self.regexp is not None:
            m = self.regexp.search(name)
            if m is not None:
                matches = [m.group(0), *(g or "" for g in m.groups())]
        prefix = self.query.name
        variables = {
            "name.full": name,
            "name.prefix": prefix,
            "name.suffix": name[len(prefix):] if name.startswith(prefix) else name,
            "agent.segment": segment,
        }

        def evaluate(path: str, value: str) -> str:
            parts = self.trees.get(path)
            if parts is None:
                return value
            try:
                values = [p if isinstance(p, str) else _hil_eval(p, variables, matches) for p in parts]
            except _TemplateError as err:
                raise StoreError(f"Bad evaluation for '{value}' in Service{path}: {err}") from None
            if len(values) == 1 and isinstance(values[0], int):
                raise StoreError(f"Expected Service{path} field to be a string, got TypeInt")
            return "".join(str(v) for v in values)

        service = _walk(self.query.service, evaluate)
        if self.remove_empty_tags:
            service["Tags"] = [t for t in service.get("Tags") or () if t]
        return self.query._replace(service=service)


def compile_template(query: PreparedQuery) -> CompiledTemplate:
    """Validate and compile a template (Consul's prepared_query.Compile), with a test render of its own name."""
    kind = query.template.get("Type", "")
    if kind != TEMPLATE_TYPE:
        raise StoreError(f"Bad Template.Type '{kind}'")
    trees: dict[str, list] = {}

    def parse(path: str, value: str) -> str:
        try:
            trees[path] = _hil_parse(value)
        except _TemplateError as err:
            raise StoreError(f"Bad format '{value}' in Service{path}: {err}") from None
        return value

    _walk(query.service, parse)
    regexp = None
    if query.template.get("Regexp"):
        try:
            regexp = _compile_regexp(query.template["Regexp"])
        except _TemplateError as err:
            raise StoreError(str(err)) from None
    ct = CompiledTemplate(query, trees, regexp, bool(query.template.get("RemoveEmptyTags")))
    ct.render(query.name)
    return ct


# ---------------------------------------------------------------- the store part


def _put(tx: WriteTxn, table: dict, key: Any, value: Any) -> None:
    old = table.get(key, MISSING)
    table[key] = value
    tx.undo.append(lambda: restore_slot(table, key, old))


def _pop(tx: WriteTxn, table: dict, key: Any) -> None:
    old = table.pop(key, MISSING)
    if old is not MISSING:
        tx.undo.append(lambda: restore_slot(table, key, old))


def _set_add(tx: WriteTxn, mapping: dict, key: str, member: str) -> None:
    members = mapping.get(key)
    if members is not None and member in members:
        return
    _put(tx, mapping, key, (members or frozenset()) | {member})


def _set_remove(tx: WriteTxn, mapping: dict, key: str, member: str) -> None:
    members = mapping.get(key)
    if members is None or member not in members:
        return
    rest = members - {member}
    if rest:
        _put(tx, mapping, key, rest)
    else:
        _pop(tx, mapping, key)


class QueriesStore:
    """Consul's prepared-query table; mixed into StateStore (see base.StoreBase for the machinery)."""

    QUERIES_SCHEMA = {
        "queries": TableSchema(
            (
                ("id", "text"),
                ("name", "text"),
                ("session", "text"),
                ("token", "text"),
                ("template", "json"),
                ("service", "json"),
                ("dns", "json"),
                ("create_index", "int"),
                ("modify_index", "int"),
            )
        )
    }

    # Provided by StoreBase and the other parts.
    _lock: Any
    _sessions: dict
    _max_index: Callable[..., int]
    _set_index_txn: Callable[[WriteTxn, str], None]
    _write: Callable[..., Any]
    _watch: Callable[..., None]

    def _queries_init(self) -> None:
        self._queries: dict[str, PreparedQuery] = {}
        self._build_query_indexes()

    def _build_query_indexes(self) -> None:
        # Lowercased name -> id; lowercased template name -> id; session -> ids; id -> compiled template.
        self._query_names: dict[str, str] = {}
        self._query_templates: dict[str, str] = {}
        self._query_sessions: dict[str, frozenset[str]] = {}
        self._query_compiled: dict[str, CompiledTemplate] = {}
        for qid, q in self._queries.items():
            if q.name:
                self._query_names[q.name.lower()] = qid
            if q.session:
                self._query_sessions[q.session] = self._query_sessions.get(q.session, frozenset()) | {qid}
            if q.is_template:
                self._query_templates[q.name.lower()] = qid
                self._query_compiled[qid] = compile_template(q)

    def _queries_dump(self) -> dict[str, list[tuple]]:
        return {"queries": [tuple(q) for _, q in sorted(self._queries.items())]}

    def _queries_load(self, tables: dict[str, list[tuple]]) -> Callable[[], None]:
        queries = {}
        for r in tables.get("queries", ()):
            row = PreparedQuery(*r)
            queries[row.id.lower()] = row

        def swap() -> None:
            self._queries = queries
            self._build_query_indexes()

        return swap

    def _queries_abandon(self) -> list[WatchChannel]:
        return []

    def _queries_fired(self, tx: WriteTxn) -> list[WatchChannel]:
        return []

    # ------------------------------------------------------------- writes

    def query_set(self, index: int, query: PreparedQuery) -> None:
        """Create or replace a prepared query (Consul's PreparedQuerySet)."""
        self._write(index, lambda tx: self.query_set_txn(tx, query))

    def query_set_txn(self, tx: WriteTxn, query: PreparedQuery) -> None:
        """Consul's preparedQuerySetTxn: name and ID aliasing, the session, the template compile, then the row."""
        if not query.id:
            raise StoreError("Missing query ID")
        key = query.id.lower()
        existing = self._queries.get(key)
        lname = query.name.lower()
        if query.name:
            other = self._query_names.get(lname)
            if other is not None and other != key:
                raise StoreError(f"name '{query.name}' aliases an existing query name")
        elif query.is_template:
            other = self._query_templates.get("")
            if other is not None and other != key:
                raise StoreError("a query template with an empty name already exists")
        if is_uuid(query.name) and query.name.lower() in self._queries:
            raise StoreError(f"name '{query.name}' aliases an existing query ID")
        if query.session and query.session not in self._sessions:
            raise StoreError(f'invalid session "{query.session}"')
        row = query._replace(
            id=key,
            create_index=existing.create_index if existing is not None else tx.index,
            modify_index=tx.index,
        )
        compiled = None
        if row.is_template:
            try:
                compiled = compile_template(row)
            except StoreError as err:
                raise StoreError(f"failed compiling template: {err}") from None
        if existing is not None:
            self._unindex_query_txn(tx, existing)
        _put(tx, self._queries, key, row)
        if row.name:
            _put(tx, self._query_names, lname, key)
        if row.session:
            _set_add(tx, self._query_sessions, row.session, key)
        if compiled is not None:
            _put(tx, self._query_templates, lname, key)
            _put(tx, self._query_compiled, key, compiled)
        self._set_index_txn(tx, "queries")
        tx.watch_keys.update(("queries", f"query:{key}"))

    def _unindex_query_txn(self, tx: WriteTxn, q: PreparedQuery) -> None:
        if q.name:
            _pop(tx, self._query_names, q.name.lower())
        if q.session:
            _set_remove(tx, self._query_sessions, q.session, q.id)
        if q.is_template:
            _pop(tx, self._query_templates, q.name.lower())
            _pop(tx, self._query_compiled, q.id)

    def query_delete(self, index: int, query_id: str) -> None:
        """Delete a prepared query; a missing one is a no-op (Consul's PreparedQueryDelete)."""
        self._write(index, lambda tx: self.query_delete_txn(tx, query_id))

    def query_delete_txn(self, tx: WriteTxn, query_id: str) -> None:
        """Consul's preparedQueryDeleteTxn."""
        key = query_id.lower()
        existing = self._queries.get(key)
        if existing is None:
            return
        self._unindex_query_txn(tx, existing)
        _pop(tx, self._queries, key)
        self._set_index_txn(tx, "queries")
        tx.watch_keys.update(("queries", f"query:{key}"))

    def query_delete_session_txn(self, tx: WriteTxn, session_id: str) -> None:
        """Delete every query bound to a session being invalidated, in the same transaction (Consul's deleteSessionTxn)."""
        for qid in sorted(self._query_sessions.get(session_id, ())):
            self.query_delete_txn(tx, qid)

    # ------------------------------------------------------------- reads

    def query_get(self, query_id: str, ws: WatchSet | None = None) -> tuple[int, PreparedQuery | None]:
        """One query by ID, with the table's index (Consul's PreparedQueryGet)."""
        key = query_id.lower()
        with self._lock:
            self._watch(ws, f"query:{key}")
            return self._max_index("queries") or 1, self._queries.get(key)

    def query_list(self, ws: WatchSet | None = None) -> tuple[int, list[PreparedQuery]]:
        """Every query, by ID (Consul's PreparedQueryList)."""
        with self._lock:
            self._watch(ws, "queries")
            return self._max_index("queries") or 1, [q for _, q in sorted(self._queries.items())]

    def query_exists(self, query_id: str) -> bool:
        with self._lock:
            return query_id.lower() in self._queries

    def query_resolve(self, id_or_name: str, segment: str = "") -> tuple[int, PreparedQuery | None]:
        """ID, then exact name, then the longest template prefix; templates rendered (Consul's PreparedQueryResolve)."""
        if not id_or_name:
            raise StoreError("Missing query ID")
        lname = id_or_name.lower()
        with self._lock:
            index = self._max_index("queries") or 1
            if is_uuid(id_or_name):
                found = self._queries.get(lname)
                if found is not None:
                    if found.is_template:
                        raise StoreError("prepared query templates can only be resolved up by name, not by ID")
                    return index, found
            qid = self._query_names.get(lname)
            if qid is None:
                best = None
                for prefix, tid in self._query_templates.items():
                    if lname.startswith(prefix) and (best is None or len(prefix) > len(best)):
                        best, qid = prefix, tid
            if qid is None:
                return index, None
            query, compiled = self._queries[qid], self._query_compiled.get(qid)
        if compiled is None:
            return index, query
        # Rendering is pure and works on immutable rows: no need to hold the lock.
        return index, compiled.render(id_or_name, segment)

    def query_count(self) -> int:
        with self._lock:
            return len(self._queries)
