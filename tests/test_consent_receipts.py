"""Consent receipts: Kantara CR v1.1 fields, RS256 compact JWS, stored and verifiable later."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from sqlalchemy.orm import Session

from consent import receipts, service
from consent.errors import ReceiptInvalid
from consent.models import Effect, PolicyRuleIn
from consent.receipts import PiiController, ReceiptIssuer, verify_receipt
from consent.whitelist_io import DEMO_WHITELIST, read_whitelist_file
from kernel.db import Base, make_engine
from kernel.keys import KeyStore

pytestmark = pytest.mark.nodb  # a private SQLite file, whatever the pass; the PostgreSQL pass skips it

PERSON = "person-internal-key-4711"
PRINCIPAL = "taro@example.jp"
CITY_B = "http://127.0.0.1:8102/metadata"
ELECTRIC = "http://127.0.0.1:8104/metadata"
AT = datetime(2026, 6, 1, 9, 0, 0)
KANTARA_FIELDS = {
    "version", "jurisdiction", "consentTimestamp", "collectionMethod", "consentReceiptID",
    "publicKey", "language", "piiPrincipalId", "piiControllers", "policyUrl", "services",
    "sensitive", "spiCat",
}


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'consent.sqlite3'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        service.import_whitelist(db_session=session, entries=read_whitelist_file(DEMO_WHITELIST))
        yield session
    engine.dispose()


@pytest.fixture()
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys")


@pytest.fixture()
def issuer(keys: KeyStore) -> ReceiptIssuer:
    return make_issuer(keys)


def make_issuer(keys: KeyStore) -> ReceiptIssuer:
    return ReceiptIssuer(
        signing_key=keys.ensure_signing_key("consent"),
        policy_url="http://127.0.0.1:8000/portal/policy",
        controller=PiiController(url="http://127.0.0.1:8000"),
    )


RULES = [
    PolicyRuleIn(effect=Effect.ALLOW, requester=CITY_B, task_code="JUKI-TENNYU",
                 info_type_code="JUMINHYO", valid_until=AT + timedelta(days=90)),
    PolicyRuleIn(effect=Effect.DENY, requester=ELECTRIC),
]


def change(db: Session, issuer: ReceiptIssuer, rules=RULES, at: datetime = AT):
    return service.set_policy(db_session=db, person_key=PERSON, rules=rules,
                              principal_id=PRINCIPAL, collection_method="portal web form",
                              issuer=issuer, at=at)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_each_policy_change_issues_a_stored_receipt_retrievable_by_id(db, issuer):
    version = change(db, issuer)
    db.commit()
    receipt = version.receipt
    assert receipt is not None and receipt.key_version == issuer.signing_key.version
    db.expire_all()
    stored = service.get_receipt(db_session=db, receipt_id=receipt.id)
    assert stored.jws == receipt.jws and stored.policy_version.version == 1
    claims = verify_receipt(stored.jws, public_keys=[issuer.signing_key.public_key])
    assert claims["consentReceiptID"] == receipt.id


def test_receipt_carries_the_kantara_v1_1_fields(db, issuer):
    claims = verify_receipt(change(db, issuer).receipt.jws,
                            public_keys=[issuer.signing_key.public_key])
    assert KANTARA_FIELDS <= set(claims)
    assert claims["version"] == "KI-CR-v1.1.0"
    assert claims["jurisdiction"] == "JP" and claims["language"] == "ja"
    assert claims["consentTimestamp"] == int(AT.replace(tzinfo=UTC).timestamp())
    assert claims["collectionMethod"] == "portal web form"
    assert claims["piiPrincipalId"] == PRINCIPAL
    assert claims["policyUrl"] == "http://127.0.0.1:8000/portal/policy"
    assert claims["sensitive"] is True
    # the deny rule covers every information type: 特定個人情報 as a whole
    assert claims["spiCat"] == sorted(["特定個人情報", "住民票情報 (JUMINHYO)"])
    (controller,) = claims["piiControllers"]
    assert {"piiController", "contact", "address", "email", "phone"} <= set(controller)
    assert controller["address"]["addressCountry"] == "JP"
    assert claims["publicKey"].startswith("-----BEGIN PUBLIC KEY-----")


def test_services_and_purposes_describe_each_rule_in_the_whitelists_words(db, issuer):
    claims = verify_receipt(change(db, issuer).receipt.jws,
                            public_keys=[issuer.signing_key.public_key])
    resident, any_task = claims["services"]
    assert resident["service"] == "住民基本台帳事務 (JUKI-TENNYU)"
    (allow,) = resident["purposes"]
    assert allow["purposeCategory"] == ["allow disclosure"]
    assert allow["piiCategory"] == ["住民票情報 (JUMINHYO)"]
    assert allow["thirdPartyDisclosure"] is True and allow["thirdPartyName"] == CITY_B
    assert allow["consentType"] == "EXPLICIT"
    assert allow["termination"].startswith("until 2026-08-30T09:00:00Z")
    assert any_task["service"] == "すべての事務 (any task)"
    (deny,) = any_task["purposes"]
    assert deny["purposeCategory"] == ["deny disclosure"]
    assert deny["thirdPartyDisclosure"] is False and "thirdPartyName" not in deny
    assert ELECTRIC in deny["purpose"] and "may not" in deny["purpose"]


def test_receipt_never_contains_the_internal_person_key(db, issuer):
    token = change(db, issuer).receipt.jws
    header, payload, _ = token.split(".")
    assert PERSON not in unb64url(header).decode() + unb64url(payload).decode()


def test_signature_verifies_with_the_public_key_independently(db, issuer):
    token = change(db, issuer).receipt.jws
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(unb64url(header_b64))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "consent-v1"}
    # plain cryptography, not the room's own verifier: RSASSA-PKCS1-v1_5 with SHA-256
    issuer.signing_key.certificate.public_key().verify(
        unb64url(signature_b64), f"{header_b64}.{payload_b64}".encode(),
        padding.PKCS1v15(), hashes.SHA256(),
    )


def test_tampered_payload_fails_verification(db, issuer):
    token = change(db, issuer).receipt.jws
    header_b64, payload_b64, signature_b64 = token.split(".")
    claims = json.loads(unb64url(payload_b64))
    claims["services"][0]["purposes"][0]["thirdPartyName"] = "http://evil.example/metadata"
    forged_payload = b64url(json.dumps(claims).encode())
    with pytest.raises(ReceiptInvalid, match="signature"):
        verify_receipt(f"{header_b64}.{forged_payload}.{signature_b64}",
                       public_keys=[issuer.signing_key.public_key])


def test_tampered_signature_or_one_flipped_character_fails(db, issuer):
    token = change(db, issuer).receipt.jws
    header_b64, payload_b64, signature_b64 = token.split(".")
    signature = bytearray(unb64url(signature_b64))
    signature[10] ^= 0x01
    bad_signature = f"{header_b64}.{payload_b64}.{b64url(bytes(signature))}"
    middle = len(payload_b64) // 2
    flipped = "A" if payload_b64[middle] != "A" else "B"
    bad_payload = f"{header_b64}.{payload_b64[:middle]}{flipped}{payload_b64[middle + 1:]}"
    for token in (bad_signature, f"{bad_payload}.{signature_b64}"):
        with pytest.raises(ReceiptInvalid):
            verify_receipt(token, public_keys=[issuer.signing_key.public_key])


def test_another_key_does_not_verify(db, issuer, tmp_path):
    token = change(db, issuer).receipt.jws
    stranger = KeyStore(tmp_path / "other").ensure_signing_key("consent")
    with pytest.raises(ReceiptInvalid, match="any trusted key"):
        verify_receipt(token, public_keys=[stranger.public_key])


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", None])
def test_header_algorithm_other_than_rs256_is_refused(db, issuer, alg):
    token = change(db, issuer).receipt.jws
    _, payload_b64, signature_b64 = token.split(".")
    header = {"typ": "JWT", "kid": "consent-v1"} | ({"alg": alg} if alg else {})
    forged = f"{b64url(json.dumps(header).encode())}.{payload_b64}.{signature_b64}"
    with pytest.raises(ReceiptInvalid, match="algorithm must be RS256"):
        verify_receipt(forged, public_keys=[issuer.signing_key.public_key])


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30.@@"])
def test_malformed_tokens_are_refused(issuer, token):
    with pytest.raises(ReceiptInvalid):
        verify_receipt(token, public_keys=[issuer.signing_key.public_key])


def test_every_change_gets_its_own_receipt_listed_newest_first(db, issuer):
    first = change(db, issuer)
    second = service.remove_rule(collection_method="test-setup", db_session=db, person_key=PERSON, rule_id=first.rules[1].id,
                                 principal_id=PRINCIPAL, issuer=issuer, at=AT + timedelta(hours=1))
    listed = service.list_receipts(db_session=db, person_key=PERSON)
    assert [r.id for r in listed] == [second.receipt.id, first.receipt.id]
    assert first.receipt.id != second.receipt.id
    after = verify_receipt(second.receipt.jws, public_keys=[issuer.signing_key.public_key])
    assert [s["service"] for s in after["services"]] == ["住民基本台帳事務 (JUKI-TENNYU)"]


def test_an_emptied_policy_still_gets_a_receipt(db, issuer):
    claims = verify_receipt(change(db, issuer, rules=[]).receipt.jws,
                            public_keys=[issuer.signing_key.public_key])
    assert claims["services"] == [] and claims["spiCat"] == ["特定個人情報"]


def test_a_receipt_is_only_handed_to_its_own_person(db, issuer):
    receipt = change(db, issuer).receipt
    assert service.get_receipt(db_session=db, receipt_id=receipt.id, person_key=PERSON)
    assert service.get_receipt(db_session=db, receipt_id=receipt.id, person_key="other") is None
    assert service.get_receipt(db_session=db, receipt_id="no-such-receipt") is None


def test_stored_receipts_stay_verifiable_after_key_rotation(db, keys):
    old = change(db, make_issuer(keys)).receipt
    keys.create_signing_key("consent")
    keys.create_signing_key("consent")  # v3: v1 has left the published pair
    new = change(db, make_issuer(keys), at=AT + timedelta(days=1)).receipt
    assert (old.key_version, new.key_version) == (1, 3)
    for receipt in (old, new):
        claims = service.verify_stored_receipt(db_session=db, receipt_id=receipt.id, keys=keys)
        assert claims["consentReceiptID"] == receipt.id
    assert len(receipts.receipt_public_keys(keys)) == 3


def test_verify_stored_receipt_of_unknown_id_raises(db, keys):
    with pytest.raises(LookupError):
        service.verify_stored_receipt(db_session=db, receipt_id="missing", keys=keys)
