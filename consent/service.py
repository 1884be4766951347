"""Business functions of the consent room: whitelist, the person's policy, receipts, decisions.

The caller owns the transaction: these functions add and flush, they never commit, so a
decision and its access-log entry (another room) commit together.
"""
from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    String,
    Text,
    bindparam,
    cast,
    delete,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session, joinedload

from consent import receipts
from consent.errors import (
    DuplicateWhitelistEntry,
    InvalidPolicyRule,
    RuleNotFound,
    WhitelistImportError,
)
from consent.models import (
    CLASS_PREFIX,
    ConsentMode,
    ConsentReceipt,
    Decision,
    DecisionReason,
    Effect,
    PolicyRule,
    PolicyRuleIn,
    PolicyVersion,
    WhitelistEntry,
    WhitelistEntryIn,
    naive_utc,
    rule_in_force,
)
from federation import service as agencies
from kernel.db import serialize_writers, utcnow
from kernel.keys import KeyStore

# agency entity ID -> the classes it belongs to ("municipality", or "class:municipality")
ClassResolver = Callable[[str], Iterable[str]] | Mapping[str, Iterable[str]]


# --- legal whitelist (別表第２) -----------------------------------------------------------


@dataclass(frozen=True)
class ImportSummary:
    """What an import changed."""

    created: int
    updated: int
    unchanged: int
    removed: int


def list_whitelist(*, db_session: Session, include_retired: bool = False) -> list[WhitelistEntry]:
    """Every active whitelist entry (with `include_retired`, retired ones too), oldest first."""
    query = select(WhitelistEntry).order_by(WhitelistEntry.id)
    if not include_retired:
        query = query.where(WhitelistEntry.retired_at.is_(None))
    return list(db_session.scalars(query))


def get_whitelist_entry(*, db_session: Session, entry_id: int) -> WhitelistEntry | None:
    """One whitelist entry by ID."""
    return db_session.get(WhitelistEntry, entry_id)


def create_whitelist_entry(*, db_session: Session, entry: WhitelistEntryIn) -> WhitelistEntry:
    """Add one entry; refuses a second entry for the same requester, provider, task and info."""
    _refuse_retired_parties(db_session, [entry])
    if _entry_by_key(db_session, entry.key) is not None:
        raise DuplicateWhitelistEntry(
            f"a whitelist entry for {entry.requester} <- {entry.provider}, task "
            f"{entry.task_code}, information {entry.info_type_code} already exists"
        )
    row = WhitelistEntry(**_entry_values(entry))
    db_session.add(row)
    db_session.flush()
    return row


def delete_whitelist_entry(*, db_session: Session, entry_id: int) -> bool:
    """Remove one entry; False when there was none."""
    row = db_session.get(WhitelistEntry, entry_id)
    if row is None:
        return False
    db_session.delete(row)
    db_session.flush()
    return True


def import_whitelist(
    *, db_session: Session, entries: Sequence[WhitelistEntryIn], replace: bool = False
) -> ImportSummary:
    """Upsert `entries` by (requester, provider, task, info); with `replace`, drop the rest."""
    _refuse_duplicates(entries)  # checked before any write: all or nothing
    _refuse_retired_parties(db_session, entries)
    # retired entries are matched too (the key is unique), but stay retired and are never removed
    existing = {_row_key(row): row for row in list_whitelist(db_session=db_session, include_retired=True)}
    created = updated = unchanged = 0
    for entry in entries:
        row = existing.pop(entry.key, None)
        if row is None:
            db_session.add(WhitelistEntry(**_entry_values(entry)))
            created += 1
        elif WhitelistEntryIn.from_row(row) != entry:
            for name, value in _entry_values(entry).items():
                setattr(row, name, value)
            updated += 1
        else:
            unchanged += 1
    removed = 0
    if replace and existing:
        ids = [row.id for row in existing.values() if row.retired_at is None]
        db_session.execute(delete(WhitelistEntry).where(WhitelistEntry.id.in_(ids)))
        removed = len(ids)
    db_session.flush()
    return ImportSummary(created=created, updated=updated, unchanged=unchanged, removed=removed)


def export_whitelist(*, db_session: Session) -> list[WhitelistEntryIn]:
    """The active whitelist as value objects, ready for `whitelist_io.dump_yaml` / `dump_csv`."""
    return [WhitelistEntryIn.from_row(row) for row in list_whitelist(db_session=db_session)]


def find_whitelist_entry(
    *,
    db_session: Session,
    requester: str,
    provider: str,
    task_code: str,
    info_type_code: str,
    classes_of: ClassResolver,
) -> WhitelistEntry | None:
    """The entry allowing this exchange; an entry naming the agency beats one naming its class."""
    question = _question(requester, provider, task_code, info_type_code, classes_of, None)
    best = _best_entry(
        db_session,
        task_code=task_code,
        info_type_code=info_type_code,
        requesters=question.requester_refs,
        providers=question.provider_refs,
    )
    return db_session.get(WhitelistEntry, best.id, populate_existing=True) if best else None


_WHITELIST = WhitelistEntry.__table__
_BEST_ENTRY = select(
    _WHITELIST.c.id, _WHITELIST.c.requester, _WHITELIST.c.provider, _WHITELIST.c.consent,
    _WHITELIST.c.legal_basis,
).where(
    _WHITELIST.c.task_code == bindparam("task_code"),
    _WHITELIST.c.info_type_code == bindparam("info_type_code"),
    _WHITELIST.c.requester.in_(bindparam("requesters", expanding=True)),
    _WHITELIST.c.provider.in_(bindparam("providers", expanding=True)),
    _WHITELIST.c.retired_at.is_(None),
)


def _best_entry(
    db_session: Session,
    *,
    task_code: str,
    info_type_code: str,
    requesters: list[str],
    providers: list[str],
):
    """The most specific live entry, as a row (id, requester, provider, consent, legal_basis):
    one prebuilt Core statement, read afresh on every decision (no ORM identity map that could
    hold a retired entry)."""
    candidates = db_session.connection().execute(_BEST_ENTRY, {
        "task_code": task_code, "info_type_code": info_type_code, "requesters": requesters,
        "providers": providers}).all()
    return min(candidates, key=_specificity, default=None)


def retire_agency(*, db_session: Session, agency: str, at: datetime | None = None) -> int:
    """Retire every entry naming the agency as requester or provider; returns how many.

    The entries stay (history cites them by ID) but no longer decide or list by default.
    """
    result = db_session.execute(
        update(WhitelistEntry)
        .where(
            or_(WhitelistEntry.requester == agency, WhitelistEntry.provider == agency),
            WhitelistEntry.retired_at.is_(None),
        )
        .values(retired_at=at or utcnow())
        .execution_options(synchronize_session="fetch")
    )
    db_session.flush()
    return result.rowcount or 0


def _refuse_retired_parties(db_session: Session, entries: Sequence[WhitelistEntryIn]) -> None:
    parties = {p for e in entries for p in (e.requester, e.provider) if not p.startswith(CLASS_PREFIX)}
    retired = sorted(p for p in parties if agencies.is_retired(db_session=db_session, entity_id=p))
    if retired:
        raise WhitelistImportError([f"agency {p} is retired and cannot be whitelisted" for p in retired])


def task_names(*, db_session: Session) -> dict[str, str]:
    """Task (事務) names by code, as the whitelist spells them."""
    rows = db_session.execute(select(WhitelistEntry.task_code, WhitelistEntry.task_name))
    return {code: name for code, name in rows}


def info_type_names(*, db_session: Session) -> dict[str, str]:
    """Information-type (特定個人情報) names by code, as the whitelist spells them."""
    rows = db_session.execute(
        select(WhitelistEntry.info_type_code, WhitelistEntry.info_type_name)
    )
    return {code: name for code, name in rows}


def _row_key(row: WhitelistEntry) -> tuple[str, str, str, str]:
    return (row.requester, row.provider, row.task_code, row.info_type_code)


def _entry_values(entry: WhitelistEntryIn) -> dict[str, Any]:
    return {
        "requester": entry.requester,
        "provider": entry.provider,
        "task_code": entry.task_code,
        "task_name": entry.task_name,
        "info_type_code": entry.info_type_code,
        "info_type_name": entry.info_type_name,
        "legal_basis": entry.legal_basis,
        "consent": entry.consent.value,
    }


def _entry_by_key(db_session: Session, key: tuple[str, str, str, str]) -> WhitelistEntry | None:
    requester, provider, task_code, info_type_code = key
    return db_session.scalars(
        select(WhitelistEntry).where(
            WhitelistEntry.requester == requester,
            WhitelistEntry.provider == provider,
            WhitelistEntry.task_code == task_code,
            WhitelistEntry.info_type_code == info_type_code,
        )
    ).first()


def _refuse_duplicates(entries: Sequence[WhitelistEntryIn]) -> None:
    first_seen: dict[tuple[str, str, str, str], int] = {}
    problems = []
    for number, entry in enumerate(entries, start=1):
        if entry.key in first_seen:
            problems.append(
                f"entry {number}: duplicate of entry {first_seen[entry.key]} "
                "(same requester, provider, task and information type)"
            )
        first_seen.setdefault(entry.key, number)
    if problems:
        raise WhitelistImportError(problems)


def _specificity(row) -> tuple[bool, bool, int]:
    return (row.requester.startswith(CLASS_PREFIX), row.provider.startswith(CLASS_PREFIX), row.id)


def class_resolver(classes_of: ClassResolver) -> Callable[[str], frozenset[str]]:
    """`classes_of` (a function or a mapping) as a function giving bare class names."""
    lookup = classes_of.get if isinstance(classes_of, Mapping) else classes_of

    def resolve(entity_id: str) -> frozenset[str]:
        names = lookup(entity_id) or ()
        return frozenset(n.removeprefix(CLASS_PREFIX) for n in names)

    return resolve


# --- the person's disclosure policy (利用許諾ポリシー) -------------------------------------


@dataclass(frozen=True)
class PolicyInForce:
    """What a decision reads of the person's newest policy: its version number and its rules as
    rows (id, effect, requester, provider, task_code, info_type_code, valid_from, valid_until),
    in order."""

    version: int
    rules: tuple[Any, ...]


_VERSIONS = PolicyVersion.__table__
_RULES = PolicyRule.__table__
_NEWEST_VERSION = (select(_VERSIONS.c.id).where(_VERSIONS.c.person_key == bindparam("person_key"))
                   .order_by(_VERSIONS.c.version.desc()).limit(1).scalar_subquery())
_POLICY_IN_FORCE = (
    select(_VERSIONS.c.version, _RULES.c.id, _RULES.c.effect, _RULES.c.requester, _RULES.c.provider,
           _RULES.c.task_code, _RULES.c.info_type_code, _RULES.c.valid_from, _RULES.c.valid_until)
    .select_from(_VERSIONS.outerjoin(_RULES, _RULES.c.version_id == _VERSIONS.c.id))
    .where(_VERSIONS.c.id == _NEWEST_VERSION)
    .order_by(_RULES.c.position)
)


def policy_in_force(*, db_session: Session, person_key: str) -> PolicyInForce | None:
    """The person's newest policy as decisions read it (None if they never set one): one
    prebuilt Core statement, read afresh in the decision's transaction."""
    rows = db_session.connection().execute(_POLICY_IN_FORCE, {"person_key": person_key}).all()
    if not rows:
        return None
    return PolicyInForce(rows[0].version, tuple(row for row in rows if row.id is not None))


def get_current_policy(*, db_session: Session, person_key: str) -> PolicyVersion | None:
    """The person's newest policy version (its rules loaded), or None if they never set one."""
    return db_session.scalars(
        select(PolicyVersion)
        .where(PolicyVersion.person_key == person_key)
        .order_by(PolicyVersion.version.desc())
        .limit(1)
        .options(joinedload(PolicyVersion.rules))  # one round trip, rules included
    ).unique().first()


def list_policy_versions(*, db_session: Session, person_key: str) -> list[PolicyVersion]:
    """Every version of the person's policy, newest first (the history is never rewritten)."""
    return list(
        db_session.scalars(
            select(PolicyVersion)
            .where(PolicyVersion.person_key == person_key)
            .order_by(PolicyVersion.version.desc())
        )
    )


def lock_policy(*, db_session: Session, person_key: str) -> None:
    """Make the person's policy changes one at a time, until this transaction ends. A change is
    computed from the policy in force (the portal's form, add_rule, remove_rule): call this
    before reading it, so that of two changes at the same instant the second is computed from
    the first's version, not beside it (one would be lost, or its version number taken)."""
    serialize_writers(db_session, key=f"consent-policy {person_key}", table=_VERSIONS)


def set_policy(
    *,
    db_session: Session,
    person_key: str,
    rules: Sequence[PolicyRuleIn],
    principal_id: str,
    collection_method: str,
    issuer: receipts.ReceiptIssuer | None = None,
    at: datetime | None = None,
) -> PolicyVersion:
    """Make `rules` the person's policy as a new version, and issue its signed consent receipt.

    `collection_method` is the channel the change came through (receipts.COLLECTED_BY_...): the
    receipt states it, so each caller names its own; there is no default to be wrong by.
    """
    at = naive_utc(at) if at else utcnow()
    lock_policy(db_session=db_session, person_key=person_key)
    latest = db_session.scalar(
        select(func.max(PolicyVersion.version)).where(PolicyVersion.person_key == person_key)
    )
    version = PolicyVersion(person_key=person_key, version=(latest or 0) + 1, created_at=at)
    version.rules = [_rule_row(rule, position) for position, rule in enumerate(rules)]
    db_session.add(version)
    db_session.flush()
    _issue_receipt(
        db_session=db_session,
        version=version,
        rules=rules,
        principal_id=principal_id,
        collection_method=collection_method,
        issuer=issuer or receipts.default_issuer(),
    )
    return version


def add_rule(
    *,
    db_session: Session,
    person_key: str,
    rule: PolicyRuleIn,
    principal_id: str,
    collection_method: str,
    issuer: receipts.ReceiptIssuer | None = None,
    at: datetime | None = None,
) -> PolicyVersion:
    """A new policy version: the current rules plus `rule`."""
    lock_policy(db_session=db_session, person_key=person_key)
    return set_policy(
        db_session=db_session,
        person_key=person_key,
        rules=[*_current_rules(db_session, person_key), rule],
        principal_id=principal_id,
        collection_method=collection_method,
        issuer=issuer,
        at=at,
    )


def remove_rule(
    *,
    db_session: Session,
    person_key: str,
    rule_id: int,
    principal_id: str,
    collection_method: str,
    issuer: receipts.ReceiptIssuer | None = None,
    at: datetime | None = None,
) -> PolicyVersion:
    """A new policy version without rule `rule_id` of the current one (revoking it)."""
    lock_policy(db_session=db_session, person_key=person_key)
    current = get_current_policy(db_session=db_session, person_key=person_key)
    rules = current.rules if current else []
    if not any(r.id == rule_id for r in rules):
        raise RuleNotFound(f"rule {rule_id} is not in the person's current policy")
    return set_policy(
        db_session=db_session,
        person_key=person_key,
        rules=[r.as_input() for r in rules if r.id != rule_id],
        principal_id=principal_id,
        collection_method=collection_method,
        issuer=issuer,
        at=at,
    )


def _current_rules(db_session: Session, person_key: str) -> list[PolicyRuleIn]:
    current = get_current_policy(db_session=db_session, person_key=person_key)
    return [r.as_input() for r in current.rules] if current else []


def _rule_row(rule: PolicyRuleIn, position: int) -> PolicyRule:
    return PolicyRule(
        position=position,
        effect=rule.effect.value,
        requester=rule.requester,
        provider=rule.provider,
        task_code=rule.task_code,
        info_type_code=rule.info_type_code,
        valid_from=rule.valid_from,
        valid_until=rule.valid_until,
    )


# --- consent receipts (Kantara CR v1.1) ----------------------------------------------------


def _issue_receipt(
    *,
    db_session: Session,
    version: PolicyVersion,
    rules: Sequence[PolicyRuleIn],
    principal_id: str,
    collection_method: str,
    issuer: receipts.ReceiptIssuer,
) -> ConsentReceipt:
    receipt_id = str(uuid.uuid4())
    claims = receipts.build_claims(
        issuer=issuer,
        receipt_id=receipt_id,
        issued_at=version.created_at,
        collection_method=collection_method,
        principal_id=principal_id,
        rules=rules,
        task_names=task_names(db_session=db_session),
        info_type_names=info_type_names(db_session=db_session),
    )
    row = ConsentReceipt(
        id=receipt_id,
        person_key=version.person_key,
        policy_version=version,
        issued_at=version.created_at,
        key_version=issuer.signing_key.version,
        jws=receipts.sign_receipt(claims, issuer=issuer),
    )
    db_session.add(row)
    db_session.flush()
    return row


def get_receipt(
    *, db_session: Session, receipt_id: str, person_key: str | None = None
) -> ConsentReceipt | None:
    """A stored receipt by its consentReceiptID; with `person_key`, only if it is that person's."""
    row = db_session.get(ConsentReceipt, receipt_id)
    if row is None or (person_key is not None and row.person_key != person_key):
        return None
    return row


def list_receipts(*, db_session: Session, person_key: str) -> list[ConsentReceipt]:
    """The person's receipts, newest first."""
    return list(
        db_session.scalars(
            select(ConsentReceipt)
            .where(ConsentReceipt.person_key == person_key)
            .order_by(ConsentReceipt.issued_at.desc(), ConsentReceipt.version_id.desc())
        )
    )


def verify_stored_receipt(
    *, db_session: Session, receipt_id: str, keys: KeyStore
) -> dict[str, Any]:
    """The verified claims of a stored receipt, checked against every `consent` key version."""
    row = get_receipt(db_session=db_session, receipt_id=receipt_id)
    if row is None:
        raise LookupError(f"no consent receipt {receipt_id}")
    return receipts.verify_receipt(row.jws, public_keys=receipts.receipt_public_keys(keys))


# --- the decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Question:
    """One disclosure question, with the agencies' classes already resolved."""

    requester: str
    provider: str
    task_code: str
    info_type_code: str
    at: datetime
    requester_classes: frozenset[str]
    provider_classes: frozenset[str]

    @property
    def requester_refs(self) -> list[str]:
        """How a whitelist entry may name the requester: itself or one of its classes."""
        return [self.requester, *(CLASS_PREFIX + c for c in sorted(self.requester_classes))]

    @property
    def provider_refs(self) -> list[str]:
        return [self.provider, *(CLASS_PREFIX + c for c in sorted(self.provider_classes))]


READ_FRESH = object()  # `decide` reads the person's policy itself


def decide(
    *,
    db_session: Session,
    person_key: str,
    requester: str,
    provider: str,
    task_code: str,
    info_type_code: str,
    classes_of: ClassResolver,
    at: datetime | None = None,
    policy: PolicyInForce | None | object = READ_FRESH,
) -> Decision:
    """May `provider` disclose `info_type_code` about the person to `requester` for `task_code`?

    `policy` is read afresh unless the caller passes the person's current one, read in the same
    transaction (one query deciding several providers reads it once).
    """
    question = _question(requester, provider, task_code, info_type_code, classes_of, at)
    # 1. the law (別表第２): no whitelist entry, no disclosure
    entry = _best_entry(
        db_session,
        task_code=task_code,
        info_type_code=info_type_code,
        requesters=question.requester_refs,
        providers=question.provider_refs,
    )
    if entry is not None and policy is READ_FRESH:
        # 2. the person (利用許諾ポリシー): read afresh for every query, so a change applies at once
        policy = policy_in_force(db_session=db_session, person_key=person_key)
    return _weighed(entry, question, policy)


def _weighed(entry, question: _Question, policy: PolicyInForce | None) -> Decision:
    """The decision on `question` under the whitelist `entry` found for it (None: none allows
    it) and the person's `policy`."""
    if entry is None:
        return Decision(permitted=False, reason=DecisionReason.NO_WHITELIST_ENTRY,
                        whitelist_entry_id=None, policy_version=None)
    rules = [r for r in (policy.rules if policy else []) if _applies(r, question)]
    # 3. deny beats allow; the entry says whether the law overrides the person's no
    return _weigh(entry, policy.version if policy else None, rules)


_ENTRY_ROWS = select(
    literal("entry").label("kind"), _WHITELIST.c.id, _WHITELIST.c.requester, _WHITELIST.c.provider,
    _WHITELIST.c.task_code, _WHITELIST.c.info_type_code, _WHITELIST.c.consent, _WHITELIST.c.legal_basis,
    cast(null(), Integer).label("version"), cast(null(), String).label("effect"),
    cast(null(), DateTime).label("valid_from"), cast(null(), DateTime).label("valid_until"),
    cast(null(), Integer).label("position"),
).where(
    _WHITELIST.c.task_code == bindparam("task_code"),
    _WHITELIST.c.info_type_code.in_(bindparam("info_type_codes", expanding=True)),
    _WHITELIST.c.requester.in_(bindparam("requesters", expanding=True)),
    _WHITELIST.c.provider.in_(bindparam("providers", expanding=True)),
    _WHITELIST.c.retired_at.is_(None),
)
_RULE_ROWS = (
    select(literal("rule").label("kind"), _RULES.c.id, _RULES.c.requester, _RULES.c.provider, _RULES.c.task_code,
           _RULES.c.info_type_code, cast(null(), String).label("consent"), cast(null(), Text).label("legal_basis"),
           _VERSIONS.c.version, _RULES.c.effect, _RULES.c.valid_from, _RULES.c.valid_until, _RULES.c.position)
    .select_from(_VERSIONS.outerjoin(_RULES, _RULES.c.version_id == _VERSIONS.c.id))
    .where(_VERSIONS.c.id == _NEWEST_VERSION)
)
# the live whitelist entries that may allow a query's exchanges and the person's newest policy,
# in one round trip: rows of kind "entry" (any order) and "rule" (in the policy's order; one
# with a NULL id if the newest version has no rules)
_ENTRIES_AND_POLICY = union_all(_ENTRY_ROWS, _RULE_ROWS).order_by("kind", "position")


def decide_all(
    *,
    db_session: Session,
    person_key: str,
    requester: str,
    task_code: str,
    exchanges: Sequence[tuple[str, str]],
    classes_of: ClassResolver,
    at: datetime | None = None,
) -> dict[tuple[str, str], Decision]:
    """`decide` for each (provider, information type) of one query, the law and the person's
    policy read afresh in one statement: the decision for each, by that pair."""
    questions = {(provider, code): _question(requester, provider, task_code, code, classes_of, at)
                 for provider, code in exchanges}
    if not questions:
        return {}
    rows = db_session.connection().execute(_ENTRIES_AND_POLICY, {
        "task_code": task_code, "person_key": person_key,
        "info_type_codes": sorted({code for _, code in questions}),
        "requesters": sorted({r for q in questions.values() for r in q.requester_refs}),
        "providers": sorted({p for q in questions.values() for p in q.provider_refs}),
    }).all()
    entries = [row for row in rows if row.kind == "entry"]
    rules = [row for row in rows if row.kind == "rule"]
    policy = PolicyInForce(rules[0].version, tuple(r for r in rules if r.id is not None)) if rules else None
    decided = {}
    for pair, question in questions.items():
        requesters, providers = set(question.requester_refs), set(question.provider_refs)
        entry = min((e for e in entries if e.info_type_code == question.info_type_code
                     and e.requester in requesters and e.provider in providers), key=_specificity, default=None)
        decided[pair] = _weighed(entry, question, policy)
    return decided


def _question(
    requester: str,
    provider: str,
    task_code: str,
    info_type_code: str,
    classes_of: ClassResolver,
    at: datetime | None,
) -> _Question:
    if requester.startswith(CLASS_PREFIX) or provider.startswith(CLASS_PREFIX):
        raise ValueError("a decision is about concrete agencies (entity IDs), not classes")
    resolve = class_resolver(classes_of)
    return _Question(
        requester=requester,
        provider=provider,
        task_code=task_code,
        info_type_code=info_type_code,
        at=naive_utc(at) if at else utcnow(),
        requester_classes=resolve(requester),
        provider_classes=resolve(provider),
    )


def _applies(rule, question: _Question) -> bool:
    return (
        rule_in_force(rule, question.at)
        and _party_matches(rule.requester, question.requester, question.requester_classes)
        and _party_matches(rule.provider, question.provider, question.provider_classes)
        and rule.task_code in (None, question.task_code)
        and rule.info_type_code in (None, question.info_type_code)
    )


def _party_matches(pattern: str | None, agency: str, classes: frozenset[str]) -> bool:
    if pattern is None:
        return True
    if pattern.startswith(CLASS_PREFIX):
        return pattern[len(CLASS_PREFIX):] in classes
    return pattern == agency


def _weigh(entry, policy_version: int | None, rules: list) -> Decision:
    deny = next((r for r in rules if r.effect == Effect.DENY), None)
    allow = next((r for r in rules if r.effect == Effect.ALLOW), None)
    override = ConsentMode(entry.consent) is ConsentMode.OVERRIDE

    def outcome(permitted: bool, reason: DecisionReason, rule) -> Decision:
        return Decision(
            permitted=permitted,
            reason=reason,
            whitelist_entry_id=entry.id,
            policy_version=policy_version,
            overridden=reason is DecisionReason.LAW_OVERRIDES_CONSENT,
            rule_id=rule.id if rule else None,
            legal_basis=entry.legal_basis[:512] if entry.legal_basis else None,
        )

    if deny and override:
        return outcome(True, DecisionReason.LAW_OVERRIDES_CONSENT, deny)
    if deny:
        return outcome(False, DecisionReason.DENIED_BY_PERSON, deny)
    if allow:
        return outcome(True, DecisionReason.PERMITTED_BY_CONSENT, allow)
    if override:
        return outcome(True, DecisionReason.PERMITTED_BY_LAW, None)
    return outcome(False, DecisionReason.CONSENT_NOT_GIVEN, None)


# --- the person's rules for one whitelist entry (the portal's policy page) ------------------

ENTRY_CHANGES = ("allow", "deny", "pause", "resume", "clear")


@dataclass(frozen=True)
class EntrySetting:
    """The person's own rules for one whitelist entry, as the portal shows and sets them.

    A pause is a deny beside a kept allow: deny beats allow, and resuming drops the deny alone.
    """

    effect: Effect | None  # what the entry's own rules do now (None: no rule of its own)
    paused: bool
    valid_until: datetime | None  # when the entry's own rule ends (None: until revoked)
    general: Effect | None  # with no rule of its own, what a broader rule of the person does


@dataclass(frozen=True)
class Exchange:
    """One exchange a whitelist entry allows, with one provider holding data about the person."""

    entry: WhitelistEntry
    provider: str
    decision: Decision


def entries_concerning(
    *, db_session: Session, holders: Iterable[str], classes_of: ClassResolver
) -> list[tuple[WhitelistEntry, list[str]]]:
    """Active entries whose provider (itself or its class) holds data about the person, each
    with those holders, oldest entry first."""
    resolve = class_resolver(classes_of)
    held = sorted(set(holders))
    found = []
    for entry in list_whitelist(db_session=db_session):
        providers = [p for p in held if _party_matches(entry.provider, p, resolve(p))]
        if providers:
            found.append((entry, providers))
    return found


def entry_setting(
    *, entry: WhitelistEntry, rules: Sequence[PolicyRuleIn], at: datetime | None = None
) -> EntrySetting:
    """The person's setting for `entry`: its own rules in force, else a broader rule's effect."""
    at = naive_utc(at) if at else utcnow()
    own = [r for r in _own_rules(entry, rules) if _in_force(r, at)]
    deny = next((r for r in own if r.effect is Effect.DENY), None)
    allow = next((r for r in own if r.effect is Effect.ALLOW), None)
    chosen = deny or allow
    general = None
    if chosen is None:
        broader = [r for r in rules if _in_force(r, at) and _covers(r, entry)]
        general = Effect.DENY if any(r.effect is Effect.DENY for r in broader) else (
            Effect.ALLOW if broader else None)
    return EntrySetting(
        effect=chosen.effect if chosen else None,
        paused=deny is not None and allow is not None,
        valid_until=chosen.valid_until if chosen else None,
        general=general,
    )


def change_entry_rules(
    *,
    entry: WhitelistEntry,
    rules: Sequence[PolicyRuleIn],
    change: str,
    valid_until: datetime | None = None,
) -> list[PolicyRuleIn]:
    """The person's rules with `change` (one of ENTRY_CHANGES) made to `entry`'s own rules.

    allow/deny replace the entry's own rules (with an optional end), clear drops them, pause
    adds a deny until further notice and keeps the allow, resume drops the deny again.
    """
    if change not in ENTRY_CHANGES:
        raise InvalidPolicyRule(f"change must be one of {', '.join(ENTRY_CHANGES)}, got {change!r}")
    if valid_until is not None and change not in ("allow", "deny"):
        raise InvalidPolicyRule("only an allow or a deny takes an end date")
    own = _own_rules(entry, rules)
    others = [r for r in rules if r not in own]
    kept_allows = [r for r in own if r.effect is Effect.ALLOW]
    scope = {"requester": entry.requester, "provider": entry.provider,
             "task_code": entry.task_code, "info_type_code": entry.info_type_code}
    if change in ("allow", "deny"):
        return [*others, PolicyRuleIn(effect=Effect(change), valid_until=valid_until, **scope)]
    if change == "pause":
        return [*others, *kept_allows, PolicyRuleIn(effect=Effect.DENY, **scope)]
    if change == "resume":
        return [*others, *kept_allows]
    return others


def weigh_exchanges(
    *,
    entries: Sequence[tuple[WhitelistEntry, Sequence[str]]],
    rules: Sequence[PolicyRuleIn],
    classes_of: ClassResolver,
    at: datetime | None = None,
) -> list[Exchange]:
    """How `rules` (saved or only previewed) decide each entry's exchange with each provider:
    the same weighing as `decide`, so a preview says what the next query will do."""
    resolve = class_resolver(classes_of)
    at = naive_utc(at) if at else utcnow()
    rows = [_rule_row(rule, position) for position, rule in enumerate(rules)]  # never added
    found = []
    for entry, providers in entries:
        # an entry naming a class of requesters: a rule about that class applies to it
        requester_classes = (frozenset({entry.requester.removeprefix(CLASS_PREFIX)})
                             if entry.requester.startswith(CLASS_PREFIX) else resolve(entry.requester))
        for provider in providers:
            question = _Question(
                requester=entry.requester, provider=provider, task_code=entry.task_code,
                info_type_code=entry.info_type_code, at=at,
                requester_classes=requester_classes, provider_classes=resolve(provider),
            )
            applying = [r for r in rows if _applies(r, question)]
            found.append(Exchange(entry=entry, provider=provider, decision=_weigh(entry, None, applying)))
    return found


def _own_rules(entry: WhitelistEntry, rules: Sequence[PolicyRuleIn]) -> list[PolicyRuleIn]:
    key = _row_key(entry)
    return [r for r in rules if (r.requester, r.provider, r.task_code, r.info_type_code) == key]


def _in_force(rule: PolicyRuleIn, at: datetime) -> bool:
    if rule.valid_from is not None and at < rule.valid_from:
        return False
    return rule.valid_until is None or at < rule.valid_until


def _covers(rule: PolicyRuleIn, entry: WhitelistEntry) -> bool:
    # a broader rule: every field it names is the entry's own (None matches anything)
    return all(
        mine is None or mine == theirs
        for mine, theirs in zip(
            (rule.requester, rule.provider, rule.task_code, rule.info_type_code),
            _row_key(entry), strict=True,
        )
    )


@dataclass(frozen=True)
class PolicyChange:
    """One version of the person's policy and what it changed from the version before."""

    version: PolicyVersion
    added: list[PolicyRuleIn]
    removed: list[PolicyRuleIn]
    receipt_id: str | None


def policy_history(*, db_session: Session, person_key: str) -> list[PolicyChange]:
    """Every version of the person's policy, newest first, with the rules each added and removed."""
    versions = list_policy_versions(db_session=db_session, person_key=person_key)
    changes = []
    for newer, older in zip(versions, [*versions[1:], None], strict=True):
        now_rules = Counter(r.as_input() for r in newer.rules)
        before = Counter(r.as_input() for r in older.rules) if older else Counter()
        changes.append(PolicyChange(
            version=newer,
            added=list((now_rules - before).elements()),
            removed=list((before - now_rules).elements()),
            receipt_id=newer.receipt.id if newer.receipt else None,
        ))
    return changes
