"""Interop: OneLogin's python3-saml, as the demo agencies' SP, completes SSO and SLO against
the running hub over HTTP and validates every response in strict mode."""
from __future__ import annotations

import re
from html import unescape

import httpx
import pytest
from click.testing import CliRunner

from renkei.cli import main
from tests.conftest import agency_entity_id, listening_socket, port_of, serve_in_thread
from tests.saml_sp import post_form_fields


class AgencyServer:
    def __init__(self, hub, tmp_path, name: str, key: str):
        from agency_demo import AgencyConfig, create_agency_app, sp_metadata

        sock = listening_socket()
        port = port_of(sock)
        self.config = AgencyConfig(
            entity_id=agency_entity_id(port), name=name,
            base_url=f"http://127.0.0.1:{port}", hub_base_url=hub.base_url, key_dir=tmp_path / key,
        )
        md = tmp_path / f"{key}.xml"
        md.write_text(sp_metadata(self.config))
        result = CliRunner().invoke(main, ["agency", "add", "--metadata", str(md), "--class", "municipality"])
        assert result.exit_code == 0, result.output
        self.server, self.thread = serve_in_thread(create_agency_app(self.config), sock)
        self.url = self.config.base_url

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def agencies(hub, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agencies")
    servers = [AgencyServer(hub, tmp, "転出元 市役所", "city-a"), AgencyServer(hub, tmp, "転入先 市役所", "city-b")]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def person(hub):
    result = CliRunner().invoke(main, ["person", "add", "--username", "interop-user", "--password-stdin"],
                                input="interop password\n")
    assert result.exit_code == 0, result.output
    return "interop-user", "interop password"


def login_at(client: httpx.Client, agency: AgencyServer, person) -> str:
    """Browser: agency /login → IdP → login form → POST to the agency's ACS; returns its page."""
    r = client.get(f"{agency.url}/login")
    assert r.status_code in (302, 303), r.text[:300]
    r = client.get(r.headers["location"])  # the IdP, HTTP-Redirect binding
    if r.status_code == 303:  # not logged in yet
        page = client.get(r.headers["location"])
        pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
        r = client.post(page.url, data={"pending": pending, "username": person[0], "password": person[1]})
    assert r.status_code == 200, r.text[:500]
    action, fields = post_form_fields(r.text)
    assert action == f"{agency.url}/acs"
    acs = client.post(action, data=fields)
    if acs.status_code in (302, 303):
        acs = client.get(acs.headers["location"])
    assert acs.status_code == 200, acs.text[:1500]
    return acs.text


def shown_pseudonym(html: str) -> str:
    return unescape(re.search(r"<code>([a-z2-7]{52}@[^<]+)</code>", html).group(1))


def test_python3_saml_completes_sso_and_sees_a_pairwise_pseudonym(agencies, person):
    city_a, city_b = agencies
    with httpx.Client(timeout=20) as browser:
        first = shown_pseudonym(login_at(browser, city_a, person))
        again = shown_pseudonym(login_at(browser, city_a, person))  # IdP session reused
        other = shown_pseudonym(login_at(browser, city_b, person))
    assert first == again
    assert first != other


def test_python3_saml_single_logout(agencies, person, hub):
    city_a, _ = agencies
    with httpx.Client(timeout=20) as browser:
        login_at(browser, city_a, person)
        r = browser.get(f"{city_a.url}/logout")
        assert r.status_code in (302, 303)
        assert r.headers["location"].startswith(f"{hub.base_url}/idp/slo?")
        r = browser.get(r.headers["location"])
        assert r.status_code == 303
        assert r.headers["location"].startswith(f"{city_a.url}/sls?")
        done = browser.get(r.headers["location"])
        if done.status_code in (302, 303):
            done = browser.get(done.headers["location"])
        assert done.status_code == 200, done.text[:800]
        # the IdP session ended: a new login at the agency needs the password again
        r = browser.get(browser.get(f"{city_a.url}/login").headers["location"])
        assert r.status_code == 303 and "/idp/login" in r.headers["location"]
