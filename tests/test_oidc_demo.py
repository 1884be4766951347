"""The demo's OpenID Connect agency (examples/agency_demo/oidc_rp.py, on Authlib's client)
against the running hub over HTTP: registered from its own client metadata, it logs a person in
with PKCE and private_key_jwt, and is logged out over the back channel when the hub session ends."""
from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import agency_entity_id, listening_socket, port_of, serve_in_thread
from tests.test_oidc import cli

PASSWORD = "demo oidc person's password"


@pytest.fixture(scope="module")
def pension(hub, tmp_path_factory):
    from agency_demo import AgencyConfig
    from agency_demo.oidc_rp import client_metadata_json, create_oidc_agency_app

    tmp = tmp_path_factory.mktemp("oidc-demo")
    sock = listening_socket()
    port = port_of(sock)
    config = AgencyConfig(entity_id=agency_entity_id(port), name="年金事務所 (test)",
                          base_url=f"http://127.0.0.1:{port}", hub_base_url=hub.base_url, key_dir=tmp / "pension")
    md = tmp / "pension.json"
    md.write_bytes(client_metadata_json(config))
    cli("agency", "add", "--oidc-metadata", str(md), "--class", "pension_office")
    cli("person", "add", "--username", "oidc-demo-person", "--password-stdin", stdin=PASSWORD + "\n")
    server, thread = serve_in_thread(create_oidc_agency_app(config), sock)
    yield config
    server.should_exit = True
    thread.join(timeout=10)


def _follow_to_login(browser: httpx.Client, response: httpx.Response, hub_url: str) -> httpx.Response:
    while response.status_code in (302, 303) and "/idp/login" not in response.headers["location"]:
        response = browser.get(response.headers["location"])
    return browser.get(response.headers["location"])


def test_the_oidc_demo_agency_logs_a_person_in_and_out(hub, pension):
    assert pension.key_dir.joinpath("oidc-client.key.pem").stat().st_mode & 0o077 == 0
    with httpx.Client(follow_redirects=False, timeout=20) as browser:
        page = _follow_to_login(browser, browser.get(f"{pension.base_url}/login"), hub.base_url)
        pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
        answer = browser.post(f"{hub.base_url}/idp/login",
                              data={"pending": pending, "username": "oidc-demo-person", "password": PASSWORD})
        while answer.status_code in (302, 303):
            answer = browser.get(answer.headers["location"])
        assert answer.status_code == 200, answer.text
        sub = re.search(r"<code id='sub'>([^<]+)</code>", answer.text).group(1)
        assert "PasswordProtectedTransport" in answer.text
        # the agency's sub is its pairwise pseudonym at the hub
        from idp import accounts
        from kernel.db import session_scope
        from kernel.keys import keystore
        from pseudonym import service as pseudonyms

        with session_scope() as db:
            person = accounts.find(db_session=db, username="oidc-demo-person")
            assert pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=person.person_key,
                                            agency=pension.entity_id, scope=hub.settings.scope) == sub
        # logging out at the hub's logout page ends the agency's session over the back channel
        logout_page = browser.get(f"{hub.base_url}/idp/logout")
        csrf = re.search(r'name="csrf" value="([^"]+)"', logout_page.text).group(1)
        assert browser.post(f"{hub.base_url}/idp/logout", data={"csrf": csrf}).status_code == 200
        home = browser.get(f"{pension.base_url}/")
        assert "Log in" in home.text and sub not in home.text


def test_the_oidc_demo_agency_refuses_a_callback_it_did_not_ask_for(hub, pension):
    with httpx.Client(follow_redirects=False, timeout=20) as browser:
        answer = browser.get(f"{pension.base_url}/callback", params={"code": "x", "state": "forged",
                                                                      "iss": hub.base_url})
        assert answer.status_code == 400 and "state" in answer.text
