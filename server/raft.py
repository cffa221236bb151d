"""RaftNode: pysyncobj behind an async surface.

pysyncobj sees one ``@replicated`` method, ``apply(payload)``, so it never
renumbers replicated methods between versions nor pickles our classes; the
payload is ``commands.encode(cmd)``. pysyncobj runs on the event loop's own
thread (``autoTick=False``): its sockets are watched by the loop (``_LoopPoller``),
a ready socket or a proposal asks for a tick at the end of the loop turn, and a
timer ticks every ``TICK_PERIOD`` for heartbeats and elections. Results settle
futures directly and the FSM applies on the loop. A separate tick thread (the
first design) cost two thread hand-offs and a pipe write per write, and a GIL
convoy between HTTP and Raft; on one loop a 16-client PUT load costs the leader
about a third less CPU. The price: a full dump (snapshot) blocks the loop while
it is written, as it blocked Raft's heartbeats on the tick thread before.
``sync=True`` has no place here.

Per entry, sends are kept to what Raft needs, since on a 2-core VM a loopback send
that wakes another process costs 100-200 µs:

* Messages are zlib streams of stored blocks rather than compressed ones
  (``_Connection``): pysyncobj's ``zlib.compress`` cost 30-50 µs a message, twice
  on every write's critical path. Any pysyncobj peer still reads them.

* Writes proposed in one loop turn share a log entry (``commands.Batch``), and
  the leader appends everything queued before it sends (one append per follower).
* Unbatched pysyncobj also sends every follower an append after each apply just
  to carry the new commit index; that send is dropped. Followers learn it from
  the next append or heartbeat (a ?stale read on an idle follower lags by at most
  one heartbeat, 50 ms).

Configuration, chosen by measurement (see DESIGN.md "Performance facts"):

* ``appendEntriesUseBatch=False``: the leader sends each entry at once instead of
  on the next append period, so a write commits in about a millisecond instead
  of ~100 ms. Measured by ``python -m bench raft`` (3 in-process nodes, 64-byte
  sets, medians of interleaved runs): 1 proposer 1,413 vs 10 commits/s, p50
  0.69 vs 101 ms; 16 proposers 3,592 vs 156 commits/s. End to end through HTTP
  on a 3-server cluster of processes, one client: PUT p50 0.90 ms to the leader,
  1.03 ms through a follower.

  Unbatched, followers sometimes log pysyncobj's CRITICAL "truncating
  already-applied log entries … state machine may have diverged". What happens:
  the leader advances a follower's ``nextIndex`` optimistically with every send,
  and a success reply to an *earlier* append moves ``nextIndex`` back to that
  reply's index, so the next append re-sends entries the follower already has.
  The follower truncates from ``prevLogIdx+1`` unconditionally (it does not check
  for a term conflict first) and appends the re-sent entries. They come from the
  current leader's log at the same indexes and terms, so they are the same
  entries, and ``lastApplied`` never moves back, so nothing is applied twice.
  Measured, not assumed: ``bench/raft.py`` part 2 wraps every follower's append
  handler and compares each truncated entry with its replacement — 1,484
  overlapping appends, 3,791 entries compared (21 of them already applied),
  0 different, replicas' state checksums identical — and ``test_replica_checksums_match_after_concurrent_
  writes_to_every_server`` compares whole-state sha256 across a real cluster
  after 3,000 concurrent writes to all servers. The message is benign; a log
  filter lowers it to WARNING so operators are not paged for it.
* Timeouts: 50 ms heartbeats, 0.3–0.8 s election timeout, 1 s leader step-down
  without a majority (pysyncobj's default 30 s would let a partitioned leader
  serve stale default-mode reads for half a minute), 0.5 s reconnect interval.
* ``commandsWaitLeader=False``: fail fast without a leader; the endpoints
  decide how long to hold a request (Consul's rpc_hold_timeout).
* The raft port binds ``bindAddress`` explicitly: without it pysyncobj binds
  0.0.0.0, whatever the node address says.
* Inbound connections may only be cluster members: pysyncobj's unauthenticated
  "utility" commands (add/remove nodes) and read-only followers are refused.
* Full dumps are our SQLite snapshots, written synchronously inside a tick
  (no fork), so the dump is exactly the state at the last applied index.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import select
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import pysyncobj.pickle as _pickle
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.node import TCPNode
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport

from proconsul.server.commands import BATCHABLE, BarrierRequest, UnknownCommandError, encode, encode_batch
from proconsul.server.errors import LeaderChangedError, NoLeaderError, RaftTimeoutError, StoreError
from proconsul.server.fsm import FSM
from proconsul.server.snapshot import read_snapshot, write_snapshot

log = logging.getLogger("proconsul.raft")


class _TruncationIsBenign(logging.Filter):
    """See the module docstring: re-sent identical entries, not divergence."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.CRITICAL and "truncating already-applied" in record.msg:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("pysyncobj.syncobj").addFilter(_TruncationIsBenign())


@dataclass(frozen=True)
class RaftTuning:
    """The knobs operators may set (Consul's raft_snapshot_threshold / raft_snapshot_interval) and the timings."""

    snapshot_threshold: int = 16384
    snapshot_interval: float = 300.0
    heartbeat: float = 0.05
    election_min: float = 0.3
    election_max: float = 0.8
    leader_lease: float = 1.0
    reconnect: float = 0.5
    # pysyncobj's default; False by measurement (see the module docstring). Only bench/raft.py sets it.
    batch_appends: bool = False


TICK_PERIOD = 0.02  # seconds between ticks when nothing else asks for one (timers: heartbeats, elections)


_FAILURES = {
    FAIL_REASON.MISSING_LEADER: NoLeaderError,
    FAIL_REASON.QUEUE_FULL: RaftTimeoutError,
    FAIL_REASON.REQUEST_DENIED: StoreError,
}


def _stored_zlib(data: bytes) -> bytes:
    """``data`` as a zlib stream of stored (uncompressed) deflate blocks: what ``zlib.decompress`` reads back, made
    without zlib's compressor, whose set-up alone costs 30-50 µs a call here (RFC 1950 header and Adler-32 around
    RFC 1951 stored blocks of at most 65,535 bytes)."""
    parts = [b"\x78\x01"]
    for start in range(0, len(data) or 1, 0xFFFF):
        block = data[start:start + 0xFFFF]
        final = start + 0xFFFF >= len(data)
        parts += (struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF), block)
    parts.append(struct.pack(">I", zlib.adler32(data)))
    return b"".join(parts)


class _Connection(TcpConnection):
    """pysyncobj's peer connection, its messages framed as zlib streams but not compressed.

    pysyncobj sends every message through ``zlib.compress(..., 3)``: 30-50 µs a message here, nearly all of it
    zlib setting up its state, to shrink a ~300-byte append by a few bytes. A write pays it twice on its critical
    path (the leader's append, then the follower's answer) and the leader once more per other follower. Stored
    blocks are still zlib, so any pysyncobj peer (an older server included) reads these frames unchanged, and
    reading is pysyncobj's own.
    """

    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = _stored_zlib(_pickle.dumps(message))
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(_monotonic()))
        self._TcpConnection__writeBuffer += struct.pack("i", len(data)) + data
        self._TcpConnection__trySendBuffer()


class _Transport(TCPTransport):
    """pysyncobj's TCP transport, refusing non-members, noting leader contact, sending uncompressed."""

    last_leader_contact = 0.0

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if type(conn) is TcpConnection:
            conn.__class__ = _Connection  # made, not yet connected: nothing was sent on it

    def _onNewIncomingConnection(self, conn: Any) -> None:
        if type(conn) is TcpConnection:
            conn.__class__ = _Connection  # just accepted: nothing was sent on it
        super()._onNewIncomingConnection(conn)

    def _createServer(self) -> None:
        if self._syncObj._proconsul_listen:
            super()._createServer()

    def _maybeBind(self) -> None:
        if not self._syncObj._proconsul_listen:
            self._ready = True
            return
        super()._maybeBind()

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        if self._syncObj.encryptor and not conn.sendRandKey:
            return super()._onIncomingMessageReceived(conn, message)
        if isinstance(message, list) or message == "readonly":
            conn.disconnect()
            self._unknownConnections.discard(conn)
            return
        return super()._onIncomingMessageReceived(conn, message)

    _next_connect_check = 0.0

    def _onTick(self) -> None:
        # pysyncobj checks every peer's connection on every tick, and we tick per socket event. Peers
        # are redialled at most every connectionRetryTime (0.5 s) anyway: looking every 20 ms is plenty.
        now = time.monotonic()
        if now >= self._next_connect_check:
            self._next_connect_check = now + TICK_PERIOD
            super()._onTick()

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        if type(message) is dict and message.get("type") == "append_entries":
            self.last_leader_contact = time.monotonic()
        super()._onMessageReceived(node, message)


def _no_send() -> None:
    pass


class _LoopPoller:
    """pysyncobj's poller interface on the event loop: sockets are watched by the loop's own epoll,
    a ready socket runs pysyncobj's handler and then a tick at once; ``poll`` has nothing to wait for."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self._loop = loop
        self._wake = wake
        self._readers: dict[int, Callable[[int, int], None]] = {}

    def subscribe(self, descr: int, callback: Callable[[int, int], None], event_mask: int) -> None:
        self.unsubscribe(descr)
        # An error shows up as readiness to read (or write while connecting): the handler finds it.
        if event_mask & (POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR):
            self._readers[descr] = callback
            self._loop.add_reader(descr, self._fire, callback, descr, POLL_EVENT_TYPE.READ)
        if event_mask & POLL_EVENT_TYPE.WRITE:
            self._loop.add_writer(descr, self._fire, callback, descr, POLL_EVENT_TYPE.WRITE)

    def unsubscribe(self, descr: int) -> None:
        self._readers.pop(descr, None)
        try:
            self._loop.remove_reader(descr)
            self._loop.remove_writer(descr)
        except (ValueError, OSError):  # already closed
            pass

    def poll(self, timeout: float) -> None:
        return None

    def read_waiting(self) -> None:
        """Hand pysyncobj what its sockets hold already. After the loop was busy elsewhere, the loop runs its
        timers before it polls: a follower's periodic tick would judge the leader silent (and stand for election)
        with the leader's heartbeats unread in its socket."""
        if not self._readers:
            return
        try:
            ready, _, _ = select.select(list(self._readers), [], [], 0)
        except (OSError, ValueError):  # a socket closed meanwhile: its handler has been told, or will be
            return
        for descr in ready:
            callback = self._readers.get(descr)
            if callback is not None:
                try:
                    callback(descr, POLL_EVENT_TYPE.READ)
                except Exception:
                    log.exception("raft socket handler failed")

    def _fire(self, callback: Callable[[int, int], None], descr: int, event: int) -> None:
        try:
            callback(descr, event)
        except Exception:
            log.exception("raft socket handler failed")
        self._wake()


class _TickNotifier:
    """Stands in for pysyncobj's wake-up pipe: a proposal on the loop ticks at once (it is queued by then)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.notify = wake


class _SyncObj(SyncObj):
    def __init__(
        self, self_addr: str, peers: list[str], conf: SyncObjConf, fsm: FSM, listen: bool, poller: _LoopPoller
    ) -> None:
        # Set before SyncObj.__init__ so pysyncobj treats them as plumbing, not replicated state.
        self._proconsul_fsm = fsm
        self._proconsul_listen = listen
        self._proconsul_poller = poller
        # pysyncobj bumps raftLastApplied only after the apply callback ran, so a proposer
        # can see its result while raftLastApplied still names the entry before; track ours.
        self._proconsul_applied = 0
        super().__init__(self_addr, peers, conf, transportClass=_Transport)
        # Its wake-up pipe would cost a write and a read per proposal on the same thread: close it.
        pipe = getattr(self, "_SyncObj__pipeNotifier", None)  # absent with batched appends
        if pipe is not None:
            read_fd, write_fd = pipe._PipeNotifier__pipeR, pipe._PipeNotifier__pipeW
            poller.unsubscribe(read_fd)
            os.close(read_fd)
            os.close(write_fd)
            self._SyncObj__pipeNotifier = _TickNotifier(poller._wake)

    def _SyncObj__applyLogEntries(self) -> bool:
        # Unbatched pysyncobj sends every follower an append as soon as it applies anything, only to
        # carry the new commit index: a send (and a follower wake-up) per entry that the next append
        # or the next heartbeat carries anyway. Followers learn the commit index from those, so a
        # ?stale read on an idle follower lags by at most one heartbeat.
        SyncObj._SyncObj__applyLogEntries(self)
        return False

    # SyncObj.__init__ assigns its own poller to self._poller; the property keeps ours, which every
    # socket pysyncobj opens then registers with.
    @property
    def _poller(self) -> _LoopPoller:
        return self._proconsul_poller

    @_poller.setter
    def _poller(self, value: Any) -> None:
        pass

    def _checkCommandsToApply(self) -> None:
        # Unbatched pysyncobj sends an append to every follower for each queued command. Append
        # everything queued first, then send once: one message per follower carries them all.
        # (The instance attribute shadows the name-mangled method for the duration of the drain.)
        log_ = self._SyncObj__raftLog
        last = log_[-1][1]
        self._SyncObj__sendAppendEntries = _no_send
        try:
            super()._checkCommandsToApply()
        finally:
            del self._SyncObj__sendAppendEntries
        if log_[-1][1] != last and self._isLeader():
            self._SyncObj__sendAppendEntries()

    @replicated
    def apply(self, payload: bytes) -> Any:
        # pysyncobj bumps lastApplied after this returns, so this entry's index is one more.
        index = self.raftLastApplied + 1
        try:
            result = self._proconsul_fsm.apply(payload, index)
            self._proconsul_applied = index
            return result
        except UnknownCommandError as err:
            log.critical("stopping: log entry %d is %s; applying past it would diverge from the cluster", index, err)
            logging.shutdown()
            os._exit(70)


class RaftNode:
    """The async surface over pysyncobj described in the module docstring."""

    def __init__(
        self,
        *,
        fsm: FSM,
        self_addr: str,
        bind_addr: str,
        peers: list[str],
        data_dir: str | None,
        password: str | None,
        tuning: RaftTuning,
        listen: bool = True,
    ) -> None:
        self.fsm = fsm
        self.self_addr = self_addr
        self._bind_addr = bind_addr
        self._initial_peers = [p for p in peers if p != self_addr]
        self._data_dir = data_dir
        self._password = password
        self._tuning = tuning
        self._listen = listen
        self._sync: _SyncObj | None = None
        self._poller: _LoopPoller | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_pending = False
        self._ticking = False
        self._timer: asyncio.TimerHandle | None = None
        # Log entries handed to pysyncobj and not yet settled: a lone voter ticks again until they are.
        self._submitted = 0
        self._settled = 0
        self._batch: list[tuple[bytes, asyncio.Future]] = []  # proposed this loop turn, not yet handed over
        self._is_leader = False
        self._leader: str | None = None
        self._peers: tuple[str, ...] = ()
        self._peers_checked = 0.0
        # Loop-side listeners: leadership (bool) and peer-set changes.
        self.on_leadership: Callable[[bool], None] = lambda is_leader: None
        self.on_peers: Callable[[tuple[str, ...]], None] = lambda peers: None
        self.on_leader: Callable[[str | None], None] = lambda leader: None

    # ------------------------------------------------------------- lifecycle

    def _conf(self) -> SyncObjConf:
        t = self._tuning
        single = not self._initial_peers
        journal = dump = None
        if self._data_dir is not None:
            os.makedirs(self._data_dir, exist_ok=True)
            journal = os.path.join(self._data_dir, "journal")
            dump = os.path.join(self._data_dir, "snapshot.db")
        # A lone voter has no one to wait for: it elects itself almost at once. One that does not even
        # listen (-dev) can never gain peers, so its timers may be shorter still (pysyncobj wants the
        # election timeout above three append periods).
        heartbeat, election = t.heartbeat, (t.election_min, t.election_max)
        if not self._listen:
            heartbeat, election = 0.004, (0.013, 0.016)
        elif single:
            election = (0.16, 0.2)
        return SyncObjConf(
            password=self._password or None,
            autoTick=False,
            appendEntriesUseBatch=t.batch_appends,
            appendEntriesPeriod=heartbeat,
            raftMinTimeout=election[0],
            raftMaxTimeout=election[1],
            leaderFallbackTimeout=t.leader_lease,
            connectionTimeout=max(1.5, t.election_max),
            connectionRetryTime=t.reconnect,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            journalFile=journal,
            fullDumpFile=dump,
            serializer=self._serialize if dump else None,
            deserializer=self._deserialize if dump else None,
            logCompactionMinEntries=max(2, t.snapshot_threshold),
            logCompactionMinTime=t.snapshot_interval,
            bindAddress=self._bind_addr,
            bindRetryTime=0.2,
            maxBindRetries=10,
            useFork=False,
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the raft port and start ticking on ``loop`` (its thread); raises OSError if the port cannot be bound."""
        self._loop = loop
        try:
            self._poller = poller = _LoopPoller(loop, self._tick_now)
            self._sync = _SyncObj(self.self_addr, self._initial_peers, self._conf(), self.fsm, self._listen, poller)
        except Exception as err:
            raise OSError(f"cannot bind raft address {self._bind_addr}: {err}") from None
        self._peers = tuple(sorted([self.self_addr, *self._initial_peers]))
        self._periodic()

    def stop(self) -> None:
        """Stop ticking and close the raft port and journal (on the loop's thread)."""
        if self._stopping:
            return
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        if self._sync is not None:
            try:
                self._sync._doDestroy()
            except Exception:
                log.exception("raft shutdown failed")

    @property
    def started(self) -> bool:
        return self._sync is not None

    def _wake(self) -> None:
        """Ask for a tick at the end of this loop turn (once, however many events asked)."""
        if not self._tick_pending and not self._stopping:
            self._tick_pending = True
            self._loop.call_soon(self._tick)

    def _periodic(self) -> None:
        # Timers (heartbeats, elections, reconnects) need ticks when no socket or proposal asks for one.
        if self._stopping:
            return
        if self._poller is not None:
            self._poller.read_waiting()
        self._tick()
        self._timer = self._loop.call_later(TICK_PERIOD, self._periodic)

    def _tick_now(self) -> None:
        """Tick at once (a proposal to send, a peer's message to act on): each loop turn saved is latency
        a single writer waits. Inside a tick, ask for another instead."""
        if self._ticking:
            self._wake()
        else:
            self._tick()

    def _tick(self) -> None:
        self._tick_pending = False
        if self._stopping:
            return
        self._ticking = True
        try:
            self._sync.doTick(0.0)
        except Exception:
            log.exception("raft tick failed")
        finally:
            self._ticking = False
        self._observe()
        if len(self._peers) <= 1 and self._submitted != self._settled:
            self._wake()  # a lone voter commits in the tick after it appends; nothing else would ask

    def _observe(self) -> None:
        """After each tick: notice leadership, leader and membership changes and tell the listeners."""
        sync = self._sync
        is_leader = sync._isLeader()
        leader_node = sync._getLeader()
        leader = leader_node.address if leader_node is not None else None
        if is_leader != self._is_leader:
            self._is_leader = is_leader
            if not is_leader:
                self.fsm.proposed.clear()
            self._post(self.on_leadership, is_leader)
        if leader != self._leader:
            self._leader = leader
            self._post(self.on_leader, leader)
        now = time.monotonic()
        if now - self._peers_checked > 0.1:
            self._peers_checked = now
            peers = tuple(sorted([self.self_addr, *(n.address for n in list(sync._SyncObj__otherNodes))]))
            if peers != self._peers:
                self._peers = peers
                self._post(self.on_peers, peers)

    def _post(self, fn: Callable, *args: Any) -> None:
        # Listeners run after the tick, not inside pysyncobj's bookkeeping.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon(fn, *args)

    # ------------------------------------------------------------- snapshots (inside a tick)

    def _serialize(self, filename: str, data: tuple) -> None:
        last, prev, cluster = data
        meta = {
            "index": last[1],
            "raft_last": _entry_to_json(last),
            "raft_prev": _entry_to_json(prev),
            "cluster": sorted(node.address for node in cluster),
        }
        write_snapshot(filename, self.fsm.state.dump(), meta)
        log.info("snapshot written at index %d", last[1])

    def _deserialize(self, filename: str) -> tuple:
        tables, meta = read_snapshot(filename)
        self.fsm.state.load(tables)
        log.info("state restored from snapshot at index %d", meta["index"])
        return (
            _entry_from_json(meta["raft_last"]),
            _entry_from_json(meta["raft_prev"]),
            [TCPNode(addr) for addr in meta["cluster"]],
        )

    # ------------------------------------------------------------- async surface

    async def apply(self, cmd: Any, timeout: float = 10.0) -> Any:
        """Propose a command and wait for its result (or NoLeaderError / LeaderChangedError / RaftTimeoutError).

        Batchable commands proposed in the same event-loop turn go into one log entry (a Batch):
        concurrent writers share pysyncobj's per-entry costs, and each still gets its own result.
        """
        sync = self._sync
        if sync is None:
            raise NoLeaderError("No cluster leader")
        loop = self._loop
        fut: asyncio.Future = loop.create_future()
        payload = encode(cmd)
        self.fsm.remember(payload, cmd)
        if type(cmd) in BATCHABLE and (self._batch or self._submitted != self._settled):
            # Others are in flight: wait for the end of this loop turn and share an entry with whoever
            # else writes in it. With nothing in flight the write goes at once (no added latency).
            self._batch.append((payload, fut))
            if len(self._batch) == 1:
                loop.call_soon(self._flush_batch)
        else:
            self._submit(payload, [fut], batched=False)
        timer = loop.call_later(timeout, _time_out, fut)  # half the cost of asyncio.wait_for on this hot path
        try:
            return await fut
        finally:
            timer.cancel()

    def _flush_batch(self) -> None:
        items, self._batch = self._batch, []
        if len(items) == 1:
            self._submit(items[0][0], [items[0][1]], batched=False)
        else:
            self._submit(encode_batch([p for p, _ in items]), [f for _, f in items], batched=True)

    def _submit(self, payload: bytes, futs: list[asyncio.Future], batched: bool) -> None:
        """Hand one log entry to pysyncobj; its result (a list of results when batched) settles ``futs``."""
        sync = self._sync

        def settle(res: Any, err: int) -> None:
            for i, fut in enumerate(futs):
                if fut.done():
                    continue
                if err != FAIL_REASON.SUCCESS:
                    fut.set_exception(_failure(err))
                else:
                    fut.set_result(res[i] if batched else res)

        def done(res: Any, err: int) -> None:
            self._settled += 1
            # The watches this apply fired have already scheduled their waiters: blocking queries, and the
            # agent caches they feed, see a write before its proposer answers.
            settle(res, err)

        if sync is None:
            settle(None, FAIL_REASON.MISSING_LEADER)
            return
        self._submitted += 1
        sync.apply(payload, callback=done)

    async def barrier(self, timeout: float = 10.0) -> None:
        """Commit a no-op: afterwards this node has applied everything committed before the call."""
        await self.apply(BarrierRequest(), timeout)

    def is_leader(self) -> bool:
        return self._is_leader

    def leader(self) -> str | None:
        """The raft address of the last known leader, or None."""
        return self._leader

    def peers(self) -> tuple[str, ...]:
        """Raft addresses of every voter, this node included."""
        return self._peers

    def last_contact(self) -> float:
        """Seconds since the leader was last heard from (0 on the leader; inf if never)."""
        if self._is_leader:
            return 0.0
        sync = self._sync
        if sync is None:
            return float("inf")
        seen = sync._SyncObj__transport.last_leader_contact
        return time.monotonic() - seen if seen else float("inf")

    def applied_index(self) -> int:
        """The last log index whose effects are in the state store."""
        sync = self._sync
        return max(sync.raftLastApplied, sync._proconsul_applied) if sync else 0

    def last_log_index(self) -> int:
        """The index of the last entry in this node's log (committed or not)."""
        return self._sync._SyncObj__raftLog[-1][1] if self._sync else 0

    def last_indexes(self) -> dict[str, int]:
        """The leader's view of each voter's last log index (its own for itself)."""
        out = {self.self_addr: self.last_log_index()}
        if self._sync is not None:
            for key, value in self._sync.getStatus().items():
                if key.startswith("match_idx_server_"):
                    out[key[len("match_idx_server_") :]] = value
        return out

    def stats(self) -> dict[str, Any]:
        """Consul's /v1/agent/self Stats.raft, values as strings like Consul's."""
        if self._sync is None:
            return {"state": "Follower", "applied_index": "0", "commit_index": "0", "last_log_index": "0"}
        st = self._sync.getStatus()
        state = {0: "Follower", 1: "Candidate", 2: "Leader"}[st["state"]]
        return {
            "state": state,
            "term": str(st["raft_term"]),
            "applied_index": str(self.applied_index()),
            "commit_index": str(st["commit_idx"]),
            "last_log_index": str(self.last_log_index()),
            "num_peers": str(st["partner_nodes_count"]),
            "log_len": str(st["log_len"]),
            "leader": st["leader"].address if st["leader"] is not None else "",
            "last_contact": "0" if self._is_leader else f"{self.last_contact() * 1000:.0f}ms",
        }

    def force_compaction(self) -> None:
        """Write a snapshot and truncate the journal on the next tick."""
        if self._sync is not None:
            self._sync.forceLogCompaction()

    async def _membership(self, method: str, addr: str, timeout: float) -> None:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()

        def done(res: Any, err: int) -> None:
            if fut.done():
                return
            if err == FAIL_REASON.SUCCESS:
                fut.set_result(None)
            else:
                fut.set_exception(_failure(err))

        getattr(self._sync, method)(addr, callback=done)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RaftTimeoutError("Timed out changing the Raft configuration") from None

    async def add_server(self, addr: str, timeout: float = 10.0) -> None:
        """Add a voter (pysyncobj dynamic membership); the leader only."""
        await self._membership("addNodeToCluster", addr, timeout)

    async def remove_server(self, addr: str, timeout: float = 10.0) -> None:
        """Remove a voter (pysyncobj dynamic membership); the leader only."""
        await self._membership("removeNodeFromCluster", addr, timeout)

    async def transfer_leadership(self) -> None:
        """Ask the most caught-up follower to take over (Raft TimeoutNow)."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._sync.transferLeadership(None, callback=lambda res, err: fut.done() or fut.set_result(err))
        err = await fut
        if err != FAIL_REASON.SUCCESS:
            raise _failure(err)


def _time_out(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(RaftTimeoutError("Timed out waiting for the Raft log to commit"))


def _failure(err: int) -> Exception:
    cls = _FAILURES.get(err, LeaderChangedError)
    if cls is NoLeaderError:
        return NoLeaderError("No cluster leader")
    if cls is StoreError:
        return StoreError("request denied by the Raft configuration (already a member, or a change is in progress)")
    if cls is RaftTimeoutError:
        return RaftTimeoutError("Raft command queue is full")
    return LeaderChangedError("leadership changed while the command was in flight; its outcome is unknown")


def _entry_to_json(entry: tuple) -> list:
    command, idx, term = entry
    return [base64.b64encode(command).decode("ascii"), idx, term]


def _entry_from_json(data: list) -> tuple:
    return (base64.b64decode(data[0]), int(data[1]), int(data[2]))


def read_peers(path: str) -> dict[str, Any] | None:
    """The persisted peer file (raft addresses and server info), or None before Raft ever started."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_peers(path: str, data: dict[str, Any]) -> None:
    """Persist the peer file atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
