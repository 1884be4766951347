"""Access history as a transparency log: durable parallel appends, batched integration into an
RFC 9162 tree, C2SP checkpoints and proofs, one timeline per person, and an auditor's export
whose offline verification names any altered, missing, reordered, extra or rewritten entry."""
from __future__ import annotations

import base64
import json
import secrets
import threading
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from access_history import audit, ledger, service, tlog
from access_history.errors import InvalidLogEntry
from access_history.models import Channel, EntryIn, EntryKind, HistoryEntry, LogLeaf, OperationIn
from access_history.record import commitment
from kernel.db import make_engine, upgrade, utcnow
from kernel.keys import KeyStore
from tests.conftest import fresh_database_url

CITY_A = "http://127.0.0.1:8101/metadata"  # 転出元
CITY_B = "http://127.0.0.1:8102/metadata"  # 転入先
INSURER = "http://127.0.0.1:8103/metadata"
SCOPE = "renkei.test"


class Log:
    """A fresh database with the history's schema (from the migrations) and its keys."""

    def __init__(self, tmp, name: str, keys: KeyStore):
        self.url = fresh_database_url(tmp, name)
        upgrade(self.url)
        self.engine = make_engine(self.url)
        self.keys = keys

    @contextmanager
    def session(self):
        with Session(self.engine, expire_on_commit=False) as db:
            yield db
            db.commit()

    def append(self, entries: list[EntryIn]) -> list[HistoryEntry]:
        with self.session() as db:
            return service.append_many(db_session=db, entries=entries)

    def integrate(self) -> int:
        return service.integrate_all(session_scope=self.session, keys=self.keys, scope=SCOPE)

    def signer(self, log: str = "access") -> ledger.LogSigner:
        return service.log_signer(keys=self.keys, scope=SCOPE, log=log)

    def export(self, filters: audit.ExportFilter | None = None, since_size: int | None = None,
               log: str = "access") -> list[str]:
        filters = filters or audit.ExportFilter()
        self.integrate()
        with self.session() as db:
            return [json.dumps(line, ensure_ascii=False) for line in audit.export(
                db_session=db, log=log, verifier_key=self.signer(log).verifier_key, filters=filters,
                since_size=since_size)]

    def verify(self, lines: list[str], saved: str | None = None) -> audit.Report:
        return audit.verify(lines, verifier_key=self.signer().verifier_key, saved_checkpoint=saved)

    def checkpoint(self, log: str = "access") -> str:
        self.integrate()
        with self.session() as db:
            return ledger.latest_checkpoint(db_session=db, log=log).note


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> KeyStore:
    keys = KeyStore(tmp_path_factory.mktemp("keys"))
    keys.create_secret(service.NOTE_SECRET)
    return keys


@pytest.fixture()
def log(tmp_path, keys) -> Log:
    return Log(tmp_path, f"history_{secrets.token_hex(3)}", keys)


def decision(person: str = "person-1", *, requester: str = CITY_B, provider: str = CITY_A,
             outcome: str = "PERMITTED_BY_CONSENT", permitted: bool = True, **more) -> EntryIn:
    return EntryIn(kind=EntryKind.DECISION, channel=Channel.DISCOVERY, requester=requester,
                   provider=provider, person_key=person, task_code="JUKI", info_type_code="RESIDENT",
                   outcome=outcome, permitted=permitted, decision_id=secrets.token_hex(8), **more)


# --- appending and integrating --------------------------------------------------------------

def test_entries_are_refused_when_malformed():
    with pytest.raises(InvalidLogEntry):
        decision(person="x\x00y")
    with pytest.raises(InvalidLogEntry):
        decision(requester="r" * 2000)
    with pytest.raises(InvalidLogEntry):
        EntryIn(kind="decision", channel="carrier-pigeon", requester=CITY_B, provider=CITY_A,
                person_key="p", task_code="T", info_type_code="I", outcome="O", permitted=True,
                decision_id="d")
    with pytest.raises(InvalidLogEntry):
        decision(sealed_until=utcnow())  # a seal names its reason too


def test_integration_builds_the_rfc9162_tree_and_signs_a_c2sp_checkpoint(log):
    rows = log.append([decision(f"p{i}") for i in range(11)])
    assert log.integrate() == 11
    with log.session() as db:
        leaves = db.execute(select(LogLeaf.leaf_index, LogLeaf.entry_ref, LogLeaf.leaf_hash)
                            .where(LogLeaf.log == "access").order_by(LogLeaf.leaf_index)).all()
        latest = ledger.latest_checkpoint(db_session=db, log="access")
    assert [i for i, _, _ in leaves] == list(range(11))
    data = {row.id: row.leaf_data for row in rows}
    expected_root = tlog.root_of([tlog.leaf_hash(data[ref]) for _, ref, _ in leaves])
    verifier = tlog.parse_verifier_key(log.signer().verifier_key)
    checkpoint = tlog.open_checkpoint(latest.note, verifier, f"{SCOPE}/history/access")
    assert (checkpoint.size, checkpoint.root) == (11, expected_root)
    assert log.integrate() == 0  # nothing queued, nothing signed again


def test_proofs_from_the_database_verify(log):
    log.append([decision(f"p{i}") for i in range(13)])
    log.integrate()
    log.append([decision(f"q{i}") for i in range(6)])
    log.integrate()
    with log.session() as db:
        first = ledger.checkpoint_at(db_session=db, log="access", size=13)
        second = ledger.checkpoint_at(db_session=db, log="access", size=19)
        leaves = db.execute(select(LogLeaf.leaf_hash).where(LogLeaf.log == "access")
                            .order_by(LogLeaf.leaf_index)).scalars().all()
        for index in (0, 7, 12):
            proof = ledger.inclusion_proof(db_session=db, log="access", index=index, size=13)
            tlog.verify_inclusion(leaves[index], index, 13, proof, first.root_hash)
        proof = ledger.consistency_proof(db_session=db, log="access", old_size=13, new_size=19)
    tlog.verify_consistency(13, 19, proof, first.root_hash, second.root_hash)


def test_parallel_appends_are_integrated_exactly_once(log):
    """Appends share no lock: 8 threads append at once, integrators run meanwhile, and every
    entry ends in exactly one leaf."""
    barrier = threading.Barrier(9)
    errors: list[BaseException] = []

    def appender(n: int) -> None:
        barrier.wait(timeout=30)
        try:
            for i in range(15):
                log.append([decision(f"t{n}-{i}")])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    barrier.wait(timeout=30)
    while any(t.is_alive() for t in threads):
        log.integrate()
    for t in threads:
        t.join()
    log.integrate()
    assert not errors
    with log.session() as db:
        refs = db.scalars(select(LogLeaf.entry_ref).where(LogLeaf.log == "access")).all()
        entries = db.scalars(select(HistoryEntry.id)).all()
    assert sorted(refs) == sorted(entries) and len(refs) == 120
    assert log.verify(log.export()).ok


def test_the_integrator_is_woken_by_the_processs_appends(log):
    """The app's integrator does not poll while idle (its idle interval here is an hour): an
    entry committed in the process, alone or through the group-commit appender, wakes it, and
    the entry is integrated at once; then the notifier's topic is nudged."""
    integrated = threading.Event()

    class Listener(ledger.Periodic):
        wakes_on = (ledger.INTEGRATED,)

        def wake(self) -> None:
            integrated.set()

    listener = Listener(3600.0)
    listener.start()
    integrator = ledger.Integrator(log.session, log.signer, interval=0.01, idle_interval=3600.0)
    integrator.start()
    try:
        for size, append in ((1, lambda db: service.append(db_session=db, entry=decision())),
                             (3, lambda db: service.append_durably(db_session=db, entries=[decision(), decision()]))):
            integrated.clear()
            with log.session() as db:
                append(db)
            assert integrated.wait(10), f"entry {size} was not integrated: the integrator slept"
            with log.session() as db:
                assert ledger.integrated_size(db_session=db, log="access") == size
                assert ledger.pending(db_session=db, log="access") == 0
    finally:
        integrator.stop()
        listener.stop()


def test_entries_and_tree_are_append_only_in_the_database(log):
    log.append([decision()])
    log.integrate()
    for statement in ("UPDATE history_entries SET outcome = 'DENIED_BY_PERSON'",
                      "DELETE FROM history_entries", "UPDATE tlog_leaves SET leaf_index = leaf_index + 1",
                      "DELETE FROM tlog_checkpoints"):
        with log.engine.connect() as conn, pytest.raises(DBAPIError):
            conn.execute(text(statement))


# --- export and verification ----------------------------------------------------------------

@pytest.fixture()
def exported(log):
    log.append([decision(f"p{i}", outcome=o, permitted=o != "DENIED_BY_PERSON")
                for i, o in enumerate(["PERMITTED_BY_CONSENT", "DENIED_BY_PERSON"] * 6)])
    lines = log.export()
    assert log.verify(lines).ok, log.verify(lines).summary()
    return log, lines


def _entry_positions(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if json.loads(line)["type"] == "entry"]


def test_a_changed_byte_in_an_entry_is_named(exported):
    log, lines = exported
    at = _entry_positions(lines)[4]
    lines[at] = lines[at].replace("DENIED_BY_PERSON", "PERMITTED_BY_LAW").replace(
        "PERMITTED_BY_CONSENT", "PERMITTED_BY_LAw")
    report = log.verify(lines)
    assert not report.ok and report.index == 4 and "altered" in report.problem


def test_a_removed_entry_is_named(exported):
    log, lines = exported
    del lines[_entry_positions(lines)[5]]
    report = log.verify(lines)
    assert not report.ok and "leaf 5 was expected" in report.problem and "missing" in report.problem


def test_a_swapped_pair_is_named(exported):
    log, lines = exported
    a, b = _entry_positions(lines)[2:4]
    lines[a], lines[b] = lines[b], lines[a]
    report = log.verify(lines)
    assert not report.ok and "leaf 2 was expected" in report.problem


def test_a_cut_tail_is_named(exported):
    log, lines = exported
    assert not log.verify(lines[:-3]).ok
    assert "cut" in log.verify(lines[:-1]).problem


def test_an_extra_entry_is_named(exported):
    log, lines = exported
    at = _entry_positions(lines)[6]
    lines.insert(at, lines[at])
    report = log.verify(lines)
    assert not report.ok and "repeated or reordered" in report.problem


def test_a_replaced_leaf_with_consistent_fields_breaks_the_root(exported):
    """An attacker who rewrites an entry and its commitment (salt and leaf data redone) still
    cannot match the signed root."""
    log, lines = exported
    at = _entry_positions(lines)[3]
    line = json.loads(lines[at])
    line["outcome"] = "PERMITTED_BY_LAW"
    salt = base64.b64decode(line["salt"])
    line["leaf_data"] = base64.b64encode(commitment("access", salt, line)).decode()
    lines[at] = json.dumps(line, ensure_ascii=False)
    report = log.verify(lines)
    assert not report.ok and "root" in report.problem


def test_a_forged_checkpoint_signature_is_refused(exported):
    log, lines = exported
    header = json.loads(lines[0])
    forger = Ed25519PrivateKey.generate()  # a key the auditor never trusted
    body = tlog.note_text(header["checkpoint"])
    header["checkpoint"] = tlog.sign_note(body, f"{SCOPE}/history/access", forger)
    lines[0] = json.dumps(header)
    report = log.verify(lines)
    assert not report.ok and "does not verify" in report.problem


def test_a_history_rewritten_after_a_saved_checkpoint_is_caught(tmp_path, keys, exported):
    """The operator, with superuser rights and even the signing key, rebuilds the log with one
    early entry changed and every hash redone; the auditor's saved checkpoint catches it."""
    log, _ = exported
    saved = log.checkpoint()
    honest = log.export(since_size=12)
    assert log.verify(honest, saved=saved).ok
    forged = Log(tmp_path, f"forged_{secrets.token_hex(3)}", keys)
    with log.session() as db:
        originals = db.scalars(select(HistoryEntry).order_by(HistoryEntry.id)).all()
    forged.append([decision(r.person_key, outcome="PERMITTED_BY_CONSENT" if i == 1 else r.outcome,
                            permitted=True if i == 1 else r.permitted)
                   for i, r in enumerate(originals)] + [decision("later")])
    report = forged.verify(forged.export(since_size=12), saved=saved)
    assert not report.ok and "rewritten" in report.problem
    report = forged.verify(forged.export(), saved=saved)  # no proof embedded: the prefix is recomputed
    assert not report.ok and "rewritten" in report.problem


def test_a_filtered_export_keeps_other_entries_as_leaf_hashes(exported):
    log, _ = exported
    lines = log.export(audit.ExportFilter(outcome="DENIED_BY_PERSON"))
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds.count("entry") == 6 and kinds.count("leaf") == 6
    assert all(json.loads(line).get("outcome") == "DENIED_BY_PERSON"
               for line in lines if json.loads(line)["type"] == "entry")
    assert log.verify(lines).ok


def test_a_time_window_export_covers_its_range_and_verifies(log):
    log.append([decision("early")])
    log.integrate()
    middle = utcnow()
    log.append([decision(f"late{i}") for i in range(5)])
    lines = log.export(audit.ExportFilter(start=middle))
    header = json.loads(lines[0])
    assert (header["start_index"], header["end_index"]) == (1, 6)
    assert log.verify(lines).ok


def test_unreadable_exports_are_reported_not_raised(log):
    log.append([decision()])
    report = log.verify(["{not json"])
    assert not report.ok and "JSON" in report.problem
    assert not log.verify([]).ok


def test_the_operations_log_uses_the_same_machinery(log):
    with log.session() as db:
        service.record_operation(db_session=db, operation=OperationIn(
            actor="operator:sato", channel="api", action="whitelist.import", target="whitelist",
            detail={"before": 3, "after": 4}))
    lines = log.export(log="operations")
    assert [json.loads(x)["type"] for x in lines] == ["header", "entry", "end"]
    assert log.verify(lines).ok is False  # checked against the access log's key name
    assert audit.verify(lines, verifier_key=log.signer("operations").verifier_key).ok


# --- one person's timeline ------------------------------------------------------------------

def test_timeline_pages_stay_stable_while_entries_arrive(log):
    log.append([decision("alice") for _ in range(7)] + [decision("bob")])
    with log.session() as db:
        first = service.timeline(db_session=db, person_key="alice", limit=3)
    log.append([decision("alice") for _ in range(4)])  # arrive while alice reads
    seen = [e.entry.id for e in first.entries]
    cursor = first.next_cursor
    with log.session() as db:
        while cursor:
            page = service.timeline(db_session=db, person_key="alice", limit=3, cursor=cursor)
            seen += [e.entry.id for e in page.entries]
            cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 7  # the old entries, each once; newer ones start a new read
    assert seen == sorted(seen, reverse=True)


def test_a_page_is_the_same_whether_the_recent_window_fills_it_or_not(log):
    """On PostgreSQL a page is first asked for within the last months before its upper bound
    (fewer month partitions to plan); whether that window fills the page or the query falls back
    to the whole history, the pages are the same."""
    log.append([decision("erin") for _ in range(12)])

    def pages(db, now, **filters) -> list[list[int]]:
        seen, cursor = [], None
        while True:
            page = service.timeline(db_session=db, person_key="erin", limit=5, cursor=cursor, now=now,
                                    filters=service.TimelineFilter(**filters))
            seen.append([e.entry.id for e in page.entries])
            cursor = page.next_cursor
            if cursor is None:
                return seen

    with log.session() as db:
        recent = pages(db, utcnow())  # the window holds all twelve: it fills each page
        later = pages(db, utcnow() + 2 * service.TIMELINE_WINDOW)  # the window is empty: fallback
        # an end given with a zone is compared with the naive UTC times without failing
        zoned = pages(db, utcnow(), end=datetime.now(UTC) + timedelta(days=1))
    assert recent == later == zoned
    assert [len(p) for p in recent] == [5, 5, 2]
    flat = [i for p in recent for i in p]
    assert flat == sorted(flat, reverse=True) and len(set(flat)) == 12


def test_timeline_filters(log):
    log.append([decision("carol", outcome="DENIED_BY_PERSON", permitted=False),
                decision("carol", requester=INSURER), decision("carol")])
    with log.session() as db:
        denied = service.timeline(db_session=db, person_key="carol",
                                  filters=service.TimelineFilter(outcome="DENIED_BY_PERSON"))
        insurer = service.timeline(db_session=db, person_key="carol",
                                   filters=service.TimelineFilter(agency=INSURER))
    assert [e.entry.outcome for e in denied.entries] == ["DENIED_BY_PERSON"]
    assert [e.entry.requester for e in insurer.entries] == [INSURER]
    with pytest.raises(ValueError):
        service.Cursor.decode("not-a-cursor")


def test_sealed_entries_open_on_their_date(log):
    until = utcnow() + timedelta(days=30)
    log.append([decision("dave", sealed_until=until, sealed_reason="criminal investigation")])
    with log.session() as db:
        before = service.timeline(db_session=db, person_key="dave").entries[0]
        after = service.timeline(db_session=db, person_key="dave",
                                 now=until + timedelta(seconds=1)).entries[0]
    assert before.sealed and not after.sealed


# --- the fast JSONL export and the batching appender -----------------------------------------

def _jsonl_both_ways(log: Log, filters: audit.ExportFilter, name: str = "access") -> tuple[bytes, bytes]:
    """The JSONL export as the dict path writes it and as the streamed path writes it."""
    import io

    log.integrate()
    key = log.signer(name).verifier_key
    with log.session() as db:
        text_out = io.StringIO()
        audit.export_jsonl(audit.export(db_session=db, log=name, verifier_key=key, filters=filters), text_out)
        counts: dict[str, int] = {}
        fast = b"".join(audit.export_jsonl_chunks(db_session=db, log=name, verifier_key=key,
                                                  filters=filters, counts=counts))
    assert counts["entries"] == text_out.getvalue().count('"type":"entry"')
    return text_out.getvalue().encode("utf-8"), fast


def test_the_streamed_jsonl_export_writes_the_very_bytes_of_the_dict_export(log, monkeypatch):
    """On PostgreSQL the server formats the lines (COPY), on SQLite orjson does: both must be
    byte for byte what `export_jsonl(export(...))` writes, for awkward values too."""
    log.append([decision("alice", legal_basis='番号法 "別表" \\ 第二', staff="窓口 佐藤",
                         detail={"note": "quote \" back\\slash tab\t newline\n 改行", "n": [1, 2.5, None, True],
                                 "big": 12345678901234567890}),
                decision("bob", permitted=False, outcome="DENIED_BY_PERSON", person_rule="rule-9",
                         whitelist_entry="WL-2", query_id="q-1", query_group_id="g-1"),
                decision("carol", sealed_until=utcnow() + timedelta(days=30), sealed_reason="捜査中",
                         asked_at=utcnow() - timedelta(seconds=5))])
    log.append([EntryIn(kind=EntryKind.DISCLOSURE, channel=Channel.REPORT, owner=CITY_A, requester=CITY_B,
                        provider=CITY_A, person_key="alice", task_code="JUKI", info_type_code="RESIDENT",
                        outcome="DISCLOSED", decision_id="d-x", provided_at=utcnow())])
    middle = utcnow()
    log.append([decision(f"late{i}", requester=INSURER) for i in range(3)])
    for chunk in (audit.EXPORT_CHUNK, 2, 3):  # PostgreSQL: chunks formatted on two connections
        monkeypatch.setattr(audit, "EXPORT_CHUNK", chunk)
        for filters in (audit.ExportFilter(), audit.ExportFilter(agency=INSURER),
                        audit.ExportFilter(outcome="DENIED_BY_PERSON"), audit.ExportFilter(start=middle),
                        audit.ExportFilter(end=middle, agency=CITY_A)):
            slow, fast = _jsonl_both_ways(log, filters)
            assert fast == slow, (chunk, filters)
            assert log.verify(fast.decode().splitlines()).ok
    with log.session() as db:
        service.record_operation(db_session=db, operation=OperationIn(
            actor="operator:佐藤", channel="api", action="whitelist.import", target="whitelist",
            detail={"before": 3, "after": "四"}))
    slow, fast = _jsonl_both_ways(log, audit.ExportFilter(), "operations")
    assert fast == slow
    assert audit.verify(fast.decode().splitlines(), verifier_key=log.signer("operations").verifier_key).ok


def _appender(log: Log, **kw):
    from access_history.appender import GroupAppender

    return GroupAppender(log.engine, **kw)


def _rows(entries: list[EntryIn]) -> list[dict]:
    now = utcnow()
    return [service.entry_values(e, now) for e in entries]


def test_concurrent_durable_appends_land_once_each_in_commit_order(log):
    """16 threads hand entries to one appender at once: each is committed (in a batch with
    others), lands in exactly one leaf, and a thread's later entry never precedes its earlier
    one in the tree (batches are written one after another, in order)."""
    group = _appender(log, max_batch=64, max_wait=0.002)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []
    got: dict[int, list[int]] = {}

    def caller(n: int) -> None:
        barrier.wait(timeout=30)
        try:
            got[n] = [group.append(_rows([decision(f"t{n}-{i}")]))[0].id for i in range(25)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert group.committed == 400 and group.batches < 400  # some batches held several callers
    log.integrate()
    with log.session() as db:
        leaves = db.execute(select(LogLeaf.entry_ref, LogLeaf.leaf_index).where(LogLeaf.log == "access")
                            .order_by(LogLeaf.leaf_index)).all()
        persons = dict(db.execute(select(HistoryEntry.id, HistoryEntry.person_key)).all())
    refs = [ref for ref, _ in leaves]
    assert sorted(refs) == sorted(i for ids in got.values() for i in ids) and len(set(refs)) == 400
    position = {ref: index for ref, index in leaves}
    for n, ids in got.items():
        assert [persons[i] for i in ids] == [f"t{n}-{i}" for i in range(25)]
        assert [position[i] for i in ids] == sorted(position[i] for i in ids)
    assert refs == sorted(refs)  # ids are given per batch, batches commit in order
    assert log.verify(log.export()).ok


def test_a_message_id_rides_in_the_batch_and_only_its_first_user_is_logged(log):
    """Callers hand entries with the message ID they answer (a `Once`): 24 callers, 4 IDs used
    by 6 callers each, released together into two appenders (two processes' writers: batches
    that commit concurrently) that also take callers without an ID. Each ID is remembered
    once and only its first user's entries are written; every other user is told it was a
    replay (ReplayDetected) and leaves nothing, within a batch and across batches."""
    from kernel.replay import Once, ReplayDetected, SeenMessage

    groups = [_appender(log, max_batch=64, max_wait=0.02), _appender(log, max_batch=64, max_wait=0.02)]
    expires = utcnow().replace(tzinfo=None) + timedelta(minutes=10)
    barrier = threading.Barrier(28)
    outcomes: dict[int, str] = {}
    onces: dict[int, Once] = {}

    def caller(n: int) -> None:
        once = onces[n] = Once("https://city-b.example/sp", f"_req-{n % 4}", expires) if n < 24 else None
        barrier.wait(timeout=30)
        try:
            groups[n % 2].append(_rows([decision(f"p{n}"), decision(f"q{n}")]), once=once)
            outcomes[n] = "logged"
        except ReplayDetected:
            outcomes[n] = "replay"

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(28)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n in range(24) if outcomes[n] == "logged"]
    assert sorted(n % 4 for n in winners) == [0, 1, 2, 3]  # one user of each ID
    assert all(outcomes[n] == "replay" for n in range(24) if n not in winners)
    assert all(outcomes[n] == "logged" for n in range(24, 28))  # no ID: always logged
    assert all(onces[n].remembered == (n in winners) for n in range(24))
    with log.session() as db:
        logged = set(db.scalars(select(HistoryEntry.person_key)))
        seen = db.scalars(select(SeenMessage.message_id).where(SeenMessage.issuer == "https://city-b.example/sp"))
        assert sorted(seen) == ["_req-0", "_req-1", "_req-2", "_req-3"]
    assert logged == {f"{k}{n}" for n in winners + [24, 25, 26, 27] for k in "pq"}
    # later, alone in its batch: still a replay, still nothing written
    with pytest.raises(ReplayDetected):
        groups[0].append(_rows([decision("late")]), once=Once("https://city-b.example/sp", "_req-2", expires))
    with log.session() as db:
        assert db.scalar(select(HistoryEntry.id).where(HistoryEntry.person_key == "late")) is None
    assert log.integrate() == len(logged)


def _fail_entry_inserts(engine, on: bool) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS log_down"))
            if on:
                conn.execute(text("CREATE TRIGGER log_down BEFORE INSERT ON history_entries "
                                  "BEGIN SELECT RAISE(ABORT, 'log storage down'); END"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS log_down ON history_entries"))
            if on:
                conn.execute(text("CREATE OR REPLACE FUNCTION log_down() RETURNS trigger AS $$ "
                                  "BEGIN RAISE EXCEPTION 'log storage down'; END $$ LANGUAGE plpgsql"))
                conn.execute(text("CREATE TRIGGER log_down BEFORE INSERT ON history_entries "
                                  "FOR EACH ROW EXECUTE FUNCTION log_down()"))


def test_a_failed_batch_fails_every_caller_in_it_and_leaves_nothing(log):
    from access_history.errors import LogWriteFailed

    group = _appender(log, max_batch=1000, max_wait=0.05)  # a long wait: the callers share batches
    _fail_entry_inserts(log.engine, True)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def caller(n: int) -> None:
        barrier.wait(timeout=30)
        try:
            group.append(_rows([decision(f"f{n}"), decision(f"g{n}")]))
            outcomes.append("committed")
        except LogWriteFailed:
            outcomes.append("failed")

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _fail_entry_inserts(log.engine, False)
    assert outcomes == ["failed"] * 8 and group.batches == 0
    with log.session() as db:
        assert db.scalar(text("SELECT count(*) FROM history_entries")) == 0
        assert db.scalar(text("SELECT count(*) FROM tlog_queue")) == 0
    assert [a.entry_id for a in group.append(_rows([decision("after")]))]  # the appender goes on
    assert log.integrate() == 1


def test_append_durably_commits_the_callers_writes_first_on_sqlite_too(log):
    """The caller's own open write transaction is committed before its batch is written, so
    the batch's connection never waits for the caller's lock (SQLite: one writer)."""
    with Session(log.engine, expire_on_commit=False) as db:
        service.record_operation(db_session=db, operation=OperationIn(
            actor="operator:sato", channel="api", action="x.y", target="t", detail={}))  # a write
        appended = service.append_durably(db_session=db, entries=[decision("dave")])
        assert not db.in_transaction() or not db.dirty
    with log.session() as db:
        assert db.scalar(select(HistoryEntry.person_key).where(HistoryEntry.id == appended[0].id)) == "dave"
        assert db.scalar(text("SELECT count(*) FROM operation_entries")) == 1
