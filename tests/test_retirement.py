"""Retiring an agency (`renkei agency remove`) over real HTTP: every room hears it.

Requester R and providers KEEP and GONE; GONE is also a requester. Before retirement each
path works (so every check below can fail); after it, GONE gets no SSO, no discovery, no
token and no new pseudonym, while its history still verifies.
"""
from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner
from lxml import etree
from sqlalchemy import func, select

from consent import service as consent
from consent.errors import WhitelistImportError
from consent.models import WhitelistEntryIn
from discovery import service as location
from federation import service as agencies
from idp import accounts
from kernel.db import session_scope
from kernel.keys import keystore
from pseudonym import service as pseudonyms
from pseudonym.models import LocalLink, Pseudonym
from renkei.cli import main
from tests.federation import ask, bootstrap_of
from tests.history_helpers import export_lines, verify_history
from tests.saml_sp import NS, Browser, TestSP, response_from_page
from tests.test_discovery_soap import (
    fault_of,
    nim_envelope,
    nim_response,
    nim_status,
    post,
    query_envelope,
)
from tests.test_idp_sso import cli, register

UID = uuid.uuid4().hex[:8]
SERVICE = f"urn:renkei:test:retire-{UID}"
TASK, INFO = "RETIRE", "RETIRE-INFO"
USER, PASSWORD = f"retire-{UID}", "retire password"


@pytest.fixture(scope="module")
def world(hub, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retire")
    r = register(TestSP(f"https://r-{UID}.retire.example.jp/sp", f"https://r-{UID}.retire.example.jp"), tmp)
    keep = register(TestSP(f"https://keep-{UID}.retire.example.jp/sp", f"https://keep-{UID}.retire.example.jp"),
                    tmp)
    gone = register(TestSP(f"https://gone-{UID}.retire.example.jp/sp", f"https://gone-{UID}.retire.example.jp"),
                    tmp)
    keys = keystore()
    with session_scope() as db:
        person = accounts.add_person(db_session=db, username=USER, password=PASSWORD)
        pseudonyms.register_master_id(db_session=db, keys=keys, person_key=person.person_key,
                                      master_id=f"8{UID}")
        for sp in (keep, gone):
            pseudonyms.import_local_links(db_session=db, keys=keys, agency=sp.entity_id,
                                          csv_text=f"L-{UID},8{UID}")
        location.add_service_type(db_session=db, urn=SERVICE, name="retire test", info_types=[INFO])
        for sp in (keep, gone):
            location.add_offering(db_session=db, provider=sp.entity_id, service_type=SERVICE,
                                  endpoint=f"{sp.base_url}/provide")
        # the law allows R to ask KEEP and GONE, and GONE to ask KEEP, without consent
        for requester, provider in ((r, keep), (r, gone), (gone, keep)):
            consent.create_whitelist_entry(db_session=db, entry=WhitelistEntryIn(
                requester=requester.entity_id, provider=provider.entity_id, task_code=TASK, task_name="退役",
                info_type_code=INFO, info_type_name="test", legal_basis="test", consent="override"))
        person_key = person.person_key
    assertion_r = sso(hub, r)
    return SimpleNamespace(hub=hub, r=r, keep=keep, gone=gone, person_key=person_key, tmp=tmp,
                           boot_r=bootstrap_of(assertion_r), boot_gone=bootstrap_of(sso(hub, gone)),
                           pseudonym_r=assertion_r.findtext("saml:Subject/saml:NameID", namespaces=NS))


def sso(hub, sp: TestSP) -> etree._Element:
    browser = Browser(hub.base_url)
    _, request = sp.authn_request(f"{hub.base_url}/idp/sso")
    page = browser.login(browser.start(sp, etree.tostring(request)), USER, PASSWORD)
    assert page.status_code == 200, page.text[:500]
    _, response, _ = response_from_page(page.text)
    return response.find("saml:Assertion", NS)


def query(world, requester: TestSP, boot: str) -> httpx.Response:
    return ask(world.hub, requester, {"service_type": SERVICE, "task": TASK, "person": {"bootstrap_token": boot}})


def offered(r: httpx.Response) -> dict[str, dict]:
    assert r.status_code == 200, r.text
    return {o["provider"]: o for o in r.json()["offerings"]}


def soap_query(world, requester: TestSP, boot: str) -> httpx.Response:
    view = SimpleNamespace(requester=SimpleNamespace(entity_id=requester.entity_id, sp=requester),
                           soap_url=world.hub.base_url + "/discovery/soap", bootstrap=boot)
    return post(view.soap_url, etree.tostring(query_envelope(view, task=TASK, service_type=SERVICE)))


def name_id_mapping(world, target: str) -> tuple[list[str], str | None, etree._Element]:
    """SAML NameIDMappingRequest (core §3.8) from R for the person's name at `target`."""
    view = SimpleNamespace(requester=SimpleNamespace(entity_id=world.r.entity_id, sp=world.r),
                           nim_url=world.hub.base_url + "/idp/nim", bootstrap=world.boot_r,
                           pseudonym=world.pseudonym_r)
    data = nim_envelope(view, target=target, task=TASK, info_type=INFO)
    response = nim_response(post(view.nim_url, data))
    codes, message, _ = nim_status(response)
    return codes, message, response


def hub_lines_naming(hub, agency: str) -> list[dict]:
    lines = export_lines(hub)
    assert verify_history(hub).ok
    entries = [json.loads(line) for line in lines]
    return [e for e in entries if e["type"] == "entry" and agency in (e["requester"], e["provider"])]


def test_retirement_is_heard_by_every_room(world):
    hub, r, keep, gone = world.hub, world.r, world.keep, world.gone

    # -- before: GONE logs people in, asks, and is asked --------------------------------
    before = offered(query(world, r, world.boot_r))
    assert before[gone.entity_id]["permitted"] and before[gone.entity_id]["token"]
    assert offered(query(world, gone, world.boot_gone))[keep.entity_id]["permitted"]
    assert name_id_mapping(world, gone.entity_id)[0] == ["Success"]
    browser = Browser(hub.base_url)
    _, pending_request = gone.authn_request(f"{hub.base_url}/idp/sso")
    pending = browser.start(gone, etree.tostring(pending_request))  # logged in after retirement
    assert pending.status_code == 303
    naming_gone = hub_lines_naming(hub, gone.entity_id)
    assert naming_gone
    with session_scope() as db:
        kept_pseudonyms = db.scalar(select(func.count()).select_from(Pseudonym)
                                    .where(Pseudonym.agency == gone.entity_id))
    assert kept_pseudonyms >= 1

    # -- retire it ------------------------------------------------------------------------
    said = cli("agency", "remove", gone.entity_id)
    assert "retired" in said and "1 offerings and 2 whitelist entries" in said

    # SSO: a clear 4xx over both bindings, never a redirect or a Response to its ACS
    for binding in ("redirect", "post"):
        _, request = gone.authn_request(f"{hub.base_url}/idp/sso")
        refused = Browser(hub.base_url).start(gone, etree.tostring(request), binding=binding)
        assert refused.status_code == 400 and "retired" in refused.text
        assert "location" not in refused.headers and "SAMLResponse" not in refused.text
    late = browser.login(pending, USER, PASSWORD)  # the request it sent before retirement
    assert late.status_code == 400 and "SAMLResponse" not in late.text and gone.acs_url not in late.text

    # discovery: GONE is refused as a requester on both faces
    as_requester = query(world, gone, world.boot_gone)
    assert as_requester.status_code == 401 and as_requester.json()["error"] == "invalid_client"
    assert fault_of(soap_query(world, gone, world.boot_gone))[1] == "UNKNOWN_SENDER"
    # ... and as a provider it is neither listed nor decided, so no token is issued to it
    after = offered(query(world, r, world.boot_r))
    assert gone.entity_id not in after and after[keep.entity_id]["permitted"] and after[keep.entity_id]["token"]
    codes, message, response = name_id_mapping(world, gone.entity_id)  # nor its name for the person
    assert codes[0] == "Requester" and message.split(":")[0] == "UNKNOWN_TARGET"
    assert response.find("saml:EncryptedID", NS) is None
    assert len(hub_lines_naming(hub, gone.entity_id)) == len(naming_gone)  # nothing new decided about it

    with session_scope() as db:
        # its offerings and whitelist entries are inactive, kept for history, listed on request
        assert gone.entity_id not in {o.provider for o in location.list_offerings(db_session=db)}
        retired_offerings = [o for o in location.list_offerings(db_session=db, include_retired=True)
                             if o.provider == gone.entity_id]
        assert len(retired_offerings) == 1 and retired_offerings[0].retired_at is not None
        active = consent.list_whitelist(db_session=db)
        assert not [e for e in active if gone.entity_id in (e.requester, e.provider)]
        assert any(e.requester == r.entity_id and e.provider == keep.entity_id for e in active)
        retired_entries = [e for e in consent.list_whitelist(db_session=db, include_retired=True)
                           if gone.entity_id in (e.requester, e.provider)]
        assert len(retired_entries) == 2 and all(e.retired_at is not None for e in retired_entries)
        assert consent.find_whitelist_entry(db_session=db, requester=r.entity_id, provider=gone.entity_id,
                                            task_code=TASK, info_type_code=INFO, classes_of={}) is None
        # its pseudonyms and links are kept, but none are made for it any more
        assert db.scalar(select(func.count()).select_from(Pseudonym)
                         .where(Pseudonym.agency == gone.entity_id)) == kept_pseudonyms
        assert db.scalar(select(func.count()).select_from(LocalLink)
                         .where(LocalLink.agency == gone.entity_id)) == 1
        newcomer = accounts.add_person(db_session=db, username=f"new-{UID}", password="newcomer password")
        with pytest.raises(pseudonyms.PseudonymError, match="retired"):
            pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=newcomer.person_key,
                                     agency=gone.entity_id, scope=hub.settings.scope)
        with pytest.raises(pseudonyms.PseudonymError, match="retired"):
            pseudonyms.import_local_links(db_session=db, keys=keystore(), agency=gone.entity_id,
                                          csv_text=f"L2-{UID},8{UID}")
        # the registry keeps the row and its keys, but no live use finds it
        assert agencies.lookup(db_session=db, entity_id=gone.entity_id) is None
        assert agencies.is_retired(db_session=db, entity_id=gone.entity_id)
        row = next(a for a in agencies.list_all(db_session=db) if a.entity_id == gone.entity_id)
        assert row.retired_at is not None and row.certificates and row.metadata_xml
        # nothing new may name it
        with pytest.raises(location.LocationError, match="retired"):
            location.add_offering(db_session=db, provider=gone.entity_id, service_type=SERVICE,
                                  endpoint=f"{gone.base_url}/again")
        with pytest.raises(WhitelistImportError, match="retired"):
            consent.import_whitelist(db_session=db, entries=[WhitelistEntryIn(
                requester=keep.entity_id, provider=gone.entity_id, task_code="OTHER", task_name="x",
                info_type_code=INFO, info_type_name="x", legal_basis="x", consent="required")])
        db.rollback()

    # the history naming it is still readable and verifies
    assert len(hub_lines_naming(hub, gone.entity_id)) == len(naming_gone)

    # the registry: listed as retired, never registered again, not retired twice
    listed = next(line for line in cli("agency", "list").splitlines() if line.startswith(gone.entity_id))
    assert "\tretired " in listed
    metadata = world.tmp / f"again-{UID}.xml"
    metadata.write_bytes(gone.metadata())
    for flags in ((), ("--replace",)):
        again = CliRunner().invoke(main, ["agency", "add", "--metadata", str(metadata), *flags])
        assert again.exit_code != 0 and "cannot be registered again" in again.output
    twice = CliRunner().invoke(main, ["agency", "remove", gone.entity_id])
    assert twice.exit_code != 0 and "already retired" in twice.output
