"""The disclosure decision: whitelist first, then the person's policy, with a reason each time."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from consent import service
from consent.errors import InvalidPolicyRule, RuleNotFound
from consent.models import (
    ConsentMode,
    DecisionReason,
    Effect,
    PolicyRuleIn,
    PolicyVersion,
    WhitelistEntryIn,
)
from consent.receipts import PiiController, ReceiptIssuer
from consent.whitelist_io import DEMO_WHITELIST, read_whitelist_file
from kernel.db import Base, make_engine
from kernel.keys import KeyStore

pytestmark = pytest.mark.nodb  # a private SQLite file, whatever the pass; the PostgreSQL pass skips it

CITY_A = "http://127.0.0.1:8101/metadata"  # 転出元
CITY_B = "http://127.0.0.1:8102/metadata"  # 転入先
INSURER = "http://127.0.0.1:8103/metadata"
ELECTRIC = "http://127.0.0.1:8104/metadata"
CLASSES = {
    CITY_A: {"municipality"},
    CITY_B: {"municipality"},
    INSURER: {"health_insurer"},
    ELECTRIC: {"electricity_company"},
}
PERSON = "person-7f3a"
NOW = datetime(2026, 6, 1, 9, 0, 0)



def question(requester: str, provider: str, task_code: str, info_type_code: str) -> dict:
    return {"requester": requester, "provider": provider, "task_code": task_code,
            "info_type_code": info_type_code}


RESIDENT_RECORD = question(CITY_B, CITY_A, "JUKI-TENNYU", "JUMINHYO")
VACCINE_RELIEF = question(CITY_B, INSURER, "YOBO-KYUSAI", "IRYO-HOKEN-KYUFU")
MOVE_NOTICE = question(ELECTRIC, CITY_A, "TENKYO-TSUCHI", "TENKYO-JOHO")


@pytest.fixture()
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'consent.sqlite3'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        service.import_whitelist(db_session=session, entries=read_whitelist_file(DEMO_WHITELIST))
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture()
def db(engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> ReceiptIssuer:
    keys = KeyStore(tmp_path_factory.mktemp("keys"))
    return ReceiptIssuer(
        signing_key=keys.ensure_signing_key("consent"),
        policy_url="http://127.0.0.1:8000/portal/policy",
        controller=PiiController(url="http://127.0.0.1:8000"),
    )


def decide(db: Session, at: datetime = NOW, classes_of=CLASSES, **question):
    return service.decide(db_session=db, person_key=PERSON, classes_of=classes_of, at=at,
                          **question)


def set_rules(db: Session, issuer: ReceiptIssuer, *rules: PolicyRuleIn) -> PolicyVersion:
    return service.set_policy(collection_method="test-setup", db_session=db, person_key=PERSON, rules=list(rules),
                              principal_id="taro@example.jp", issuer=issuer, at=NOW)


def entry_id(db: Session, task_code: str) -> int:
    return next(e.id for e in service.list_whitelist(db_session=db) if e.task_code == task_code)


# --- each branch ----------------------------------------------------------------------------


def test_no_whitelist_entry_denies_even_with_the_persons_allow(db, issuer):
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW))  # allow everything
    unlisted = question(ELECTRIC, INSURER, "YOBO-KYUSAI", "IRYO-HOKEN-KYUFU")
    decision = decide(db, **unlisted)
    assert not decision.permitted
    assert decision.reason is DecisionReason.NO_WHITELIST_ENTRY
    assert decision.whitelist_entry_id is None and decision.policy_version is None


def test_whitelist_entries_are_directional_and_exact(db):
    reverse = dict(RESIDENT_RECORD, requester=CITY_A, provider=CITY_B)
    other_info = dict(RESIDENT_RECORD, info_type_code="TENNYU-TSUCHI")
    for question in (reverse, other_info):
        assert decide(db, **question).reason is DecisionReason.NO_WHITELIST_ENTRY


def test_consent_required_and_no_policy_denies(db):
    decision = decide(db, **RESIDENT_RECORD)
    assert not decision.permitted
    assert decision.reason is DecisionReason.CONSENT_NOT_GIVEN
    assert decision.whitelist_entry_id == entry_id(db, "JUKI-TENNYU")
    assert decision.policy_version is None


def test_allow_rule_permits_by_consent(db, issuer):
    version = set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, requester=CITY_B,
                                                 info_type_code="JUMINHYO"))
    decision = decide(db, **RESIDENT_RECORD)
    assert decision.permitted and not decision.overridden
    assert decision.reason is DecisionReason.PERMITTED_BY_CONSENT
    assert decision.policy_version == version.version == 1
    assert decision.rule_id == version.rules[0].id
    assert decision.whitelist_entry_id == entry_id(db, "JUKI-TENNYU")


def test_deny_rule_wins_over_allow_rule(db, issuer):
    set_rules(
        db, issuer,
        PolicyRuleIn(effect=Effect.ALLOW),
        PolicyRuleIn(effect=Effect.DENY, requester=CITY_B, task_code="JUKI-TENNYU"),
    )
    decision = decide(db, **RESIDENT_RECORD)
    assert not decision.permitted
    assert decision.reason is DecisionReason.DENIED_BY_PERSON
    deny_rule = service.get_current_policy(db_session=db, person_key=PERSON).rules[1]
    assert decision.rule_id == deny_rule.id


def test_law_overrides_the_persons_deny_and_says_so(db, issuer):
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.DENY, provider=INSURER))
    decision = decide(db, **VACCINE_RELIEF)
    assert decision.permitted
    assert decision.reason is DecisionReason.LAW_OVERRIDES_CONSENT
    assert decision.overridden is True
    assert decision.whitelist_entry_id == entry_id(db, "YOBO-KYUSAI")


def test_override_entry_without_any_rule_is_permitted_by_law_not_marked_overridden(db):
    decision = decide(db, **VACCINE_RELIEF)
    assert decision.permitted and decision.overridden is False
    assert decision.reason is DecisionReason.PERMITTED_BY_LAW


def test_override_entry_with_an_allow_rule_is_permitted_by_consent(db, issuer):
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, task_code="YOBO-KYUSAI"))
    decision = decide(db, **VACCINE_RELIEF)
    assert decision.reason is DecisionReason.PERMITTED_BY_CONSENT and not decision.overridden


def test_decision_is_frozen(db):
    decision = decide(db, **RESIDENT_RECORD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.permitted = True  # type: ignore[misc]


# --- classes of agencies --------------------------------------------------------------------


def test_class_entry_matches_every_agency_of_the_class_and_no_other(db):
    for municipality in (CITY_A, CITY_B):
        question = dict(VACCINE_RELIEF, requester=municipality)
        assert decide(db, **question).reason is DecisionReason.PERMITTED_BY_LAW
    not_a_municipality = dict(VACCINE_RELIEF, requester=ELECTRIC)
    assert decide(db, **not_a_municipality).reason is DecisionReason.NO_WHITELIST_ENTRY
    not_an_insurer = dict(VACCINE_RELIEF, provider=CITY_A)
    assert decide(db, **not_an_insurer).reason is DecisionReason.NO_WHITELIST_ENTRY


def test_classes_come_from_a_function_or_a_mapping_with_or_without_prefix(db):
    def classes_of(agency: str) -> set[str]:
        return {"class:municipality"} if agency == CITY_B else {"health_insurer"}

    assert decide(db, classes_of=classes_of, **VACCINE_RELIEF).permitted
    assert decide(db, classes_of={}, **VACCINE_RELIEF).reason is (
        DecisionReason.NO_WHITELIST_ENTRY
    )


def test_an_entry_naming_the_agency_beats_one_naming_its_class(db):
    specific = WhitelistEntryIn(
        requester=CITY_B, provider="class:health_insurer", task_code="YOBO-KYUSAI",
        task_name="予防接種健康被害救済給付事務", info_type_code="IRYO-HOKEN-KYUFU",
        info_type_name="医療保険給付関係情報", legal_basis="demo: City B asks first",
        consent=ConsentMode.REQUIRED,
    )
    row = service.create_whitelist_entry(db_session=db, entry=specific)
    decision = decide(db, **VACCINE_RELIEF)
    assert decision.whitelist_entry_id == row.id
    assert decision.reason is DecisionReason.CONSENT_NOT_GIVEN
    from_city_a = decide(db, **dict(VACCINE_RELIEF, requester=CITY_A))
    assert from_city_a.reason is DecisionReason.PERMITTED_BY_LAW


def test_rules_can_name_classes_and_filter_on_every_field(db, issuer):
    set_rules(
        db, issuer,
        PolicyRuleIn(effect=Effect.DENY, requester="class:electricity_company"),
        PolicyRuleIn(effect=Effect.ALLOW, provider="class:municipality", task_code="JUKI-TENNYU"),
    )
    assert decide(db, **MOVE_NOTICE).reason is DecisionReason.DENIED_BY_PERSON
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.PERMITTED_BY_CONSENT
    # the allow names another task, so it says nothing about the move-in notice
    notice = question(CITY_A, CITY_B, "JUKI-TENNYU-TSUCHI", "TENNYU-TSUCHI")
    assert decide(db, **notice).reason is DecisionReason.CONSENT_NOT_GIVEN


def test_a_rule_for_another_information_type_or_provider_does_not_apply(db, issuer):
    set_rules(
        db, issuer,
        PolicyRuleIn(effect=Effect.ALLOW, info_type_code="TENKYO-JOHO"),
        PolicyRuleIn(effect=Effect.ALLOW, provider=INSURER),
    )
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.CONSENT_NOT_GIVEN
    assert decide(db, **MOVE_NOTICE).reason is DecisionReason.PERMITTED_BY_CONSENT


def test_decide_refuses_a_class_as_the_asking_agency(db):
    with pytest.raises(ValueError):
        decide(db, **dict(RESIDENT_RECORD, requester="class:municipality"))


# --- validity periods -----------------------------------------------------------------------


def test_expired_allow_rule_does_not_permit(db, issuer):
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, valid_until=NOW - timedelta(days=1)))
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.CONSENT_NOT_GIVEN


def test_allow_rule_not_yet_valid_does_not_permit_until_it_starts(db, issuer):
    start = NOW + timedelta(hours=1)
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, valid_from=start))
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.CONSENT_NOT_GIVEN
    assert decide(db, at=start, **RESIDENT_RECORD).permitted


def test_validity_period_is_start_inclusive_end_exclusive(db, issuer):
    start, end = NOW, NOW + timedelta(days=30)
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, valid_from=start, valid_until=end))
    assert decide(db, at=start, **RESIDENT_RECORD).permitted
    assert decide(db, at=end - timedelta(seconds=1), **RESIDENT_RECORD).permitted
    assert not decide(db, at=end, **RESIDENT_RECORD).permitted


def test_expired_deny_rule_no_longer_denies(db, issuer):
    set_rules(
        db, issuer,
        PolicyRuleIn(effect=Effect.ALLOW),
        PolicyRuleIn(effect=Effect.DENY, valid_until=NOW),
    )
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.PERMITTED_BY_CONSENT
    earlier = NOW - timedelta(minutes=1)
    assert decide(db, at=earlier, **RESIDENT_RECORD).reason is DecisionReason.DENIED_BY_PERSON


def test_aware_times_are_compared_in_utc(db, issuer):
    end = NOW + timedelta(hours=1)
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, valid_until=end))
    jst = timezone(timedelta(hours=9))
    # 18:30 JST is 09:30 UTC: before the rule ends
    assert decide(db, at=datetime(2026, 6, 1, 18, 30, tzinfo=jst), **RESIDENT_RECORD).permitted
    assert not decide(db, at=end.replace(tzinfo=UTC), **RESIDENT_RECORD).permitted


# --- changes apply to the very next query ---------------------------------------------------


def test_revocation_applies_to_the_next_decision(db, issuer):
    version = set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, requester=CITY_B))
    assert decide(db, **RESIDENT_RECORD).permitted
    revoked = service.remove_rule(collection_method="test-setup", db_session=db, person_key=PERSON, rule_id=version.rules[0].id,
                                  principal_id="taro@example.jp", issuer=issuer)
    decision = decide(db, **RESIDENT_RECORD)
    assert decision.reason is DecisionReason.CONSENT_NOT_GIVEN
    assert decision.policy_version == revoked.version == 2


def test_a_change_committed_elsewhere_reaches_a_session_that_already_decided(engine, issuer):
    with Session(engine) as portal, Session(engine) as discovery:
        set_rules(portal, issuer, PolicyRuleIn(effect=Effect.ALLOW))
        portal.commit()
        assert decide(discovery, **RESIDENT_RECORD).permitted
        discovery.commit()  # the discovery service ends its unit of work per query
        service.add_rule(collection_method="test-setup", db_session=portal, person_key=PERSON,
                         rule=PolicyRuleIn(effect=Effect.DENY, requester=CITY_B),
                         principal_id="taro@example.jp", issuer=issuer)
        portal.commit()
        decision = decide(discovery, **RESIDENT_RECORD)
        assert decision.reason is DecisionReason.DENIED_BY_PERSON
        assert decision.policy_version == 2


def test_a_whitelist_change_applies_to_the_next_decision(db):
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.CONSENT_NOT_GIVEN
    entries = service.export_whitelist(db_session=db)
    changed = [dataclasses.replace(e, consent=ConsentMode.OVERRIDE)
               if e.task_code == "JUKI-TENNYU" else e for e in entries]
    service.import_whitelist(db_session=db, entries=changed)
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.PERMITTED_BY_LAW
    service.import_whitelist(db_session=db, entries=[e for e in entries
                                                     if e.task_code != "JUKI-TENNYU"],
                             replace=True)
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.NO_WHITELIST_ENTRY


def test_the_policy_a_decision_reads_is_the_current_version_with_its_rules_in_order(db, issuer):
    """`policy_in_force` (one Core statement, what decisions read) answers what the ORM's
    `get_current_policy` does: the newest version, every rule in order, none of an old version."""
    assert service.policy_in_force(db_session=db, person_key=PERSON) is None
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, requester=CITY_B))
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.DENY, requester=ELECTRIC, task_code="TENKYO-TSUCHI"),
              PolicyRuleIn(effect=Effect.ALLOW, provider="class:municipality",
                           valid_from=NOW - timedelta(days=1), valid_until=NOW + timedelta(days=1)))
    current = service.get_current_policy(db_session=db, person_key=PERSON)
    read = service.policy_in_force(db_session=db, person_key=PERSON)
    assert read.version == current.version == 2
    fields = ("id", "effect", "requester", "provider", "task_code", "info_type_code", "valid_from", "valid_until")
    assert [tuple(getattr(r, f) for f in fields) for r in read.rules] == \
        [tuple(getattr(r, f) for f in fields) for r in current.rules]
    set_rules(db, issuer)  # a version without rules: the person withdrew every one
    emptied = service.policy_in_force(db_session=db, person_key=PERSON)
    assert emptied.version == 3 and emptied.rules == ()
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.CONSENT_NOT_GIVEN


def test_a_retired_whitelist_entry_decides_nothing_in_the_same_transaction(db):
    """The entry is read afresh by a Core statement: no object of an earlier read in the same
    session can keep a retired entry deciding."""
    assert decide(db, **RESIDENT_RECORD).whitelist_entry_id is not None
    assert service.retire_agency(db_session=db, agency=CITY_A) > 0
    assert decide(db, **RESIDENT_RECORD).reason is DecisionReason.NO_WHITELIST_ENTRY


# --- versioned policy -------------------------------------------------------------------------


def test_every_change_is_a_new_version_and_old_versions_are_kept(db, issuer):
    first = set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW, requester=CITY_B))
    service.add_rule(collection_method="test-setup", db_session=db, person_key=PERSON,
                     rule=PolicyRuleIn(effect=Effect.DENY, requester=ELECTRIC),
                     principal_id="taro@example.jp", issuer=issuer)
    current = service.get_current_policy(db_session=db, person_key=PERSON)
    service.remove_rule(collection_method="test-setup", db_session=db, person_key=PERSON, rule_id=current.rules[0].id,
                        principal_id="taro@example.jp", issuer=issuer)
    db.commit()
    db.expire_all()
    history = service.list_policy_versions(db_session=db, person_key=PERSON)
    assert [v.version for v in history] == [3, 2, 1]
    as_rules = [[(r.effect, r.requester) for r in v.rules] for v in history]
    assert as_rules == [
        [("deny", ELECTRIC)],
        [("allow", CITY_B), ("deny", ELECTRIC)],
        [("allow", CITY_B)],
    ]
    assert history[-1].id == first.id
    other = service.list_policy_versions(db_session=db, person_key="someone-else")
    assert other == []


def test_removing_a_rule_not_in_the_current_version_changes_nothing(db, issuer):
    old = set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW))
    set_rules(db, issuer, PolicyRuleIn(effect=Effect.ALLOW))
    with pytest.raises(RuleNotFound):
        service.remove_rule(collection_method="test-setup", db_session=db, person_key=PERSON, rule_id=old.rules[0].id,
                            principal_id="taro@example.jp", issuer=issuer)
    count = db.scalar(select(func.count()).select_from(PolicyVersion))
    assert count == 2


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"effect": "maybe"}, "effect must be 'allow' or 'deny'"),
        ({"effect": "allow", "valid_from": NOW, "valid_until": NOW}, "valid_until must be later"),
        ({"effect": "deny", "requester": "Demo City B"}, "requester must be an agency entity ID"),
        ({"effect": "deny", "provider": "class:"}, "class name"),
        ({"effect": "deny", "task_code": " "}, "task_code must be"),
    ],
)
def test_malformed_rules_are_refused_with_a_reason(fields, message):
    with pytest.raises(InvalidPolicyRule, match=message):
        PolicyRuleIn(**fields)
