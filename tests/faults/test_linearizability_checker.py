"""The checker itself, on histories whose verdict is known: it must pass the good ones and catch the bad ones."""

from __future__ import annotations

import random
import time

from linearizability import (
    ABSENT,
    INF,
    Acquisition,
    LockRead,
    Op,
    believed_windows,
    check_key,
    check_register,
    lock_overlaps,
    lost_writes,
    observed_windows,
    phantom_reads,
    stale_reads,
)


def w(value, t0, t1, key="k", outcome="ok", p="p"):
    return Op(p, "write", key, t0, value=value, complete=t1 if outcome == "ok" else INF, outcome=outcome)


def r(value, t0, t1, key="k", mode="consistent", p="p"):
    return Op(p, "read", key, t0, value=value, complete=t1, outcome="ok", mode=mode)


def cas(expected, value, t0, t1, result=True, key="k", outcome="ok", p="p"):
    return Op(p, "cas", key, t0, value=value, expected=expected, complete=t1 if outcome == "ok" else INF, outcome=outcome, result=result if outcome == "ok" else None)


def ok(*ops):
    return all(res.ok for res in check_register(ops))


# ----------------------------------------------------------------- known-good histories


def test_sequential_history_is_linearizable():
    assert ok(r(ABSENT, 0, 1), w("a", 2, 3), r("a", 4, 5), cas("a", "b", 6, 7), r("b", 8, 9), cas("a", "c", 10, 11, result=False))


def test_read_concurrent_with_a_write_may_see_either_value():
    assert ok(w("a", 0, 1), w("b", 2, 6), r("a", 3, 4))
    assert ok(w("a", 0, 1), w("b", 2, 6), r("b", 3, 4))
    # Two reads inside one write: old then new is fine, as long as they do not go back.
    assert ok(w("a", 0, 1), w("b", 2, 9), r("a", 3, 4), r("b", 5, 6), r("b", 7, 8))


def test_unknown_write_may_take_effect_late_or_never():
    assert ok(w("a", 0, 1), w("b", 2, INF, outcome="unknown"), r("a", 3, 4), r("b", 10, 11))  # late
    assert ok(w("a", 0, 1), w("b", 2, INF, outcome="unknown"), r("a", 3, 4), r("a", 10, 11))  # never


def test_unknown_cas_takes_effect_only_where_its_expectation_holds():
    assert ok(w("a", 0, 1), cas("a", "b", 2, INF, outcome="unknown"), r("b", 5, 6))
    assert not ok(w("a", 0, 1), w("x", 2, 3), cas("a", "b", 4, INF, outcome="unknown"), r("b", 5, 6))


def test_failed_operations_are_left_out_and_failed_reads_do_not_count():
    failed = Op("p", "write", "k", 2, value="zzz", complete=3, outcome="fail")
    failed_read = Op("p", "read", "k", 4, value=None, complete=5, outcome="fail")
    assert ok(w("a", 0, 1), failed, failed_read, r("a", 6, 7))


def test_keys_are_checked_independently():
    results = check_register([w("a", 0, 1, key="x"), r("a", 2, 3, key="x"), w("b", 0, 1, key="y"), r("a", 2, 3, key="y")])
    assert [(res.key, res.ok) for res in results] == [("x", True), ("y", False)]


def test_default_and_stale_reads_are_not_held_to_linearizability():
    assert ok(w("a", 0, 1), w("b", 2, 3), r("a", 4, 5, mode="stale"), r("a", 6, 7, mode="default"))


# ----------------------------------------------------------------- known-bad histories


def test_stale_read_after_an_acknowledged_write_is_a_violation():
    res = check_register([w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)])
    assert not res[0].ok
    assert any(op.kind == "read" and op.value == "a" for op in res[0].stuck)


def test_lost_acknowledged_write_is_a_violation():
    assert not ok(w("a", 0, 1), r(ABSENT, 2, 3))
    assert not ok(w("a", 0, 1), w("b", 2, 3), r("b", 4, 5), r("a", 6, 7))  # b lost after being seen


def test_cas_that_succeeds_twice_is_a_violation():
    assert not ok(w("a", 0, 1), cas("a", "b", 2, 3), cas("a", "c", 4, 5))
    assert not ok(w("a", 0, 1), cas("a", "b", 2, 5), cas("a", "c", 3, 6))  # concurrent: only one may win


def test_cas_that_fails_while_its_expectation_holds_is_a_violation():
    assert not ok(w("a", 0, 1), cas("a", "b", 2, 3, result=False), r("a", 4, 5))


def test_reading_a_value_before_its_write_began_is_a_violation():
    assert not ok(r("a", 0, 1), w("a", 2, 3))


def test_going_back_after_an_unknown_write_was_seen_is_a_violation():
    assert not ok(w("a", 0, 1), w("b", 2, INF, outcome="unknown"), r("b", 3, 4), r("a", 5, 6))


# ----------------------------------------------------------------- reports on weaker reads and lost writes


def test_stale_read_count_only_counts_certainly_overwritten_values():
    ops = [
        w("a", 0, 1),
        w("b", 2, 3),
        r("a", 4, 5, mode="stale"),  # b acknowledged before the read began: stale
        r("a", 2.5, 5, mode="stale"),  # concurrent with b: not counted
        r(ABSENT, 4, 5, mode="default"),  # a and b were acknowledged: stale
        r("b", 4, 5, mode="default"),
    ]
    assert [op.invoke for op in stale_reads(ops, "stale")] == [4]
    assert [op.value for op in stale_reads(ops, "default")] == [ABSENT]


def test_phantom_reads_are_values_no_write_could_have_produced():
    failed = Op("p", "write", "k", 0, value="f", complete=1, outcome="fail")
    ops = [failed, w("a", 0, 1), r("f", 2, 3, mode="stale"), r("zz", 2, 3, mode="default"), r("a", 2, 3), r("later", 0, 0.5), w("later", 1, 2)]
    assert sorted(op.value for op in phantom_reads(ops)) == ["f", "later", "zz"]


def test_lost_writes():
    report = lost_writes(acked={"a", "b"}, unknown={"u1", "u2"}, failed={"f"}, present={"a", "u1", "f", "x"})
    assert report == {"lost": ["b"], "phantom": ["f", "x"], "failed_but_present": ["f"]}


# ----------------------------------------------------------------- locks


def test_sequential_lock_holders_do_not_overlap():
    acqs = [Acquisition("c1", "s1", "t1", 0, 1, "ok", released=5), Acquisition("c2", "s2", "t2", 4, 7, "ok", released=9)]
    reads = [LockRead(1.5, 2, "s1", "t1"), LockRead(3, 3.5, "s1", "t1"), LockRead(7.5, 8, "s2", "t2"), LockRead(8.2, 8.5, "s2", "t2")]
    assert lock_overlaps(observed_windows(acqs, reads)) == []
    assert lock_overlaps(believed_windows(acqs)) == []


def test_two_holders_seen_through_consistent_reads_are_caught():
    acqs = [Acquisition("c1", "s1", "t1", 0, 1, "ok"), Acquisition("c2", "s2", "t2", 2, 3, "ok")]
    # t1 is still the holder in a read that began after t2's acquire was acknowledged.
    reads = [LockRead(3.5, 4, "s2", "t2"), LockRead(5, 6, "s1", "t1")]
    bad = lock_overlaps(observed_windows(acqs, reads))
    assert [(a, b) for a, b, _ in bad] == [("t1", "t2")]


def test_believed_windows_end_when_the_session_could_have_expired():
    acqs = [
        Acquisition("c1", "s1", "t1", 0, 1, "ok", session_valid_until=4),  # renewals failed: may have expired at 4
        Acquisition("c2", "s2", "t2", 4, 5, "ok", released=8),
    ]
    assert lock_overlaps(believed_windows(acqs)) == []
    acqs[0].session_valid_until = 6  # t1's session was certainly alive when t2 got the lock
    assert [(a, b) for a, b, _ in lock_overlaps(believed_windows(acqs))] == [("t1", "t2")]


# ----------------------------------------------------------------- scale


def simulated_history(n_ops: int, clients: int, seed: int) -> list[Op]:
    """A history of a real linearizable register: each operation takes effect at a random point inside
    its interval; some writes are left unknown (and took effect, or not, at random)."""
    rng = random.Random(seed)
    pending: list[tuple[float, Op, bool]] = []
    clock = [0.0] * clients
    for i in range(n_ops):
        c = rng.randrange(clients)
        t0 = clock[c] + rng.random()
        t1 = t0 + rng.random() * 3
        clock[c] = t1
        kind = rng.choice(["write", "read", "read", "cas"])
        op = Op(f"c{c}", kind, "k", t0, complete=t1, outcome="ok")
        lin = rng.uniform(t0, t1)
        applies = True
        if kind != "read" and rng.random() < 0.03:
            op.outcome, op.complete = "unknown", INF
            applies = rng.random() < 0.5
            clock[c] = t1 + 1
        pending.append((lin, op, applies))
    state = ABSENT
    for n, (_, op, applies) in enumerate(sorted(pending, key=lambda x: x[0])):
        if op.kind == "read":
            op.value = state
        elif op.kind == "write":
            op.value = f"v{n}"
            if applies:
                state = op.value
        else:
            op.value, op.expected = f"v{n}", state if rng.random() < 0.7 else "nope"
            if op.outcome == "ok":
                op.result = state == op.expected
            if applies and state == op.expected:
                state = op.value
    return [op for _, op, _ in pending]


def test_thousands_of_concurrent_operations_check_quickly_and_one_corruption_is_found():
    ops = simulated_history(3000, clients=8, seed=7)
    started = time.monotonic()
    assert check_key("k", [op for op in ops if op.outcome != "fail"]).ok
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"checking 3,000 operations took {elapsed:.1f} s"
    # Corrupt one read in the middle: it returns the value from two writes back.
    reads = [op for op in ops if op.kind == "read" and op.value is not ABSENT]
    values = [op.value for op in sorted(ops, key=lambda o: o.invoke) if op.kind == "write" and op.outcome == "ok"]
    victim = reads[len(reads) // 2]
    earlier = [v for v in values if v != victim.value]
    victim.value = earlier[0]
    assert not check_key("k", ops).ok
