"""Access history: one hash chain per owner, signed RFC 9162 tree heads, auditor export whose
verification catches any changed, removed, inserted or reordered row; concurrent appends."""
from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from access_history import service as ah
from access_history.errors import ExportInvalid, InvalidLogEntry, LogWriteFailed
from access_history.models import HUB_OWNER, EntryKind, LogEntry, LogEntryIn, LogHead
from kernel.db import make_engine, upgrade, utcnow
from kernel.keys import KeyStore
from tests.conftest import fresh_database_url

CITY_A = "http://127.0.0.1:8101/metadata"  # 転出元
CITY_B = "http://127.0.0.1:8102/metadata"  # 転入先
INSURER = "http://127.0.0.1:8103/metadata"
GENESIS = "0" * 64
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("access_history")
    url = fresh_database_url(tmp, "access_history")
    upgrade(url)  # the schema comes from the migration, not from create_all
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture()
def db(engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> KeyStore:
    store = KeyStore(tmp_path_factory.mktemp("keys"))
    store.create_signing_key("log")  # as `renkei init` does: serving code never creates keys
    return store


def new_owner() -> str:
    """A fresh agency entity ID, so tests sharing the database never share a chain."""
    return f"https://{uuid.uuid4().hex[:12]}.example.jp/sp"


def entry(owner: str, person_key: str = "person-7f3a", **changes) -> LogEntryIn:
    values = {
        "owner": owner,
        "kind": EntryKind.DECISION,
        "decision_id": uuid.uuid4().hex,
        "requester": CITY_B,
        "provider": CITY_A,
        "person_key": person_key,
        "task_code": "JUKI-TENNYU",
        "info_type_code": "JUMINHYO",
        "reason": "PERMITTED_BY_CONSENT",
        "permitted": True,
        "staff": "staff-0042",
        "detail": {"policy_version": 3, "note": "転入届"},
    }
    values.update(changes)
    return LogEntryIn(**values)


def log(db: Session, owner: str, count: int, **changes) -> list[LogEntry]:
    rows = [ah.append(db_session=db, entry=entry(owner, **changes)) for _ in range(count)]
    db.commit()
    return rows


def independent_entry_hash(line: dict) -> str:
    """RFC 9162 leaf hash of the row without its own entry_hash, written out by hand."""
    payload = {k: v for k, v in line.items() if k != "entry_hash"}
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(b"\x00" + data.encode("utf-8")).hexdigest()


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 read literally: split at the largest power of two smaller than n."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


def rehash(line: dict) -> dict:
    line["entry_hash"] = independent_entry_hash(line)
    return line


# --- the Merkle tree hash -------------------------------------------------------------------

# Certificate Transparency's reference test data (merkle_tree_test.cc): the leaf inputs and the
# root of the tree over the first 1..8 of them.
CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
             "606162636465666768696a6b6c6d6e6f"]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("size", range(1, 9))
def test_merkle_root_matches_certificate_transparency_vectors(size):
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(d)).digest() for d in CT_LEAVES[:size]]
    assert ah.merkle_root(leaves).hex() == CT_ROOTS[size - 1]
    assert reference_mth(leaves).hex() == CT_ROOTS[size - 1]


def test_merkle_root_matches_the_rfc_definition_for_every_size():
    leaves = [hashlib.sha256(b"\x00" + i.to_bytes(4, "big")).digest() for i in range(70)]
    for n in range(71):
        assert ah.merkle_root(leaves[:n]) == reference_mth(leaves[:n]), n
    assert ah.merkle_root([]) == hashlib.sha256(b"").digest()


# --- appending ------------------------------------------------------------------------------


def test_each_owner_grows_its_own_chain(db):
    a, b = new_owner(), new_owner()
    for owner in (a, b, a, a, HUB_OWNER, b, a):
        ah.append(db_session=db, entry=entry(owner))
    db.commit()
    for owner, count in ((a, 4), (b, 2)):
        rows = ah.entries_for_owner(db_session=db, owner=owner)
        assert [r.seq for r in rows] == list(range(1, count + 1))
        assert rows[0].prev_hash == GENESIS
        assert all(r.prev_hash == p.entry_hash for p, r in itertools.pairwise(rows))
        head = db.get(LogHead, owner)
        assert (head.seq, head.head_hash) == (count, rows[-1].entry_hash)
    # the hub's own log is an owner like any other
    hub_rows = ah.entries_for_owner(db_session=db, owner=HUB_OWNER)
    assert hub_rows[-1].seq == db.get(LogHead, HUB_OWNER).seq
    assert [r.seq for r in ah.entries_for_owner(db_session=db, owner=a, since_seq=1,
                                                 until_seq=3)] == [2, 3]


def test_entry_hashes_recompute_from_the_exported_fields(db):
    owner = new_owner()
    log(db, owner, 3, person_key="person-secret-key")
    log(db, owner, 1, kind="disclosure", permitted=None, reason="DISCLOSED", staff=None)
    lines = list(ah.export(db_session=db, owner=owner))
    assert [line["seq"] for line in lines] == [1, 2, 3, 4]
    for line in lines:
        assert line["entry_hash"] == independent_entry_hash(line)
        assert ISO_Z.fullmatch(line["recorded_at"])
        assert "person_key" not in line and "person-secret-key" not in json.dumps(line)
    assert lines[-1]["permitted"] is None and lines[-1]["kind"] == "disclosure"
    # the same person is a different reference in another owner's export (unlinkable)
    other = new_owner()
    log(db, other, 1, person_key="person-secret-key")
    assert next(ah.export(db_session=db, owner=other))["person_ref"] != lines[0]["person_ref"]
    assert ah.verify_export(lines).ok


def test_a_rolled_back_append_leaves_no_trace(db):
    owner = new_owner()
    log(db, owner, 2)
    ah.append(db_session=db, entry=entry(owner))
    db.rollback()
    assert db.get(LogHead, owner).seq == 2
    assert log(db, owner, 1)[0].seq == 3
    assert ah.verify_export(ah.export(db_session=db, owner=owner)).ok


def test_a_session_holding_an_old_head_still_appends_after_the_newest(engine):
    owner = new_owner()
    with (Session(engine, expire_on_commit=False) as first,
          Session(engine, expire_on_commit=False) as second):
        log(first, owner, 1)
        held = first.get(LogHead, owner)  # kept in first's identity map across commits
        log(second, owner, 1)
        assert log(first, owner, 1)[0].seq == 3 and held.seq == 3
        assert ah.verify_export(ah.export(db_session=first, owner=owner)).ok


def test_a_failed_write_raises_log_write_failed(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'no_tables.sqlite3'}")  # never migrated
    with Session(engine) as session, pytest.raises(LogWriteFailed):
        ah.append(db_session=session, entry=entry(new_owner()))
    engine.dispose()


@pytest.mark.parametrize("changes", [
    {"kind": "lookup"},
    {"kind": "decision", "permitted": None},
    {"kind": "relay", "permitted": None},
    {"owner": "city a"},
    {"owner": ""},
    {"person_key": ""},
    {"task_code": "X" * 65},
    {"permitted": "yes"},
    {"detail": {"blob": "x" * 5000}},
    {"detail": {1: "not a text key"}},
    {"detail": {"nan": float("nan")}},
])
def test_malformed_entries_are_refused(changes):
    with pytest.raises(InvalidLogEntry):
        entry(**{"owner": new_owner(), **changes})


def test_entries_cannot_be_changed_or_deleted_in_the_database(db):
    owner = new_owner()
    log(db, owner, 1)
    for statement in ("UPDATE access_log_entries SET reason = 'X' WHERE owner = :o",
                      "DELETE FROM access_log_entries WHERE owner = :o"):
        with pytest.raises(DBAPIError, match="append-only"):
            db.execute(text(statement), {"o": owner})
        db.rollback()
    assert len(ah.entries_for_owner(db_session=db, owner=owner)) == 1


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_signature_verifies_and_root_recomputes(db, keys):
    owner = new_owner()
    rows = log(db, owner, 11)
    cp = ah.checkpoint(db_session=db, owner=owner, keys=keys)
    db.commit()
    assert (cp.owner, cp.seq, cp.tree_size) == (owner, 11, 11)
    leaves = [bytes.fromhex(r.entry_hash) for r in rows]
    assert cp.root_hash == reference_mth(leaves).hex()
    published = cp.as_dict()
    signed = (f"renkei-access-log-checkpoint/v1\n{owner}\n11\n{cp.root_hash}\n"
              f"{published['signed_at']}").encode()
    public_key = keys.ensure_signing_key("log").public_key
    public_key.verify(base64.b64decode(published["signature"]), signed, padding.PKCS1v15(),
                      hashes.SHA256())  # raises InvalidSignature if it does not verify
    assert published["key_version"] == keys.ensure_signing_key("log").version
    # an unchanged log keeps its tree head; a grown one gets a new one
    assert ah.checkpoint(db_session=db, owner=owner, keys=keys).id == cp.id
    log(db, owner, 1)
    newer = ah.checkpoint(db_session=db, owner=owner, keys=keys)
    db.commit()
    assert newer.tree_size == 12 and newer.root_hash != cp.root_hash
    assert ah.latest_checkpoint(db_session=db, owner=owner).id == newer.id
    report = ah.verify_export(ah.export(db_session=db, owner=owner), checkpoint=newer.as_dict(),
                              public_keys=ah.log_public_keys(keys))
    assert report.ok and report.checkpoint_verified


def test_checkpoint_of_an_empty_log(db, keys):
    owner = new_owner()
    cp = ah.checkpoint(db_session=db, owner=owner, keys=keys)
    db.commit()
    assert cp.tree_size == 0 and cp.root_hash == hashlib.sha256(b"").hexdigest()
    assert ah.verify_export([], checkpoint=cp.as_dict(),
                            public_keys=ah.log_public_keys(keys)).ok


# --- auditor export: tampering is detected ---------------------------------------------------


@pytest.fixture(scope="module")
def audited(engine, keys):
    """An owner's export of 8 rows, its checkpoint and the trusted keys."""
    owner = new_owner()
    with Session(engine) as db:
        log(db, owner, 8)
        cp = ah.checkpoint(db_session=db, owner=owner, keys=keys).as_dict()
        db.commit()
        lines = list(ah.export(db_session=db, owner=owner))
    return lines, cp, ah.log_public_keys(keys)


def verify(lines, audited, checkpoint=True, **kwargs):
    _, cp, public_keys = audited
    return ah.verify_export(lines, checkpoint=cp if checkpoint else None,
                            public_keys=public_keys, **kwargs)


def test_an_untouched_export_verifies(audited):
    lines = audited[0]
    report = verify(copy.deepcopy(lines), audited)
    assert report.ok and report.checkpoint_verified and report.rows == 8
    assert report.heads[lines[0]["owner"]] == (8, lines[-1]["entry_hash"])
    report.raise_if_invalid()


@pytest.mark.parametrize("field,value", [
    ("permitted", False), ("reason", "PERMITTED_BY_LAW"), ("requester", INSURER),
    ("staff", None), ("detail", {"policy_version": 4, "note": "転入届"}),
    ("recorded_at", "2020-01-01T00:00:00.000000Z"), ("person_ref", "0" * 64),
])
def test_a_changed_field_is_detected_at_its_seq(audited, field, value):
    lines = copy.deepcopy(audited[0])
    lines[2][field] = value
    report = verify(lines, audited, checkpoint=False)
    assert not report.ok and report.first_bad_seq == 3
    with pytest.raises(ExportInvalid, match="seq 3"):
        report.raise_if_invalid()


def test_a_changed_and_rehashed_row_breaks_the_next_link(audited):
    lines = copy.deepcopy(audited[0])
    lines[2]["permitted"] = False
    rehash(lines[2])
    report = verify(lines, audited, checkpoint=False)
    assert not report.ok and report.first_bad_seq == 4 and "prev_hash" in report.problem


def test_a_rewritten_chain_is_caught_only_by_the_checkpoint(audited):
    lines = copy.deepcopy(audited[0])
    lines[2]["permitted"] = False
    for previous, line in itertools.pairwise(lines[2:]):
        rehash(previous)
        line["prev_hash"] = previous["entry_hash"]
    rehash(lines[-1])
    assert verify(lines, audited, checkpoint=False).ok  # a hash chain alone is self-consistent
    report = verify(lines, audited)
    assert not report.ok and "Merkle root" in report.problem


@pytest.mark.parametrize("index", [0, 3, 6])
def test_a_removed_row_is_detected(audited, index):
    lines = copy.deepcopy(audited[0])
    del lines[index]
    report = verify(lines, audited, checkpoint=False)
    assert not report.ok and report.first_bad_seq == index + 1


def test_an_inserted_row_is_detected(audited):
    lines = copy.deepcopy(audited[0])
    forged = copy.deepcopy(lines[4])  # a plausible seq 6, chained to the real seq 5
    forged.update(seq=6, reason="PERMITTED_BY_LAW", prev_hash=lines[4]["entry_hash"])
    lines.insert(5, rehash(forged))
    report = verify(lines, audited, checkpoint=False)
    assert not report.ok and report.first_bad_seq == 6 and "inserted" in report.problem
    unnumbered = copy.deepcopy(audited[0])
    unnumbered.insert(5, copy.deepcopy(unnumbered[1]))  # a copy of seq 2 slipped in
    assert verify(unnumbered, audited, checkpoint=False).first_bad_seq == 2


def test_two_swapped_rows_are_detected(audited):
    lines = copy.deepcopy(audited[0])
    lines[4], lines[5] = lines[5], lines[4]
    report = verify(lines, audited, checkpoint=False)
    assert not report.ok and report.first_bad_seq == 5
    # swapping contents but keeping the seq numbers in order breaks the hashes instead
    swapped = copy.deepcopy(audited[0])
    swapped[4]["seq"], swapped[5]["seq"] = 6, 5
    swapped[4], swapped[5] = swapped[5], swapped[4]
    assert verify(swapped, audited, checkpoint=False).first_bad_seq == 5
    # and reordering is caught even where gaps are expected (a person's selection)
    selection = verify(lines, audited, checkpoint=False, coverage=ah.Coverage.SELECTION)
    assert not selection.ok and selection.first_bad_seq == 5


def test_a_truncated_tail_is_caught_by_the_checkpoint(audited):
    lines = copy.deepcopy(audited[0])[:6]
    assert verify(lines, audited, checkpoint=False).ok  # nothing else can know the tail
    report = verify(lines, audited)
    assert not report.ok and report.first_bad_seq == 7 and not report.checkpoint_verified


def test_a_forged_checkpoint_is_refused(audited, tmp_path):
    lines, cp, public_keys = audited
    intruder = KeyStore(tmp_path / "intruder").ensure_signing_key("log")
    forged = dict(cp, root_hash=hashlib.sha256(b"other").hexdigest())
    signed = (f"renkei-access-log-checkpoint/v1\n{cp['owner']}\n{cp['seq']}\n"
              f"{forged['root_hash']}\n{cp['signed_at']}").encode()
    forged["signature"] = base64.b64encode(
        intruder.private_key.sign(signed, padding.PKCS1v15(), hashes.SHA256())).decode()
    for bad in (forged,
                dict(cp, root_hash=forged["root_hash"]),  # the hub's signature, another root
                dict(cp, seq=6, tree_size=6),  # the hub's signature, a shorter tree
                dict(cp, signed_at="2030-01-01T00:00:00.000000Z"),
                dict(cp, signature="not base64!")):
        report = ah.verify_export(copy.deepcopy(lines), checkpoint=bad, public_keys=public_keys)
        assert not report.ok and "signature" in report.problem, bad
    assert not ah.verify_export(lines, checkpoint=cp, public_keys=[intruder.public_key]).ok


def test_malformed_rows_fail_verification(audited):
    lines = copy.deepcopy(audited[0])
    lines[3]["extra"] = "x"
    assert verify(lines, audited, checkpoint=False).first_bad_seq == 4
    lines = copy.deepcopy(audited[0])
    lines[3]["seq"] = "4"
    assert not verify(lines, audited, checkpoint=False).ok
    assert not verify([*copy.deepcopy(audited[0]), "not a row"], audited, checkpoint=False).ok


# --- export filters -------------------------------------------------------------------------


def test_exports_by_person_and_by_time_window_verify_with_their_coverage(db):
    owner, person = new_owner(), f"person-{uuid.uuid4().hex}"
    log(db, owner, 3)
    time.sleep(0.01)
    start = utcnow()
    log(db, owner, 2, person_key=person)
    log(db, owner, 2)
    end = utcnow()
    time.sleep(0.01)
    log(db, owner, 2)
    mine = list(ah.export(db_session=db, person_key=person))
    assert [(line["owner"], line["seq"]) for line in mine] == [(owner, 4), (owner, 5)]
    assert ah.export_coverage(person_key=person) is ah.Coverage.SELECTION
    assert ah.verify_export(mine, coverage=ah.Coverage.SELECTION).ok
    assert ah.verify_export(mine).first_bad_seq == 1  # not the whole log
    window = list(ah.export(db_session=db, owner=owner, start=start, end=end))
    assert [line["seq"] for line in window] == [4, 5, 6, 7]
    in_tokyo = timezone(timedelta(hours=9))  # an aware window means the same instants
    assert window == list(ah.export(db_session=db, owner=owner, start=start.replace(
        tzinfo=UTC).astimezone(in_tokyo), end=end.replace(tzinfo=UTC).astimezone(in_tokyo)))
    assert ah.export_coverage(start=start, end=end) is ah.Coverage.RANGE
    assert ah.verify_export(window, coverage=ah.Coverage.RANGE).ok
    del window[1]
    assert ah.verify_export(window, coverage=ah.Coverage.RANGE).first_bad_seq == 5


def test_history_page_paginates_newest_first(db):
    person = f"person-{uuid.uuid4().hex}"
    a, b = new_owner(), new_owner()
    for i in range(25):
        ah.append(db_session=db, entry=entry(a if i % 2 else b, person_key=person,
                                              decision_id=f"d-{i:02d}"))
        ah.append(db_session=db, entry=entry(a))  # someone else's entry in between
    db.commit()
    pages, before = [], None
    while True:
        page = ah.entries_for_person(db_session=db, person_key=person, limit=10,
                                     before_id=before)
        if not page:
            break
        pages.append(page)
        before = page[-1].id
    assert [len(p) for p in pages] == [10, 10, 5]
    seen = [row.decision_id for p in pages for row in p]
    assert seen == [f"d-{i:02d}" for i in reversed(range(25))]
    with pytest.raises(ValueError):
        ah.entries_for_person(db_session=db, person_key=person, limit=0)


# --- concurrency ----------------------------------------------------------------------------


def test_concurrent_appends_from_two_sessions_keep_one_chain(engine):
    owner, per_thread = new_owner(), 40
    barrier = threading.Barrier(2)

    def writer(name: str) -> None:
        # like kernel.db.session_scope: objects outlive commits, so a head must be re-read
        with Session(engine, expire_on_commit=False) as session:
            barrier.wait()
            for i in range(per_thread):
                ah.append(db_session=session, entry=entry(owner, decision_id=f"{name}-{i}"))
                session.commit()

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(writer, name) for name in ("left", "right")]
        for future in futures:
            future.result(timeout=120)  # re-raises a writer's error here
    with Session(engine) as db:
        rows = ah.entries_for_owner(db_session=db, owner=owner)
        assert [r.seq for r in rows] == list(range(1, 2 * per_thread + 1))
        assert {r.decision_id.split("-")[0] for r in rows} == {"left", "right"}
        assert ah.verify_export(ah.export(db_session=db, owner=owner)).ok
        assert db.scalar(select(LogHead.seq).where(LogHead.owner == owner)) == 2 * per_thread
