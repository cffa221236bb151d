"""Snapshots as SQLite files, written and read through SQLAlchemy.

One SQLite table per state-store table (``state.SCHEMA``) plus ``meta`` (format,
index, and for Raft dumps the log position and cluster), so an operator can open
any snapshot with ``sqlite3``. The same format serves pysyncobj's full dump (log
compaction, and what a lagging follower receives) and ``/v1/snapshot``.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

from proconsul.server.state import SCHEMA

if TYPE_CHECKING:
    from sqlalchemy import Column, MetaData, Table

# SQLAlchemy is imported where a file is written or read: it costs ~110 ms of
# agent start-up, and most processes never touch a snapshot file.

FORMAT = "proconsul-snapshot-1"

def _column(name: str, kind: str, primary: bool) -> "Column":
    from sqlalchemy import BigInteger, Boolean, Column, LargeBinary, Text

    # uint64 values (KV flags) do not fit SQLite's signed INTEGER: kept as text. JSON columns are text too.
    sqltype = {"text": Text, "int": BigInteger, "u64": Text, "bool": Boolean, "blob": LargeBinary, "json": Text}[kind]
    return Column(name, sqltype, primary_key=primary, nullable=not primary)


def _to_sql(kind: str, value: Any) -> Any:
    if kind == "u64":
        return str(value)
    if kind == "json":
        return json.dumps(value, sort_keys=True)
    return value


def _from_sql(kind: str, value: Any) -> Any:
    if kind == "u64":
        return int(value)
    if kind == "json":
        return json.loads(value)
    if kind == "bool":
        return bool(value)
    return value


def _metadata() -> "tuple[MetaData, dict[str, Table], Table]":
    from sqlalchemy import Column, MetaData, Table, Text

    md = MetaData()
    tables = {
        name: Table(name, md, *(_column(col, kind, i < ts.pk) for i, (col, kind) in enumerate(ts.columns)))
        for name, ts in SCHEMA.items()
    }
    meta = Table("meta", md, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
    return md, tables, meta


def write_snapshot(path: str, tables: dict[str, list[tuple]], meta: dict[str, Any]) -> None:
    """Write tables and meta to a new SQLite file at ``path`` (replacing any file there)."""
    from sqlalchemy import create_engine, insert

    if os.path.exists(path):
        os.unlink(path)
    md, sql_tables, meta_table = _metadata()
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            md.create_all(conn)
            conn.execute(insert(meta_table), [{"key": k, "value": json.dumps(v)} for k, v in {"format": FORMAT, **meta}.items()])
            for name, rows in tables.items():
                if not rows:
                    continue
                cols = SCHEMA[name].columns
                records = [{c: _to_sql(kind, v) for (c, kind), v in zip(cols, row)} for row in rows]
                conn.execute(insert(sql_tables[name]), records)
    finally:
        engine.dispose()


def read_snapshot(path: str) -> tuple[dict[str, list[tuple]], dict[str, Any]]:
    """Read a snapshot file back into tables (rows in key order) and meta; raises ValueError if it is not one."""
    from sqlalchemy import create_engine, select

    md, sql_tables, meta_table = _metadata()
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            try:
                meta = {k: json.loads(v) for k, v in conn.execute(select(meta_table.c.key, meta_table.c.value))}
            except Exception as err:
                raise ValueError(f"not a proconsul snapshot: {err}") from None
            if meta.get("format") != FORMAT:
                raise ValueError(f"not a proconsul snapshot (format {meta.get('format')!r})")
            tables: dict[str, list[tuple]] = {}
            for name, table in sql_tables.items():
                ts = SCHEMA[name]
                keys = [table.c[c] for c in ts.names[: ts.pk]]
                rows = conn.execute(select(table).order_by(*keys))
                tables[name] = [tuple(_from_sql(kind, v) for (_, kind), v in zip(ts.columns, r)) for r in rows]
            return tables, meta
    finally:
        engine.dispose()


def snapshot_bytes(tables: dict[str, list[tuple]], meta: dict[str, Any]) -> bytes:
    """A snapshot file's bytes (for /v1/snapshot GET)."""
    with tempfile.TemporaryDirectory(prefix="proconsul-snap-") as tmp:
        path = os.path.join(tmp, "snapshot.db")
        write_snapshot(path, tables, meta)
        with open(path, "rb") as f:
            return f.read()


def tables_from_bytes(data: bytes) -> tuple[dict[str, list[tuple]], dict[str, Any]]:
    """Parse an uploaded snapshot; raises ValueError when the bytes are not a proconsul snapshot."""
    if not data.startswith(b"SQLite format 3\x00"):
        raise ValueError("not a proconsul snapshot: not an SQLite file")
    with tempfile.TemporaryDirectory(prefix="proconsul-snap-") as tmp:
        path = os.path.join(tmp, "snapshot.db")
        with open(path, "wb") as f:
            f.write(data)
        return read_snapshot(path)


def tables_to_wire(tables: dict[str, list[tuple]]) -> dict[str, list[list[Any]]]:
    """Rows to JSON-ready lists (blobs as base64), for the Raft restore command."""
    out = {}
    for name, rows in tables.items():
        blobs = [i for i, (_, kind) in enumerate(SCHEMA[name].columns) if kind == "blob"]
        wire = []
        for row in rows:
            row = list(row)
            for i in blobs:
                if row[i] is not None:
                    row[i] = base64.b64encode(row[i]).decode("ascii")
            wire.append(row)
        out[name] = wire
    return out


def tables_from_wire(wire: dict[str, list[list[Any]]]) -> dict[str, list[tuple]]:
    """Inverse of ``tables_to_wire``; unknown tables are refused."""
    out = {}
    for name, rows in wire.items():
        if name not in SCHEMA:
            raise ValueError(f"unknown table {name!r}")
        blobs = [i for i, (_, kind) in enumerate(SCHEMA[name].columns) if kind == "blob"]
        width = len(SCHEMA[name].columns)
        table = []
        for row in rows:
            if len(row) != width:
                raise ValueError(f"table {name!r}: row has {len(row)} columns, want {width}")
            row = list(row)
            for i in blobs:
                if row[i] is not None:
                    row[i] = base64.b64decode(row[i])
            table.append(tuple(row))
        out[name] = table
    return out
