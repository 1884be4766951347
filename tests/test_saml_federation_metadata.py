"""Federation metadata over real HTTP: the signed aggregate and MDQ answers, checked by the
xmlsec1 binary (trusting only the pinned IdP certificate), python3-saml's and pysaml2's
metadata readers; and agencies' metadata refreshed from a URL under a pinned signing key,
refusing unsigned, wrongly signed, expired, entityID-changing and hostile documents."""
from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from fastapi.responses import Response
from lxml import etree

import tests.xml_attacks as attacks
from renkei.cli import main
from tests.conftest import listening_socket, port_of, serve_in_thread
from tests.saml_sp import MD, TestSP, make_key_and_cert

MD_ENTITY = "urn:oasis:names:tc:SAML:2.0:metadata:EntityDescriptor"
MD_ENTITIES = "urn:oasis:names:tc:SAML:2.0:metadata:EntitiesDescriptor"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def cli(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def idp_cert_file(hub, tmp_path_factory):
    from kernel.keys import keystore

    cert = keystore().ensure_signing_key("idp").certificate
    path = tmp_path_factory.mktemp("idp") / "idp.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def member(hub, tmp_path_factory):
    sp = TestSP(f"https://member-{uuid.uuid4().hex[:6]}.example.jp/sp", "https://member.example.jp")
    path = tmp_path_factory.mktemp("member") / "md.xml"
    path.write_bytes(sp.metadata())
    cli("agency", "add", "--metadata", str(path))
    return sp


@pytest.fixture(scope="module")
def oidc_only(hub, tmp_path_factory):
    """An agency registered from OIDC client metadata alone: it has no SAML metadata to aggregate."""
    from tests.oidc_client import RP

    rp = RP(f"https://oidc-only-{uuid.uuid4().hex[:6]}.example.jp", "https://oidc-only.example.jp/cb")
    cli("agency", "add", "--oidc-metadata", str(rp.write_metadata(tmp_path_factory.mktemp("oidc-only"))))
    return rp


def xmlsec1_verifies(document: bytes, cert_file, node: str, tmp_path) -> bool:
    path = tmp_path / f"doc-{uuid.uuid4().hex}.xml"
    path.write_bytes(document)
    done = subprocess.run(
        ["xmlsec1", "--verify", "--enabled-key-data", "x509", "--pubkey-cert-pem", str(cert_file),
         "--id-attr:ID", node, "--node-name", node, str(path)],
        capture_output=True, text=True, check=False)
    return done.returncode == 0


def test_the_aggregate_is_signed_bounded_and_lists_everyone(hub, member, oidc_only, idp_cert_file, tmp_path):
    r = httpx.get(f"{hub.base_url}/federation/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/samlmetadata+xml")
    assert xmlsec1_verifies(r.content, idp_cert_file, MD_ENTITIES, tmp_path)
    root = etree.fromstring(r.content)
    assert root.tag == f"{{{MD}}}EntitiesDescriptor" and root.get("cacheDuration")
    valid_until = datetime.fromisoformat(root.get("validUntil"))
    assert datetime.now(UTC) < valid_until < datetime.now(UTC) + timedelta(days=31)
    ids = [e.get("entityID") for e in root.findall(f"{{{MD}}}EntityDescriptor")]
    assert hub.settings.idp_entity_id in ids and member.entity_id in ids
    assert oidc_only.client_id not in ids  # an OIDC-only agency has no SAML metadata to list
    # the check can fail: one changed endpoint breaks the signature
    tampered = r.content.replace(member.acs_url.encode(), attacks.EVIL_URL.encode())
    assert tampered != r.content and not xmlsec1_verifies(tampered, idp_cert_file, MD_ENTITIES, tmp_path)


def test_python3_saml_and_pysaml2_read_the_aggregate(hub, member):
    from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
    from saml2.attribute_converter import ac_factory
    from saml2.mdstore import InMemoryMetaData

    xml = httpx.get(f"{hub.base_url}/federation/metadata").text
    idp = OneLogin_Saml2_IdPMetadataParser.parse(xml, entity_id=hub.settings.idp_entity_id)["idp"]
    assert idp["singleSignOnService"]["url"] == f"{hub.base_url}/idp/sso"
    store = InMemoryMetaData(ac_factory(), metadata=xml)
    store.load()
    entities = set(store.keys())
    assert member.entity_id in entities and hub.settings.idp_entity_id in entities
    acs = store[member.entity_id]["spsso_descriptor"][0]["assertion_consumer_service"]
    assert [a["location"] for a in acs] == [member.acs_url]


def test_mdq_answers_one_signed_entity_by_id_or_sha1(hub, member, oidc_only, idp_cert_file, tmp_path):
    import hashlib

    base = f"{hub.base_url}/federation/mdq/entities"
    by_id = httpx.get(f"{base}/{quote(member.entity_id, safe='')}")
    sha1 = "{sha1}" + hashlib.sha1(member.entity_id.encode()).hexdigest()
    by_sha1 = httpx.get(f"{base}/{quote(sha1, safe='')}")
    for answer in (by_id, by_sha1):
        assert answer.status_code == 200, answer.text
        root = etree.fromstring(answer.content)
        assert root.tag == f"{{{MD}}}EntityDescriptor" and root.get("entityID") == member.entity_id
        assert root.get("validUntil") and root.get("cacheDuration")
        assert xmlsec1_verifies(answer.content, idp_cert_file, MD_ENTITY, tmp_path)
    hub_entity = httpx.get(f"{base}/{quote(hub.settings.idp_entity_id, safe='')}")
    assert hub_entity.status_code == 200 and xmlsec1_verifies(hub_entity.content, idp_cert_file, MD_ENTITY, tmp_path)
    assert httpx.get(f"{base}/{quote('https://nobody.example/sp', safe='')}").status_code == 404
    assert httpx.get(f"{base}/{quote(oidc_only.client_id, safe='')}").status_code == 404
    everyone = httpx.get(base)
    assert everyone.status_code == 200 and etree.fromstring(everyone.content).tag == f"{{{MD}}}EntitiesDescriptor"


# --- metadata refreshed from a URL ---------------------------------------------------------------

class MetadataHost:
    """An agency's web server publishing its metadata; the test sets what it serves."""

    def __init__(self):
        self.body = b""
        sock = listening_socket()
        self.url = f"http://127.0.0.1:{port_of(sock)}/metadata.xml"
        app = FastAPI()

        @app.get("/metadata.xml")
        def metadata() -> Response:
            return Response(self.body, media_type="application/samlmetadata+xml")

        self.server, self.thread = serve_in_thread(app, sock)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def host():
    running = MetadataHost()
    yield running
    running.stop()


@pytest.fixture
def signer(tmp_path):
    key, cert = make_key_and_cert("metadata signer")
    path = tmp_path / "signer.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, path


def signed_metadata(sp: TestSP, key, *, valid_for=timedelta(days=2), entity_id: str | None = None,
                    acs: str | None = None) -> bytes:
    root = etree.fromstring(sp.metadata())
    root.set("ID", "_" + uuid.uuid4().hex)
    root.set("validUntil", (datetime.now(UTC) + valid_for).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if entity_id:
        root.set("entityID", entity_id)
    if acs:
        root.find(f"{{{MD}}}SPSSODescriptor/{{{MD}}}AssertionConsumerService").set("Location", acs)
    attacks.resign(root, key)  # the tests' own signer, independent of kernel.xml
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def registered(entity_id: str):
    """(metadata_xml, ACS locations) of the registered agency, read from the registry."""
    from federation import service as agencies
    from kernel.db import session_scope

    with session_scope() as db:
        row = next((a for a in agencies.list_all(db_session=db) if a.entity_id == entity_id), None)
        return None if row is None else (row.metadata_xml, sorted(e.location for e in row.endpoints if e.kind == "acs"))


def remote_agency(host: MetadataHost, signer) -> TestSP:
    sp = TestSP(f"https://remote-{uuid.uuid4().hex[:6]}.example.jp/sp", "https://remote.example.jp")
    host.body = signed_metadata(sp, signer[0])
    out = cli("agency", "add", "--metadata-url", host.url, "--metadata-signing-cert", str(signer[1]))
    assert f"registered {sp.entity_id}" in out
    return sp


def test_add_from_a_url_and_refresh(hub, host, signer):
    sp = remote_agency(host, signer)
    assert registered(sp.entity_id)[1] == [sp.acs_url]
    host.body = signed_metadata(sp, signer[0], acs="https://remote.example.jp/new-acs")
    assert f"refreshed {sp.entity_id}" in cli("agency", "refresh", sp.entity_id)
    assert registered(sp.entity_id)[1] == ["https://remote.example.jp/new-acs"]
    # without an entity ID every URL-registered agency is refreshed
    assert f"refreshed {sp.entity_id}" in cli("agency", "refresh")


def refused(entity_id: str, expect: str) -> None:
    before = registered(entity_id)
    result = run("agency", "refresh", entity_id)
    assert result.exit_code != 0, result.output
    assert "refused, nothing changed" in result.output and expect in result.output, result.output
    assert registered(entity_id) == before


def test_refresh_refuses_unsigned_wrongly_signed_expired_and_renamed(hub, host, signer):
    sp = remote_agency(host, signer)
    host.body = sp.metadata()
    refused(sp.entity_id, "must be signed")
    other_key, _ = make_key_and_cert("someone else")
    host.body = signed_metadata(sp, other_key, acs=attacks.EVIL_URL)
    refused(sp.entity_id, "signature")
    host.body = signed_metadata(sp, signer[0], valid_for=timedelta(seconds=-5))
    refused(sp.entity_id, "expired")
    host.body = signed_metadata(sp, signer[0], entity_id="https://renamed.example.jp/sp")
    refused(sp.entity_id, "cannot change its ID")


def test_add_from_a_url_refuses_an_unsigned_document(hub, host, signer):
    sp = TestSP(f"https://unsigned-{uuid.uuid4().hex[:6]}.example.jp/sp", "https://unsigned.example.jp")
    host.body = sp.metadata()
    result = run("agency", "add", "--metadata-url", host.url, "--metadata-signing-cert", str(signer[1]))
    assert result.exit_code != 0 and "refused" in result.output
    assert registered(sp.entity_id) is None
    result = run("agency", "add", "--metadata-url", host.url)
    assert result.exit_code != 0 and "--metadata-signing-cert" in result.output


def forge_endpoints(element: etree._Element) -> None:
    for node in element.iter(etree.Element):
        if node.get("Location") is not None:
            node.set("Location", attacks.EVIL_URL)


HOSTILE = {
    "xsw1": lambda signed, key: attacks.xsw1(signed, forge=forge_endpoints),
    "xsw2": lambda signed, key: attacks.xsw2(signed, forge=forge_endpoints),
    "strip_signatures": lambda signed, key: attacks.strip_signatures(signed, forge=forge_endpoints),
    "key_injection": lambda signed, key: attacks.key_injection(signed, forge=forge_endpoints),
    "sha1_signature": lambda signed, key: attacks.sha1_signature(signed, key=key, forge=forge_endpoints),
    "second_digest_value": lambda signed, key: attacks.second_digest_value(signed, forge=forge_endpoints),
    "second_signed_info": lambda signed, key: attacks.second_signed_info(signed, forge=forge_endpoints),
    "comment_in_digest_value": lambda signed, key: attacks.comment_in_digest_value(signed, forge=forge_endpoints),
    "xslt_transform": lambda signed, key: attacks.xslt_transform(signed, key=key, forge=forge_endpoints),
    "external_reference": lambda signed, key: attacks.external_reference(signed, key=key, forge=forge_endpoints),
    "duplicate_id": lambda signed, key: attacks.duplicate_id(signed),
    "billion_laughs": lambda signed, key: attacks.billion_laughs(signed),
    "external_entity": lambda signed, key: attacks.external_entity(signed),
    "external_dtd": lambda signed, key: attacks.external_dtd(signed),
}


def test_refresh_refuses_the_hostile_xml_corpus(hub, host, signer):
    sp = remote_agency(host, signer)
    signed = signed_metadata(sp, signer[0])
    for name, attack in HOSTILE.items():
        host.body = attack(signed, signer[0])
        before = registered(sp.entity_id)
        result = run("agency", "refresh", sp.entity_id)
        assert result.exit_code != 0 and "refused, nothing changed" in result.output, (name, result.output)
        assert registered(sp.entity_id) == before, name
        assert attacks.EVIL_URL not in before[0]
    host.body = signed
    cli("agency", "refresh", sp.entity_id)  # the genuine document still goes through
