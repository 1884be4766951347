"""Pairwise pseudonyms: stable per (person, agency), different across agencies, unpairable
without the hub's key, revocable, re-keyed for one agency at a time; local-ID linking."""
from __future__ import annotations

import re
import secrets
from collections import Counter

import pytest
from sqlalchemy import select

from kernel.db import session_scope, upgrade
from kernel.keys import KeyStore
from pseudonym import service as ps
from pseudonym.models import LocalLink, MasterIdentifier, Pseudonym
from tests.conftest import fresh_database_url

# SAML V2.0 Subject Identifier Attributes profile §3.3.1, pairwise-id grammar
PAIRWISE_GRAMMAR = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9=-]{0,126}@[a-zA-Z0-9][a-zA-Z0-9.-]{0,126}$")
A, B = "https://city-a.example.jp/sp", "https://insurer.example.jp/sp"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pseudonym")
    url = fresh_database_url(tmp, "pseudonym")
    upgrade(url)
    keys = KeyStore(tmp / "keys")
    keys.ensure_secret(ps.PAIRWISE_SECRET)
    keys.ensure_secret(ps.MASTER_ID_SECRET)  # as `renkei init` does: serving code never creates one
    return url, keys


def pseudonym_for(env, person_key, agency):
    url, keys = env
    with session_scope(url) as db:
        return ps.get_or_create(db_session=db, keys=keys, person_key=person_key, agency=agency,
                                scope="renkei.example.jp")


def test_value_fits_pairwise_id_grammar_and_is_stable(env):
    v = pseudonym_for(env, "p-stable", A)
    assert PAIRWISE_GRAMMAR.match(v)
    assert v.endswith("@renkei.example.jp")
    assert v == pseudonym_for(env, "p-stable", A)
    assert "p-stable" not in v


def test_same_after_restart_is_a_pure_function_of_secret_agency_person(env):
    url, keys = env
    v = pseudonym_for(env, "p-restart", A)
    with session_scope(url) as db:
        row = db.scalar(select(Pseudonym).where(Pseudonym.value == v))
    fresh = KeyStore(keys.directory)  # a new process would load the same files
    assert ps.derive(secret=fresh.load_secret(ps.PAIRWISE_SECRET, row.key_version), agency=A,
                     person_key="p-restart", scope="renkei.example.jp") == v


def test_different_agencies_different_values_and_no_shared_structure(env):
    people = [secrets.token_hex(16) for _ in range(300)]
    a_vals = [pseudonym_for(env, p, A).split("@")[0] for p in people]
    b_vals = [pseudonym_for(env, p, B).split("@")[0] for p in people]
    assert not set(a_vals) & set(b_vals)
    # pairing a dump of A with a dump of B: no shared prefix/suffix beyond what chance gives
    same_first_char = sum(x[0] == y[0] for x, y in zip(a_vals, b_vals, strict=True))
    assert same_first_char < 300 * (1 / 32) * 3  # chance is 1/32
    # order carries nothing either: the rank of A's values tells nothing of B's
    rank_a = {v: i for i, v in enumerate(sorted(a_vals))}
    rank_b = {v: i for i, v in enumerate(sorted(b_vals))}
    matches = sum(rank_a[x] == rank_b[y] for x, y in zip(a_vals, b_vals, strict=True))
    assert matches < 10
    # characters are spread as HMAC output should be; the last character carries only the 256th
    # bit (base32 of 32 bytes), so it is always 'a' or 'q' and is left out of the count
    counts = Counter("".join(v[:-1] for v in a_vals))
    assert len(counts) == 32 and max(counts.values()) / min(counts.values()) < 1.6


def test_another_key_gives_unrelated_values(env, tmp_path):
    other = KeyStore(tmp_path / "other")
    other.create_secret(ps.PAIRWISE_SECRET)
    v = pseudonym_for(env, "p-key", A)
    assert ps.derive(secret=other.load_secret(ps.PAIRWISE_SECRET, 1), agency=A,
                     person_key="p-key", scope="renkei.example.jp") != v


def test_resolve_only_within_the_agency(env):
    url, _ = env
    v = pseudonym_for(env, "p-resolve", A)
    with session_scope(url) as db:
        assert ps.resolve(db_session=db, agency=A, value=v).person_key == "p-resolve"
        with pytest.raises(ps.PseudonymError):
            ps.resolve(db_session=db, agency=B, value=v)


def test_revoked_pseudonym_is_dead_and_replaced_by_a_fresh_one(env):
    url, _keys = env
    v = pseudonym_for(env, "p-rev", B)
    with session_scope(url) as db:
        ps.revoke(db_session=db, agency=B, value=v)
    with session_scope(url) as db, pytest.raises(ps.PseudonymError):
        ps.resolve(db_session=db, agency=B, value=v)
    fresh = pseudonym_for(env, "p-rev", B)
    assert fresh != v and PAIRWISE_GRAMMAR.match(fresh)
    assert pseudonym_for(env, "p-rev", B) == fresh


def test_rotate_rekeys_one_agency_and_keeps_its_map(env):
    url, keys = env
    people = [f"p-rot-{i}" for i in range(20)]
    before_a = {p: pseudonym_for(env, p, A) for p in people}
    before_b = {p: pseudonym_for(env, p, B) for p in people}
    with session_scope(url) as db:
        n = ps.rotate(db_session=db, keys=keys, agency=A, scope="renkei.example.jp")
    assert n >= 20
    after_a = {p: pseudonym_for(env, p, A) for p in people}
    after_b = {p: pseudonym_for(env, p, B) for p in people}
    assert after_b == before_b, "other agencies keep their pseudonyms"
    assert all(after_a[p] != before_a[p] for p in people)
    with session_scope(url) as db:
        mapping = ps.rotation_map(db_session=db, agency=A)
        assert all(mapping[before_a[p]] == after_a[p] for p in people)
        assert ps.rotation_map(db_session=db, agency=B) == {}
        with pytest.raises(ps.PseudonymError):
            ps.resolve(db_session=db, agency=A, value=before_a[people[0]])


def test_link_import_all_or_nothing_and_master_id_never_stored(env):
    url, keys = env
    with session_scope(url) as db:
        ps.register_master_id(db_session=db, keys=keys, person_key="p-link-1", master_id="9999-0000-1111")
        ps.register_master_id(db_session=db, keys=keys, person_key="p-link-2", master_id="9999-0000-2222")
    good = "local_id,master_id\nL-1,9999-0000-1111\nL-2,9999 0000 2222\n"
    bad = good + "L-3,0000-0000-0000\n"
    with session_scope(url) as db, pytest.raises(ps.PseudonymError, match="links.csv line 4"):
        ps.import_local_links(db_session=db, keys=keys, agency=A, csv_text=bad, source="links.csv")
    with session_scope(url) as db:
        assert db.scalar(select(LocalLink).where(LocalLink.agency == A)) is None, "nothing half-written"
    with session_scope(url) as db:
        assert ps.import_local_links(db_session=db, keys=keys, agency=A, csv_text=good) == 2
    with session_scope(url) as db:
        assert ps.local_person(db_session=db, agency=A, local_id="L-2") == "p-link-2"
        assert ps.holdings(db_session=db, person_key="p-link-1") == {A: "L-1"}
        stored = [m.master_hash for m in db.scalars(select(MasterIdentifier))]
        assert stored and all("9999" not in h for h in stored)


def test_link_import_errors_name_the_line(env):
    url, keys = env
    for text, needle in [("L-9\n", "line 1: expected 2 columns"), (",9999-0000-1111\n", "line 1: local_id is empty"),
                         ("L-8,9999-0000-1111\nL-8,9999-0000-2222\n", "line 2: local_id 'L-8' repeats line 1")]:
        with session_scope(url) as db, pytest.raises(ps.PseudonymError, match=needle):
            ps.import_local_links(db_session=db, keys=keys, agency=B, csv_text=text)


def test_simultaneous_first_uses_create_one_pseudonym(env):
    """Hardening: 40 simultaneous first uses of a new agency (the same person, and different
    people) end with one key-version row and one live pseudonym each, never a unique-key error
    (PostgreSQL answered some of them with a 500 before)."""
    from concurrent.futures import ThreadPoolExecutor

    agency = f"https://first-use-{secrets.token_hex(4)}.example.jp/sp"
    people = [f"race-{secrets.token_hex(3)}" for _ in range(8)]
    work = [people[i % len(people)] for i in range(40)]
    barrier = __import__("threading").Barrier(len(work))

    def first_use(person_key: str) -> str:
        barrier.wait(timeout=30)
        return pseudonym_for(env, person_key, agency)

    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        values = list(pool.map(first_use, work))
    by_person: dict[str, set[str]] = {}
    for person_key, value in zip(work, values, strict=True):
        by_person.setdefault(person_key, set()).add(value)
    assert all(len(v) == 1 for v in by_person.values())
    url, _ = env
    with session_scope(url) as db:
        live = db.scalars(select(Pseudonym).where(Pseudonym.agency == agency,
                                                  Pseudonym.revoked_at.is_(None))).all()
    assert sorted(p.person_key for p in live) == sorted(people)
