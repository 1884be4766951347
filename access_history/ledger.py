"""The transparency logs in the database: append in parallel, sequence and integrate in batches.

As in Trillian's Tessera, an append only writes its entry and a queue row, in the caller's
transaction, so appends never wait for each other; the entry is durable when that
transaction commits (DESIGN.md, "Log before disclose"). An integrator, one at a time per log
(the state row's lock), takes queued entries in batches, gives them the next leaf indices,
stores their leaf hashes and every new complete subtree's hash, moves the tree's state on
and signs a checkpoint. Proofs are read from the stored subtree hashes; nothing is
recomputed from the entries.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from access_history import tlog
from access_history.models import LOG_NAMES, LogCheckpoint, LogLeaf, LogNode, LogQueue, LogState
from kernel.background import Periodic, nudge, nudge_after_commit
from kernel.db import insert_or_ignore, utcnow

BATCH_MAX = 4096
# what wakes the background loops of this process (kernel.background)
QUEUED = "history-queued"  # entries wait in a log's queue: the integrator
INTEGRATED = "history-integrated"  # the tree grew: whoever reads new leaves (the portal's notifier)


@dataclass(frozen=True)
class LogSigner:
    """Who signs a log's checkpoints: the note key's name, its Ed25519 key, the log's origin."""

    name: str
    private_key: Ed25519PrivateKey
    origin: str

    @property
    def verifier_key(self) -> str:
        return tlog.verifier_key(self.name, self.private_key.public_key())


def enqueue(*, db_session: Session, log: str, entry_ref: int, entry_time: datetime,
            leaf_data: bytes) -> None:
    """Queue an entry's commitment for its log's next integration; the caller commits."""
    db_session.add(LogQueue(log=log, entry_ref=entry_ref, entry_time=entry_time, leaf_data=leaf_data))
    nudge_after_commit(db_session, QUEUED)


def enqueue_many(*, db_session: Session, log: str, rows: list[tuple[int, datetime, bytes]]) -> None:
    """`enqueue` for several entries (id, recorded_at, leaf data) in one statement."""
    if rows:
        db_session.execute(LogQueue.__table__.insert(), [
            {"log": log, "entry_ref": ref, "entry_time": when, "leaf_data": data}
            for ref, when, data in rows])
        nudge_after_commit(db_session, QUEUED)


def _frontier(blob: bytes) -> list[bytes]:
    return [blob[i:i + 32] for i in range(0, len(blob), 32)]


def _lock_state(db_session: Session, log: str) -> LogState | None:
    """The log's state row, locked for this transaction; None if another integrator holds it."""
    if log not in LOG_NAMES:
        raise ValueError(f"no log {log!r}")
    db_session.execute(insert_or_ignore(db_session, LogState).values(
        log=log, size=0, root_hash=tlog.EMPTY_ROOT, frontier=b"", updated_at=utcnow()))
    if db_session.get_bind().dialect.name == "sqlite":
        # pysqlite begins a transaction only at its first write: take SQLite's one write lock
        # now, so a second integrator waits instead of sequencing the same indices
        db_session.execute(update(LogState).where(LogState.log == log).values(size=LogState.size),
                           execution_options={"synchronize_session": False})
        stmt = select(LogState).where(LogState.log == log)
    else:
        stmt = select(LogState).where(LogState.log == log).with_for_update(skip_locked=True)
    return db_session.scalar(stmt.execution_options(populate_existing=True))


def integrate(*, db_session: Session, log: str, signer: LogSigner, batch: int = BATCH_MAX) -> int:
    """Sequence up to `batch` queued entries into the tree and sign the new checkpoint.

    Returns how many entries were integrated (0 if none waited, or another process is
    integrating this log right now). The caller commits; until then nothing is visible.
    """
    return _integrate(db_session, log, signer, batch) or 0


def _integrate(db_session: Session, log: str, signer: LogSigner, batch: int) -> int | None:
    """`integrate`, telling a log another process holds (None) from one with nothing queued (0)."""
    # a plain read first: an idle poll must not open a write transaction (SQLite's one write
    # lock, a PostgreSQL row lock and a WAL flush, several times a second in every process)
    if db_session.scalar(select(LogQueue.id).where(LogQueue.log == log).limit(1)) is None:
        return 0
    state = _lock_state(db_session, log)
    if state is None:
        return None
    queued = db_session.execute(
        select(LogQueue.id, LogQueue.entry_ref, LogQueue.entry_time, LogQueue.leaf_data)
        .where(LogQueue.log == log).order_by(LogQueue.id).limit(batch)
    ).all()
    if not queued:
        return 0
    size, frontier = state.size, _frontier(state.frontier)
    leaves, nodes = [], []
    for _, entry_ref, entry_time, leaf_data in queued:
        node = tlog.leaf_hash(leaf_data)
        leaves.append({"log": log, "leaf_index": size, "entry_ref": entry_ref, "entry_time": entry_time,
                       "leaf_hash": node})
        index, level = size, 0
        while index & 1:  # a right child: fold it with its left sibling on the frontier
            node = tlog.node_hash(frontier.pop(), node)
            index, level = index >> 1, level + 1
            nodes.append({"log": log, "level": level, "node_index": index, "hash": node})
        frontier.append(node)
        size += 1
    root = frontier[-1]
    for left in reversed(frontier[:-1]):
        root = tlog.node_hash(left, root)
    db_session.execute(LogLeaf.__table__.insert(), leaves)
    if nodes:
        db_session.execute(LogNode.__table__.insert(), nodes)
    db_session.execute(delete(LogQueue).where(LogQueue.id.in_([q[0] for q in queued])))
    now = utcnow()
    db_session.execute(update(LogState).where(LogState.log == log).values(
        size=size, root_hash=root, frontier=b"".join(frontier), updated_at=now))
    note = tlog.sign_note(tlog.Checkpoint(signer.origin, size, root).body(), signer.name,
                          signer.private_key)
    db_session.add(LogCheckpoint(log=log, size=size, root_hash=root, note=note, signed_at=now))
    db_session.flush()
    return len(queued)


def pending(*, db_session: Session, log: str) -> int:
    """How many entries wait to be integrated."""
    from sqlalchemy import func

    return db_session.scalar(select(func.count()).select_from(LogQueue).where(LogQueue.log == log)) or 0


# --- reading the tree -------------------------------------------------------------------------


def latest_checkpoint(*, db_session: Session, log: str) -> LogCheckpoint | None:
    """The newest signed checkpoint of the log."""
    return db_session.scalar(select(LogCheckpoint).where(LogCheckpoint.log == log)
                             .order_by(LogCheckpoint.size.desc()).limit(1))


def checkpoint_at(*, db_session: Session, log: str, size: int) -> LogCheckpoint | None:
    return db_session.get(LogCheckpoint, (log, size))


def subtree_reader(db_session: Session, log: str) -> tlog.Subtree:
    """MTH(D[lo:hi]) from the stored hashes: one read for a complete subtree, and for the
    tree's ragged right edge the RFC 9162 split over complete ones."""
    cache: dict[tuple[int, int], bytes] = {}

    def subtree(lo: int, hi: int) -> bytes:
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            if (lo, hi) not in cache:
                level = n.bit_length() - 1
                if level == 0:
                    value = db_session.scalar(select(LogLeaf.leaf_hash).where(
                        LogLeaf.log == log, LogLeaf.leaf_index == lo))
                else:
                    value = db_session.scalar(select(LogNode.hash).where(
                        LogNode.log == log, LogNode.level == level, LogNode.node_index == lo >> level))
                if value is None:
                    raise LookupError(f"the log {log} has no subtree [{lo}, {hi})")
                cache[(lo, hi)] = value
            return cache[(lo, hi)]
        k = tlog.split(n)
        return tlog.node_hash(subtree(lo, lo + k), subtree(lo + k, hi))

    return subtree


def inclusion_proof(*, db_session: Session, log: str, index: int, size: int) -> list[bytes]:
    return tlog.inclusion_proof(index, size, subtree_reader(db_session, log))


def consistency_proof(*, db_session: Session, log: str, old_size: int, new_size: int) -> list[bytes]:
    return tlog.consistency_proof(old_size, new_size, subtree_reader(db_session, log))


def range_proof(*, db_session: Session, log: str, start: int, end: int, size: int) -> list[bytes]:
    return tlog.range_proof(start, end, size, subtree_reader(db_session, log))


def integrated_size(*, db_session: Session, log: str) -> int:
    state = db_session.get(LogState, log)
    return state.size if state else 0


# --- the integrator in the background ---------------------------------------------------------


class Integrator(Periodic):
    """Integrates every log in a daemon thread of the app process: woken by the process's own
    appends, every `interval` seconds while entries keep coming, every `idle_interval` seconds
    otherwise (for entries another process queued).

    Each app process runs one; the state row's lock lets only one of them work on a log at a
    time, the others skip (and look again after `interval`: the holder may have read the queue
    before this process's entries were committed). `run_once` is what the thread repeats (and
    what tests and the CLI call to integrate everything queued before they read the tree).
    """

    name = "history-integrator"
    wakes_on = (QUEUED,)
    PARTITIONS_EVERY = 3600.0  # seconds between checks that next months' partitions exist

    def __init__(self, session_scope: Callable, signers: Callable[[str], LogSigner],
                 interval: float = 0.2, idle_interval: float | None = None):
        super().__init__(interval, idle_interval)
        self._session_scope = session_scope
        self._signers = signers
        self._partitions_checked: float | None = None

    def keep_partitions_ahead(self) -> None:
        """At most once an hour, create the coming months' partitions (PostgreSQL)."""
        from access_history import retention

        now = time.monotonic()
        if self._partitions_checked is not None and now - self._partitions_checked < self.PARTITIONS_EVERY:
            return
        self._partitions_checked = now
        with self._session_scope() as db:
            retention.ensure_partitions(db.connection())

    def run_once(self) -> int:
        self.keep_partitions_ahead()
        done, held = 0, False
        for log in LOG_NAMES:
            while True:
                with self._session_scope() as db:
                    count = _integrate(db, log, self._signers(log), BATCH_MAX)
                held = held or count is None
                done += count or 0
                if not count or count < BATCH_MAX:
                    break
        if done:
            nudge(INTEGRATED)
        self.busy = held  # another process is integrating: look again soon, not after idling
        return done
