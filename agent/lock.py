"""Locks and semaphores over the HTTP API: Consul's api/lock.go and api/semaphore.go recipes.

Both are plain clients of sessions and KV, so anything that speaks Consul's
recipe interoperates (the same keys, values and flag constants as Consul's Go
api). A session with a TTL is renewed every TTL/2 on a thread; a second thread
watches the key(s) with blocking queries and sets ``lost`` the moment the lock
or the semaphore slot is gone (session invalidated, key taken, holder removed).

* Lock: acquire ``<key>`` with the session (flags LOCK_FLAG); wait on blocking
  reads while someone else holds it.
* Semaphore (limit N): each contender acquires ``<prefix>/<session>`` with its
  session, then joins the holders in ``<prefix>/.lock`` — a JSON document
  ``{"Limit": N, "Holders": {"<session>": true}}`` updated only by
  check-and-set — when fewer than N live holders are listed (holders whose
  contender key lost its session are pruned).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

from proconsul.agent.client import APIError, Client

LOCK_FLAG = 0x2DDCCBC058A50C18
SEMAPHORE_FLAG = 0xE0F69A2BAA414DE0
SEMAPHORE_KEY = ".lock"
DEFAULT_TTL = "15s"
WAIT = "15s"


class LockError(Exception):
    """The lock could not be used: a conflicting key, a limit mismatch, a lost session."""


def _entry(client: Client, key: str, index: int = 0, wait: str = WAIT) -> tuple[int, dict | None]:
    params: dict[str, Any] = {"index": index, "wait": wait} if index else {}
    resp, body = client.kv_get(key, **params)
    return int(resp.headers.get("X-Consul-Index", "0")), (body[0] if body else None)


class _SessionHolder:
    """A session kept alive by renewing it every TTL/2 until closed."""

    def __init__(self, client: Client, name: str, ttl: str, behavior: str = "release") -> None:
        from proconsul.server.durations import parse_duration

        self.client = client
        body = {"Name": name, "TTL": ttl, "Behavior": behavior}
        self.id = client.request("PUT", "/v1/session/create", content=json.dumps(body).encode()).json()["ID"]
        self.lost = threading.Event()
        self._closed = threading.Event()
        self._period = parse_duration(ttl) / 2
        self._thread = threading.Thread(target=self._renew, name=f"session-renew-{self.id[:8]}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._closed.wait(self._period):
            try:
                self.client.request("PUT", f"/v1/session/renew/{self.id}")
            except APIError as err:
                if "404" in str(err):
                    self.lost.set()
                    return

    def close(self) -> None:
        self._closed.set()
        try:
            self.client.request("PUT", f"/v1/session/destroy/{self.id}")
        except APIError:
            pass


class Lock:
    """Consul's api.Lock on one key."""

    def __init__(self, client: Client, key: str, session_name: str = "Consul API Lock", ttl: str = DEFAULT_TTL, value: bytes = b"") -> None:
        self.client, self.key, self.value = client, key, value
        self.session_name, self.ttl = session_name, ttl
        self.session: _SessionHolder | None = None
        self.lost = threading.Event()

    def acquire(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Block until held (True) or until ``timeout`` / ``stop`` (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.session = _SessionHolder(self.client, self.session_name, self.ttl)
        index = 0
        while not (stop and stop.is_set()):
            if deadline is not None and time.monotonic() >= deadline:
                break
            index, entry = _entry(self.client, self.key, index)
            if entry is not None and entry["Flags"] != LOCK_FLAG:
                self.session.close()
                raise LockError(f"Existing key does not match lock use: {self.key}")
            if entry is not None and entry.get("Session"):
                if entry["Session"] == self.session.id:
                    break
                continue  # held by someone else: the next read blocks until it changes
            if self.client.kv_put(self.key, self.value, acquire=self.session.id, flags=LOCK_FLAG):
                self._monitor()
                return True
            time.sleep(0.2)  # lock-delay or a race: Consul's DefaultLockRetryTime is shorter under tests
        self.session.close()
        self.session = None
        return False

    def _monitor(self) -> None:
        def watch() -> None:
            index = 0
            while not self.lost.is_set():
                try:
                    index, entry = _entry(self.client, self.key, index)
                except APIError:
                    time.sleep(1)
                    continue
                if entry is None or entry.get("Session") != self.session.id or self.session.lost.is_set():
                    self.lost.set()

        threading.Thread(target=watch, name="lock-monitor", daemon=True).start()

    def abandon(self) -> None:
        """Give up while ``acquire`` may still block in a read in another thread: destroy the session, which also
        frees the key if ``acquire`` got it meanwhile."""
        session = self.session
        if session is not None:
            session.close()

    def release(self) -> None:
        """Release the key and destroy the session (Consul's Unlock)."""
        if self.session is None:
            return
        self.lost.set()
        try:
            self.client.kv_put(self.key, self.value, release=self.session.id, flags=LOCK_FLAG)
        except APIError:
            pass
        self.session.close()
        self.session = None


class Semaphore:
    """Consul's api.Semaphore under a prefix, with ``limit`` slots."""

    def __init__(self, client: Client, prefix: str, limit: int, session_name: str = "Consul API Semaphore", ttl: str = DEFAULT_TTL, value: bytes = b"") -> None:
        if limit < 1:
            raise LockError("semaphore limit must be positive")
        self.client, self.prefix, self.limit, self.value = client, prefix.rstrip("/"), limit, value
        self.session_name, self.ttl = session_name, ttl
        self.session: _SessionHolder | None = None
        self.lost = threading.Event()

    @property
    def lock_key(self) -> str:
        return f"{self.prefix}/{SEMAPHORE_KEY}"

    def _contender_key(self) -> str:
        return f"{self.prefix}/{self.session.id}"

    def _state(self, index: int) -> tuple[int, dict | None, set[str]]:
        """(index, the .lock entry, the sessions of live contenders) from one prefix read."""
        params: dict[str, Any] = {"recurse": True}
        if index:
            params.update(index=index, wait=WAIT)
        resp, entries = self.client.kv_get(self.prefix + "/", **params)
        lock_entry, live = None, set()
        for e in entries or []:
            if e["Key"] == self.lock_key:
                lock_entry = e
            elif e.get("Session") and e["Flags"] == SEMAPHORE_FLAG:
                live.add(e["Session"])
        return int(resp.headers.get("X-Consul-Index", "0")), lock_entry, live

    def _decode(self, entry: dict | None) -> dict:
        if entry is None:
            return {"Limit": self.limit, "Holders": {}}
        if entry["Flags"] != SEMAPHORE_FLAG:
            raise LockError(f"Existing key does not match semaphore use: {self.lock_key}")
        doc = json.loads(base64.b64decode(entry["Value"] or "") or b"{}")
        if doc.get("Limit") != self.limit:
            raise LockError(f"Semaphore limit conflict (lock: {doc.get('Limit')}, local: {self.limit})")
        doc.setdefault("Holders", {})
        return doc

    def acquire(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Block until a slot is ours (True) or until ``timeout`` / ``stop`` (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # "delete": a dead contender's key vanishes with its session (Consul's semaphore recipe).
        self.session = _SessionHolder(self.client, self.session_name, self.ttl, behavior="delete")
        if not self.client.kv_put(self._contender_key(), self.value, acquire=self.session.id, flags=SEMAPHORE_FLAG):
            self.session.close()
            raise LockError("Failed to make contender entry")
        index = 0
        while not (stop and stop.is_set()):
            if deadline is not None and time.monotonic() >= deadline:
                break
            index, entry, live = self._state(index)
            doc = self._decode(entry)
            holders = {sid: True for sid in doc["Holders"] if sid in live}  # prune dead holders
            if self.session.id not in holders and len(holders) >= self.limit:
                continue  # full: the next read blocks until the prefix changes
            holders[self.session.id] = True
            body = json.dumps({"Limit": self.limit, "Holders": holders}).encode()
            cas = entry["ModifyIndex"] if entry is not None else 0
            if self.client.kv_put(self.lock_key, body, cas=cas, flags=SEMAPHORE_FLAG):
                self._monitor()
                return True
            index = 0  # lost the CAS race: read again at once
        self.abandon()
        return False

    def _monitor(self) -> None:
        def watch() -> None:
            index = 0
            while not self.lost.is_set():
                try:
                    index, entry, live = self._state(index)
                    held = self.session.id in self._decode(entry)["Holders"] and self.session.id in live
                except (APIError, LockError):
                    time.sleep(1)
                    continue
                if not held or self.session.lost.is_set():
                    self.lost.set()

        threading.Thread(target=watch, name="semaphore-monitor", daemon=True).start()

    def abandon(self) -> None:
        """Leave the contenders: delete our contender key and destroy the session (safe while ``acquire`` blocks
        in another thread)."""
        if self.session is None:
            return
        try:
            self.client.kv_delete(self._contender_key())
        except APIError:
            pass
        self.session.close()
        self.session = None

    def release(self) -> None:
        """Leave the holders (check-and-set), delete the contender key, destroy the session."""
        if self.session is None:
            return
        self.lost.set()
        for _ in range(10):
            try:
                _, entry, _ = self._state(0)
                doc = self._decode(entry)
            except (APIError, LockError):
                break
            if entry is None or self.session.id not in doc["Holders"]:
                break
            del doc["Holders"][self.session.id]
            if self.client.kv_put(self.lock_key, json.dumps(doc).encode(), cas=entry["ModifyIndex"], flags=SEMAPHORE_FLAG):
                break
        self.abandon()
