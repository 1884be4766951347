"""The discovery service's SOAP faces (ID-WSF 2.0 DS Query, SAML NameIDMappingRequest) over
real HTTP against the running hub: decisions, tokens a provider can use, the same decisions as
the JSON face, refusals as SOAP faults, and no other agency's pseudonym in anything returned.

Requests are signed with kernel.xml._wss (its own independent checks are in
test_wssecurity.py) or, for SAML, by python-xmlsec; tokens and responses are checked with
python-xmlsec against the hub's published key and decrypted with the provider's key.
"""
from __future__ import annotations

import base64
import copy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from lxml import etree
from sqlalchemy import select

from access_history.models import HistoryEntry
from consent import service as consent
from consent.models import PolicyRuleIn, WhitelistEntryIn
from discovery import service as location
from discovery.soap import QUERY_ACTION
from federation import service as agencies
from idp import accounts
from kernel.db import session_scope
from kernel.jose import sign_client_assertion
from kernel.keys import keystore
from kernel.xml._enc import decrypt_element
from kernel.xml._wss import sign_envelope, soap_envelope, verify_envelope
from pseudonym import service as pseudonyms
from pseudonym.models import Pseudonym
from tests.saml_sp import (
    Browser,
    TestSP,
    make_key_and_cert,
    now_str,
    response_from_page,
    verify_with_xmlsec,
)

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
WSA = "http://www.w3.org/2005/08/addressing"
SB = "urn:liberty:sb:2006-08"
SBF = "urn:liberty:sb"
DISCO = "urn:liberty:disco:2006-08"
LU = "urn:liberty:util:2006-08"
SEC = "urn:liberty:security:2006-08"
RK = "urn:renkei:2026"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"soap": SOAP, "wsse": WSSE, "wsu": WSU, "wsa": WSA, "sb": SB, "sbf": SBF, "disco": DISCO,
      "lu": LU, "sec": SEC, "rk": RK, "saml": SAML, "samlp": SAMLP, "ds": DS}
TOKEN_USAGE = "urn:liberty:security:tokenusage:2006-08:SecurityToken"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
DISCOVERY_EPR = "urn:liberty:disco:2006-08:DiscoveryEPR"

UID = uuid.uuid4().hex[:8]
TASK = f"T-{UID}"
OTHER_TASK = f"T-{UID}-unlisted"
INFO_A, INFO_B = f"A-{UID}", f"B-{UID}"
SERVICE_TYPE = f"urn:renkei:service:soap-test-{UID}"
PROVIDERS = ("ok", "nowl", "denied", "override", "consent", "nokey")


@dataclass
class Agency:
    sp: TestSP
    enc_key: object = None
    enc_cert: object = None

    @property
    def entity_id(self) -> str:
        return self.sp.entity_id

    @property
    def endpoint(self) -> str:
        return self.sp.base_url + "/api/record"


@dataclass
class World:
    hub: object
    requester: Agency
    providers: dict[str, Agency]
    person_key: str
    master_id: str
    bootstrap: str
    pseudonym: str
    staff_assertion: bytes
    staff_name_id: str
    rules: list = field(default_factory=list)

    @property
    def soap_url(self) -> str:
        return self.hub.base_url + "/discovery/soap"

    @property
    def nim_url(self) -> str:
        return self.hub.base_url + "/idp/nim"

    def provider(self, name: str) -> str:
        return self.providers[name].entity_id

    def name_of(self, entity_id: str) -> str:
        return next(n for n, a in self.providers.items() if a.entity_id == entity_id)


def with_encryption_key(sp: TestSP, cert) -> bytes:
    """The SP's metadata plus a KeyDescriptor use="encryption" (what federation.service pins for tokens)."""
    root = etree.fromstring(sp.metadata())
    descriptor = root.find(f"{{{MD}}}SPSSODescriptor")
    kd = etree.Element(f"{{{MD}}}KeyDescriptor", use="encryption")
    x509 = etree.SubElement(etree.SubElement(etree.SubElement(kd, f"{{{DS}}}KeyInfo"), f"{{{DS}}}X509Data"),
                            f"{{{DS}}}X509Certificate")
    x509.text = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    descriptor.insert(1, kd)
    return etree.tostring(root)


def sso_assertion(hub, sp: TestSP, username: str, password: str) -> etree._Element:
    browser = Browser(hub.base_url)
    _, request = sp.authn_request(f"{hub.base_url}/idp/sso")
    first = browser.start(sp, etree.tostring(request))
    page = browser.login(first, username, password)
    assert page.status_code == 200, page.text[:500]
    _, response, _ = response_from_page(page.text)
    assertions = response.findall("saml:Assertion", NS)
    assert len(assertions) == 1
    return assertions[0]


@pytest.fixture(scope="module")
def world(hub) -> World:
    requester = Agency(TestSP(f"https://req-{UID}.example.jp/sp", f"https://req-{UID}.example.jp"))
    providers = {}
    for name in PROVIDERS:
        # a separate encryption key; "nokey" publishes none at all
        sp = TestSP(f"https://{name}-{UID}.example.jp/sp", f"https://{name}-{UID}.example.jp", encryption=False)
        enc = make_key_and_cert(f"{name}-enc") if name != "nokey" else (None, None)
        providers[name] = Agency(sp, *enc)
    master_id = f"9{UID}"
    citizen, staff = f"citizen-{UID}", f"staff-{UID}"
    whitelist = {"ok": ("override", [INFO_A, INFO_B]), "denied": ("required", [INFO_A, INFO_B]),
                 "override": ("override", [INFO_A, INFO_B]), "consent": ("required", [INFO_A]),
                 "nokey": ("override", [INFO_A, INFO_B])}
    with session_scope() as db:
        agencies.register(db_session=db, metadata=requester.sp.metadata(), agency_class="municipality")
        for agency in providers.values():
            metadata = with_encryption_key(agency.sp, agency.enc_cert) if agency.enc_cert else agency.sp.metadata()
            agencies.register(db_session=db, metadata=metadata, agency_class="municipality")
        person = accounts.add_person(db_session=db, username=citizen, password="citizen password")
        accounts.add_person(db_session=db, username=staff, password="staff password")
        pseudonyms.register_master_id(db_session=db, keys=keystore(), person_key=person.person_key,
                                      master_id=master_id)
        location.add_service_type(db_session=db, urn=SERVICE_TYPE, name="SOAP test records",
                                  info_types=[INFO_A, INFO_B])
        for name, agency in providers.items():
            pseudonyms.import_local_links(db_session=db, keys=keystore(), agency=agency.entity_id,
                                          csv_text=f"LOCAL-{name}-{UID},{master_id}\n")
            location.add_offering(db_session=db, provider=agency.entity_id, service_type=SERVICE_TYPE,
                                  endpoint=agency.endpoint)
        for name, (mode, infos) in whitelist.items():
            for info in infos:
                consent.create_whitelist_entry(db_session=db, entry=WhitelistEntryIn(
                    requester=requester.entity_id, provider=providers[name].entity_id, task_code=TASK,
                    task_name="test task", info_type_code=info, info_type_name="test info",
                    legal_basis="test", consent=mode))
        rules = [PolicyRuleIn(effect="deny", provider=providers["denied"].entity_id),
                 PolicyRuleIn(effect="deny", provider=providers["override"].entity_id),
                 PolicyRuleIn(effect="allow", provider=providers["consent"].entity_id)]
        consent.set_policy(collection_method="test-setup", db_session=db, person_key=person.person_key, rules=rules, principal_id=citizen)
        person_key = person.person_key
    assertion = sso_assertion(hub, requester.sp, citizen, "citizen password")
    token = assertion.find(
        f"saml:AttributeStatement/saml:Attribute[@Name='{DISCOVERY_EPR}']/saml:AttributeValue/"
        "wsa:EndpointReference/wsa:Metadata/sec:SecurityContext/sec:Token", NS)
    staff_assertion = sso_assertion(hub, requester.sp, staff, "staff password")
    return World(
        hub=hub, requester=requester, providers=providers, person_key=person_key, master_id=master_id,
        bootstrap=token.text, pseudonym=assertion.findtext("saml:Subject/saml:NameID", namespaces=NS),
        staff_assertion=etree.tostring(staff_assertion),
        staff_name_id=staff_assertion.findtext("saml:Subject/saml:NameID", namespaces=NS), rules=rules,
    )


# -- the requester's side of the SOAP face -----------------------------------------------------
def query_envelope(world: World, *, task: str = TASK, info_type: str | None = None,
                   service_type: str = SERVICE_TYPE, bootstrap: str | None = "default",
                   pseudonym: str | None = None, staff: bytes | None = None, key=None,
                   sender: str | None = None, message_id: str | None = None, action: str = QUERY_ACTION,
                   to: str | None = None, sign_purpose: bool = True, now: datetime | None = None,
                   sign: bool = True) -> etree._Element:
    """A Query envelope as docs say (discovery/soap.py): headers, the person's evidence, signed."""
    env = soap_envelope({"sb": SB, "sbf": SBF, "disco": DISCO, "sec": SEC, "rk": RK, "saml": SAML})
    header, body = env[0], env[1]
    etree.SubElement(header, f"{{{SBF}}}Framework", version="2.0")
    etree.SubElement(header, f"{{{SB}}}Sender", providerID=sender or world.requester.entity_id)
    purpose = etree.SubElement(header, f"{{{RK}}}Purpose", task=task)
    if info_type:
        purpose.set("infoType", info_type)
    if pseudonym:
        target = etree.SubElement(header, f"{{{SB}}}TargetIdentity")
        etree.SubElement(target, f"{{{SAML}}}NameID", Format=PERSISTENT).text = pseudonym
    query = etree.SubElement(body, f"{{{DISCO}}}Query")
    etree.SubElement(etree.SubElement(query, f"{{{DISCO}}}RequestedService"),
                     f"{{{DISCO}}}ServiceType").text = service_type
    if sign:
        sign_envelope(env, key or world.requester.sp.key, certificate=world.requester.sp.cert,
                      message_id=message_id, action=action, to=to or world.soap_url,
                      extra_parts=(f"{{{RK}}}Purpose",) if sign_purpose else (), now=now)
    security = env.find("soap:Header/wsse:Security", NS)
    if security is None:
        security = etree.SubElement(header, f"{{{WSSE}}}Security")
    bootstrap = world.bootstrap if bootstrap == "default" and not pseudonym else (
        None if bootstrap == "default" else bootstrap)
    if bootstrap:
        etree.SubElement(security, f"{{{SEC}}}Token", usage=TOKEN_USAGE).text = bootstrap
    if staff:
        security.append(etree.fromstring(staff))
    return env


def post(url: str, data: bytes) -> httpx.Response:
    return httpx.post(url, content=data, headers={"Content-Type": "text/xml; charset=utf-8",
                                                   "SOAPAction": QUERY_ACTION}, timeout=30)


def hub_keys() -> list:
    """The discovery service's published keys: they, not the IdP's, sign answers and tokens."""
    return [c.public_key() for c in keystore().published_certificates("discovery")]


def discovery_cert():
    return keystore().current_signing_key("discovery").certificate


def verified_answer(r: httpx.Response):
    """The hub-signed answer, verified with the hub's published key (no trust in the transport)."""
    assert r.headers["content-type"].startswith("text/xml"), r.headers
    return verify_envelope(r.content, hub_keys(), max_bytes=4 * 1024 * 1024)


def soap_decisions(answer) -> dict[str, tuple[bool, str, bool]]:
    return {
        d.get("provider"): (d.get("permitted") == "true", d.get("reason"), d.get("overridden") == "true")
        for d in answer.body.iterfind("disco:QueryResponse/rk:Decision", NS)
    }


def query(world: World, **kwargs) -> tuple[httpx.Response, object]:
    r = post(world.soap_url, etree.tostring(query_envelope(world, **kwargs)))
    return r, verified_answer(r)


def status_of(answer) -> tuple[str, str | None]:
    status = answer.body.find("disco:QueryResponse/lu:Status", NS)
    nested = status.find("lu:Status", NS)
    return status.get("code"), nested.get("code") if nested is not None else None


def fault_of(r: httpx.Response, *, signed: bool = False) -> tuple[str, str]:
    """(faultcode, lu:Status code) of a SOAP 1.1 Fault: hub-signed when it answers a requester
    whose signature verified, unsigned (no RSA signature spent) when it answers anything else."""
    assert r.status_code == 500, r.text[:500]
    if signed:
        body = verified_answer(r).body
    else:
        envelope = etree.fromstring(r.content)
        assert envelope.find(".//ds:Signature", NS) is None, "a fault to an unauthenticated sender was signed"
        body = envelope.find("soap:Body", NS)
    fault = body.find("soap:Fault", NS)
    assert fault is not None, r.text[:500]
    assert body.find(".//saml:Assertion", NS) is None
    assert body.find(".//wsa:EndpointReference", NS) is None
    return fault.findtext("faultcode"), fault.find("detail/lu:Status", NS).get("code")


# -- the JSON face, for comparison -----------------------------------------------------------
def json_query(world: World, *, task: str = TASK, info_type: str | None = None,
               service_type: str = SERVICE_TYPE, bootstrap: str | None = "default",
               pseudonym: str | None = None, staff: bytes | None = None) -> httpx.Response:
    url = world.hub.base_url + "/api/discovery/query"
    jwt = sign_client_assertion(world.requester.sp.key, issuer=world.requester.entity_id, audience=url,
                                jti=uuid.uuid4().hex)
    bootstrap = world.bootstrap if bootstrap == "default" and not pseudonym else (
        None if bootstrap == "default" else bootstrap)
    person = {"bootstrap_token": bootstrap, "pseudonym": pseudonym,
              "staff_assertion": base64.b64encode(staff).decode() if staff else None}
    return httpx.post(url, json={"service_type": service_type, "task": task, "info_type": info_type,
                                 "person": person}, headers={"Authorization": f"Bearer {jwt}"}, timeout=30)


def json_decisions(r: httpx.Response) -> dict[str, tuple[bool, str, bool]]:
    assert r.status_code == 200, r.text
    return {o["provider"]: (o["permitted"], o["reason"], o["overridden"]) for o in r.json()["offerings"]}


# -- the provider's side -----------------------------------------------------------------------
def provider_token(epr: etree._Element) -> etree._Element:
    tokens = epr.findall("wsa:Metadata/sec:SecurityContext/sec:Token", NS)
    assert len(tokens) == 1 and tokens[0].get("usage") == TOKEN_USAGE
    assertions = tokens[0].findall("saml:Assertion", NS)
    assert len(assertions) == 1
    return assertions[0]


def decrypted_subject(world: World, name: str, assertion: etree._Element) -> etree._Element:
    standalone = etree.fromstring(etree.tostring(assertion))
    verify_with_xmlsec(standalone, discovery_cert())
    encrypted = standalone.find("saml:Subject/saml:EncryptedID", NS)
    assert encrypted is not None and standalone.find("saml:Subject/saml:NameID", NS) is None
    return decrypt_element(encrypted, [world.providers[name].enc_key])


def pseudonym_in_db(world: World, agency: str) -> str:
    with session_scope() as db:
        return db.scalar(select(Pseudonym.value).where(Pseudonym.person_key == world.person_key,
                                                       Pseudonym.agency == agency,
                                                       Pseudonym.revoked_at.is_(None)))


EXPECTED = {
    "ok": (True, "PERMITTED_BY_LAW", False),
    "nowl": (False, "NO_WHITELIST_ENTRY", False),
    "denied": (False, "DENIED_BY_PERSON", False),
    "override": (True, "LAW_OVERRIDES_CONSENT", True),
    "consent": (False, "NO_WHITELIST_ENTRY", False),  # whitelisted for INFO_A only
    "nokey": (False, "PROVIDER_HAS_NO_ENCRYPTION_KEY", False),
}


# -- tests: the Query ----------------------------------------------------------------------------
def test_permitted_query_returns_endpoints_with_tokens_the_provider_can_use(world):
    request = query_envelope(world)
    message_id = request.findtext("soap:Header/wsa:MessageID", namespaces=NS)
    r = post(world.soap_url, etree.tostring(request))
    assert r.status_code == 200, r.text[:800]
    answer = verified_answer(r)
    assert answer.action == "urn:liberty:disco:2006-08:QueryResponse"
    assert answer.relates_to == message_id
    assert answer.header(f"{{{SB}}}Sender").get("providerID") == world.hub.base_url + "/discovery"
    assert status_of(answer) == ("OK", None)
    decisions = soap_decisions(answer)
    assert decisions == {world.provider(n): e for n, e in EXPECTED.items()}

    eprs = answer.body.findall("disco:QueryResponse/wsa:EndpointReference", NS)
    assert {e.findtext("wsa:Metadata/disco:ProviderID", namespaces=NS) for e in eprs} == {
        world.provider("ok"), world.provider("override")}
    for epr in eprs:
        name = world.name_of(epr.findtext("wsa:Metadata/disco:ProviderID", namespaces=NS))
        agency = world.providers[name]
        assert epr.findtext("wsa:Address", namespaces=NS) == agency.endpoint
        metadata = epr.find("wsa:Metadata", NS)
        assert metadata.findtext("disco:Abstract", namespaces=NS)
        assert metadata.findtext("disco:ServiceContext/disco:ServiceType", namespaces=NS) == SERVICE_TYPE
        context = metadata.find("disco:ServiceContext/disco:EndpointContext", NS)
        assert context.findtext("disco:Address", namespaces=NS) == agency.endpoint
        assert context.find("sbf:Framework", NS).get("version") == "2.0"
        mech = context.findtext("disco:SecurityMechID", namespaces=NS)
        assert mech == metadata.findtext("sec:SecurityContext/disco:SecurityMechID", namespaces=NS)
        token = provider_token(epr)
        assert token.findtext("saml:Conditions/saml:AudienceRestriction/saml:Audience",
                              namespaces=NS) == agency.entity_id
        assert token.find("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData",
                          NS).get("Recipient") == agency.endpoint
        name_id = decrypted_subject(world, name, token)
        assert name_id.get("SPNameQualifier") == agency.entity_id
        assert name_id.text == pseudonym_in_db(world, agency.entity_id)
        assert name_id.text != world.pseudonym and name_id.text.encode() not in r.content
        decision_id = next(d.get("decisionId") for d in answer.body.iterfind("disco:QueryResponse/rk:Decision", NS)
                           if d.get("provider") == agency.entity_id)
        attrs = {a.get("Name"): a.findtext("saml:AttributeValue", namespaces=NS)
                 for a in token.iterfind("saml:AttributeStatement/saml:Attribute", NS)}
        assert attrs["urn:renkei:attr:decision-id"] == decision_id
        assert attrs["urn:renkei:attr:requester"] == world.requester.entity_id
        assert attrs["urn:renkei:attr:task"] == TASK

    # every decision, permit or refusal, was logged under its decision ID before the answer
    ids = [d.get("decisionId") for d in answer.body.iterfind("disco:QueryResponse/rk:Decision", NS)]
    with session_scope() as db:
        logged = {e.decision_id: e for e in db.scalars(select(HistoryEntry).where(HistoryEntry.decision_id.in_(ids)))}
    assert set(logged) == set(ids)


def test_refused_offerings_carry_reason_codes_and_no_token(world):
    r, answer = query(world, task=OTHER_TASK)
    assert r.status_code == 200
    assert status_of(answer) == ("NoResults", None)
    assert answer.body.find(".//wsa:EndpointReference", NS) is None
    assert answer.body.find(".//saml:Assertion", NS) is None
    assert set(soap_decisions(answer).values()) == {(False, "NO_WHITELIST_ENTRY", False)}


def test_one_information_type(world):
    _, answer = query(world, info_type=INFO_A)
    assert soap_decisions(answer)[world.provider("consent")] == (True, "PERMITTED_BY_CONSENT", False)


def test_back_office_query_with_pseudonym_and_staff_assertion(world):
    r, answer = query(world, pseudonym=world.pseudonym, staff=world.staff_assertion)
    assert r.status_code == 200, r.text[:500]
    assert soap_decisions(answer) == {world.provider(n): e for n, e in EXPECTED.items()}
    ids = [d.get("decisionId") for d in answer.body.iterfind("disco:QueryResponse/rk:Decision", NS)]
    with session_scope() as db:
        staff = set(db.scalars(select(HistoryEntry.staff).where(HistoryEntry.decision_id.in_(ids))))
    assert staff == {world.staff_name_id}


def test_whole_query_refusals_are_failed_status_with_the_reason(world):
    _, answer = query(world, service_type="urn:renkei:service:no-such-thing")
    assert status_of(answer) == ("Failed", "UNKNOWN_SERVICE_TYPE")
    _, answer = query(world, bootstrap="rk1.e30.AAAA")
    assert status_of(answer) == ("Failed", "BOOTSTRAP_TOKEN_REJECTED")
    _, answer = query(world, bootstrap=None, pseudonym=world.pseudonym)  # no staff assertion
    assert status_of(answer) == ("Failed", "PERSON_NOT_NAMED")
    _, answer = query(world, bootstrap=None, pseudonym="not-a-pseudonym", staff=world.staff_assertion)
    assert status_of(answer) == ("Failed", "UNKNOWN_PERSON")


# -- tests: the two faces decide alike ----------------------------------------------------------
SCENARIOS = {
    "bootstrap, every information type": {},
    "one information type": {"info_type": INFO_A},
    "no whitelist entry for the task": {"task": OTHER_TASK},
    "staff assertion": {"pseudonym": "<p_R>", "staff": "<staff>"},
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_soap_and_json_faces_decide_identically(world, scenario):
    kwargs = {k: {"<p_R>": world.pseudonym, "<staff>": world.staff_assertion}.get(v, v)
              for k, v in SCENARIOS[scenario].items()}
    _, answer = query(world, **kwargs)
    j = json_query(world, **kwargs)
    assert soap_decisions(answer) == json_decisions(j)
    soap_tokens = {e.findtext("wsa:Metadata/disco:ProviderID", namespaces=NS)
                   for e in answer.body.iterfind("disco:QueryResponse/wsa:EndpointReference", NS)}
    assert soap_tokens == {o["provider"] for o in j.json()["offerings"] if o["token"]}


def test_faces_agree_when_the_person_denies_everything(world):
    with session_scope() as db:
        consent.set_policy(collection_method="test-setup", db_session=db, person_key=world.person_key,
                           rules=[PolicyRuleIn(effect="deny")], principal_id="test")
    try:
        _, answer = query(world, info_type=INFO_A)
        soap = soap_decisions(answer)
        assert soap == json_decisions(json_query(world, info_type=INFO_A))
        assert soap[world.provider("consent")] == (False, "DENIED_BY_PERSON", False)
        assert soap[world.provider("ok")] == (True, "LAW_OVERRIDES_CONSENT", True)
    finally:
        with session_scope() as db:
            consent.set_policy(collection_method="test-setup", db_session=db, person_key=world.person_key, rules=world.rules,
                               principal_id="test")


def test_faces_agree_on_whole_query_refusals(world):
    for kwargs, code in (({"service_type": "urn:renkei:service:no-such-thing"}, "UNKNOWN_SERVICE_TYPE"),
                         ({"bootstrap": "rk1.e30.AAAA"}, "BOOTSTRAP_TOKEN_REJECTED"),
                         ({"info_type": "NOT-AN-INFO-TYPE"}, "UNKNOWN_INFO_TYPE")):
        _, answer = query(world, **kwargs)
        assert status_of(answer) == ("Failed", code)
        assert json_query(world, **kwargs).json()["error"] == code


# -- tests: refusals at the message level ---------------------------------------------------
def test_unsigned_request_is_a_soap_fault(world):
    r = post(world.soap_url, etree.tostring(query_envelope(world, sign=False)))
    assert fault_of(r) == ("wsse:InvalidSecurity", "INVALID_SECURITY")


def test_request_signed_with_another_key_is_a_soap_fault(world):
    attacker_key, _ = make_key_and_cert("attacker.example")
    r = post(world.soap_url, etree.tostring(query_envelope(world, key=attacker_key)))
    assert fault_of(r) == ("wsse:FailedAuthentication", "SIGNATURE_INVALID")


def test_unknown_sender_is_a_soap_fault(world):
    r = post(world.soap_url, etree.tostring(query_envelope(world, sender="https://unknown.example/sp")))
    assert fault_of(r) == ("wsse:FailedAuthentication", "UNKNOWN_SENDER")


def test_sender_signed_as_another_registered_agency_is_refused(world):
    # a registered provider signs with its own key but claims to be the requester: the key is
    # chosen by the claimed sender, so the signature cannot verify
    other = world.providers["ok"].sp
    r = post(world.soap_url, etree.tostring(query_envelope(world, key=other.key)))
    assert fault_of(r) == ("wsse:FailedAuthentication", "SIGNATURE_INVALID")


def test_replayed_message_id_is_a_soap_fault(world):
    data = etree.tostring(query_envelope(world))
    assert post(world.soap_url, data).status_code == 200
    assert fault_of(post(world.soap_url, data), signed=True) == ("wsse:InvalidSecurity", "MESSAGE_REPLAYED")
    # re-signed with a fresh timestamp but the same MessageID: still a replay
    message_id = etree.fromstring(data).findtext("soap:Header/wsa:MessageID", namespaces=NS)
    again = etree.tostring(query_envelope(world, message_id=message_id))
    assert fault_of(post(world.soap_url, again), signed=True) == ("wsse:InvalidSecurity", "MESSAGE_REPLAYED")


def test_body_wrapped_request_is_a_soap_fault(world):
    env = query_envelope(world, task=OTHER_TASK)
    original = env[1]
    env.remove(original)
    etree.SubElement(env[0], f"{{{RK}}}Wrapper").append(original)
    forged = etree.SubElement(env, f"{{{SOAP}}}Body")
    q = etree.SubElement(forged, f"{{{DISCO}}}Query")
    etree.SubElement(etree.SubElement(q, f"{{{DISCO}}}RequestedService"),
                     f"{{{DISCO}}}ServiceType").text = SERVICE_TYPE
    r = post(world.soap_url, etree.tostring(env))
    assert fault_of(r)[0] == "wsse:InvalidSecurity"


def test_tampered_purpose_is_a_soap_fault(world):
    env = query_envelope(world, task=OTHER_TASK)
    env.find("soap:Header/rk:Purpose", NS).set("task", TASK)
    assert fault_of(post(world.soap_url, etree.tostring(env))) == ("wsse:FailedCheck", "SIGNATURE_INVALID")


def test_unsigned_purpose_is_a_soap_fault(world):
    r = post(world.soap_url, etree.tostring(query_envelope(world, sign_purpose=False)))
    assert fault_of(r) == ("wsse:InvalidSecurity", "INVALID_SECURITY")


def test_expired_request_is_a_soap_fault(world):
    env = query_envelope(world, now=datetime.now(UTC) - timedelta(minutes=10))
    assert fault_of(post(world.soap_url, etree.tostring(env))) == ("wsse:MessageExpired", "MESSAGE_EXPIRED")


def test_wrong_action_or_destination_is_a_soap_fault(world):
    env = query_envelope(world, action="urn:liberty:disco:2006-08:SvcMDRegister")
    assert fault_of(post(world.soap_url, etree.tostring(env)), signed=True)[0] == "wsa:ActionNotSupported"
    env = query_envelope(world, to="https://other-hub.example/discovery/soap")
    assert fault_of(post(world.soap_url, etree.tostring(env)), signed=True)[0] == "wsa:InvalidAddressingHeader"


def test_doctype_and_garbage_are_soap_faults_not_tracebacks(world):
    data = etree.tostring(query_envelope(world))
    for attacked in (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + data, b"not xml", b"",
                     b"<a/>"):
        r = post(world.soap_url, attacked)
        code, _ = fault_of(r)
        assert code in ("soap:Client", "wsse:InvalidSecurity"), code
        assert b"Traceback" not in r.content


def test_oversized_request_is_refused_before_parsing(world):
    r = post(world.soap_url, b"<a>" + b"x" * (world.hub.settings.max_message_bytes + 10) + b"</a>")
    assert fault_of(r) == ("soap:Client", "MESSAGE_TOO_LARGE")


def test_unknown_must_understand_header_is_a_fault(world):
    env = query_envelope(world, sign=False)
    block = etree.SubElement(env[0], "{urn:example:other}Critical")
    block.set(f"{{{SOAP}}}mustUnderstand", "1")
    r = post(world.soap_url, etree.tostring(env))
    assert fault_of(r) == ("soap:MustUnderstand", "HEADER_NOT_UNDERSTOOD")


# -- tests: NameIDMappingRequest ---------------------------------------------------------------
def nim_envelope(world: World, *, target: str, task: str = TASK, info_type: str = INFO_A,
                 bootstrap: str | None = "default", staff: bytes | None = None, sign_with=None,
                 request_id: str | None = None, destination: str | None = None,
                 issue_instant: str | None = None) -> bytes:
    request = etree.Element(f"{{{SAMLP}}}NameIDMappingRequest",
                            nsmap={"samlp": SAMLP, "saml": SAML, "rk": RK, "sec": SEC})
    request.set("ID", request_id or "_" + uuid.uuid4().hex)
    request.set("Version", "2.0")
    request.set("IssueInstant", issue_instant or now_str())
    request.set("Destination", destination or world.nim_url)
    etree.SubElement(request, f"{{{SAML}}}Issuer").text = world.requester.entity_id
    extensions = etree.SubElement(request, f"{{{SAMLP}}}Extensions")
    etree.SubElement(extensions, f"{{{RK}}}Purpose", task=task, infoType=info_type)
    if bootstrap:
        token = world.bootstrap if bootstrap == "default" else bootstrap
        etree.SubElement(extensions, f"{{{SEC}}}Token", usage=TOKEN_USAGE).text = token
    if staff:
        extensions.append(etree.fromstring(staff))
    etree.SubElement(request, f"{{{SAML}}}NameID", Format=PERSISTENT).text = world.pseudonym
    etree.SubElement(request, f"{{{SAMLP}}}NameIDPolicy", Format=PERSISTENT, SPNameQualifier=target)
    if sign_with is not False:
        signer = sign_with or world.requester.sp
        signer.sign_xml(request)  # python-xmlsec
    envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
    etree.SubElement(envelope, f"{{{SOAP}}}Body").append(request)
    return etree.tostring(envelope)


def nim_response(r: httpx.Response, *, signed: bool = True) -> etree._Element:
    """The NameIDMappingResponse: hub-signed, or unsigned where the request's signature never
    verified (no RSA signature spent on an unauthenticated sender)."""
    assert r.status_code == 200, r.text[:500]
    envelope = etree.fromstring(r.content)
    response = envelope.find("soap:Body/samlp:NameIDMappingResponse", NS)
    if signed:
        verify_with_xmlsec(response, discovery_cert())
    else:
        assert envelope.find(".//ds:Signature", NS) is None, "an unauthenticated refusal was signed"
    assert response.findtext("saml:Issuer", namespaces=NS) == world_idp_entity_id(r)
    return response


def world_idp_entity_id(r: httpx.Response) -> str:
    return str(r.url).rsplit("/idp/nim", 1)[0] + "/idp/metadata"


def nim_status(response: etree._Element) -> tuple[list[str], str | None, etree._Element | None]:
    codes = [c.get("Value").rsplit(":", 1)[1] for c in response.iter(f"{{{SAMLP}}}StatusCode")]
    return codes, response.findtext("samlp:Status/samlp:StatusMessage", namespaces=NS), \
        response.find("samlp:Status/samlp:StatusDetail/rk:Decision", NS)


def test_name_id_mapping_permitted(world):
    data = nim_envelope(world, target=world.provider("ok"))
    request_id = etree.fromstring(data).find(".//samlp:NameIDMappingRequest", NS).get("ID")
    response = nim_response(post(world.nim_url, data))
    assert response.get("InResponseTo") == request_id
    codes, _, decision = nim_status(response)
    assert codes == ["Success"]
    assert decision.get("permitted") == "true" and decision.get("reason") == "PERMITTED_BY_LAW"
    encrypted = response.find("saml:EncryptedID", NS)
    assert response.find("saml:NameID", NS) is None
    name_id = decrypt_element(encrypted, [world.providers["ok"].enc_key])
    assert name_id.get("SPNameQualifier") == world.provider("ok")
    assert name_id.text == pseudonym_in_db(world, world.provider("ok"))


def test_name_id_mapping_with_staff_assertion(world):
    data = nim_envelope(world, target=world.provider("consent"), bootstrap=None, staff=world.staff_assertion)
    codes, _, decision = nim_status(nim_response(post(world.nim_url, data)))
    assert codes == ["Success"] and decision.get("reason") == "PERMITTED_BY_CONSENT"


@pytest.mark.parametrize("name, reason", [("denied", "DENIED_BY_PERSON"), ("nowl", "NO_WHITELIST_ENTRY"),
                                          ("nokey", "PROVIDER_HAS_NO_ENCRYPTION_KEY")])
def test_name_id_mapping_denied(world, name, reason):
    response = nim_response(post(world.nim_url, nim_envelope(world, target=world.provider(name))))
    codes, message, decision = nim_status(response)
    assert codes == ["Requester", "RequestDenied"]
    assert message.split(":")[0] == reason and decision.get("reason") == reason
    assert response.find("saml:EncryptedID", NS) is None


def test_name_id_mapping_refusals(world):
    attacker = TestSP("https://attacker.example/sp", "https://attacker.example")
    cases = [  # (request, reason, whether the requester's signature verified: a signed answer)
        (nim_envelope(world, target=world.provider("ok"), sign_with=False), "SIGNATURE_INVALID", False),
        (nim_envelope(world, target=world.provider("ok"), sign_with=attacker), "SIGNATURE_INVALID", False),
        (nim_envelope(world, target=world.provider("ok"), destination="https://elsewhere.example/nim"),
         "WRONG_DESTINATION", True),
        (nim_envelope(world, target=world.provider("ok"), issue_instant=now_str(timedelta(hours=-1))),
         "MESSAGE_EXPIRED", True),
        (nim_envelope(world, target="https://not-registered.example/sp"), "UNKNOWN_TARGET", True),
        (nim_envelope(world, target=world.provider("ok"), bootstrap="rk1.e30.AAAA"), "BOOTSTRAP_TOKEN_REJECTED",
         True),
    ]
    for data, reason, signed in cases:
        response = nim_response(post(world.nim_url, data), signed=signed)
        codes, message, _ = nim_status(response)
        assert codes[0] == "Requester" and message.split(":")[0] == reason, (reason, codes, message)
        assert response.find("saml:EncryptedID", NS) is None


def test_name_id_mapping_replay(world):
    data = nim_envelope(world, target=world.provider("ok"))
    assert nim_status(nim_response(post(world.nim_url, data)))[0] == ["Success"]
    codes, message, _ = nim_status(nim_response(post(world.nim_url, data)))
    assert codes == ["Requester", "RequestDenied"] and message.startswith("MESSAGE_REPLAYED")


def test_name_id_mapping_tampered_after_signing(world):
    data = nim_envelope(world, target=world.provider("nowl"))
    root = etree.fromstring(data)
    root.find(".//samlp:NameIDPolicy", NS).set("SPNameQualifier", world.provider("ok"))
    _, message, _ = nim_status(nim_response(post(world.nim_url, etree.tostring(root)), signed=False))
    assert message.startswith("SIGNATURE_INVALID")


def test_name_id_mapping_soap_level_garbage_is_a_fault(world):
    for data in (b"<!DOCTYPE x []><a/>", b"<soap:Envelope xmlns:soap='" + SOAP.encode() + b"'/>"):
        r = post(world.nim_url, data)
        assert r.status_code == 500 and b"<faultcode>soap:Client</faultcode>" in r.content


# -- unlinkability ----------------------------------------------------------------------------
def test_no_other_agency_pseudonym_reaches_the_requester(world):
    answers = [
        post(world.soap_url, etree.tostring(query_envelope(world))),
        post(world.soap_url, etree.tostring(query_envelope(world, info_type=INFO_A))),
        post(world.soap_url, etree.tostring(query_envelope(world, pseudonym=world.pseudonym,
                                                           staff=world.staff_assertion))),
        post(world.soap_url, etree.tostring(query_envelope(world, task=OTHER_TASK))),
        post(world.soap_url, etree.tostring(query_envelope(world, service_type="urn:renkei:service:none"))),
        post(world.soap_url, etree.tostring(query_envelope(world, key=make_key_and_cert("x")[0]))),
        post(world.nim_url, nim_envelope(world, target=world.provider("ok"))),
        post(world.nim_url, nim_envelope(world, target=world.provider("denied"))),
    ]
    with session_scope() as db:
        for agency in world.providers.values():  # make sure every provider pseudonym exists to look for
            pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=world.person_key,
                                     agency=agency.entity_id, scope=world.hub.settings.scope)
        secrets = set(db.scalars(select(Pseudonym.value).where(
            Pseudonym.person_key == world.person_key, Pseudonym.agency != world.requester.entity_id)))
    assert len(secrets) >= len(world.providers)
    secrets |= {world.person_key, world.master_id}
    for r in answers:
        assert r.status_code in (200, 500)
        for secret in secrets:
            assert secret.encode() not in r.content
            assert base64.b64encode(secret.encode()) not in r.content


def test_copied_envelope_is_not_accepted_by_another_requester(world):
    # the provider "ok" replays the requester's signed query as if it were its own: the sb:Sender
    # is signed, so changing it breaks the signature
    env = query_envelope(world)
    forged = copy.deepcopy(env)
    forged.find("soap:Header/sb:Sender", NS).set("providerID", world.provider("ok"))
    r = post(world.soap_url, etree.tostring(forged))
    assert fault_of(r)[0] in ("wsse:FailedAuthentication", "wsse:FailedCheck")


def test_faults_are_signed_only_for_requesters_whose_signature_verified(world):
    # anonymous garbage cannot make the hub spend an RSA signature ...
    for url in (world.soap_url, world.nim_url):
        r = post(url, b"<soap:Envelope xmlns:soap='" + SOAP.encode() + b"'><soap:Body/></soap:Envelope>")
        assert r.status_code == 500 and b"Fault" in r.content
        assert etree.fromstring(r.content).find(".//ds:Signature", NS) is None
    assert fault_of(post(world.soap_url, etree.tostring(query_envelope(world, sign=False)))) == (
        "wsse:InvalidSecurity", "INVALID_SECURITY")
    # ... an authenticated requester that is refused still gets an answer it can verify
    env = query_envelope(world, to="https://elsewhere.example/soap")
    assert fault_of(post(world.soap_url, etree.tostring(env)), signed=True)[1] == "WRONG_DESTINATION"
    response = nim_response(post(world.nim_url, nim_envelope(world, target=world.provider("ok"),
                                                              destination="https://elsewhere.example/nim")))
    assert nim_status(response)[1].startswith("WRONG_DESTINATION")
