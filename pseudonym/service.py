"""Pairwise pseudonyms (仮ID): derive, look up, map back, revoke, rotate; link local IDs.

A pseudonym is HMAC-SHA-256 under a versioned hub secret over (agency, person key), in
lowercase base32, scoped as the SAML Subject Identifier Attributes profile's pairwise-id
(`value@scope`, §3.3). Without the secret no one can compute or pair them.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.orm import Session, aliased

from kernel.db import insert_or_ignore, utcnow
from kernel.errors import UserError, shown
from kernel.keys import KeyStore
from kernel.validate import identifier_problem
from pseudonym.models import (
    AgencyKeyVersion,
    LocalLink,
    MasterIdentifier,
    Pseudonym,
    RetiredAgency,
    Rotation,
)

PAIRWISE_SECRET = "pseudonym"
MASTER_ID_SECRET = "master-id"
_DOMAIN = b"renkei/pairwise-id/v1\x00"
LOCAL_ID_MAX = LocalLink.__table__.c.local_id.type.length  # what PostgreSQL will accept
PSEUDONYM_MAX = Pseudonym.__table__.c.value.type.length  # for boundaries that look one up
MASTER_ID_MAX = 256  # only hashed, never stored; a マイナンバー is 12 digits


class PseudonymError(UserError, ValueError):
    """Bad input to the pseudonym room (unknown pseudonym, bad CSV line, ...)."""


@dataclass(frozen=True)
class Resolved:
    """Who a pseudonym stands for, inside the hub only."""

    person_key: str
    agency: str
    key_version: int


def derive(*, secret: bytes, agency: str, person_key: str, scope: str, generation: int = 0) -> str:
    """The pairwise pseudonym of `person_key` for `agency` (pure function, no database).

    `generation` counts earlier revoked pseudonyms of the pair under the same key, so a
    revoked pseudonym is followed by a fresh, unrelated one.
    """
    message = _DOMAIN + agency.encode() + b"\x00" + person_key.encode()
    if generation:
        message += b"\x00" + str(generation).encode()
    mac = hmac.new(secret, message, hashlib.sha256)
    return base64.b32encode(mac.digest()).decode().rstrip("=").lower() + "@" + scope


def hash_master_id(*, keys: KeyStore, master_id: str) -> tuple[str, int]:
    """Keyed hash of a master identifier; the identifier itself is never stored."""
    version, secret = keys.current_secret(MASTER_ID_SECRET)
    normalized = master_id.strip().replace("-", "").replace(" ", "")
    if not normalized:
        raise PseudonymError("master identifier is empty")
    return hmac.new(secret, normalized.encode(), hashlib.sha256).hexdigest(), version


def agency_key_version(*, db_session: Session, keys: KeyStore, agency: str) -> int:
    """The key version the agency's pseudonyms use (the newest one on first use)."""
    row = db_session.get(AgencyKeyVersion, agency)
    if row is not None:
        return row.key_version
    # a concurrent first use may insert the same row: whoever wins, everyone reads it back
    db_session.execute(insert_or_ignore(db_session, AgencyKeyVersion).values(
        agency=agency, key_version=keys.current_secret_version(PAIRWISE_SECRET), updated_at=utcnow()))
    return db_session.scalar(select(AgencyKeyVersion.key_version).where(AgencyKeyVersion.agency == agency))


# The hot path's statements, built once: executed on the session's connection (the same
# transaction) with only their parameters, they skip the ORM's per-statement work.
def live_value_of(person_key, agency):
    """The live pseudonym of `person_key` at `agency` (columns or bound parameters), as a
    statement of its own or, `.scalar_subquery()`, inside another room's read (the IdP reads it
    with the login session: one round trip for both)."""
    return select(Pseudonym.value).where(
        Pseudonym.person_key == person_key, Pseudonym.agency == agency, Pseudonym.revoked_at.is_(None),
    ).limit(1)


_LIVE = live_value_of(bindparam("person_key"), bindparam("agency"))
_RESOLVE = select(Pseudonym.person_key, Pseudonym.agency, Pseudonym.key_version).where(
    Pseudonym.value == bindparam("value"), Pseudonym.agency == bindparam("agency"), Pseudonym.revoked_at.is_(None)
)
_LIVE_MANY = select(Pseudonym.agency, Pseudonym.value).where(
    Pseudonym.person_key == bindparam("person_key"), Pseudonym.agency.in_(bindparam("agencies", expanding=True)),
    Pseudonym.revoked_at.is_(None),
)


_OTHER = aliased(Pseudonym)
# one round trip for the person behind a pseudonym, the agencies holding data about them (their
# local IDs, newest link first) and the person's live pseudonyms at those agencies
_RESOLVE_WITH_HOLDINGS = (
    select(Pseudonym.person_key, Pseudonym.agency, Pseudonym.key_version, LocalLink.agency.label("holder"),
           LocalLink.local_id, _OTHER.value.label("holder_pseudonym"))
    .select_from(Pseudonym)
    .outerjoin(LocalLink, LocalLink.person_key == Pseudonym.person_key)
    .outerjoin(_OTHER, and_(_OTHER.person_key == Pseudonym.person_key, _OTHER.agency == LocalLink.agency,
                            _OTHER.revoked_at.is_(None)))
    .where(Pseudonym.value == bindparam("value"), Pseudonym.agency == bindparam("agency"),
           Pseudonym.revoked_at.is_(None))
    .order_by(LocalLink.id.desc())
)


def _live_value(db_session: Session, person_key: str, agency: str) -> str | None:
    return db_session.connection().execute(_LIVE, {"person_key": person_key, "agency": agency}).scalar()


def find(*, db_session: Session, person_key: str, agency: str) -> str | None:
    """The live pseudonym of a person for an agency, or None when none was created yet."""
    db_session.flush()  # one created earlier in this session counts (the ORM would autoflush)
    return _live_value(db_session, person_key, agency)


def get_or_create(*, db_session: Session, keys: KeyStore, person_key: str, agency: str, scope: str) -> str:
    """The live pseudonym of a person for an agency, created (and stored) on first use."""
    value = _live_value(db_session, person_key, agency)
    if value is not None:
        return value
    _refuse_retired(db_session, agency)  # only on the rare path that would create one
    version = agency_key_version(db_session=db_session, keys=keys, agency=agency)
    revoked = db_session.scalar(
        select(func.count()).where(
            Pseudonym.person_key == person_key,
            Pseudonym.agency == agency,
            Pseudonym.key_version == version,
        )
    )
    value = derive(
        secret=keys.secret(PAIRWISE_SECRET, version),
        agency=agency,
        person_key=person_key,
        scope=scope,
        generation=revoked or 0,
    )
    # a concurrent first use derives the same value: one insert wins, the other reads it back
    db_session.execute(insert_or_ignore(db_session, Pseudonym).values(
        person_key=person_key, agency=agency, value=value, key_version=version, created_at=utcnow()))
    return _live_value(db_session, person_key, agency)


def resolve(*, db_session: Session, agency: str, value: str) -> Resolved:
    """Map an agency's live pseudonym back to the person (hub-internal use only)."""
    db_session.flush()  # a revocation pending in this session counts (the ORM would autoflush)
    row = db_session.connection().execute(_RESOLVE, {"value": value, "agency": agency}).first()
    if row is None:
        raise PseudonymError("unknown or revoked pseudonym for this agency")
    return Resolved(row.person_key, row.agency, row.key_version)


def revoke(*, db_session: Session, agency: str, value: str) -> None:
    """Revoke one pseudonym; the pair's next use gets a fresh, unrelated one."""
    row = db_session.scalar(
        select(Pseudonym).where(Pseudonym.value == value, Pseudonym.agency == agency)
    )
    if row is None or row.revoked_at is not None:
        raise PseudonymError("unknown or already revoked pseudonym for this agency")
    row.revoked_at = utcnow()
    db_session.flush()


def count_live(*, db_session: Session, agency: str) -> int:
    """How many unrevoked pseudonyms `agency` holds (the size of a rotation)."""
    return db_session.scalar(
        select(func.count()).where(Pseudonym.agency == agency, Pseudonym.revoked_at.is_(None))
    ) or 0


def rotate(
    *,
    db_session: Session,
    keys: KeyStore,
    agency: str,
    scope: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Re-key one agency: new secret version, new pseudonyms, old-to-new map for it alone.

    Returns how many pseudonyms were re-keyed. Other agencies keep their version and values.
    """
    _refuse_retired(db_session, agency)
    old_version = agency_key_version(db_session=db_session, keys=keys, agency=agency)
    new_version = keys.create_secret(PAIRWISE_SECRET)
    secret = keys.secret(PAIRWISE_SECRET, new_version)
    now = utcnow()
    live = db_session.execute(
        select(Pseudonym.id, Pseudonym.person_key, Pseudonym.value).where(
            Pseudonym.agency == agency, Pseudonym.revoked_at.is_(None)
        )
    ).all()
    db_session.execute(
        update(Pseudonym)
        .where(Pseudonym.agency == agency, Pseudonym.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    for count, (_id, person_key, old_value) in enumerate(live, 1):
        new_value = derive(secret=secret, agency=agency, person_key=person_key, scope=scope)
        db_session.add(
            Pseudonym(person_key=person_key, agency=agency, value=new_value, key_version=new_version)
        )
        db_session.add(
            Rotation(
                agency=agency,
                old_value=old_value,
                new_value=new_value,
                from_version=old_version,
                to_version=new_version,
                rotated_at=now,
            )
        )
        if progress and count % 500 == 0:
            progress(500)
    db_session.merge(AgencyKeyVersion(agency=agency, key_version=new_version, updated_at=now))
    db_session.flush()
    if progress:
        progress(len(live) % 500)
    return len(live)


def rotation_map(*, db_session: Session, agency: str) -> dict[str, str]:
    """Old → new pseudonyms of one agency's rotations (chained rotations map to the newest)."""
    rows = db_session.execute(
        select(Rotation.old_value, Rotation.new_value)
        .where(Rotation.agency == agency)
        .order_by(Rotation.id)
    ).all()
    mapping: dict[str, str] = {}
    for old, new in rows:
        for key, value in mapping.items():
            if value == old:
                mapping[key] = new
        mapping[old] = new
    return mapping


def register_master_id(*, db_session: Session, keys: KeyStore, person_key: str, master_id: str) -> None:
    """Record a person's master identifier as a keyed hash."""
    digest, version = hash_master_id(keys=keys, master_id=master_id)
    if db_session.scalar(select(MasterIdentifier.id).where(MasterIdentifier.master_hash == digest)):
        raise PseudonymError("this master identifier is already registered to another person")
    db_session.add(MasterIdentifier(person_key=person_key, master_hash=digest, key_version=version))
    db_session.flush()


def import_local_links(
    *,
    db_session: Session,
    keys: KeyStore,
    agency: str,
    csv_text: str,
    source: str = "CSV",
    progress: Callable[[int], None] | None = None,
) -> int:
    """Link an agency's local record IDs from CSV rows `local_id,master_id` (header optional).

    All or nothing: every line is checked before anything is written; an error names the line.
    """
    _refuse_retired(db_session, agency)
    rows = list(_csv_rows(csv_text, source))
    links: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    hashes = {
        m.master_hash: m.person_key for m in db_session.scalars(select(MasterIdentifier))
    }
    for line_no, local_id, master_id in rows:
        if not local_id:
            raise PseudonymError(f"{source} line {line_no}: local_id is empty")
        if local_id in seen:
            raise PseudonymError(
                f"{source} line {line_no}: local_id {local_id!r} repeats line {seen[local_id]}"
            )
        seen[local_id] = line_no
        try:
            digest, _ = hash_master_id(keys=keys, master_id=master_id)
        except PseudonymError as exc:
            raise PseudonymError(f"{source} line {line_no}: {exc}") from None
        person_key = hashes.get(digest)
        if person_key is None:
            raise PseudonymError(
                f"{source} line {line_no}: no person is registered with that master identifier"
            )
        links.append((line_no, local_id, person_key))
    existing = {
        lid: pk
        for lid, pk in db_session.execute(
            select(LocalLink.local_id, LocalLink.person_key).where(LocalLink.agency == agency)
        )
    }
    written = 0
    for line_no, local_id, person_key in links:
        if local_id in existing:
            if existing[local_id] != person_key:
                raise PseudonymError(
                    f"{source} line {line_no}: local_id {local_id!r} is already linked to another person"
                )
            continue
        db_session.add(LocalLink(agency=agency, local_id=local_id, person_key=person_key))
        written += 1
        if progress:
            progress(1)
    db_session.flush()
    return written


def retire_agency(*, db_session: Session, agency: str, at: datetime | None = None) -> None:
    """Stop making pseudonyms and links for a retired agency; those it has stay (they are history)."""
    if db_session.get(RetiredAgency, agency) is None:
        db_session.add(RetiredAgency(agency=agency, retired_at=at or utcnow()))
        db_session.flush()


def _refuse_retired(db_session: Session, agency: str) -> None:
    # this room cannot ask the registry (federation is on its level), so it keeps its own mark
    if db_session.get(RetiredAgency, agency) is not None:
        raise PseudonymError(f"agency {agency} is retired: no new pseudonyms or links are made for it")


def _csv_rows(text: str, source: str) -> Iterable[tuple[int, str, str]]:
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")), strict=True)
    while True:
        line_no = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv's field size limit (128 KiB)
            raise PseudonymError(f"{source} line {line_no}: not valid CSV: {exc}") from None
        if not row or all(not c.strip() for c in row):
            continue
        if line_no == 1 and [c.strip().lower() for c in row[:2]] == ["local_id", "master_id"]:
            continue
        if len(row) != 2:
            raise PseudonymError(
                f"{source} line {line_no}: expected 2 columns (local_id,master_id), got {len(row)}"
            )
        local_id, master_id = row[0].strip(), row[1].strip()
        if local_id:  # an empty one is named below, with the line
            problem = identifier_problem(local_id, max_length=LOCAL_ID_MAX)
            if problem:
                raise PseudonymError(f"{source} line {line_no}: local_id {shown(local_id)} {problem}")
        if len(master_id) > MASTER_ID_MAX:
            raise PseudonymError(f"{source} line {line_no}: master_id is longer than {MASTER_ID_MAX} characters")
        yield line_no, local_id, master_id


@dataclass(frozen=True)
class ResolvedWithHoldings:
    """`resolve`, `holdings` and the person's live pseudonyms at those holders, read at once."""

    resolved: Resolved
    holdings: dict[str, str]  # agency -> local record ID (the oldest link of an agency)
    holder_pseudonyms: dict[str, str]  # agency -> the person's live pseudonym there, if any


def resolve_with_holdings(*, db_session: Session, agency: str, value: str) -> ResolvedWithHoldings:
    """`resolve` plus `holdings` plus the live pseudonyms at the holders, in one statement."""
    db_session.flush()  # a revocation or link pending in this session counts
    rows = db_session.connection().execute(_RESOLVE_WITH_HOLDINGS, {"value": value, "agency": agency}).all()
    if not rows:
        raise PseudonymError("unknown or revoked pseudonym for this agency")
    first = rows[0]
    held: dict[str, str] = {}
    live: dict[str, str] = {}
    for row in rows:  # newest link first: the oldest link of an agency is written last and wins
        if row.holder is not None:
            held[row.holder] = row.local_id
            if row.holder_pseudonym is not None:
                live[row.holder] = row.holder_pseudonym
    return ResolvedWithHoldings(Resolved(first.person_key, first.agency, first.key_version), held, live)


def local_person(*, db_session: Session, agency: str, local_id: str) -> str | None:
    """The person key an agency's local record ID is linked to (hub-internal)."""
    return db_session.scalar(
        select(LocalLink.person_key).where(LocalLink.agency == agency, LocalLink.local_id == local_id)
    )


def holdings(*, db_session: Session, person_key: str) -> dict[str, str]:
    """Agencies holding data about this person, each with its (first) local record ID: one query."""
    rows = db_session.execute(
        select(LocalLink.agency, LocalLink.local_id)
        .where(LocalLink.person_key == person_key)
        .order_by(LocalLink.id.desc())
    )
    return dict(rows.all())  # the oldest link of an agency wins: it comes last


def get_or_create_many(
    *, db_session: Session, keys: KeyStore, person_key: str, agencies: Iterable[str], scope: str,
    known: dict[str, str] | None = None,
) -> dict[str, str]:
    """The person's live pseudonyms for several agencies, reading them in one query (none if
    `known`, live pseudonyms read earlier in this same transaction, has them all)."""
    wanted = set(agencies)
    if not wanted:
        return {}
    if known is not None and wanted <= known.keys():
        return {agency: known[agency] for agency in wanted}
    found = dict(
        db_session.connection().execute(_LIVE_MANY, {"person_key": person_key, "agencies": sorted(wanted)}).all()
    )
    for agency in wanted - found.keys():
        found[agency] = get_or_create(
            db_session=db_session, keys=keys, person_key=person_key, agency=agency, scope=scope
        )
    return found
