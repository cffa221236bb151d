"""The agent's own state on disk: services and checks registered through its API, kept in SQLite via SQLAlchemy.

Consul keeps these as JSON files under data_dir/services and data_dir/checks;
we keep the same JSON (the definitions as registered, with their tokens) in one
SQLite file, ``<data_dir>/agent/local.db``, so a restarted agent re-registers
everything. Writes run on one worker thread in submission order: the event loop
never waits on an fsync.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class AgentStore:
    """See the module docstring."""

    def __init__(self, data_dir: str) -> None:
        from sqlalchemy import Column, MetaData, Table, Text, create_engine

        path = os.path.join(data_dir, "agent")
        os.makedirs(path, exist_ok=True)
        self._engine = create_engine(f"sqlite:///{os.path.join(path, 'local.db')}")
        md = MetaData()
        self._services = Table("services", md, Column("id", Text, primary_key=True), Column("body", Text, nullable=False))
        self._checks = Table("checks", md, Column("id", Text, primary_key=True), Column("body", Text, nullable=False))
        md.create_all(self._engine)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="agent-persist")

    def load(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every persisted (service, check) body, as saved."""
        from sqlalchemy import select

        with self._engine.connect() as conn:
            services = [json.loads(r.body) for r in conn.execute(select(self._services).order_by(self._services.c.id))]
            checks = [json.loads(r.body) for r in conn.execute(select(self._checks).order_by(self._checks.c.id))]
        return services, checks

    def _put(self, table: Any, key: str, body: dict[str, Any] | None) -> None:
        from sqlalchemy import delete, insert

        with self._engine.begin() as conn:
            conn.execute(delete(table).where(table.c.id == key))
            if body is not None:
                conn.execute(insert(table).values(id=key, body=json.dumps(body, sort_keys=True)))

    def _submit(self, table: Any, key: str, body: dict[str, Any] | None) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._worker, self._put, table, key, body)

    def save_service(self, service_id: str, body: dict[str, Any]) -> asyncio.Future:
        return self._submit(self._services, service_id, body)

    def delete_service(self, service_id: str) -> asyncio.Future:
        return self._submit(self._services, service_id, None)

    def save_check(self, check_id: str, body: dict[str, Any]) -> asyncio.Future:
        return self._submit(self._checks, check_id, body)

    def delete_check(self, check_id: str) -> asyncio.Future:
        return self._submit(self._checks, check_id, None)

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._engine.dispose()
