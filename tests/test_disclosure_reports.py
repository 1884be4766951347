"""Agencies report what they disclosed (renkei_provider.DisclosureReporter → POST
/history/disclosures), the hub matches each report to the decision it issued, flags what it
never permitted and the permits nobody reported, and records a resent batch only once."""
from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jws
from joserfc.jwk import RSAKey
from sqlalchemy import select

from access_history import reports
from access_history.models import HistoryEntry
from consent.models import PolicyRuleIn
from kernel.db import session_scope
from renkei_provider import Disclosure, DisclosureReporter, TokenVerifier
from tests.federation import ANNEX, RESIDENT, set_rules
from tests.history_helpers import verify_history
from tests.test_discovery_api import query


def report_url(hub) -> str:
    return f"{hub.base_url}/history/disclosures"


def reporter(hub, sp) -> DisclosureReporter:
    return DisclosureReporter(report_url=report_url(hub), agency_entity_id=sp.entity_id, signing_key=sp.key)


def accepted_token(hub, fed, bootstrap, offering: dict, provider) -> object:
    metadata = httpx.get(f"{hub.base_url}/idp/metadata", timeout=10).content
    verifier = TokenVerifier(hub_metadata_xml=metadata, provider_entity_id=provider.entity_id,
                             endpoint=offering["endpoint"], decryption_keys=[provider.key])
    return verifier.verify(offering["token"])


def disclosures_of(decision_id: str) -> list[HistoryEntry]:
    with session_scope() as db:
        return list(db.scalars(select(HistoryEntry).where(HistoryEntry.decision_id == decision_id,
                                                          HistoryEntry.kind == "disclosure")))


def permitted_offering(hub, fed, bootstrap) -> dict:
    set_rules(fed, PolicyRuleIn(effect="allow"))
    got = query(hub, fed, bootstrap, RESIDENT, "JUKI")
    return got[fed["a"].entity_id]


def test_a_reported_disclosure_is_matched_to_its_decision_once(hub, fed, bootstrap):
    offering = permitted_offering(hub, fed, bootstrap)
    accepted = accepted_token(hub, fed, bootstrap, offering, fed["a"])
    agency = reporter(hub, fed["a"])
    agency.record(Disclosure.of(accepted))
    result = agency.flush()
    assert result.accepted and result.body == {"recorded": 1, "duplicates": 0, "anomalies": []}
    [entry] = disclosures_of(accepted.decision_id)
    assert (entry.owner, entry.outcome, entry.channel) == (fed["a"].entity_id, "DISCLOSED", "report")
    assert entry.person_key == fed["person_key"] and entry.requester == fed["r"].entity_id
    assert entry.provided_at is not None and entry.asked_at is not None

    # the same batch again (a resend after a lost answer) records nothing twice
    batch = agency.signed_batch("resent-batch", [Disclosure.of(accepted)])
    again = httpx.post(report_url(hub), content=batch, headers={"Content-Type": "application/jose"})
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert len(disclosures_of(accepted.decision_id)) == 1
    assert verify_history(hub).ok


def test_the_same_batch_sent_at_once_is_recorded_once_without_a_stall(hub, fed, bootstrap):
    """Two flushes of an agency may send the same batch at the same moment (each answer
    schedules one). The second waits for the first one's row; it must not wait on the event
    loop, where the first one's commit would then never run (SQLite: a 10 s stall and a 503;
    PostgreSQL: a hung hub)."""
    import threading

    offering = permitted_offering(hub, fed, bootstrap)
    accepted = accepted_token(hub, fed, bootstrap, offering, fed["a"])
    agency = reporter(hub, fed["a"])
    for round_ in range(4):
        batch = agency.signed_batch(f"concurrent-{round_}-{uuid.uuid4().hex}",
                                    [Disclosure.of(accepted, info_types=(f"T{round_}",))])
        barrier = threading.Barrier(4)
        answers: list = []

        def send(batch: bytes, barrier: threading.Barrier, answers: list) -> None:
            barrier.wait(timeout=10)
            try:
                answers.append(httpx.post(report_url(hub), content=batch,
                                          headers={"Content-Type": "application/jose"}, timeout=5))
            except httpx.HTTPError as exc:
                answers.append(exc)

        senders = [threading.Thread(target=send, args=(batch, barrier, answers)) for _ in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(30)
        assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
        assert sum(a.json()["recorded"] for a in answers) == 1
        assert sum(a.json()["duplicates"] for a in answers) == 3


def test_disclosures_the_hub_never_permitted_are_flagged(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="deny", provider=fed["a"].entity_id, info_type_code="FUHYO"))
    refused = query(hub, fed, bootstrap, ANNEX, "JUKI")[fed["a"].entity_id]
    assert not refused["permitted"]
    permitted = permitted_offering(hub, fed, bootstrap)
    agency = reporter(hub, fed["a"])
    requester, when = fed["r"].entity_id, _now()
    agency.record(Disclosure(refused["decision_id"], "t1", requester, "JUKI", ("FUHYO",), when))
    agency.record(Disclosure(permitted["decision_id"], "t2", requester, "JUKI", ("IRYO",), when))
    agency.record(Disclosure(uuid.uuid4().hex, "t3", requester, "JUKI", ("JUMINHYO",), when))
    result = agency.flush()
    assert result.accepted
    assert sorted(a["anomaly"] for a in result.body["anomalies"]) == sorted(
        [reports.NOT_PERMITTED, reports.OUTSIDE_INFO_TYPES, reports.UNMATCHED])
    # another agency reporting A's permitted decision is not matched to it either
    insurer = reporter(hub, fed["m"])
    insurer.record(Disclosure(permitted["decision_id"], "t4", requester, "JUKI", ("JUMINHYO",), when))
    assert insurer.flush().body["anomalies"][0]["anomaly"] == reports.UNMATCHED
    with session_scope() as db:
        flagged = {e.decision_id for e in reports.anomalous_disclosures(db_session=db)}
    assert {refused["decision_id"], permitted["decision_id"]} <= flagged


def test_permits_nobody_reported_are_flagged(hub, fed, bootstrap):
    offering = permitted_offering(hub, fed, bootstrap)
    with session_scope() as db:
        late = {e.decision_id for e in reports.unreported_permits(
            db_session=db, older_than=timedelta(0), now=_now() + timedelta(seconds=1))}
    assert offering["decision_id"] in late
    agency = reporter(hub, fed["a"])
    agency.record(Disclosure.of(accepted_token(hub, fed, bootstrap, offering, fed["a"])))
    assert agency.flush().accepted
    with session_scope() as db:
        late = {e.decision_id for e in reports.unreported_permits(
            db_session=db, older_than=timedelta(0), now=_now() + timedelta(seconds=1))}
    assert offering["decision_id"] not in late


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _batch(key, claims: dict, alg: str = "RS256") -> bytes:
    return jws.serialize_compact({"alg": alg}, json.dumps(claims).encode(), RSAKey.import_key(key)).encode()


@pytest.mark.parametrize("case", ["foreign key", "wrong audience", "stale", "no items", "bad item",
                                  "unknown agency", "garbage", "none alg"])
def test_bad_batches_are_refused_and_record_nothing(hub, fed, case):
    a = fed["a"]
    claims = {"iss": a.entity_id, "aud": report_url(hub), "iat": int(time.time()), "jti": uuid.uuid4().hex,
              "disclosures": [{"decision_id": "d-" + case, "token_id": "t", "requester": "r", "task": "JUKI",
                               "info_types": ["JUMINHYO"], "provided_at": "2026-12-01T00:00:00Z"}]}
    key = a.key
    if case == "foreign key":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif case == "wrong audience":
        claims["aud"] = "https://elsewhere.example/history/disclosures"
    elif case == "stale":
        claims["iat"] -= 3600
    elif case == "no items":
        claims["disclosures"] = []
    elif case == "bad item":
        claims["disclosures"][0]["provided_at"] = "0001-01-01T00:00:00+01:00"
    elif case == "unknown agency":
        claims["iss"] = "https://nobody.example.jp/sp"
    body = _batch(key, claims)
    if case == "garbage":
        body = b"\x00\xff not a jws"
    elif case == "none alg":
        head = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=")
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        body = head + b"." + payload + b"."
    r = httpx.post(report_url(hub), content=body, headers={"Content-Type": "application/jose"})
    assert r.status_code in (400, 401) and r.json()["message"]
    assert disclosures_of("d-" + case) == []
