"""Histories of client operations and the checks run over them (Jepsen's way, in a few hundred lines).

* ``History`` records every operation with monotonic invoke and complete times and
  an outcome: ``ok`` (the server answered), ``fail`` (it certainly did not take
  effect: a 4xx, a CAS answered false, "No cluster leader") or ``unknown`` (a
  timeout, a connection that broke after the request was sent, a 5xx that may
  have been committed).
* ``check_register`` is a Wing–Gong linearizability checker with Lowe's
  memoisation, as Porcupine implements it, for a register with read, write and
  compare-and-set, partitioned per key. An unknown write or CAS has no return
  time: it may take effect at any point after its invocation, or never
  (linearised at the very end, after every other operation). Written values must
  be unique per key, so a value names the write that produced it.
* ``stale_reads`` counts, for reads that promise less than linearizability
  (default and ``?stale``), the ones that returned a value already overwritten
  by a write acknowledged before the read began; ``phantom_reads`` finds values
  no write could have produced, in any mode.
* ``lost_writes`` compares acknowledged unique-key writes with what is there at the end.
* ``lock_overlaps`` checks that no two lock acquisitions were held at once: as
  seen through ``?consistent`` reads of the lock key, and as each holder could
  believe, given its session TTL and last successful renewal.
"""

from __future__ import annotations

import bisect
import itertools
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

INF = float("inf")
ABSENT = None  # the register's value when the key does not exist


@dataclass
class Op:
    """One client operation. ``value`` is what a write or CAS writes, or what a read returned."""

    process: str
    kind: str  # "write" | "cas" | "read"
    key: str
    invoke: float
    value: Any = None
    expected: Any = None  # CAS only: the value the CAS expects (ABSENT for cas=0)
    mode: str = "consistent"  # reads: "consistent" | "default" | "stale"
    complete: float = INF
    outcome: str = "unknown"  # "ok" | "fail" | "unknown"
    result: Any = None  # CAS: True / False when ok
    error: str = ""
    id: int = -1


class History:
    """A thread-safe log of operations in invocation order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.ops: list[Op] = []

    def invoke(self, process: str, kind: str, key: str, **kw: Any) -> Op:
        op = Op(process, kind, key, time.monotonic(), **kw)
        with self._lock:
            op.id = next(self._ids)
            self.ops.append(op)
        return op

    @staticmethod
    def ok(op: Op, value: Any = None, result: Any = None) -> Op:
        op.complete = time.monotonic()
        op.outcome = "ok"
        if op.kind == "read":
            op.value = value
        op.result = result
        return op

    @staticmethod
    def fail(op: Op, error: str) -> Op:
        op.complete, op.outcome, op.error = time.monotonic(), "fail", error
        return op

    @staticmethod
    def unknown(op: Op, error: str) -> Op:
        # Not completed: the operation may still take effect at any later time.
        op.complete, op.outcome, op.error = INF, "unknown", error
        return op

    def counts(self) -> dict[str, int]:
        out = {"ops": len(self.ops), "ok": 0, "fail": 0, "unknown": 0}
        for op in self.ops:
            out[op.outcome] += 1
        return out

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            for op in self.ops:
                row = asdict(op)
                row["complete"] = None if op.complete == INF else op.complete
                f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------- the register model


def step(state: Any, op: Op) -> tuple[bool, Any]:
    """The sequential register: can ``op`` happen in ``state``, and what state follows."""
    if op.kind == "write":
        return True, op.value
    if op.kind == "read":
        return op.value == state, state
    # cas: a known outcome must agree with the state; an unknown one does whatever the state dictates.
    if op.outcome == "ok":
        if op.result:
            return state == op.expected, op.value
        return state != op.expected, state
    return True, (op.value if state == op.expected else state)


@dataclass
class _Entry:
    op: Op | None
    is_call: bool
    time: float
    match: "_Entry | None" = None
    prev: "_Entry | None" = None
    next: "_Entry | None" = None
    bit: int = 0


@dataclass
class KeyResult:
    key: str
    ok: bool
    ops: int
    # When not linearizable: the most operations a partial linearization reached, and the
    # operations that could not be placed after it (what to look at first).
    linearized: int = 0
    stuck: list[Op] = field(default_factory=list)


def checkable(ops: Iterable[Op]) -> list[Op]:
    """The operations the register check covers: writes and CAS that may have happened, and ok consistent reads."""
    out = []
    for op in ops:
        if op.kind == "read":
            if op.outcome == "ok" and op.mode == "consistent":
                out.append(op)
        elif op.outcome != "fail":
            out.append(op)
    return out


def check_key(key: str, ops: list[Op], initial: Any = ABSENT) -> KeyResult:
    """Wing–Gong–Lowe over one key's operations (Porcupine's checkSingle), as a depth-first search.

    Three refinements keep unknown operations (which never have to be placed) from making the
    search exponential. Known operations are tried before unknown ones. A configuration is
    skipped when one with the same state and known operations, but only a subset of its unknown
    ones, has been explored already (it had every option this one has). And an unknown write
    whose value nobody observed is tried only where it can matter: just before a CAS that
    failed although the current state is what it expected (anywhere else it could only be
    overwritten unseen, which is the same as never happening).
    """
    events: list[tuple[float, int, _Entry]] = []
    unknown_mask = 0
    for i, op in enumerate(ops):
        call = _Entry(op, True, op.invoke, bit=1 << i)
        ret = _Entry(None, False, op.complete if op.outcome == "ok" else INF)
        call.match = ret
        if op.outcome != "ok":
            unknown_mask |= call.bit
        # Calls sort before returns at equal times: operations that touch are taken as concurrent.
        events.append((call.time, 0, call))
        events.append((ret.time, 1, ret))
    events.sort(key=lambda e: (e[0], e[1]))
    head = _Entry(None, False, -INF)
    prev = head
    for _, _, entry in events:
        prev.next, entry.prev = entry, prev
        prev = entry
    known_left = sum(1 for op in ops if op.outcome == "ok")
    if not known_left:
        return KeyResult(key, True, len(ops))

    observed = {op.value for op in ops if op.kind == "read"} | {op.expected for op in ops if op.kind == "cas" and op.result}
    blind = sum(1 << i for i, op in enumerate(ops) if op.outcome != "ok" and op.value not in observed)

    def candidates(state: Any) -> tuple[list[_Entry], _Entry | None]:
        """The calls that may be linearized next (all before the first pending return), known ones first."""
        known, unknown, blind_ones, needs_blind = [], [], [], False
        e = head.next
        while e is not None and e.is_call:
            if not e.bit & unknown_mask:
                known.append(e)
                op = e.op
                if op.kind == "cas" and op.result is False and op.expected == state:
                    needs_blind = True
            elif e.bit & blind:
                blind_ones.append(e)
            else:
                unknown.append(e)
            e = e.next
        return known + unknown + (blind_ones if needs_blind else []), e

    state, linearized = initial, 0
    explored: dict[tuple[int, Any], list[int]] = {}
    cands, blocking = candidates(state)
    # A frame: candidates at one configuration, the next one to try, the state there, the one chosen.
    frames: list[list[Any]] = [[cands, 0, state, None]]
    best, stuck = 0, _suspects(cands, blocking)
    while frames:
        frame = frames[-1]
        cands, i, state = frame[0], frame[1], frame[2]
        if i >= len(cands):
            frames.pop()
            if frames:
                chosen = frames[-1][3]
                unlift(chosen)
                linearized &= ~chosen.bit
                if not chosen.bit & unknown_mask:
                    known_left += 1
            continue
        frame[1] = i + 1
        entry = cands[i]
        allowed, new_state = step(state, entry.op)
        if not allowed:
            continue
        after = linearized | entry.bit
        seen = explored.setdefault((after & ~unknown_mask, new_state), [])
        unknowns = after & unknown_mask
        if any(earlier & ~unknowns == 0 for earlier in seen):
            continue
        seen.append(unknowns)
        lift(entry)
        frame[3] = entry
        linearized = after
        if not entry.bit & unknown_mask:
            known_left -= 1
            if not known_left:
                return KeyResult(key, True, len(ops))  # what is left is unknown: it may never have happened
        cands, blocking = candidates(new_state)
        depth = len(frames)
        if depth > best:
            best, stuck = depth, _suspects(cands, blocking)
        frames.append([cands, 0, new_state, None])
    return KeyResult(key, False, len(ops), best, stuck)


def lift(call: _Entry) -> None:
    """Take a call and its return out of the event list."""
    call.prev.next = call.next
    call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def unlift(call: _Entry) -> None:
    """Put back what ``lift`` took out."""
    ret = call.match
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    call.next.prev = call


def _suspects(cands: list[_Entry], blocking: _Entry | None) -> list[Op]:
    """At the deepest configuration: the operation whose return could not be reached, then the candidates."""
    out = [c.op for c in cands if blocking is not None and c.match is blocking]
    out += [c.op for c in cands if c.op not in out]
    return out[:8]


def check_register(ops: Iterable[Op]) -> list[KeyResult]:
    """Check every key's checkable operations; one result per key."""
    by_key: dict[str, list[Op]] = {}
    for op in checkable(ops):
        by_key.setdefault(op.key, []).append(op)
    return [check_key(key, key_ops) for key, key_ops in sorted(by_key.items())]


# ----------------------------------------------------------------- weaker reads, lost writes


def stale_reads(ops: Iterable[Op], mode: str) -> list[Op]:
    """Ok reads in ``mode`` that returned a value overwritten by a write acknowledged before the read began.

    The overwrite is certain: the newer write was invoked after the read value's write
    completed, and completed before the read was invoked.
    """
    ops = list(ops)
    by_value = {(op.key, op.value): op for op in ops if op.kind in ("write", "cas")}
    # Per key, acknowledged writes by completion time, with the latest invocation among each prefix.
    done: dict[str, tuple[list[float], list[float]]] = {}
    for w in sorted(ops, key=lambda o: o.complete):
        if w.kind in ("write", "cas") and w.outcome == "ok" and (w.kind == "write" or w.result):
            completes, latest = done.setdefault(w.key, ([], []))
            completes.append(w.complete)
            latest.append(max(w.invoke, latest[-1]) if latest else w.invoke)
    stale = []
    for r in ops:
        if r.kind != "read" or r.mode != mode or r.outcome != "ok":
            continue
        if r.value is ABSENT:
            src_done = -INF  # the initial absence: overwritten by any write acknowledged before the read
        else:
            src = by_value.get((r.key, r.value))
            if src is None:
                continue  # a phantom: phantom_reads reports it
            src_done = src.complete
        completes, latest = done.get(r.key, ([], []))
        n = bisect.bisect_left(completes, r.invoke)
        # The source write itself never counts: it was invoked before it completed.
        if n and latest[n - 1] > src_done:
            stale.append(r)
    return stale


def phantom_reads(ops: Iterable[Op]) -> list[Op]:
    """Ok reads (any mode) of a value no write could have produced: never written, written only by a
    write that certainly failed, or by one invoked after the read completed."""
    ops = list(ops)
    sources = {(op.key, op.value): op for op in ops if op.kind in ("write", "cas")}
    bad = []
    for r in ops:
        if r.kind != "read" or r.outcome != "ok" or r.value is ABSENT:
            continue
        src = sources.get((r.key, r.value))
        if src is None or src.outcome == "fail" or src.invoke > r.complete:
            bad.append(r)
    return bad


def lost_writes(acked: set[str], unknown: set[str], failed: set[str], present: set[str]) -> dict[str, list[str]]:
    """Unique-key writes: acknowledged ones must all be present; failed ones must not; unknown ones may be."""
    return {
        "lost": sorted(acked - present),
        "phantom": sorted(present - acked - unknown),
        "failed_but_present": sorted(present & failed),
    }


# ----------------------------------------------------------------- locks


@dataclass
class Acquisition:
    """One ``?acquire`` by a lock client: its unique token (the value written) and what the client saw."""

    process: str
    session: str
    token: str
    invoke: float
    complete: float = INF
    outcome: str = "unknown"  # ok (acquired) | fail (refused or certainly not applied) | unknown
    released: float = INF  # when the client sent its release (it stops acting as holder then)
    # The client's own bound on its session: the invoke time of its last successful renewal (or the
    # session's creation) plus the TTL. The servers cannot invalidate the session before then.
    session_valid_until: float = INF


@dataclass
class LockRead:
    """A ``?consistent`` read of the lock key: who held it (Session) and the token (Value)."""

    invoke: float
    complete: float
    session: str
    token: str


def observed_windows(acquisitions: list[Acquisition], reads: list[LockRead]) -> dict[str, tuple[float, float]]:
    """Per token, an interval during which it certainly held the lock, from consistent reads.

    A token holds from its acquire's linearization point (no later than an acknowledged acquire's
    completion, and no later than the first read that shows it) until after the last read that
    shows it (its linearization point is no earlier than that read's invocation).
    """
    seen: dict[str, list[LockRead]] = {}
    for r in reads:
        if r.session:
            seen.setdefault(r.token, []).append(r)
    acked = {a.token: a for a in acquisitions if a.outcome == "ok"}
    windows = {}
    for token, rs in seen.items():
        start = min(r.complete for r in rs)
        if token in acked:
            start = min(start, acked[token].complete)
        end = max(r.invoke for r in rs)
        if end > start:
            windows[token] = (start, end)
    return windows


def believed_windows(acquisitions: list[Acquisition]) -> dict[str, tuple[float, float]]:
    """Per acknowledged acquisition, when its client may act as the holder: from the acknowledgement
    until it sent its release or its session could have expired, whichever is first."""
    out = {}
    for a in acquisitions:
        if a.outcome == "ok":
            out[a.token] = (a.complete, min(a.released, a.session_valid_until))
    return out


def lock_overlaps(windows: dict[str, tuple[float, float]]) -> list[tuple[str, str, float]]:
    """Pairs of tokens whose windows intersect, with the length of the overlap."""
    items = sorted(windows.items(), key=lambda kv: kv[1][0])
    bad = []
    for i, (t1, (s1, e1)) in enumerate(items):
        for t2, (s2, e2) in items[i + 1 :]:
            if s2 >= e1:
                break
            overlap = min(e1, e2) - s2
            if overlap > 0:
                bad.append((t1, t2, overlap))
    return bad
