"""renkei_provider.TokenVerifier against REAL provider tokens from the running hub.

A requester agency logs a person in through the hub (SSO), takes the bootstrap token from the
assertion's DiscoveryEPR attribute, asks the JSON discovery API for a service type, and the
provider accepts the token it is handed, once. The attacks of SECURITY.md's last paragraph
(token for A shown to B, replay, reading or altering the subject, agency-signed tokens) are
run against those real tokens.
"""
from __future__ import annotations

import base64
import copy
import threading
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from click.testing import CliRunner
from lxml import etree

from kernel.jose import sign_client_assertion
from kernel.xml._dsig import sign_enveloped
from renkei.cli import main
from renkei_provider import (
    HubMetadataError,
    InMemoryReplayCache,
    SqliteReplayCache,
    TokenAudienceMismatch,
    TokenExpired,
    TokenMalformed,
    TokenNotForThisEndpoint,
    TokenRejected,
    TokenReplayed,
    TokenSignatureInvalid,
    TokenVerifier,
)
from tests.saml_sp import MD, NS, SAML, Browser, TestSP, response_from_page

DISCOVERY_EPR = "urn:liberty:disco:2006-08:DiscoveryEPR"
SEC_NS = "urn:liberty:security:2006-08"
ATTR_REQUESTER = "urn:renkei:attr:requester"

RUN = uuid.uuid4().hex[:10]  # keeps this module's federation apart from other modules' in the hub
SERVICE = f"urn:renkei:service:prov-token-{RUN}"
OTHER_SERVICE = f"urn:renkei:service:prov-token-other-{RUN}"
INFO = "JUMINHYO"
TASK = f"TASK-{RUN}"
LOCAL_A = f"A-{RUN}-0001"
LOCAL_B = f"B-{RUN}-0042"
MASTER_ID = f"9{int(RUN, 16) % 10**11:011d}"
USERNAME, PASSWORD = f"prov-{RUN}", "provider token password"


# -- the federation ----------------------------------------------------------------------------
def cli(*args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


def metadata_with_encryption_key(sp: TestSP) -> bytes:
    """The SP's metadata plus a KeyDescriptor use="encryption" holding the same certificate."""
    root = etree.fromstring(sp.metadata())
    descriptor = root.find("md:SPSSODescriptor", NS)
    signing = descriptor.find("md:KeyDescriptor", NS)
    encryption = copy.deepcopy(signing)
    encryption.set("use", "encryption")
    signing.addnext(encryption)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def register(sp: TestSP, tmp_path, *, encryption: bool, agency_class: str) -> TestSP:
    path = tmp_path / f"md-{uuid.uuid4().hex}.xml"
    path.write_bytes(metadata_with_encryption_key(sp) if encryption else sp.metadata())
    cli("agency", "add", "--metadata", str(path), "--class", agency_class)
    return sp


class Federation:
    def __init__(self, hub, tmp_path):
        self.hub = hub
        self.requester = register(TestSP(f"https://req-{RUN}.example.jp/sp", f"https://req-{RUN}.example.jp"),
                                  tmp_path, encryption=False, agency_class="municipality")
        self.provider_a = register(TestSP(f"https://prov-a-{RUN}.example.jp/sp", f"https://prov-a-{RUN}.example.jp"),
                                   tmp_path, encryption=True, agency_class="municipality")
        self.provider_b = register(TestSP(f"https://prov-b-{RUN}.example.jp/sp", f"https://prov-b-{RUN}.example.jp"),
                                   tmp_path, encryption=True, agency_class="municipality")
        self.endpoint_a = f"{self.provider_a.base_url}/provide/resident-record"
        self.endpoint_b = f"{self.provider_b.base_url}/provide/resident-record"
        cli("person", "add", "--username", USERNAME, "--password-stdin", "--master-id", MASTER_ID,
            stdin=PASSWORD + "\n")
        for sp, local_id in ((self.provider_a, LOCAL_A), (self.provider_b, LOCAL_B)):
            links = tmp_path / f"links-{uuid.uuid4().hex}.csv"
            links.write_text(f"local_id,master_id\n{local_id},{MASTER_ID}\n", encoding="utf-8")
            cli("link", "import", "--agency", sp.entity_id, str(links))
        self._load_location_and_consent()
        self.metadata = httpx.get(f"{hub.base_url}/idp/metadata").content

    def _load_location_and_consent(self) -> None:
        from consent import service as consent
        from consent.models import PolicyRuleIn, WhitelistEntryIn
        from discovery import service as location
        from idp import accounts
        from kernel.db import session_scope

        with session_scope() as db:
            location.add_service_type(db_session=db, urn=SERVICE, name="住民票 (test)", info_types=[INFO])
            location.add_service_type(db_session=db, urn=OTHER_SERVICE, name="other (test)", info_types=[INFO])
            location.add_offering(db_session=db, provider=self.provider_a.entity_id, service_type=SERVICE,
                                  endpoint=self.endpoint_a)
            location.add_offering(db_session=db, provider=self.provider_b.entity_id, service_type=OTHER_SERVICE,
                                  endpoint=self.endpoint_b)
            entries = [
                consent.create_whitelist_entry(db_session=db, entry=WhitelistEntryIn(
                    requester=self.requester.entity_id, provider=provider.entity_id, task_code=TASK,
                    task_name="転入届 (test)", info_type_code=INFO, info_type_name="住民票情報",
                    legal_basis="番号法 別表第二 (test)", consent="required",
                ))
                for provider in (self.provider_a, self.provider_b)
            ]
            self.whitelist_entry_a = str(entries[0].id)
            person_key = accounts.find(db_session=db, username=USERNAME).person_key
            consent.set_policy(collection_method="test-setup", db_session=db, person_key=person_key, principal_id=USERNAME,
                               rules=[PolicyRuleIn(effect="allow", requester=self.requester.entity_id)])

    # -- SSO ---------------------------------------------------------------------------------
    def sso(self, sp: TestSP, browser: Browser) -> etree._Element:
        """One SP-initiated login; returns the Response's assertion."""
        _, root = sp.authn_request(f"{self.hub.base_url}/idp/sso")
        first = browser.start(sp, etree.tostring(root))
        page = first if first.status_code == 200 else browser.login(first, USERNAME, PASSWORD)
        assert page.status_code == 200, page.text[:800]
        action, response, _ = response_from_page(page.text)
        assert action == sp.acs_url
        return response.find("saml:Assertion", NS)

    # -- discovery ---------------------------------------------------------------------------
    def query(self, bootstrap: str, service_type: str = SERVICE) -> httpx.Response:
        url = f"{self.hub.base_url}/api/discovery/query"
        jwt = sign_client_assertion(self.requester.key, issuer=self.requester.entity_id, audience=url,
                                    jti=uuid.uuid4().hex)
        return httpx.post(url, headers={"Authorization": f"Bearer {jwt}"}, timeout=20, json={
            "service_type": service_type, "task": TASK, "person": {"bootstrap_token": bootstrap},
        })

    def verifier(self, provider: TestSP | None = None, *, endpoint: str | None = "default",
                 cache=None, skew: int = 60) -> TokenVerifier:
        provider = provider or self.provider_a
        if endpoint == "default":
            endpoint = self.endpoint_a if provider is self.provider_a else self.endpoint_b
        return TokenVerifier(hub_metadata_xml=self.metadata, provider_entity_id=provider.entity_id,
                             endpoint=endpoint, decryption_keys=[provider.key], replay_cache=cache,
                             skew_seconds=skew)


def bootstrap_token(assertion: etree._Element) -> str:
    attr = assertion.find(f"saml:AttributeStatement/saml:Attribute[@Name='{DISCOVERY_EPR}']", NS)
    assert attr is not None, "the SSO assertion carries no DiscoveryEPR attribute"
    token = attr.find(f".//{{{SEC_NS}}}Token")
    assert token is not None and token.text
    return token.text.strip()


@pytest.fixture(scope="module")
def fed(hub, tmp_path_factory) -> Federation:
    return Federation(hub, tmp_path_factory.mktemp("provider-token"))


@pytest.fixture(scope="module")
def logins(fed):
    """The person logs in at the requester (bootstrap token) and at provider A (its pseudonym)."""
    browser = Browser(fed.hub.base_url)
    requester_assertion = fed.sso(fed.requester, browser)
    provider_assertion = fed.sso(fed.provider_a, browser)
    return {
        "bootstrap": bootstrap_token(requester_assertion),
        "requester_pseudonym": requester_assertion.findtext("saml:Subject/saml:NameID", namespaces=NS),
        "provider_pseudonym": provider_assertion.findtext("saml:Subject/saml:NameID", namespaces=NS),
    }


def fresh(fed, logins, service_type: str = SERVICE) -> tuple[dict, dict]:
    """A new discovery answer; returns (the whole JSON, the permitted offering)."""
    answer = fed.query(logins["bootstrap"], service_type)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    permitted = [o for o in body["offerings"] if o["permitted"]]
    assert len(permitted) == 1, body
    assert permitted[0]["token"], body
    return body, permitted[0]


def token_xml(offering: dict) -> bytes:
    return base64.b64decode(offering["token"])


# -- acceptance ---------------------------------------------------------------------------------
def test_token_is_accepted_once_with_the_right_facts(fed, logins):
    _, offering = fresh(fed, logins)
    assert offering["provider"] == fed.provider_a.entity_id
    assert offering["endpoint"] == fed.endpoint_a
    verifier = fed.verifier()

    accepted = verifier.verify(offering["token"])  # base64, as the JSON carries it

    assert accepted.provider_pseudonym == logins["provider_pseudonym"]  # what A sees at SSO
    assert accepted.provider_pseudonym != logins["requester_pseudonym"]
    assert accepted.local_id == LOCAL_A
    assert accepted.requester == fed.requester.entity_id
    assert accepted.task == TASK
    assert accepted.info_types == (INFO,)
    assert accepted.service_type == SERVICE
    assert accepted.decision_id == offering["decision_id"]
    assert accepted.whitelist_entry == fed.whitelist_entry_a
    assert accepted.not_on_or_after.tzinfo is not None
    now = datetime.now(UTC)
    assert now < accepted.not_on_or_after <= now + timedelta(minutes=5, seconds=5)
    assert accepted.assertion_id == etree.fromstring(token_xml(offering)).get("ID")
    # the pseudonym and local ID stay out of reprs (logs)
    assert logins["provider_pseudonym"] not in repr(accepted) and LOCAL_A not in repr(accepted)

    with pytest.raises(TokenReplayed):
        verifier.verify(offering["token"])
    with pytest.raises(TokenReplayed):  # the raw XML is the same token
        verifier.verify(token_xml(offering))


def test_raw_xml_is_accepted_too(fed, logins):
    _, offering = fresh(fed, logins)
    assert fed.verifier().verify(token_xml(offering).decode()).local_id == LOCAL_A


def test_replay_is_refused_by_a_shared_sqlite_cache(fed, logins, tmp_path):
    """Two processes of provider A sharing one replay-cache file: the second presentation fails."""
    _, offering = fresh(fed, logins)
    first = fed.verifier(cache=SqliteReplayCache(tmp_path / "seen.sqlite3"))
    second = fed.verifier(cache=SqliteReplayCache(tmp_path / "seen.sqlite3"))
    first.verify(offering["token"])
    with pytest.raises(TokenReplayed):
        second.verify(offering["token"])


def test_concurrent_presentations_are_accepted_exactly_once(fed, logins):
    _, offering = fresh(fed, logins)
    verifier = fed.verifier(cache=InMemoryReplayCache())
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def present() -> None:
        barrier.wait()
        try:
            verifier.verify(offering["token"])
            result = "accepted"
        except TokenReplayed:
            result = "replayed"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=present) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["accepted"] + ["replayed"] * 7


# -- SECURITY.md: tokens agencies carry ----------------------------------------------------------
def test_token_for_a_is_refused_by_b(fed, logins):
    _, offering = fresh(fed, logins)
    with pytest.raises(TokenAudienceMismatch):
        fed.verifier(fed.provider_b).verify(offering["token"])
    # even if B claims A's endpoint, the audience (and the subject's key) are A's
    with pytest.raises(TokenAudienceMismatch):
        fed.verifier(fed.provider_b, endpoint=fed.endpoint_a).verify(offering["token"])
    # refusals do not use the token up: A still accepts it
    assert fed.verifier().verify(offering["token"]).local_id == LOCAL_A


def test_token_for_another_endpoint_of_the_provider_is_refused(fed, logins):
    _, offering = fresh(fed, logins)
    other = f"{fed.provider_a.base_url}/provide/moving-address"
    with pytest.raises(TokenNotForThisEndpoint):
        fed.verifier(endpoint=other).verify(offering["token"])


def test_token_b_gets_is_for_b_only(fed, logins):
    """B's own token (another service type) is accepted by B, refused by A."""
    _, offering = fresh(fed, logins, OTHER_SERVICE)
    assert offering["provider"] == fed.provider_b.entity_id
    with pytest.raises(TokenAudienceMismatch):
        fed.verifier(fed.provider_a, endpoint=fed.endpoint_b).verify(offering["token"])
    accepted = fed.verifier(fed.provider_b).verify(offering["token"])
    assert accepted.local_id == LOCAL_B
    assert accepted.provider_pseudonym != logins["provider_pseudonym"]


@pytest.mark.parametrize("tamper", ["requester", "task", "recipient", "audience", "subject"])
def test_tampered_token_is_refused(fed, logins, tamper):
    _, offering = fresh(fed, logins)
    root = etree.fromstring(token_xml(offering))
    if tamper == "requester":
        root.find(f".//saml:Attribute[@Name='{ATTR_REQUESTER}']/saml:AttributeValue", NS).text = \
            "https://evil.example.jp/sp"
    elif tamper == "task":
        root.find(".//saml:Attribute[@Name='urn:renkei:attr:task']/saml:AttributeValue", NS).text = "OTHER"
    elif tamper == "recipient":
        root.find(".//saml:SubjectConfirmationData", NS).set("Recipient", fed.endpoint_b)
    elif tamper == "audience":
        root.find(".//saml:Audience", NS).text = fed.provider_b.entity_id
    else:  # the requester swaps in the subject of another token it holds
        _, other = fresh(fed, logins)
        other_subject = etree.fromstring(token_xml(other)).find("saml:Subject/saml:EncryptedID", NS)
        root.find("saml:Subject/saml:EncryptedID", NS).getparent().replace(
            root.find("saml:Subject/saml:EncryptedID", NS), other_subject)
    with pytest.raises(TokenSignatureInvalid):
        fed.verifier().verify(etree.tostring(root))
    if tamper == "audience":
        with pytest.raises(TokenSignatureInvalid):
            fed.verifier(fed.provider_b).verify(etree.tostring(root))


def test_token_signed_by_an_agency_instead_of_the_hub_is_refused(fed, logins, monkeypatch):
    """The requester re-signs a token (its own choice of facts) with its registered SP key."""
    _, offering = fresh(fed, logins)
    root = etree.fromstring(token_xml(offering))
    root.remove(root.find("ds:Signature", NS))
    root.find(".//saml:Attribute[@Name='urn:renkei:attr:task']/saml:AttributeValue", NS).text = "FORGED"
    sign_enveloped(root, fed.requester.key, certificate=fed.requester.cert)
    forged = etree.tostring(root)

    import renkei_provider.verifier as module

    def must_not_decrypt(*_a, **_k):
        raise AssertionError("decryption attempted before the signature was verified")

    monkeypatch.setattr(module, "decrypt_element", must_not_decrypt)
    with pytest.raises(TokenSignatureInvalid):
        fed.verifier().verify(forged)
    # signed by the provider itself (it has an SP key too): still not the hub
    root.remove(root.find("ds:Signature", NS))
    sign_enveloped(root, fed.provider_a.key, certificate=fed.provider_a.cert)
    with pytest.raises(TokenSignatureInvalid):
        fed.verifier().verify(etree.tostring(root))
    # and with the signature simply removed
    root.remove(root.find("ds:Signature", NS))
    with pytest.raises(TokenSignatureInvalid):
        fed.verifier().verify(etree.tostring(root))


def test_expired_and_not_yet_valid_tokens_are_refused(fed, logins):
    _, offering = fresh(fed, logins)
    verifier = fed.verifier()
    with pytest.raises(TokenExpired):
        verifier.verify(offering["token"], now=datetime.now(UTC) + timedelta(minutes=7))
    with pytest.raises(TokenExpired):
        verifier.verify(offering["token"], now=datetime.now(UTC) - timedelta(minutes=10))
    # naive datetimes are UTC
    with pytest.raises(TokenExpired):
        verifier.verify(offering["token"], now=datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1))
    # the refused presentations did not use the token up
    assert verifier.verify(offering["token"]).local_id == LOCAL_A


def test_the_requester_cannot_read_the_provider_subject(fed, logins):
    """Neither the token nor the whole JSON answer contains p_A or A's local ID, in any form."""
    body, offering = fresh(fed, logins)
    raw_json = fed.query(logins["bootstrap"]).text
    token = token_xml(offering)
    secrets_ = [logins["provider_pseudonym"], LOCAL_A]
    for secret in secrets_:
        for form in plain_and_base64_forms(secret):
            assert form not in raw_json, f"the JSON answer reveals {secret!r}"
            assert form.encode() not in token, f"the token reveals {secret!r}"
        assert secret not in str(body)
    # the requester's own facts are there in clear, as the docs say; and the search above
    # does find a value that is inside the token (a positive control for the base64 forms)
    assert fed.requester.entity_id.encode() in token
    assert any(form in raw_json for form in plain_and_base64_forms(fed.requester.entity_id)[1:])


def test_rejections_never_echo_the_token(fed, logins):
    _, offering = fresh(fed, logins)
    root = etree.fromstring(token_xml(offering))
    facts = [root.get("ID"), offering["decision_id"], fed.requester.entity_id, TASK, SERVICE,
             fed.provider_a.entity_id, fed.endpoint_a, logins["provider_pseudonym"], LOCAL_A]
    tampered = copy.deepcopy(root)
    tampered.find(".//saml:Audience", NS).text = "urn:x"
    attempts = [
        lambda: fed.verifier(fed.provider_b).verify(offering["token"]),
        lambda: fed.verifier(endpoint="https://x.example.jp/").verify(offering["token"]),
        lambda: fed.verifier().verify(offering["token"], now=datetime.now(UTC) + timedelta(hours=1)),
        lambda: fed.verifier().verify(etree.tostring(tampered)),
        lambda: fed.verifier().verify(b"not base64 at all !"),
        lambda: fed.verifier().verify(b"<saml:Assertion xmlns:saml='" + SAML.encode() + b"'/>"),
    ]
    verifier = fed.verifier()
    verifier.verify(offering["token"])
    attempts.append(lambda: verifier.verify(offering["token"]))
    for attempt in attempts:
        with pytest.raises(TokenRejected) as info:
            attempt()
        message = str(info.value)
        assert info.value.code.startswith("TOKEN_")
        for fact in facts:
            assert fact not in message, (info.value.code, message)


def test_garbage_is_refused_as_malformed(fed):
    verifier = fed.verifier()
    for junk in (b"", b"   ", "%%%", b"<a/>", b"<!DOCTYPE x [<!ENTITY e 'x'>]><x>&e;</x>",
                 base64.b64encode(b"<x/>"), b"A" * 400_000):
        with pytest.raises(TokenMalformed):
            verifier.verify(junk)


def test_verifier_pins_only_signing_keys_of_the_hub_idp(fed):
    root = etree.fromstring(fed.metadata)
    for kd in root.iter(f"{{{MD}}}KeyDescriptor"):
        kd.set("use", "encryption")
    with pytest.raises(HubMetadataError):
        TokenVerifier(hub_metadata_xml=etree.tostring(root), provider_entity_id=fed.provider_a.entity_id,
                      endpoint=None, decryption_keys=[fed.provider_a.key])
    sp_metadata = fed.provider_a.metadata()  # an SP's metadata is not the hub's
    with pytest.raises(HubMetadataError):
        TokenVerifier(hub_metadata_xml=sp_metadata, provider_entity_id=fed.provider_a.entity_id,
                      endpoint=None, decryption_keys=[fed.provider_a.key])
    verifier = fed.verifier()
    assert verifier.hub_entity_id == f"{fed.hub.base_url}/idp/metadata"


def plain_and_base64_forms(value: str) -> list[str]:
    """The value, and every base64 / base64url rendering of it at any byte alignment."""
    data = value.encode()
    forms = [value]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode()
        core = encoded[(0, 2, 3)[shift]:]  # drop the characters that carry prefix bits
        core = core[: len(core) - 4]  # and those touching whatever follows
        forms += [core, core.replace("+", "-").replace("/", "_")]
    return [f for f in forms if len(f) >= 8]
