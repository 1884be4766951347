"""Electronic envelopes (電子封筒) relayed by the hub, over real HTTP: SOAP and JSON faces,
signatures checked by independent implementations (xmlsec1, PyJWT), pseudonyms translated per
receiver, every forwarding decided and logged like a discovery decision, idempotency by
receipt number, refusals acked, a receiver down then up, resend on request."""
from __future__ import annotations

import base64
import json
import subprocess
import uuid

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from lxml import etree
from sqlalchemy import select

from access_history.models import HistoryEntry
from consent.models import PolicyRuleIn
from kernel.db import session_scope
from kernel.jose import sign_client_assertion
from pseudonym import service as pseudonyms
from relay.service import hub_certificates
from renkei_provider import envelope as E
from tests.relay_helpers import NOTICE_ONLY, envelope_for, set_rules, wait_for


def submit_soap(hub, fed, env: E.Envelope, *, asynchronous: bool = False, key=None) -> httpx.Response:
    body = E.soap_wrap(E.sign_xml(env, key or fed["s"].key))
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    if asynchronous:
        headers["Prefer"] = "respond-async"
    return httpx.post(f"{hub.base_url}/relay/soap", content=body, headers=headers, timeout=60)


def submit_json(hub, fed, env: E.Envelope, *, asynchronous: bool = False, key=None) -> httpx.Response:
    headers = {"Prefer": "respond-async"} if asynchronous else {}
    return httpx.post(f"{hub.base_url}/api/relay/envelopes", json={"envelope": E.sign_json(env, key or fed["s"].key)},
                      headers=headers, timeout=60)


def soap_deliveries(response: httpx.Response) -> dict[str, dict]:
    root = etree.fromstring(response.content)
    out = {}
    for d in root.iter(f"{{{E.ENV_NS}}}Delivery"):
        ack = d.find(f"{{{E.ENV_NS}}}Ack")
        out[d.get("To")] = {"state": d.get("State"), "reason": d.get("Reason"), "decision_id": d.get("DecisionId"),
                            "ack": None if ack is None else ack.findtext(f"{{{E.ENV_NS}}}Status")}
    return out


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def receipt() -> str:
    return "R-" + uuid.uuid4().hex[:16]


def relay_entries(decision_ids) -> list[HistoryEntry]:
    with session_scope() as db:
        rows = list(db.scalars(select(HistoryEntry).where(HistoryEntry.decision_id.in_(list(decision_ids)))))
        db.expunge_all()
        return rows


# --- the envelope's forms --------------------------------------------------------------------------


@pytest.mark.nodb
def test_envelope_round_trips_xml_model_json_model_xml_and_validates():
    from relay.service import envelope_schema
    from tests.saml_sp import make_key_and_cert

    key, _ = make_key_and_cert("dept")
    fed = {"dept_key": key, "department": "https://s.example.jp/sp#juminka", "s": type("S", (), {
        "entity_id": "https://s.example.jp/sp"}), "b": type("B", (), {"entity_id": "https://b.example.jp/sp"}),
        "process": "moving", "pseudonym": "p-123"}
    for json_department in (False, True):
        env = envelope_for(fed, "R-1", json_department=json_department)
        xml = E.to_xml(env)
        assert envelope_schema().validate(etree.fromstring(xml)), envelope_schema().error_log
        model = E.read_xml(xml, trusted_keys=None)
        as_json = json.loads(json.dumps(E.to_json(model)))
        again = E.from_json(as_json)
        assert again == env
        assert E.to_xml(again) == xml
        # the department's signature survives the trip through JSON
        E.verify_attachment(again.attachments[0], [key.public_key()])
    # the schema refuses what the model refuses: an envelope without attributes
    broken = etree.fromstring(xml)
    broken.remove(broken.find(f"{{{E.ENV_NS}}}Attributes"))
    assert not envelope_schema().validate(broken)
    with pytest.raises(E.EnvelopeInvalid):
        E.from_element(broken)


@pytest.mark.nodb
def test_the_openapi_document_validates():
    from openapi_spec_validator import validate

    from relay.views import openapi_document

    document = openapi_document()
    validate(document)
    envelope = document["components"]["schemas"]["EnvelopeJson"]
    assert {"header", "attributes", "attachments"} <= set(envelope["properties"])
    assert "/api/relay/envelopes" in document["paths"]


def test_the_hub_publishes_the_schema_wsdl_and_openapi(hub):
    xsd = httpx.get(f"{hub.base_url}/relay/envelope.xsd")
    assert xsd.status_code == 200 and etree.XMLSchema(etree.fromstring(xsd.content)) is not None
    assert b"RelaySoapBinding" in httpx.get(f"{hub.base_url}/relay/envelope.wsdl").content
    assert "EnvelopeJson" in httpx.get(f"{hub.base_url}/api/relay/openapi.json").json()["components"]["schemas"]


# --- relaying ------------------------------------------------------------------------------------


def test_soap_envelope_is_routed_split_translated_resigned_and_delivered(hub, relay_fed, tmp_path):
    fed = relay_fed
    set_rules(fed, PolicyRuleIn(effect="allow", requester=fed["p"].entity_id))
    number = receipt()
    r = submit_soap(hub, fed, envelope_for(fed, number))
    assert r.status_code == 200, r.text
    answer = soap_deliveries(r)
    assert answer["tennyu-saki"]["state"] == "delivered" and answer["tennyu-saki"]["ack"] == "received"
    assert answer["denryoku"]["state"] == "delivered", answer

    b_body = next(body for _, n, body, _ in fed["servers"]["b"].deliveries if n == number)
    p_body = next(body for _, n, body, _ in fed["servers"]["p"].deliveries if n == number)
    b_env = next(env for _, n, _, env in fed["servers"]["b"].deliveries if n == number)
    p_env = next(env for _, n, _, env in fed["servers"]["p"].deliveries if n == number)
    # split per destination: the record to the new municipality, the notice to the power company
    assert [a.name for a in b_env.attachments] == ["juminhyo"]
    assert [a.name for a in p_env.attachments] == ["notice"]
    assert b_env.header.to == "tennyu-saki" and b_env.header.decision_id == answer["tennyu-saki"]["decision_id"]

    # each receiver sees its own pseudonym, and no other in any byte it received
    with session_scope() as db:
        from kernel.keys import keystore

        own = {name: pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=fed["person_key"],
                                              agency=fed[name].entity_id, scope=hub.settings.scope)
               for name in ("s", "b", "p")}
    assert b_env.person == own["b"] and p_env.person == own["p"]
    p_payload = base64.urlsafe_b64decode(json.loads(p_body)["envelope"].split(".")[1] + "==")
    for body, mine in ((b_body, "b"), (p_body + p_payload, "p")):
        assert own[mine].encode() in body
        for other in {"s", "b", "p"} - {mine}:
            assert own[other].encode() not in body, f"{mine} received {other}'s pseudonym"
        assert fed["person_key"].encode() not in body

    # xmlsec1, trusting only the hub's certificate, verifies the forwarded envelope...
    hub_pem = tmp_path / "hub.pem"
    hub_pem.write_bytes(pem(hub_certificates()[0]))
    dept_pem = tmp_path / "dept.pem"
    dept_pem.write_bytes(pem(fed["dept_cert"]))
    inner = etree.tostring(E.soap_payload(etree.fromstring(b_body)))
    doc = tmp_path / "forwarded.xml"
    doc.write_bytes(inner)
    hub_signature = "/*[local-name()='Envelope']/*[local-name()='Signature']"
    dept_signature = ("/*[local-name()='Envelope']/*[local-name()='Attachments']/*[local-name()='Attachment']"
                      "/*[local-name()='Signature']")
    for cert, node in ((hub_pem, hub_signature), (dept_pem, dept_signature)):
        run = subprocess.run(
            ["xmlsec1", "--verify", "--enabled-key-data", "x509", "--pubkey-cert-pem", str(cert),
             "--id-attr:ID", f"{E.ENV_NS}:Envelope", "--id-attr:ID", f"{E.ENV_NS}:Attachment",
             "--node-xpath", node, str(doc)],
            capture_output=True, text=True, check=False,
        )
        assert run.returncode == 0, run.stderr
    # ...and refuses it with the department's certificate in the hub's place
    run = subprocess.run(["xmlsec1", "--verify", "--enabled-key-data", "x509", "--pubkey-cert-pem", str(dept_pem),
                          "--id-attr:ID", f"{E.ENV_NS}:Envelope", "--node-xpath", hub_signature,
                          str(doc)], capture_output=True, text=True, check=False)
    assert run.returncode != 0

    # PyJWT, not joserfc, verifies the JSON delivery with the hub's public key
    claims = pyjwt.decode(json.loads(p_body)["envelope"], key=hub_certificates()[0].public_key(),
                          algorithms=["RS256"], options={"verify_aud": False})
    assert claims["header"]["receipt_number"] == number

    # both decisions are in the access history: channel relay, one query, the group of the envelope
    entries = relay_entries([answer["tennyu-saki"]["decision_id"], answer["denryoku"]["decision_id"]])
    decided = [e for e in entries if e.kind == "decision"]
    assert {e.channel for e in entries} == {"relay"} and all(e.permitted for e in entries)
    assert len({e.query_id for e in entries}) == 1 and all(e.query_group_id for e in entries)
    assert {e.requester for e in decided} == {fed["b"].entity_id, fed["p"].entity_id}
    assert {e.provider for e in entries} == {fed["s"].entity_id}
    # and so is each delivery, after its decision: the hub's own disclosure, with when it was made
    delivered = [e for e in entries if e.kind == "relay"]
    assert sorted((e.requester, e.outcome) for e in delivered) == sorted(
        (fed[x].entity_id, "DELIVERED") for x in ("b", "p"))
    for e in delivered:
        decision = next(d for d in decided if d.decision_id == e.decision_id)
        assert e.id > decision.id and e.provided_at is not None and e.provided_at >= decision.recorded_at
        assert (e.person_key, e.task_code, e.info_type_code, e.query_id) == (
            decision.person_key, decision.task_code, decision.info_type_code, decision.query_id)
        assert json.loads(e.detail)["receipt_number"] == number and json.loads(e.detail)["ack"] == "received"

    # the person reads it in the portal: the delivery's row says when the receiver was given it
    from tests.test_portal import portal_login

    browser = portal_login(hub, f"relay-{fed['tag']}", "relay person pass", "/portal/history")

    def delivery_rows(page: str, text: str) -> list[str]:
        return [row for row in (chunk.split("</tr>", 1)[0] for chunk in page.split("<tr")[1:]) if text in row]

    wait_for(lambda: len(delivery_rows(browser.get("/portal/history").text, "ハブが受け取る機関に届けました")) == 2,
             "both deliveries are on the person's history page")
    for row in delivery_rows(browser.get("/portal/history").text, "ハブが受け取る機関に届けました"):
        provided = row.split('<td class="provided">', 1)[1].split("</td>", 1)[0]
        assert provided.strip() not in ("—", "") and "提供されていません" not in provided
    browser.get("/portal/lang", params={"to": "en", "next": "/portal/history"})
    try:
        assert len(delivery_rows(browser.get("/portal/history").text,
                                 "The hub delivered it to the receiving agency")) == 2
    finally:
        browser.get("/portal/lang", params={"to": "ja", "next": "/portal/"})


def test_json_envelope_with_jws_department_signature_is_verified_by_pyjwt(hub, relay_fed):
    fed = relay_fed
    set_rules(fed, PolicyRuleIn(effect="allow", requester=fed["p"].entity_id))
    number = receipt()
    r = submit_json(hub, fed, envelope_for(fed, number, json_department=True))
    assert r.status_code == 200, r.text
    states = {d["to"]: d for d in r.json()["deliveries"]}
    assert states["tennyu-saki"]["state"] == "delivered" and states["tennyu-saki"]["ack"]["status"] == "received"
    b_env = next(env for _, n, _, env in fed["servers"]["b"].deliveries if n == number)
    signature = b_env.attachments[0].signature
    assert signature.format == "jws" and signature.department == fed["department"]
    claims = pyjwt.decode(signature.value, key=fed["dept_cert"].public_key(), algorithms=["RS256"])
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256(b_env.attachments[0].content).digest()).rstrip(b"=").decode()
    assert claims["sha256"] == digest

    # an envelope far beyond a token's size (joserfc caps payloads at 128 kB by default)
    import os

    number = receipt()
    r = submit_json(hub, fed, envelope_for(fed, number, big=os.urandom(400_000), json_department=True))
    assert r.status_code == 200, r.text
    assert {d["to"]: d for d in r.json()["deliveries"]}["tennyu-saki"]["ack"]["status"] == "received"
    big = next(env for _, n, _, env in fed["servers"]["b"].deliveries if n == number)
    assert len(big.attachments[0].content) == 400_000


def test_resubmitting_a_receipt_number_is_idempotent_and_other_content_conflicts(hub, relay_fed):
    fed = relay_fed
    number = receipt()
    env = envelope_for(fed, number)
    first = submit_json(hub, fed, env)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    before = len(fed["servers"]["b"].deliveries)
    # the same envelope again, through the other face: nothing new is decided or sent
    again = submit_soap(hub, fed, env)
    assert again.status_code == 200
    assert etree.fromstring(again.content).findtext(f".//{{{E.ENV_NS}}}Duplicate") == "true"
    assert len(fed["servers"]["b"].deliveries) == before
    other = envelope_for(fed, number, message_type=NOTICE_ONLY)
    conflict = submit_json(hub, fed, other)
    assert conflict.status_code == 409 and conflict.json()["error"] == "RECEIPT_NUMBER_REUSED"


def test_refused_forwarding_is_logged_and_acked_as_refused(hub, relay_fed):
    fed = relay_fed
    set_rules(fed, PolicyRuleIn(effect="deny", requester=fed["p"].entity_id))
    number = receipt()
    r = submit_json(hub, fed, envelope_for(fed, number))
    assert r.status_code == 200, r.text
    states = {d["to"]: d for d in r.json()["deliveries"]}
    assert states["tennyu-saki"]["state"] == "delivered"  # the law overrides: consent=override
    assert states["denryoku"]["state"] == "refused" and states["denryoku"]["reason"] == "DENIED_BY_PERSON"
    assert all(n != number for _, n, _, _ in fed["servers"]["p"].deliveries)
    [entry] = relay_entries([states["denryoku"]["decision_id"]])  # refused: decided, never delivered
    assert entry.channel == "relay" and entry.permitted is False and entry.outcome == "DENIED_BY_PERSON"

    # no whitelist entry for the receiver: refused, logged, never sent
    number = receipt()
    r = submit_json(hub, fed, envelope_for(fed, number, message_type=NOTICE_ONLY))
    [only] = r.json()["deliveries"]
    assert only["state"] == "refused" and only["reason"] == "NO_WHITELIST_ENTRY"
    assert not fed["servers"]["x"].deliveries
    [entry] = relay_entries([only["decision_id"]])
    assert entry.permitted is False and entry.provider == fed["s"].entity_id


def test_bad_envelopes_get_4xx_with_a_reason_and_nothing_is_sent(hub, relay_fed):
    from tests.saml_sp import make_key_and_cert

    fed = relay_fed
    stranger, _ = make_key_and_cert("stranger")
    cases = [
        (submit_soap(hub, fed, envelope_for(fed, receipt()), key=stranger), 401, "SIGNATURE_REJECTED"),
        (submit_json(hub, fed, envelope_for(fed, receipt()), key=stranger), 401, "SIGNATURE_REJECTED"),
        (submit_json(hub, fed, envelope_for(fed, receipt(), person="no-such-pseudonym")), 404, "UNKNOWN_PERSON"),
        (submit_json(hub, fed, envelope_for(fed, receipt(), message_type="unrouted")), 404, "NO_ROUTE"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert code in response.text
    unsigned = httpx.post(f"{hub.base_url}/relay/soap", content=E.soap_wrap(E.to_xml(envelope_for(fed, receipt()))),
                          headers={"Content-Type": "text/xml"})
    assert unsigned.status_code == 401 and b"SIGNATURE_REJECTED" in unsigned.content
    garbage = httpx.post(f"{hub.base_url}/relay/soap", content=b"<not-closed", headers={"Content-Type": "text/xml"})
    assert garbage.status_code == 400
    bad_json = httpx.post(f"{hub.base_url}/api/relay/envelopes", json={"envelope": "a.b.c"})
    assert bad_json.status_code == 400


def test_hostile_xml_corpus_is_refused_by_the_envelope_endpoint(hub, relay_fed):
    """tests/xml_attacks.py against /relay/soap: every attack is a 4xx and forwards nothing."""
    from tests import xml_attacks as X

    fed = relay_fed

    def forge(element: etree._Element) -> None:
        for attr in element.iter(f"{{{E.ENV_NS}}}Attribute"):
            if attr.get("Name") == E.DESTINATION_MUNICIPALITY:
                attr.text = "https://" + X.EVIL_MARKER + "/sp"

    def forged_copy(signed: bytes, *, new_id: bool) -> etree._Element:
        copy = etree.fromstring(signed)
        copy.remove(copy.find(f"{{{X.DS_NS}}}Signature"))
        forge(copy)
        if new_id:
            copy.set("ID", "_evil" + uuid.uuid4().hex)
        return copy

    def forged_sibling_in_soap_body(signed: bytes) -> bytes:
        """XSW3's shape for a SOAP envelope: an unsigned forged copy before the signed one."""
        soap = etree.fromstring(E.soap_wrap(signed))
        body = soap.find(f"{{{E.SOAP11_NS}}}Body")
        body.insert(0, forged_copy(signed, new_id=True))
        return etree.tostring(soap)

    def original_in_signature_object(signed: bytes) -> bytes:
        """XSW6/8's shape: altered in place, the untouched original parked in a ds:Object."""
        root = etree.fromstring(signed)
        original = etree.fromstring(signed)
        original.remove(original.find(f"{{{X.DS_NS}}}Signature"))
        forge(root)
        signature = root.find(f"{{{X.DS_NS}}}Signature")
        etree.SubElement(signature, f"{{{X.DS_NS}}}Object").append(original)
        return etree.tostring(root)

    def forged_wraps_signed(signed: bytes) -> bytes:
        """XSW4's shape: a forged unsigned envelope holding the signed one inside an attribute."""
        outer = forged_copy(signed, new_id=True)
        outer.find(f"{{{E.ENV_NS}}}Attributes")[0].append(etree.fromstring(signed))
        return etree.tostring(outer)

    sender_public = fed["s"].key.public_key()
    attacks = {
        "xsw1": lambda s: X.xsw1(s, forge=forge),
        "xsw2": lambda s: X.xsw2(s, forge=forge),
        "xsw3_soap_sibling": forged_sibling_in_soap_body,
        "xsw4_wrapper": forged_wraps_signed,
        "xsw6_object": original_in_signature_object,
        "strip": lambda s: X.strip_signatures(s, forge=forge),
        "key_injection": lambda s: X.key_injection(s, forge=forge),
        "hmac_public_key": lambda s: X.hmac_with_public_key(s, sender_public, forge=forge),
        "sha1_signature": lambda s: X.sha1_signature(s, key=fed["s"].key, forge=forge),
        "sha1_digest": lambda s: X.sha1_digest(s, key=fed["s"].key, forge=forge),
        "second_digest": lambda s: X.second_digest_value(s, forge=forge),
        "comment_in_digest": lambda s: X.comment_in_digest_value(s, forge=forge),
        "billion_laughs": X.billion_laughs,
        "external_entity": X.external_entity,
        "external_dtd": X.external_dtd,
        "xslt": lambda s: X.xslt_transform(s, key=fed["s"].key),
        "xpath": lambda s: X.xpath_transform(s, key=fed["s"].key),
        "external_reference": lambda s: X.external_reference(s, key=fed["s"].key),
        "duplicate_id": X.duplicate_id,
    }
    before = {name: len(server.deliveries) for name, server in fed["servers"].items()}
    for name, attack in attacks.items():
        signed = E.sign_xml(envelope_for(fed, receipt()), fed["s"].key)
        payload = attack(signed)
        r = httpx.post(f"{hub.base_url}/relay/soap", content=payload, headers={"Content-Type": "text/xml"})
        assert 400 <= r.status_code < 500, f"{name}: {r.status_code} {r.text[:300]}"
        assert X.EVIL_MARKER.encode() not in r.content, name
    assert {name: len(server.deliveries) for name, server in fed["servers"].items()} == before


def client_assertion(agency, audience: str) -> str:
    return sign_client_assertion(agency.key, issuer=agency.entity_id, audience=audience, jti=uuid.uuid4().hex)


def test_receiver_down_then_up_receives_everything_in_order_and_can_ask_for_a_resend(hub, relay_fed):
    fed = relay_fed
    # P (電力会社) is refused these envelopes whichever test ran before on this hub, so that P
    # asking for a resend below is asking for what it never received
    set_rules(fed, PolicyRuleIn(effect="deny", requester=fed["p"].entity_id))
    server = fed["servers"]["b"]
    port = server.port
    server.stop()
    numbers = [receipt() for _ in range(5)]
    try:
        answers = []
        for n in numbers:
            r = submit_json(hub, fed, envelope_for(fed, n), asynchronous=True)
            assert r.status_code == 202, r.text
            assert {d["to"]: d["state"] for d in r.json()["deliveries"]}["tennyu-saki"] == "queued"
            answers.append(r.json())
        # the hub keeps trying while the receiver is down
        status_url = f"{hub.base_url}/api/relay/envelopes/{numbers[0]}"

        def attempted() -> bool:
            r = httpx.get(status_url, headers={"Authorization": "Bearer " + client_assertion(fed["s"], status_url)})
            return {d["to"]: d for d in r.json()["deliveries"]}["tennyu-saki"]["attempts"] >= 1

        wait_for(attempted, "the hub tried the stopped receiver")
    finally:
        server.start(port)
    wait_for(lambda: all(n in server.received() for n in numbers), "every envelope reached the receiver", 90)
    got = [n for n in server.received() if n in numbers]
    assert got == numbers, "delivered out of order"
    r = httpx.get(f"{hub.base_url}/api/relay/envelopes/{numbers[-1]}",
                  headers={"Authorization": "Bearer " + client_assertion(
                      fed["s"], f"{hub.base_url}/api/relay/envelopes/{numbers[-1]}")})
    assert {d["to"]: d for d in r.json()["deliveries"]}["tennyu-saki"]["ack"]["status"] == "received"

    # resend on request, from the kept copy: the receiver detects it as a duplicate
    url = f"{hub.base_url}/api/relay/resend"
    r = httpx.post(url, json={"sender": fed["s"].entity_id, "receipt_number": numbers[0]},
                   headers={"Authorization": "Bearer " + client_assertion(fed["b"], url)})
    assert r.status_code == 202 and r.json() == {"queued": 1}
    wait_for(lambda: any(s == E.DUPLICATE and n == numbers[0] for s, n, _, _ in server.deliveries),
             "the resent copy arrived")
    # the first delivery and the resent copy are each in the access history
    decision_id = next(d for d in answers[0]["deliveries"] if d["to"] == "tennyu-saki")["decision_id"]
    wait_for(lambda: len([e for e in relay_entries([decision_id]) if e.kind == "relay"]) == 2,
             "the resent copy's delivery was recorded")
    assert [e.outcome for e in relay_entries([decision_id]) if e.kind == "relay"] == ["DELIVERED", "DELIVERED"]
    # metering bills it as one query, permitted, provided once (from the signed history's export)
    from kernel.db import utcnow
    from process import metering
    from tests.history_helpers import export_lines

    lines = [json.loads(line) for line in export_lines(hub)]
    mine = [line for line in lines if line.get("type") == "entry" and line["decision_id"] == decision_id]
    assert sorted(line["kind"] for line in mine) == ["decision", "relay", "relay"]
    with session_scope() as db:
        [billed] = metering._count(db, utcnow().strftime("%Y-%m"), mine)
    assert (billed.requester, billed.provider) == (fed["b"].entity_id, fed["s"].entity_id)
    assert (billed.queries, billed.permitted, billed.refused, billed.provided) == (1, 1, 0, 1)
    # another agency cannot have it resent to itself
    r = httpx.post(url, json={"sender": fed["s"].entity_id, "receipt_number": numbers[0]},
                   headers={"Authorization": "Bearer " + client_assertion(fed["p"], url)})
    assert r.status_code == 404


def test_the_demo_agency_inbox_verifies_dedupes_and_acks_relayed_envelopes(hub, relay_fed, tmp_path):
    """examples/agency_demo's /relay/inbox, built on renkei_provider.EnvelopeReceiver."""
    from agency_demo import AgencyConfig, create_agency_app

    from consent import service as consent
    from consent.models import WhitelistEntryIn
    from discovery import service as location
    from relay import routes as route_table
    from tests.conftest import listening_socket, port_of, serve_in_thread
    from tests.test_idp_sso import cli

    fed = relay_fed
    sock = listening_socket()
    base = f"http://127.0.0.1:{port_of(sock)}"
    config = AgencyConfig(
        entity_id=f"{base}/metadata", name="demo inbox", base_url=base, hub_base_url=hub.base_url,
        key_dir=tmp_path / "agency-keys", hub_metadata_xml=httpx.get(f"{hub.base_url}/idp/metadata").text,
        departments={fed["department"]: (pem(fed["dept_cert"]).decode(),)},
    )
    server, thread = serve_in_thread(create_agency_app(config), sock)
    try:
        metadata = tmp_path / "agency.xml"
        metadata.write_bytes(httpx.get(config.metadata_url).content)
        cli("agency", "add", "--metadata", str(metadata), "--class", "municipality")
        with session_scope() as db:
            location.add_offering(db_session=db, provider=config.entity_id, service_type=fed["inbox"],
                                  endpoint=config.relay_inbox_url)
            consent.import_whitelist(db_session=db, entries=[WhitelistEntryIn(
                requester=config.entity_id, provider=fed["s"].entity_id, task_code=f"JUKI{fed['tag']}",
                task_name="住基", info_type_code="JUMINHYO", info_type_name="住民票", legal_basis="demo",
                consent="override")])
            route_table.set_route(db_session=db, route=route_table.Route(fed["process"], "to-demo-agency", (
                route_table.Destination("demo", config.entity_id, fed["inbox"], f"JUKI{fed['tag']}", "JUMINHYO",
                                        ("juminhyo",), "soap"),), owner="tests"))
        number = receipt()
        r = submit_soap(hub, fed, envelope_for(fed, number, message_type="to-demo-agency"))
        assert soap_deliveries(r)["demo"] == {"state": "delivered", "reason": "PERMITTED_BY_LAW",
                                              "decision_id": soap_deliveries(r)["demo"]["decision_id"],
                                              "ack": "received"}
        [got] = httpx.get(config.relay_inbox_url).json()["envelopes"]
        assert got["receipt_number"] == number and got["attachments"][0]["signed_by"] == fed["department"]
        # the same delivery again (as after a hub crash) is acknowledged as a duplicate, not filed twice
        with session_scope() as db:
            from relay.models import RelayDelivery

            body = db.scalar(select(RelayDelivery.body).where(RelayDelivery.receipt_number == number))
        again = httpx.post(config.relay_inbox_url, content=body, headers={"Content-Type": "text/xml"})
        assert E.ack_from_xml(again.content).status == E.DUPLICATE
        assert len(httpx.get(config.relay_inbox_url).json()["envelopes"]) == 1
        # a document altered after its department signed it is refused, even under a valid hub signature
        from dataclasses import replace

        from kernel.keys import current_signing_key

        forwarded = E.read_xml(body, trusted_keys=None)
        altered = replace(forwarded, attachments=(replace(forwarded.attachments[0], content="<住民票>改ざん</住民票>".encode()),),
                          header=replace(forwarded.header, receipt_number=receipt()))
        tampered = E.soap_wrap(E.sign_xml(altered, current_signing_key("discovery").private_key))
        refused = E.ack_from_xml(httpx.post(config.relay_inbox_url, content=tampered,
                                            headers={"Content-Type": "text/xml"}).content)
        assert refused.status == E.REJECTED and "juminhyo" in refused.remark
        assert len(httpx.get(config.relay_inbox_url).json()["envelopes"]) == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_receiver_down_for_the_whole_keeping_period_ends_expired_and_the_copy_is_dropped(hub, relay_fed):
    """RENKEI_RELAY_RETENTION_DAYS: retried while kept; then `expired`, the body purged, no resend."""
    import socket
    from datetime import timedelta

    from discovery import service as location
    from federation import service as agencies
    from kernel.db import utcnow
    from relay import routes as route_table
    from relay import service
    from relay.errors import NotFound
    from relay.models import RelayDelivery

    fed = relay_fed
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    urn = f"urn:renkei:test:closed-inbox:{fed['tag']}"
    with session_scope() as db:
        location.add_service_type(db_session=db, urn=urn, name="closed", info_types=["JUMINHYO"])
        location.add_offering(db_session=db, provider=fed["b"].entity_id, service_type=urn,
                              endpoint=f"http://127.0.0.1:{closed.getsockname()[1]}/inbox")
        route_table.set_route(db_session=db, route=route_table.Route(fed["process"], "to-closed", (
            route_table.Destination("closed", "@" + E.DESTINATION_MUNICIPALITY, urn, f"JUKI{fed['tag']}", "JUMINHYO"),
        ), owner="tests"))
    worker = hub.server.config.app.state.relay_worker
    worker.paused = True
    try:
        short = hub.settings.model_copy(update={"relay_retention_days": 1 / 24})  # an hour
        number = receipt()
        with session_scope() as db:
            sender = agencies.lookup(db_session=db, entity_id=fed["s"].entity_id)
            result = service.submit(db_session=db, settings=short, sender=sender,
                                    envelope=envelope_for(fed, number, message_type="to-closed"))
        [delivery_id] = result.delivery_ids
        scope = session_scope
        assert service.deliver(session_scope=scope, settings=short, delivery_id=delivery_id) == "queued"
        with session_scope() as db:
            # (another hub process of the suite on this database may have tried it too)
            row = db.get(RelayDelivery, delivery_id)
            assert row.attempts >= 1 and "ConnectError" in row.last_error and row.state == "queued"
            row.keep_until = utcnow() - timedelta(seconds=1)  # the keeping period is over
        assert service.deliver(session_scope=scope, settings=short, delivery_id=delivery_id) == "expired"
        [not_delivered] = [e for e in relay_entries([result.deliveries[0].decision_id]) if e.kind == "relay"]
        assert not_delivered.outcome == "NOT_DELIVERED" and not_delivered.provided_at is None
        from process import metering
        from tests.history_helpers import export_lines

        lines = [json.loads(line) for line in export_lines(hub)]
        mine = [line for line in lines if line.get("type") == "entry"
                and line["decision_id"] == result.deliveries[0].decision_id]
        with session_scope() as db:
            [billed] = metering._count(db, utcnow().strftime("%Y-%m"), mine)
        assert (billed.queries, billed.permitted, billed.provided) == (1, 1, 0)  # decided, never provided
        with session_scope() as db:
            assert service.status(db_session=db, sender=fed["s"].entity_id,
                                  receipt_number=number).deliveries[0].state == "expired"
            assert service.purge_expired_copies(db_session=db) >= 1
        with session_scope() as db:
            assert db.get(RelayDelivery, delivery_id).body is None
            with pytest.raises(NotFound):
                service.resend(db_session=db, receiver=fed["b"].entity_id, sender=fed["s"].entity_id,
                               receipt_number=number)
    finally:
        worker.paused = False
        closed.close()


def test_routes_load_from_yaml_and_bad_routes_are_refused_with_the_field_named(hub):
    import yaml

    from relay import routes as route_table

    document = yaml.safe_load("""
routes:
  - process_type: yaml-moving
    message_type: resident-record
    destinations:
      - {to: tennyu-saki, agency: "@DestinationMunicipality", service_type: "urn:renkei:test:x",
         task: JUKI, info_type: JUMINHYO, attachments: [juminhyo]}
      - {to: denryoku, agency: power, service_type: "urn:renkei:test:x", task: TENKYO, info_type: TENKYO,
         binding: json}
""")
    with session_scope() as db:
        assert route_table.load_routes(db_session=db, config=document, entity_ids={"power": "https://power.example.jp/sp"},
                                       owner="yaml-test") == 1
        route = route_table.get_route(db_session=db, process_type="yaml-moving", message_type="resident-record")
        assert [d.logical_to for d in route.destinations] == ["tennyu-saki", "denryoku"]
        assert route.destinations[1].agency == "https://power.example.jp/sp" and route.destinations[1].binding == "json"
        assert route.destinations[0].attachments == ("juminhyo",)
        assert route_table.remove_routes_of(db_session=db, owner="yaml-test") == 2
        assert route_table.get_route(db_session=db, process_type="yaml-moving", message_type="resident-record") is None
    for bad, field in (
        ({"process_type": "転居", "message_type": "m", "destinations": [{"to": "a"}]}, "process type"),
        ({"process_type": "p", "message_type": "m", "destinations": []}, "at least one destination"),
        ({"process_type": "p", "message_type": "m", "destinations": [
            {"to": "a", "agency": "x", "service_type": "not-a-urn", "task": "T", "info_type": "I"}]}, "URN"),
        ({"process_type": "p", "message_type": "m", "destinations": [
            {"to": "a", "agency": "x", "service_type": "urn:x:y", "task": "T" * 65, "info_type": "I"}]}, "task"),
        ({"process_type": "p", "message_type": "m", "destinations": [
            {"to": "a", "agency": "x", "service_type": "urn:x:y", "task": "T", "info_type": "I", "binding": "ftp"}]},
         "binding"),
    ):
        with pytest.raises(route_table.RouteError, match=field):
            route_table.routes_from_config({"routes": [bad]})


def test_a_synchronous_answer_waits_for_a_worker_that_is_claiming_the_row(hub, relay_fed):
    """The delivery worker is woken by the commit that queues a row, so it may be reading the
    row FOR UPDATE, its lease not yet committed, just when the request's own claim skips that
    locked row. `settle` must then count the row as being delivered (and wait for the worker's
    ack), not report it still queued."""
    from sqlalchemy import text

    from federation import service as agencies
    from kernel.db import get_engine
    from relay import service

    fed = relay_fed
    worker = hub.server.config.app.state.relay_worker
    worker.paused = True
    try:
        with session_scope() as db:
            sender = agencies.lookup(db_session=db, entity_id=fed["s"].entity_id)
            result = service.submit(db_session=db, settings=hub.settings, sender=sender,
                                    envelope=envelope_for(fed, receipt()))
        ids = list(result.delivery_ids)
        assert not service._in_delivery(session_scope, ids, service.utcnow())  # queued, nobody on it
        if get_engine().dialect.name == "postgresql":  # SQLite claims under its one write lock
            with get_engine().connect() as claiming:  # a worker between its read and its commit
                claiming.execute(text("SELECT id FROM relay_deliveries WHERE id = :i FOR UPDATE"), {"i": ids[0]})
                assert service._in_delivery(session_scope, ids, service.utcnow())
                claiming.rollback()
            assert not service._in_delivery(session_scope, ids, service.utcnow())
    finally:
        worker.paused = False
    wait_for(lambda: not service._in_delivery(session_scope, ids, service.utcnow()) and all(
        s != "queued" for s in _states(ids)), "the worker delivered it")


def _states(ids: list[int]) -> list[str]:
    from relay.models import RelayDelivery

    with session_scope() as db:
        return list(db.scalars(select(RelayDelivery.state).where(RelayDelivery.id.in_(ids))))
