"""Hostile values in AuthnRequests and LogoutRequests from an agency that does not sign:
each gets a 4xx page with a reason or a SAML error status, never a 500, and the browser's
keep-alive connection survives to carry the next, good request (uvicorn drops it after a 500).
Runs on SQLite and, with RENKEI_TEST_POSTGRES_URL, on PostgreSQL (its column limits and NULs)."""
from __future__ import annotations

import base64
import re
import uuid
from urllib.parse import quote_plus

import httpx
import pytest
from lxml import etree

from tests.saml_sp import NS, TestSP, now_str, response_from_page
from tests.test_idp_sso import register

PLACEHOLDER = "_PLACEHOLDER-ID"


@pytest.fixture(scope="module")
def unsigned_sp(hub, tmp_path_factory) -> TestSP:
    sp = TestSP("https://unsigned.example.jp/sp", "https://unsigned.example.jp", authn_requests_signed=False)
    return register(sp, tmp_path_factory.mktemp("sp"))


def _request(hub, sp: TestSP, *, id_: str | None = None, issue_instant: str | None = None,
             acs_index: str | None = None, destination: str | None = None, issuer: str | None = None,
             acs_url: str | None = None) -> bytes:
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso", issue_instant=issue_instant, issuer=issuer,
                               acs_url=acs_url, request_id=None if id_ is None else PLACEHOLDER)
    if acs_index is not None:
        del root.attrib["AssertionConsumerServiceURL"]
        root.set("AssertionConsumerServiceIndex", acs_index)
    if destination is not None:
        root.set("Destination", destination)
    xml = etree.tostring(root)
    # raw bytes, so values lxml would not let us set (a NUL) still reach the hub
    return xml if id_ is None else xml.replace(PLACEHOLDER.encode(), id_.encode())


# (case id, AuthnRequest changes, RelayState, how the SAMLRequest is mangled)
CASES = [
    ("acs-index-unicode-digit", {"acs_index": "²"}, None, None),
    ("acs-index-arabic-digit", {"acs_index": "٣"}, None, None),
    ("acs-index-5000-digits", {"acs_index": "9" * 5000}, None, None),
    ("acs-index-negative", {"acs_index": "-1"}, None, None),
    ("acs-index-out-of-range", {"acs_index": "70000"}, None, None),
    ("issue-instant-year-1", {"issue_instant": "0001-01-01T00:00:00+01:00"}, None, None),
    ("issue-instant-year-9999", {"issue_instant": "9999-12-31T23:59:59-01:00"}, None, None),
    ("issue-instant-end-of-time", {"issue_instant": "9999-12-31T23:59:59Z"}, None, None),
    ("issue-instant-not-a-time", {"issue_instant": "yesterday"}, None, None),
    ("id-of-257-chars", {"id_": "_" + "a" * 256}, None, None),
    ("id-of-5000-chars", {"id_": "_" + "a" * 4999}, None, None),
    ("id-with-nul", {"id_": "_a\x00b"}, None, None),
    ("id-with-tab", {"id_": "_a&#9;b"}, None, None),
    ("id-not-an-ncname", {"id_": "1 2 3"}, None, None),
    ("destination-10kb", {"destination": "https://x.example/" + "d" * 10_000}, None, None),
    ("acs-url-10kb", {"acs_url": "https://unsigned.example.jp/" + "a" * 10_000}, None, None),
    ("issuer-5000-chars", {"issuer": "https://unsigned.example.jp/" + "i" * 5000}, None, None),
    ("relay-state-100kb", {}, "r" * 100_000, None),  # by POST; httpx sends no URL past 64 KiB
    ("relay-state-60kb", {}, "r" * 60_000, None),
    ("relay-state-with-nul", {}, "a\x00b", None),
    ("saml-request-with-nul", {}, None, "nul"),
    ("saml-request-not-base64", {}, None, "garbage"),
]


def _send(client: httpx.Client, sp: TestSP, xml: bytes, *, binding: str, relay_state: str | None,
          mangle: str | None) -> httpx.Response:
    if binding == "redirect":
        query = sp.redirect_query(xml, relay_state=relay_state, sign=False)
        if mangle == "nul":
            query = query.replace("SAMLRequest=", "SAMLRequest=%00", 1)
        elif mangle == "garbage":
            query = "SAMLRequest=" + quote_plus("not base64 at all!") + "&RelayState=x"
        return client.get("/idp/sso?" + query)
    value = base64.b64encode(xml).decode()
    if mangle == "nul":
        value = value[:10] + "\x00" + value[10:]
    elif mangle == "garbage":
        value = "not base64 at all!"
    data = {"SAMLRequest": value}
    if relay_state is not None:
        data["RelayState"] = relay_state
    return client.post("/idp/sso", data=data)


def _local_port(response: httpx.Response) -> int:
    """The client side of the TCP connection that carried this response."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def _assert_refused_with_a_reason(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text[:500]
    if r.status_code == 200:  # a SAML error status posted back to the agency's registered ACS
        _, response, _ = response_from_page(r.text)
        status = response.find("samlp:Status/samlp:StatusCode", NS).get("Value")
        assert not status.endswith(":Success")
        assert response.findtext("samlp:Status/samlp:StatusMessage", namespaces=NS)
    else:
        assert 400 <= r.status_code < 500
        reason = re.search(r'<p class="error" role="alert">(.+?)</p>', r.text, re.DOTALL)
        assert reason and reason.group(1).strip(), r.text[:500]


# both bindings, but no URL past what a client sends (httpx: 64 KiB)
BOUND_CASES = [pytest.param(binding, *case[1:], id=f"{case[0]}-{binding}") for case in CASES
               for binding in ("redirect", "post") if binding == "post" or len(case[2] or "") < 64_000]


@pytest.mark.parametrize(("binding", "changes", "relay_state", "mangle"), BOUND_CASES)
def test_hostile_authn_request_is_refused_and_the_connection_survives(
        hub, unsigned_sp, binding, changes, relay_state, mangle):
    with httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=20) as client:
        bad = _send(client, unsigned_sp, _request(hub, unsigned_sp, **changes), binding=binding,
                    relay_state=relay_state, mangle=mangle)
        _assert_refused_with_a_reason(bad)
        good = _send(client, unsigned_sp, _request(hub, unsigned_sp), binding=binding,
                     relay_state="state-1", mangle=None)
        assert good.status_code == 303 and "/idp/login?pending=" in good.headers["location"], good.text[:500]
        assert _local_port(good) == _local_port(bad), "the hub dropped the keep-alive connection"


def test_an_id_of_256_characters_is_accepted(hub, unsigned_sp):
    r = httpx.get(f"{hub.base_url}/idp/sso?" + unsigned_sp.redirect_query(
        _request(hub, unsigned_sp, id_="_" + uuid.uuid4().hex + "a" * 223), sign=False))
    assert r.status_code == 303, r.text[:500]


@pytest.mark.parametrize(("attribute", "value"), [
    ("ID", "_" + "a" * 300),
    ("ID", "_a&#9;b"),
    ("IssueInstant", "9999-12-31T23:55:00Z"),  # ten minutes later would overflow
    ("IssueInstant", "0001-01-01T00:00:00+01:00"),
    ("NotOnOrAfter", "9999-12-31T23:59:59-01:00"),
    ("Destination", "https://x.example/" + "d" * 10_000),
])
def test_hostile_logout_request_is_refused_and_the_connection_survives(hub, unsigned_sp, attribute, value):
    xml = unsigned_sp.logout_request(f"{hub.base_url}/idp/slo", name_id="someone@example")
    root = etree.fromstring(xml)
    root.set(attribute, "PLACEHOLDER-VALUE")
    xml = etree.tostring(root).replace(b"PLACEHOLDER-VALUE", value.encode())
    with httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=20) as client:
        bad = client.get("/idp/slo?" + unsigned_sp.redirect_query(xml))
        assert bad.status_code < 500, bad.text[:500]
        if bad.status_code == 303:  # answered with a LogoutResponse carrying an error status
            assert bad.headers["location"].startswith(unsigned_sp.slo_url)
        good_xml = unsigned_sp.logout_request(f"{hub.base_url}/idp/slo", name_id="someone@example")
        good = client.get("/idp/slo?" + unsigned_sp.redirect_query(good_xml))
        assert good.status_code == 303, good.text[:500]
        assert _local_port(good) == _local_port(bad)


def test_issue_instant_is_still_checked_against_the_clock(hub, unsigned_sp):
    from datetime import timedelta

    xml = _request(hub, unsigned_sp, issue_instant=now_str(timedelta(hours=-1)))
    r = httpx.get(f"{hub.base_url}/idp/sso?" + unsigned_sp.redirect_query(xml, sign=False))
    _, response, _ = response_from_page(r.text)
    assert "outside the accepted window" in response.findtext("samlp:Status/samlp:StatusMessage", namespaces=NS)
