"""Passkeys over real HTTP, answered by a software authenticator (tests/soft_authenticator.py):
registration at /idp/passkeys, passwordless login and the second factor after the password,
each ending in a signed SAML Response whose AuthnContextClassRef is the passkey class; and
every way an answer can be wrong (another origin or RP ID, a replay, no user verification, a
counter going back, another person's passkey, garbage) refused with a 4xx, counted by the login
throttle and never written.

Each test speaks from its own loopback address (127.0.0.x), so its throttle state is its own."""
from __future__ import annotations

import json
import re
import uuid
from html import unescape

import httpx
import pytest
from lxml import etree
from sqlalchemy import select

from access_history.models import OperationEntry
from idp import accounts
from idp.models import LoginThrottle, Passkey, PasskeyChallenge
from idp.saml import AC_PASSKEY, AC_PPT, AC_TIMESYNC
from kernel.db import session_scope, utcnow
from kernel.settings import get_settings
from tests.saml_sp import NS, Browser, TestSP, response_from_page, verify_with_xmlsec
from tests.soft_authenticator import SoftAuthenticator

TOTP_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"
PASSWORD = "a good long password"


@pytest.fixture(scope="module")
def sp(hub, tmp_path_factory):
    from click.testing import CliRunner

    from renkei.cli import main

    sp = TestSP("https://passkeys.example.jp/sp", "https://passkeys.example.jp")
    path = tmp_path_factory.mktemp("sp") / "md.xml"
    path.write_bytes(sp.metadata())
    result = CliRunner().invoke(main, ["agency", "add", "--metadata", str(path), "--class", "municipality"])
    assert result.exit_code == 0, result.output
    return sp


@pytest.fixture(scope="module")
def idp_cert(hub):
    from kernel.keys import keystore

    return keystore().ensure_signing_key("idp").certificate


_addresses = iter(range(60, 250))


@pytest.fixture
def address(hub):
    """A loopback address of this test's own (its throttle counters are its own)."""
    address = f"127.0.0.{next(_addresses)}"
    yield address
    with session_scope() as db:
        db.query(LoginThrottle).filter(LoginThrottle.key == f"address:{address}").delete()


def new_person(*, totp: bool = False) -> str:
    name = f"pk-{uuid.uuid4().hex[:8]}"
    with session_scope() as db:
        accounts.add_person(db_session=db, username=name, password=PASSWORD,
                            totp_secret=TOTP_SECRET if totp else None)
    return name


def browser_at(hub, address: str) -> Browser:
    browser = Browser(hub.base_url)
    browser.client = httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=60,
                                  transport=httpx.HTTPTransport(local_address=address))
    return browser


def origin(hub) -> str:
    return hub.base_url  # http://127.0.0.1:PORT: the base URL's own origin


def options_of(html: str, action: str) -> dict:
    """The WebAuthn options of the page's passkey form that posts to `action`."""
    form = re.search(r'<form method="post" action="' + re.escape(action) + r'"[^>]*data-options="([^"]*)"', html)
    assert form, html[-1500:]
    return json.loads(unescape(form.group(1)))


def field(html: str, name: str) -> str:
    return unescape(re.search(r'name="' + name + r'" value="([^"]*)"', html).group(1))


def start_login(browser: Browser, sp: TestSP, **request_kwargs) -> httpx.Response:
    """An SP-initiated SSO up to the IdP's login page."""
    _, root = sp.authn_request(f"{browser.hub_url}/idp/sso", **request_kwargs)
    first = browser.start(sp, etree.tostring(root))
    assert first.status_code == 303, first.text[-800:]
    page = browser.client.get(first.headers["location"].removeprefix(browser.hub_url))
    assert page.status_code == 200, page.text[-800:]
    return page


def saml_answer(page: httpx.Response, idp_cert) -> tuple[str, str | None]:
    """(top status, AuthnContextClassRef) of the signed Response on a POST-binding page."""
    assert page.status_code == 200, page.text[-1500:]
    _, response, _ = response_from_page(page.text)
    verify_with_xmlsec(response, idp_cert)
    ref = response.find(".//saml:AuthnContextClassRef", NS)
    codes = " ".join(c.get("Value") for c in response.iter(f"{{{NS['samlp']}}}StatusCode"))
    return codes, ref.text if ref is not None else None


def password_login(browser: Browser, sp: TestSP, username: str, **request_kwargs) -> httpx.Response:
    page = start_login(browser, sp, **request_kwargs)
    return browser.client.post("/idp/login", data={"pending": field(page.text, "pending"), "username": username,
                                                   "password": PASSWORD})


def register_passkey(hub, sp, address: str, username: str, authenticator: SoftAuthenticator,
                     name: str = "laptop") -> Browser:
    """Log in with the password (an IdP session), then add a passkey at /idp/passkeys."""
    browser = browser_at(hub, address)
    answer = password_login(browser, sp, username)
    assert answer.status_code == 200 and "SAMLResponse" in answer.text, answer.text[-800:]
    page = browser.client.get("/idp/passkeys")
    assert page.status_code == 200
    created = authenticator.create(options_of(page.text, "/idp/passkeys"), origin(hub))
    saved = browser.client.post("/idp/passkeys", data={"csrf": field(page.text, "csrf"), "name": name,
                                                       "credential": json.dumps(created)})
    assert saved.status_code == 303, saved.text[-1500:]
    return browser


def passwordless(browser: Browser, sp: TestSP, authenticator: SoftAuthenticator, hub, **get_kwargs):
    """Open a login page and answer its passkey button; (the IdP's answer, pending, assertion)."""
    page = start_login(browser, sp)
    assertion = authenticator.get(options_of(page.text, "/idp/login/passkey"), get_kwargs.pop("origin", origin(hub)),
                                  **get_kwargs)
    pending = field(page.text, "pending")
    return browser.client.post("/idp/login/passkey", data={"pending": pending,
                                                           "credential": json.dumps(assertion)}), pending, assertion


def operations(action: str) -> int:
    with session_scope() as db:
        return len(db.scalars(select(OperationEntry.id).where(OperationEntry.action == action)).all())


def stored(username: str) -> list[Passkey]:
    with session_scope() as db:
        person = accounts.find(db_session=db, username=username)
        rows = db.scalars(select(Passkey).where(Passkey.person_key == person.person_key)).all()
        db.expunge_all()
        return rows


# --- registration and login ---------------------------------------------------------------------

def test_register_then_log_in_passwordless_with_the_passkey_class(hub, sp, idp_cert, address):
    name = new_person()
    authenticator = SoftAuthenticator()
    register_passkey(hub, sp, address, name, authenticator, "my laptop")
    [passkey] = stored(name)
    assert (passkey.name, passkey.sign_count, passkey.last_used_at) == ("my laptop", 0, None)
    assert set(passkey.transports.split(",")) == {"internal", "hybrid"} and passkey.created_at is not None
    assert passkey.aaguid == "0d8f2c2e-6a1b-4c3d-9e8f-7a6b5c4d3e2f"
    # the authenticator keeps a user handle that is not the hub-internal person key
    with session_scope() as db:
        person_key = accounts.find(db_session=db, username=name).person_key
    assert authenticator.credentials[0].user_handle not in (person_key.encode(), bytes.fromhex(person_key))
    # a fresh browser, no session, no username typed: the passkey alone
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub)
    status, ref = saml_answer(answer, idp_cert)
    assert status.endswith(":Success") and ref == AC_PASSKEY
    [passkey] = stored(name)
    assert passkey.sign_count == 1 and passkey.last_used_at is not None


def test_several_named_passkeys_listed_and_one_removed(hub, sp, address):
    name = new_person()
    first, second = SoftAuthenticator(), SoftAuthenticator()
    browser = register_passkey(hub, sp, address, name, first, "phone")
    page = browser.client.get("/idp/passkeys")
    # the registration options exclude the passkey already there
    excluded = [c["id"] for c in options_of(page.text, "/idp/passkeys")["excludeCredentials"]]
    assert excluded == [stored(name)[0].credential_id]
    created = second.create(options_of(page.text, "/idp/passkeys"), origin(hub))
    assert browser.client.post("/idp/passkeys", data={"csrf": field(page.text, "csrf"), "name": "security key",
                                                      "credential": json.dumps(created)}).status_code == 303
    page = browser.client.get("/idp/passkeys?saved=1")
    assert "phone" in page.text and "security key" in page.text and "The passkey was added" in page.text
    phone = next(p for p in stored(name) if p.name == "phone")
    gone = browser.client.post("/idp/passkeys/remove", data={"csrf": field(page.text, "csrf"), "passkey": phone.id})
    assert gone.status_code == 303
    assert [p.name for p in stored(name)] == ["security key"]
    assert operations("passkey.removed") >= 1
    # the removed one logs in no more; the other does
    answer, _, _ = passwordless(browser_at(hub, address), sp, first, hub)
    assert answer.status_code == 401 and "not registered" in answer.text
    answer, _, _ = passwordless(browser_at(hub, address), sp, second, hub)
    assert answer.status_code == 200 and "SAMLResponse" in answer.text


def test_passkey_as_second_factor_after_the_password(hub, sp, idp_cert, address):
    name = new_person()
    authenticator = SoftAuthenticator()
    register_passkey(hub, sp, address, name, authenticator)
    browser = browser_at(hub, address)
    step = password_login(browser, sp, name)
    # the password alone no longer logs this person in: the second step asks for the passkey
    assert step.status_code == 200 and "SAMLResponse" not in step.text
    options = options_of(step.text, "/idp/login/passkey")
    assert [c["id"] for c in options["allowCredentials"]] == [stored(name)[0].credential_id]
    assert options["userVerification"] == "preferred"
    assert 'action="/idp/login/totp"' not in step.text  # no TOTP set: nothing else offered
    # a second factor needs no user verification: the password was the knowledge factor
    assertion = authenticator.get(options, origin(hub), user_verified=False)
    answer = browser.client.post("/idp/login/passkey", data={"pending": field(step.text, "pending"),
                                                             "credential": json.dumps(assertion)})
    status, ref = saml_answer(answer, idp_cert)
    assert status.endswith(":Success") and ref == AC_PASSKEY


def test_totp_person_with_a_passkey_may_use_either_unless_the_agency_asks_for_a_passkey(hub, sp, idp_cert, address):
    name = new_person(totp=True)
    authenticator = SoftAuthenticator()
    browser = browser_at(hub, address)
    step = password_login(browser, sp, name)
    answer = browser.totp(step, accounts.totp(TOTP_SECRET))
    assert saml_answer(answer, idp_cert)[1] == AC_TIMESYNC
    page = browser.client.get("/idp/passkeys")
    created = authenticator.create(options_of(page.text, "/idp/passkeys"), origin(hub))
    assert browser.client.post("/idp/passkeys", data={"csrf": field(page.text, "csrf"), "name": "key",
                                                      "credential": json.dumps(created)}).status_code == 303
    step = password_login(browser_at(hub, address), sp, name, force_authn=True)
    assert 'action="/idp/login/totp"' in step.text and 'action="/idp/login/passkey"' in step.text
    # an agency that asks for the passkey class gets no TOTP offered
    step = password_login(browser_at(hub, address), sp, name, requested_context=("exact", [AC_PASSKEY]))
    assert 'action="/idp/login/totp"' not in step.text and 'action="/idp/login/passkey"' in step.text


def test_requested_passkey_class_forces_a_passkey_step_or_answers_no_authn_context(hub, sp, idp_cert, address):
    with_key, without = new_person(), new_person()
    authenticator = SoftAuthenticator()
    browser = register_passkey(hub, sp, address, with_key, authenticator)  # a password-level session
    # the session is too weak for this request: the login page again, not a silent answer
    page = start_login(browser, sp, requested_context=("exact", [AC_PASSKEY]))
    assertion = authenticator.get(options_of(page.text, "/idp/login/passkey"), origin(hub))
    answer = browser.client.post("/idp/login/passkey", data={"pending": field(page.text, "pending"),
                                                             "credential": json.dumps(assertion)})
    assert saml_answer(answer, idp_cert) == ("urn:oasis:names:tc:SAML:2.0:status:Success", AC_PASSKEY)
    # that passkey session now answers a minimum-TOTP request at once, with the passkey class
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso", requested_context=("minimum", [AC_TIMESYNC]))
    assert saml_answer(browser.start(sp, etree.tostring(root)), idp_cert)[1] == AC_PASSKEY
    # a person without a passkey: the password is right, the class cannot be met
    answer = password_login(browser_at(hub, address), sp, without, requested_context=("exact", [AC_PASSKEY]))
    status, ref = saml_answer(answer, idp_cert)
    assert status.endswith(":NoAuthnContext") and ref is None
    # and the password-only class stays what a password login asserts
    answer = password_login(browser_at(hub, address), sp, without)
    assert saml_answer(answer, idp_cert)[1] == AC_PPT


# --- what is refused ----------------------------------------------------------------------------

@pytest.fixture
def enrolled(hub, sp, address):
    name = new_person()
    authenticator = SoftAuthenticator()
    register_passkey(hub, sp, address, name, authenticator)
    return name, authenticator


def _refused(answer: httpx.Response, reason: str) -> None:
    assert answer.status_code == 401, (answer.status_code, answer.text[-1500:])
    assert "SAMLResponse" not in answer.text and reason in unescape(answer.text), answer.text[-1500:]


def test_replayed_assertion_is_refused(hub, sp, address, enrolled):
    name, authenticator = enrolled
    browser = browser_at(hub, address)
    answer, _, assertion = passwordless(browser, sp, authenticator, hub)
    assert answer.status_code == 200
    # the same answer again, on a new login request of the same browser: its challenge is spent
    page = start_login(browser, sp, force_authn=True)
    again = browser.client.post("/idp/login/passkey", data={"pending": field(page.text, "pending"),
                                                            "credential": json.dumps(assertion)})
    _refused(again, "no open login request")
    # and from another browser
    other = browser_at(hub, address)
    page = start_login(other, sp)
    again = other.client.post("/idp/login/passkey", data={"pending": field(page.text, "pending"),
                                                          "credential": json.dumps(assertion)})
    _refused(again, "no open login request")
    assert stored(name)[0].sign_count == 1


def test_answer_from_another_origin_or_for_another_rp_is_refused(hub, sp, address, enrolled):
    name, authenticator = enrolled
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub, origin="https://phish.example")
    _refused(answer, "origin")
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub, rp_id="phish.example")
    _refused(answer, "RP ID")
    assert stored(name)[0].last_used_at is None
    with session_scope() as db:
        assert accounts.failures(db_session=db, username=name) == 2


def test_passwordless_needs_user_verification(hub, sp, address, enrolled):
    _, authenticator = enrolled
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub, user_verified=False)
    _refused(answer, "User verification is required")


def test_counter_going_back_is_refused_as_a_possible_clone(hub, sp, address, enrolled):
    name, authenticator = enrolled
    before = operations("passkey.clone_suspected")
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub, sign_count=7)
    assert answer.status_code == 200
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub, sign_count=7)
    _refused(answer, "counter went back")
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub, sign_count=3)
    _refused(answer, "counter went back")
    assert operations("passkey.clone_suspected") == before + 2
    with session_scope() as db:  # named by the account's login-name reference, as a wrong password is
        actors = set(db.scalars(select(OperationEntry.actor).where(OperationEntry.action == "passkey.clone_suspected")))
    assert accounts.login_name_ref(username=name) in actors
    assert stored(name)[0].sign_count == 7
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub, sign_count=8)
    assert answer.status_code == 200


def test_another_persons_passkey_is_no_second_factor(hub, sp, address, enrolled):
    _, theirs = enrolled
    mine = new_person()
    own = SoftAuthenticator()
    register_passkey(hub, sp, address, mine, own)
    browser = browser_at(hub, address)
    step = password_login(browser, sp, mine)
    options = options_of(step.text, "/idp/login/passkey")
    assertion = theirs.get(options, origin(hub), credential=theirs.credentials[0])
    answer = browser.client.post("/idp/login/passkey", data={"pending": field(step.text, "pending"),
                                                             "credential": json.dumps(assertion)})
    _refused(answer, "belongs to another account")


def test_unknown_passkey_and_garbage_get_4xx_never_500(hub, sp, address):
    stranger = SoftAuthenticator()
    stranger.create({"rp": {"id": get_settings().webauthn_rp_id}, "user": {"id": "AAAA"},
                     "pubKeyCredParams": [{"alg": -7, "type": "public-key"}], "challenge": "AAAA"}, origin(hub))
    answer, _, _ = passwordless(browser_at(hub, address), sp, stranger, hub)
    _refused(answer, "not registered")
    browser = browser_at(hub, address)
    for junk in ("", "{", "[]", json.dumps({"id": "x", "rawId": "x", "type": "public-key", "response": {}}),
                 json.dumps({"id": "\x00", "rawId": "%%", "type": "public-key",
                             "response": {"clientDataJSON": "!!", "authenticatorData": "", "signature": ""}})):
        page = start_login(browser, sp)
        answer = browser.client.post("/idp/login/passkey", data={"pending": field(page.text, "pending"),
                                                                 "credential": junk})
        assert answer.status_code == 401, (junk, answer.status_code, answer.text[-500:])
    page = start_login(browser, sp)
    answer = browser.client.post("/idp/login/passkey", data={"pending": field(page.text, "pending"),
                                                             "credential": "x" * 70_000})
    assert 400 <= answer.status_code < 500
    # a real assertion whose id is not its rawId: refused before any lookup (PostgreSQL would
    # refuse the NUL itself)
    for bad_id in (lambda i: i + "\x00", lambda i: "A" * 1400, lambda i: i[::-1]):
        page = start_login(browser, sp)
        assertion = stranger.get(options_of(page.text, "/idp/login/passkey"), origin(hub))
        assertion["id"] = bad_id(assertion["id"])
        answer = browser.client.post("/idp/login/passkey", data={"pending": field(page.text, "pending"),
                                                                 "credential": json.dumps(assertion)})
        _refused(answer, "credential id is malformed")


def test_failed_assertions_are_throttled_like_passwords(hub, sp, address, enrolled, monkeypatch):
    name, authenticator = enrolled
    settings = get_settings()
    monkeypatch.setattr(settings, "login_free_failures", 2)
    monkeypatch.setattr(settings, "login_first_delay_seconds", 120.0)
    for _ in range(2):
        answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub, origin="https://evil.example")
        assert answer.status_code == 401
    # the account now waits: even a good passkey answer is turned away, and says for how long
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub)
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 60
    assert operations("passkey.throttled") >= 1
    with session_scope() as db:
        assert accounts.failures(db_session=db, username=name) == 2
        db.query(LoginThrottle).filter(LoginThrottle.key == f"account:{name}").delete()


def test_expired_challenge_is_refused(hub, sp, address, enrolled):
    _, authenticator = enrolled
    browser = browser_at(hub, address)
    page = start_login(browser, sp)
    options = options_of(page.text, "/idp/login/passkey")
    with session_scope() as db:
        row = db.get(PasskeyChallenge, options["challenge"])
        row.expires_at = utcnow()
    assertion = authenticator.get(options, origin(hub))
    answer = browser.client.post("/idp/login/passkey", data={"pending": field(page.text, "pending"),
                                                             "credential": json.dumps(assertion)})
    _refused(answer, "no open login request")


# --- registration refused -----------------------------------------------------------------------

def test_registration_needs_a_session_and_the_forms_token(hub, sp, address):
    anonymous = browser_at(hub, address)
    assert anonymous.client.get("/idp/passkeys").status_code == 401
    assert anonymous.client.post("/idp/passkeys", data={"csrf": "x", "name": "n", "credential": "{}"}).status_code == 401
    name = new_person()
    browser = browser_at(hub, address)
    assert password_login(browser, sp, name).status_code == 200
    page = browser.client.get("/idp/passkeys")
    created = SoftAuthenticator().create(options_of(page.text, "/idp/passkeys"), origin(hub))
    refused = browser.client.post("/idp/passkeys", data={"csrf": "forged", "name": "n",
                                                         "credential": json.dumps(created)})
    assert refused.status_code == 403 and stored(name) == []


def test_a_passkey_is_added_only_after_a_recent_login(hub, sp, address):
    """A browser left logged in, or a stolen session cookie, cannot plant a passkey: adding one
    needs a login within the last 15 minutes; listing and removing do not."""
    from datetime import timedelta

    from idp.models import IdpSession
    from idp.passkey_views import RECENT_LOGIN

    name = new_person()
    browser = browser_at(hub, address)
    assert password_login(browser, sp, name).status_code == 200
    page = browser.client.get("/idp/passkeys")
    created = SoftAuthenticator().create(options_of(page.text, "/idp/passkeys"), origin(hub))
    csrf = field(page.text, "csrf")
    with session_scope() as db:  # the login was 15 minutes and a second ago
        person = accounts.find(db_session=db, username=name)
        db.query(IdpSession).filter(IdpSession.person_key == person.person_key).update(
            {IdpSession.authn_instant: utcnow() - RECENT_LOGIN - timedelta(seconds=1),
             IdpSession.last_seen_at: utcnow()})
    stale = browser.client.get("/idp/passkeys")
    assert stale.status_code == 200 and 'id="passkey-log-in-again"' in stale.text
    assert 'action="/idp/passkeys" data-passkey="create"' not in stale.text  # no form, no challenge
    added_before = operations("passkey.added")
    refused = browser.client.post("/idp/passkeys", data={"csrf": csrf, "name": "planted",
                                                         "credential": json.dumps(created)})
    assert refused.status_code == 403, refused.text[-800:]
    assert "within the last 15 minutes" in refused.text and stored(name) == []
    assert operations("passkey.added") == added_before  # nothing recorded either

    fresh = browser_at(hub, address)  # logging in again is what it asks for
    assert password_login(fresh, sp, name).status_code == 200
    page = fresh.client.get("/idp/passkeys")
    created = SoftAuthenticator().create(options_of(page.text, "/idp/passkeys"), origin(hub))
    saved = fresh.client.post("/idp/passkeys", data={"csrf": field(page.text, "csrf"), "name": "laptop",
                                                     "credential": json.dumps(created)})
    assert saved.status_code == 303 and [p.name for p in stored(name)] == ["laptop"]


@pytest.mark.parametrize("case", ["origin", "rp_id", "no_uv", "bad_name", "long_name", "another_persons",
                                  "twice"])
def test_bad_registrations_are_refused_and_nothing_is_written(hub, sp, address, case):
    name = new_person()
    browser = browser_at(hub, address)
    assert password_login(browser, sp, name).status_code == 200
    page = browser.client.get("/idp/passkeys")
    options = options_of(page.text, "/idp/passkeys")
    authenticator = SoftAuthenticator()
    label, expected = "ok name", 400
    if case == "origin":
        created = authenticator.create(options, "https://phish.example")
    elif case == "rp_id":
        created = authenticator.create(options, origin(hub), rp_id="phish.example")
    elif case == "no_uv":
        created = authenticator.create(options, origin(hub), user_verified=False)
    elif case == "another_persons":  # options made for someone else's session
        other = browser_at(hub, address)
        assert password_login(other, sp, new_person()).status_code == 200
        created = authenticator.create(options_of(other.client.get("/idp/passkeys").text, "/idp/passkeys"),
                                       origin(hub))
    else:
        created = authenticator.create(options, origin(hub))
        label = {"bad_name": "tab\there", "long_name": "x" * 65}.get(case, label)
    answer = browser.client.post("/idp/passkeys", data={"csrf": field(page.text, "csrf"), "name": label,
                                                        "credential": json.dumps(created)})
    if case == "twice":
        assert answer.status_code == 303
        page = browser.client.get("/idp/passkeys")
        answer = browser.client.post("/idp/passkeys", data={"csrf": field(page.text, "csrf"), "name": "again",
                                                            "credential": json.dumps(created)})
        assert answer.status_code == expected and len(stored(name)) == 1
        return
    assert answer.status_code == expected, answer.text[-800:]
    assert "The passkey was not added" in answer.text and stored(name) == []


def test_no_one_removes_another_persons_passkey(hub, sp, address, enrolled):
    owner, _ = enrolled
    target = stored(owner)[0].id
    browser = browser_at(hub, address)
    assert password_login(browser, sp, new_person()).status_code == 200
    page = browser.client.get("/idp/passkeys")
    answer = browser.client.post("/idp/passkeys/remove", data={"csrf": field(page.text, "csrf"), "passkey": target})
    assert answer.status_code == 404 and [p.id for p in stored(owner)] == [target]


def test_the_passkey_script_is_served_for_the_pages_csp(hub):
    script = httpx.get(f"{hub.base_url}/idp/static/passkeys.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "navigator.credentials" in script.text


def test_operator_lists_and_removes_a_lost_passkey(hub, sp, address, enrolled):
    from click.testing import CliRunner

    from renkei.cli import main

    name, authenticator = enrolled
    [passkey] = stored(name)
    listed = CliRunner().invoke(main, ["person", "passkey", "list", "--username", name])
    assert listed.exit_code == 0, listed.output
    assert listed.output.split("\t")[:2] == [str(passkey.id), "laptop"]
    assert listed.output.rstrip().endswith(passkey.aaguid)
    unknown = CliRunner().invoke(main, ["person", "passkey", "remove", "--username", new_person(), str(passkey.id)])
    assert unknown.exit_code != 0 and "no such passkey" in unknown.output and len(stored(name)) == 1
    removed = CliRunner().invoke(main, ["person", "passkey", "remove", "--username", name, str(passkey.id)])
    assert removed.exit_code == 0, removed.output
    assert stored(name) == [] and operations("person.passkey.remove") >= 1
    answer, _, _ = passwordless(browser_at(hub, address), sp, authenticator, hub)
    _refused(answer, "not registered")


def test_challenge_issued_by_one_app_process_is_spent_by_another_once(hub, sp, idp_cert, address, enrolled):
    """Two app processes on one database (as `renkei serve --workers 2` runs): the login page
    from one, the answer to the other; the same answer sent at once, four times, logs in once."""
    from concurrent.futures import ThreadPoolExecutor

    from renkei.app import create_app
    from tests.conftest import listening_socket, port_of, serve_in_thread

    _, authenticator = enrolled
    sock = listening_socket()
    server, thread = serve_in_thread(create_app(get_settings()), sock)
    try:
        browser = browser_at(hub, address)
        page = start_login(browser, sp)
        assertion = json.dumps(authenticator.get(options_of(page.text, "/idp/login/passkey"), origin(hub)))
        second = f"http://127.0.0.1:{port_of(sock)}"
        cookies = dict(browser.client.cookies)

        def post(_):
            with httpx.Client(base_url=second, cookies=cookies, timeout=60) as client:
                return client.post("/idp/login/passkey", data={"pending": field(page.text, "pending"),
                                                               "credential": assertion})

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(post, range(4)))
        winners = [a for a in answers if a.status_code == 200 and "SAMLResponse" in a.text]
        assert len(winners) == 1, [(a.status_code, a.text[-300:]) for a in answers]
        assert saml_answer(winners[0], idp_cert)[1] == AC_PASSKEY
        assert all(400 <= a.status_code < 500 for a in answers if a is not winners[0])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# --- the class and the settings, without a hub ----------------------------------------------------

@pytest.mark.nodb
def test_passkey_class_orders_above_totp_in_every_comparison():
    from idp.saml import AC_REFEDS_MFA, RequestedContext, context_for_level, required_level

    assert context_for_level(None, 3) == AC_PASSKEY
    assert required_level(RequestedContext("exact", [AC_PASSKEY])) == 3
    assert context_for_level(RequestedContext("exact", [AC_PASSKEY]), 2) is None
    assert context_for_level(RequestedContext("exact", [AC_PASSKEY]), 3) == AC_PASSKEY
    assert context_for_level(RequestedContext("minimum", [AC_TIMESYNC]), 3) == AC_PASSKEY
    assert context_for_level(RequestedContext("better", [AC_TIMESYNC]), 2) is None
    assert context_for_level(RequestedContext("better", [AC_TIMESYNC]), 3) == AC_PASSKEY
    assert context_for_level(RequestedContext("exact", [AC_REFEDS_MFA]), 3) == AC_REFEDS_MFA
    assert context_for_level(RequestedContext("maximum", [AC_TIMESYNC]), 3) == AC_TIMESYNC


@pytest.mark.nodb
def test_rp_id_and_origins_follow_the_base_url_unless_set():
    from kernel.settings import Settings

    plain = Settings(base_url="https://Login.Example.JP/hub")
    assert plain.webauthn_rp_id == "login.example.jp" and plain.webauthn_origins == ["https://login.example.jp"]
    local = Settings(base_url="http://localhost:8000")
    assert (local.webauthn_rp_id, local.webauthn_origins) == ("localhost", ["http://localhost:8000"])
    wider = Settings(base_url="https://login.example.jp", passkey_rp_id="example.jp",
                     passkey_origins="https://id.example.jp/, https://login.example.jp")
    assert wider.webauthn_rp_id == "example.jp"
    assert wider.webauthn_origins == ["https://login.example.jp", "https://id.example.jp"]
