"""Relay activities: a notice (情報通知) the hub carries in an electronic envelope (電子封筒) from
the provider (the sender) to the requester (the receiver), through the relay room: routed by
the definition's process type and the activity's message type, decided on the discovery path,
logged in the run's query group, delivered from the durable outbox with a 受領Ack.

Also the routes an operating definition installs, and the conformance checks of a receiver's
envelope endpoint."""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime

import httpx
from lxml import etree
from sqlalchemy.orm import Session

from discovery import service as location
from federation import service as agencies
from kernel.db import session_scope
from kernel.keys import (
    SigningKey,
    current_signing_key,
    generate_rsa_key,
    keystore,
    self_signed_certificate,
)
from kernel.settings import Settings
from kernel.xml import sign_enveloped
from process.definition import Activity, ProcessDefinition
from process.exchanges import Outcome, RunContext
from process.models import StepStatus
from pseudonym import service as pseudonyms
from relay import routes as route_table
from relay import service as relay
from relay.errors import RelayRefused
from renkei_provider import envelope as env_format

SETTLE_SECONDS = 15.0


def route_owner(definition: ProcessDefinition) -> str:
    return f"process:{definition.id}@{definition.version}"


def install_routes(*, db_session: Session, definition: ProcessDefinition) -> list[route_table.Route]:
    """Put the definition's relay routes into the relay's route table (flushes): one route per
    relay activity, (process type, message type) → the receiver's envelope inbox."""
    installed = []
    for a in definition.activities:
        if a.exchange != "relay":
            continue
        route = route_table.Route(
            process_type=definition.process_type, message_type=a.message_type, owner=route_owner(definition),
            destinations=(route_table.Destination(logical_to=a.id, agency=a.requester, service_type=a.service_type,
                                                  task=a.task, info_type=a.info_type),))
        installed.append(route_table.set_route(db_session=db_session, route=route))
    return installed


def receipt_number(run: RunContext, activity: Activity) -> str:
    """One per (run, activity), the same after a restart: the relay and the receiver dedupe by it."""
    return f"P{run.instance_id[:24]}-{hashlib.sha256(activity.id.encode()).hexdigest()[:16]}"


class RelayExchange:
    """Hand the notice to the relay as its sender would, wait briefly for the receiver's ack."""

    def __init__(self, scope=None):
        self._scope = scope or (lambda: session_scope())

    def perform(self, *, db_session: Session, settings: Settings, run: RunContext, activity: Activity) -> Outcome:
        sender = agencies.lookup(db_session=db_session, entity_id=activity.provider)
        if sender is None:
            return Outcome(StepStatus.FAILED, "SENDER_NOT_REGISTERED")
        own = pseudonyms.get_or_create(db_session=db_session, keys=_keys(), person_key=run.person_key,
                                       agency=sender.entity_id, scope=settings.scope)
        stable = "E" + receipt_number(run, activity).replace("-", "_")  # an xs:ID
        notice = {"notice": activity.name, "process_type": run.process_type, "application": run.application or {}}
        envelope = env_format.new_envelope(
            receipt_number=receipt_number(run, activity), sender=sender.entity_id, to=activity.id,
            reply_to=sender.entity_id,
            attributes=[(env_format.PROCESS_TYPE, run.process_type), (env_format.MESSAGE_TYPE, activity.message_type),
                        (env_format.PERSON, own)],
            attachments=[env_format.Attachment(
                id=f"{stable}-notice", name="notice", file_name="notice.json", media_type="application/json",
                content=json.dumps(notice, ensure_ascii=False, sort_keys=True).encode())],
            created=_created(run))
        # the same envelope, byte for byte, when a resumed run submits it again
        envelope = replace(envelope, id=f"{stable}-envelope")
        try:
            result = relay.submit(db_session=db_session, settings=settings, sender=sender, envelope=envelope,
                                  query_group_id=run.query_group_id)
        except RelayRefused as exc:
            return Outcome(StepStatus.FAILED, exc.code)
        if result.delivery_ids:  # new: deliver now rather than at the worker's next round
            relay.run_deliveries(session_scope=self._scope, settings=settings, only=result.delivery_ids)
            relay.settle(session_scope=self._scope, ids=result.delivery_ids, timeout=SETTLE_SECONDS)
        with self._scope() as db:
            latest = relay.status(db_session=db, sender=sender.entity_id, receipt_number=result.receipt_number)
        d = latest.deliveries[0]
        decisions = [d.decision_id]
        if d.state == "refused":
            return Outcome(StepStatus.REFUSED, d.reason, decisions)
        if d.state == "delivered":
            return Outcome(StepStatus.DONE, d.reason, decisions,
                           {"receipt_number": latest.receipt_number, "ack": d.ack_status})
        if d.state == "rejected":
            return Outcome(StepStatus.FAILED, "RECEIVER_REJECTED", decisions)
        if d.state == "expired":
            return Outcome(StepStatus.FAILED, "DELIVERY_EXPIRED", decisions)
        return Outcome(StepStatus.PENDING, "AWAITING_DELIVERY", decisions)


def _keys():
    return keystore()


def _created(run: RunContext) -> datetime:
    """The run's start: the envelope resubmitted after a restart is the very same one."""
    return (run.started_at or datetime.now(UTC)).replace(tzinfo=UTC)


# --- conformance of a receiver ---------------------------------------------------------------


def envelope_checks(*, db_session: Session, settings: Settings, activity: Activity, deadline: float,
                    http: httpx.Client) -> list:
    """Drive a receiver's envelope endpoint as the hub delivers to it, with good and bad envelopes."""
    from process.conformance import Check

    found = location.service_location(db_session=db_session, urn=activity.service_type)
    endpoint = next((o.endpoint for o in (found[1] if found else []) if o.provider == activity.requester), None)
    if endpoint is None:
        return [Check(activity.id, "envelope inbox registered", False,
                      f"an offering of {activity.service_type} (the inbox) by this agency", "there is none", 0.0)]
    hub = current_signing_key(relay.RELAY_ROLE)
    stranger_key = generate_rsa_key()
    stranger = SigningKey("conformance-stranger", 1, stranger_key, self_signed_certificate(stranger_key, "not the hub"))

    def envelope(*, attributes=None):
        receipt = f"CONFORMANCE-{secrets.token_hex(8)}"
        attrs = attributes if attributes is not None else [
            (env_format.PROCESS_TYPE, "CONFORMANCE"), (env_format.MESSAGE_TYPE, activity.message_type),
            (env_format.PERSON, f"conformance-{secrets.token_hex(8)}@{settings.scope}")]
        return env_format.Envelope(
            env_format.Header(receipt, activity.provider, activity.id, activity.provider,
                              datetime.now(UTC).replace(microsecond=0), decision_id=f"conformance-{secrets.token_hex(4)}"),
            tuple(attrs),
            (env_format.new_attachment(name="notice", file_name="notice.json", media_type="application/json",
                                       content=b'{"notice": "conformance test"}'),))

    def body(env, signer=hub, alter=False, drop_person=False):
        if drop_person:  # what no sender could build: signed as it stands, without its Person
            root = env_format.to_element(env)
            for attribute in root.iter(f"{{{env_format.ENV_NS}}}Attribute"):
                if attribute.get("Name") == env_format.PERSON:
                    attribute.getparent().remove(attribute)
            sign_enveloped(root, signer.private_key)
            xml = etree.tostring(root)
        else:
            xml = env_format.sign_xml(env, signer.private_key)
        if alter:  # the ProcessType changed after the signature was made
            assert b">CONFORMANCE<" in xml
            xml = xml.replace(b">CONFORMANCE<", b">CONFORMANCX<", 1)
        return env_format.soap_wrap(xml)

    good = body(envelope())
    extra = envelope()
    extra = env_format.Envelope(extra.header, (*extra.attributes, ("ConformanceUnknownAttribute", "x")),
                                extra.attachments, extra.id)
    cases = [
        ("acknowledges a valid envelope", good, {"received"}),
        ("answers the same envelope again as a duplicate", good, {"duplicate"}),
        ("rejects an envelope signed by another key (bad signature)", body(envelope(), signer=stranger), {"rejected"}),
        ("rejects an envelope altered after signing", body(envelope(), alter=True), {"rejected"}),
        ("rejects an envelope without its Person attribute", body(envelope(), drop_person=True), {"rejected"}),
        ("acknowledges an envelope with an unknown extra attribute", body(extra), {"received"}),
    ]
    checks = []
    for name, raw, wanted in cases:
        began = time.monotonic()
        try:
            ack = relay.post(endpoint, "soap", raw, timeout=deadline + 1, client=http)
            observed = f"受領Ack {ack.status}" + (f" ({ack.remark})" if ack.remark else "")
            passed = ack.status in wanted
        except (httpx.HTTPError, env_format.EnvelopeInvalid, ValueError, etree.XMLSyntaxError) as exc:
            observed, passed = f"no 受領Ack ({type(exc).__name__})", False
        seconds = time.monotonic() - began
        if passed and seconds > deadline:
            passed, observed = False, f"{observed}, but after {seconds:.1f} s (answers late)"
        checks.append(Check(activity.id, name, passed, f"受領Ack {' or '.join(sorted(wanted))} within {deadline:g} s",
                            observed, seconds))
    return checks
