"""The IdP's login under attack, over real HTTP: parallel guessing, account enumeration, a
throttle per account and per client address (NIST SP 800-63B §5.2.2), TOTP codes used once
(RFC 6238 §5.2) and sealed at rest, and sessions (re-login, logout CSRF, idle timeout).

Each test speaks from its own loopback address (127.0.0.x) so that its throttle state is its
own; the hub sees the TCP peer as the client address."""
from __future__ import annotations

import re
import statistics
import threading
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from argon2 import PasswordHasher
from lxml import etree
from sqlalchemy import select

from idp import accounts
from idp.models import IdpSession, LoginThrottle, Person
from kernel.db import session_scope, utcnow
from kernel.keys import keystore
from kernel.settings import get_settings
from tests.saml_sp import Browser, TestSP, response_from_page

TOTP_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"


def wait_for(condition, timeout: float = 15.0, every: float = 0.05):
    """Poll until `condition()` returns something truthy; that value, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("the condition did not hold in time")


def browser_from(hub, address: str) -> Browser:
    """A browser whose TCP connections come from `address` (any 127.0.0.0/8 address works)."""
    browser = Browser(hub.base_url)
    browser.client = httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=60,
                                  transport=httpx.HTTPTransport(local_address=address))
    return browser


@pytest.fixture(scope="module")
def sp(hub, tmp_path_factory):
    from click.testing import CliRunner

    from renkei.cli import main

    sp = TestSP("https://login-hardening.example.jp/sp", "https://login-hardening.example.jp")
    path = tmp_path_factory.mktemp("sp") / "md.xml"
    path.write_bytes(sp.metadata())
    result = CliRunner().invoke(main, ["agency", "add", "--metadata", str(path), "--class", "municipality"])
    assert result.exit_code == 0, result.output
    return sp


@pytest.fixture
def person(hub):
    """A fresh account (username, password); with a TOTP secret when the test asks `totp_person`."""
    name, password = f"p-{uuid.uuid4().hex[:8]}", "a good long password"
    with session_scope() as db:
        accounts.add_person(db_session=db, username=name, password=password)
    return name, password


@pytest.fixture
def totp_person(hub):
    name, password = f"t-{uuid.uuid4().hex[:8]}", "a good long password"
    with session_scope() as db:
        accounts.add_person(db_session=db, username=name, password=password, totp_secret=TOTP_SECRET)
    return name, password


@pytest.fixture
def limits(hub, monkeypatch):
    """Set login and session limits on the hub's live settings for one test."""
    settings = get_settings()

    def set_(**values):
        for name, value in values.items():
            monkeypatch.setattr(settings, name, value)

    yield set_
    with session_scope() as db:  # leave no throttle behind for other tests on this hub
        db.query(LoginThrottle).filter(LoginThrottle.key.like("address:127.0.0.%")).filter(
            LoginThrottle.key != "address:127.0.0.1").delete(synchronize_session=False)


def pending_login(browser: Browser, sp: TestSP, *, force_authn: bool = False) -> str:
    """Start an SP-initiated SSO and open the login form; the pending-request token."""
    _, root = sp.authn_request(f"{browser.hub_url}/idp/sso", force_authn=force_authn)
    first = browser.start(sp, etree.tostring(root))
    assert first.status_code == 303, first.text[-500:]
    page = browser.client.get(first.headers["location"].removeprefix(browser.hub_url))
    assert page.status_code == 200
    return re.search(r'name="pending" value="([^"]+)"', page.text).group(1)


def submit(browser: Browser, pending: str, username: str, password: str) -> httpx.Response:
    return browser.client.post("/idp/login", data={"pending": pending, "username": username, "password": password})


def failures_of(**who) -> int:
    with session_scope() as db:
        return accounts.failures(db_session=db, **who)


# --- the throttle ----------------------------------------------------------------------------

def test_parallel_wrong_guesses_all_count_and_throttle_the_account(hub, sp, person, limits):
    name, password = person
    # An account from before today's argon2 parameters: its hash is cheap to verify, so fifty
    # guesses do not starve the other tests of CPU (a login upgrades it, checked below).
    legacy = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    with session_scope() as db:
        db.scalar(select(Person).where(Person.username == name)).password_hash = legacy.hash(password)
    # room for exactly 50 failures before the delay starts, so every parallel guess must count
    limits(login_free_failures=50, login_address_free_failures=1000, login_first_delay_seconds=3.0)
    browser = browser_from(hub, "127.0.0.2")
    pending = pending_login(browser, sp)
    start = threading.Barrier(50)
    codes: list[int] = []

    def guess(i: int) -> None:
        with httpx.Client(base_url=hub.base_url, timeout=60,
                          transport=httpx.HTTPTransport(local_address="127.0.0.2")) as client:
            start.wait()
            r = client.post("/idp/login", data={"pending": pending, "username": name, "password": f"wrong {i}"},
                            headers={"cookie": f"renkei_pending={pending}"})
            codes.append(r.status_code)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(50)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"50 parallel wrong guesses answered in {time.monotonic() - began:.1f} s")
    assert sorted(codes) == [401] * 50
    assert failures_of(username=name) == 50
    assert failures_of(client_address="127.0.0.2") == 50
    # throttled now: even the right password is refused until the delay has passed
    refused = submit(browser, pending, name, password)
    assert refused.status_code == 429, refused.text[-400:]
    assert int(refused.headers["retry-after"]) >= 1
    assert "SAMLResponse" not in refused.text
    accepted = wait_for(lambda: (r := submit(browser, pending, name, password)).status_code != 429 and r)
    assert accepted.status_code == 200 and "SAMLResponse" in accepted.text
    assert failures_of(username=name) == 0  # a success forgets the account's failures...
    assert failures_of(client_address="127.0.0.2") == 50  # ...but not the address's
    with session_scope() as db:
        upgraded = db.scalar(select(Person).where(Person.username == name)).password_hash
    assert not PasswordHasher().check_needs_rehash(upgraded)  # the login upgraded the legacy hash


def _normalised(response: httpx.Response, username: str, pending: str) -> str:
    text = response.text.replace(username, "USER").replace(pending, "PENDING")
    # fresh on every page whoever asks: the script nonce and the passkey button's challenge
    text = re.sub(r'(nonce|data-options)="[^"]*"', r'\1="RANDOM"', text)
    return re.sub(r"\d+ (秒|seconds)", r"N \1", text)


def test_unknown_and_known_usernames_get_identical_answers(hub, sp, person, limits):
    name, password = person
    unknown = f"p-{uuid.uuid4().hex[:8]}"  # shaped like a real one, but no account
    limits(login_free_failures=3, login_address_free_failures=1000, login_first_delay_seconds=60.0)
    browser = browser_from(hub, "127.0.0.3")
    pending = pending_login(browser, sp)
    timings: dict[str, list[float]] = {name: [], unknown: []}
    answers: dict[str, list[tuple[int, str | None, str]]] = {name: [], unknown: []}
    for attempt in range(5):
        for who in (name, unknown):
            began = time.perf_counter()
            r = submit(browser, pending, who, f"wrong guess {attempt}")
            timings[who].append(time.perf_counter() - began)
            answers[who].append((r.status_code, r.headers.get("retry-after"), _normalised(r, who, pending)))
    assert [a[0] for a in answers[name]] == [401, 401, 401, 429, 429]
    assert [(a[0], a[2]) for a in answers[name]] == [(a[0], a[2]) for a in answers[unknown]]
    # the waits are the same but for the second that passed between the two answers
    for known_answer, unknown_answer in zip(answers[name], answers[unknown], strict=True):
        assert (known_answer[1] is None) == (unknown_answer[1] is None)
        if known_answer[1] is not None:
            assert abs(int(known_answer[1]) - int(unknown_answer[1])) <= 2
    # the right password of the real account gets the throttled answer too
    right = submit(browser, pending, name, password)
    assert (right.status_code, _normalised(right, name, pending)) == (429, answers[unknown][-1][2])
    assert "retry-after" in right.headers
    # an unknown name costs an argon2 verify too: the same order of magnitude of time
    known_t, unknown_t = (statistics.median(timings[w][:3]) for w in (name, unknown))
    assert max(known_t, unknown_t) / min(known_t, unknown_t) < 5, (known_t, unknown_t)


def test_client_addresses_are_throttled_independently(hub, sp, person, limits):
    name, password = person
    limits(login_free_failures=1000, login_address_free_failures=3, login_first_delay_seconds=60.0)
    guesser = browser_from(hub, "127.0.0.4")
    pending = pending_login(guesser, sp)
    # three wrong guesses on three names: no account is near its limit, the address is
    for i in range(3):
        assert submit(guesser, pending, f"nobody-{i}-{uuid.uuid4().hex[:6]}", "wrong").status_code == 401
    throttled = submit(guesser, pending, name, password)
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 1
    assert failures_of(client_address="127.0.0.4") == 3 and failures_of(username=name) == 0
    # another address is not slowed by the first one's failures
    other = browser_from(hub, "127.0.0.5")
    pending = pending_login(other, sp)
    assert submit(other, pending, f"nobody-{uuid.uuid4().hex[:6]}", "wrong").status_code == 401
    done = submit(other, pending, name, password)
    assert done.status_code == 200 and "SAMLResponse" in done.text


@pytest.mark.parametrize("username", ["ali\x00ce", "x" * 129, "tab\tname", "a\u2028b"])
def test_bad_usernames_get_the_wrong_password_answer(hub, sp, person, limits, username):
    limits()
    browser = browser_from(hub, "127.0.0.7")
    pending = pending_login(browser, sp)
    unknown = submit(browser, pending, f"p-{uuid.uuid4().hex[:8]}", "whatever")
    r = submit(browser, pending, username, "whatever")
    assert r.status_code == 401, r.text[-400:]
    assert "Unknown username or wrong password" in r.text
    assert r.text.count("Unknown username or wrong password") == unknown.text.count("Unknown username or wrong password")


# --- TOTP ---------------------------------------------------------------------------------------

def _password_step(browser: Browser, sp: TestSP, name: str, password: str) -> str:
    pending = pending_login(browser, sp)
    page = submit(browser, pending, name, password)
    assert page.status_code == 200 and 'action="/idp/login/totp"' in page.text, page.text[-400:]
    return pending


def _code(browser: Browser, pending: str, code: str) -> httpx.Response:
    return browser.client.post("/idp/login/totp", data={"pending": pending, "code": code})


def test_a_totp_code_is_accepted_once(hub, sp, totp_person, limits):
    limits()
    name, password = totp_person
    code = accounts.totp(TOTP_SECRET)
    first = browser_from(hub, "127.0.0.6")
    done = _code(first, _password_step(first, sp, name, password), code)
    assert done.status_code == 200 and "SAMLResponse" in done.text
    _, response, _ = response_from_page(done.text)
    assert "TimeSyncToken" in etree.tostring(response).decode()
    # the same code again, from another browser, while it is still inside its window
    second = browser_from(hub, "127.0.0.6")
    again = _code(second, _password_step(second, sp, name, password), code)
    assert again.status_code == 401 and "SAMLResponse" not in again.text


def test_a_concurrent_double_submit_of_one_code_logs_in_once(hub, sp, totp_person, limits):
    limits()
    name, password = totp_person
    browsers = [browser_from(hub, "127.0.0.6") for _ in range(2)]
    pendings = [_password_step(b, sp, name, password) for b in browsers]
    code = accounts.totp(TOTP_SECRET, time.time() + 30)  # the next step: still in the window
    start = threading.Barrier(2)
    codes: list[int] = []

    def send(i: int) -> None:
        start.wait()
        codes.append(_code(browsers[i], pendings[i], code).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 401]


def test_totp_secrets_are_sealed_at_rest(hub, totp_person):
    name, _ = totp_person
    with session_scope() as db:
        row = db.scalar(select(Person).where(Person.username == name))
        assert TOTP_SECRET not in row.totp_secret and row.totp_secret.startswith("v")
        assert accounts.totp_secret_of(keys=keystore(), person=row) == TOTP_SECRET
        # bound to its person: the same seal under another person's key does not open
        with pytest.raises(accounts.AccountError):
            accounts.open_totp_secret(keys=keystore(), person_key="someone-else", sealed=row.totp_secret)


def test_totp_uri_quotes_its_label():
    uri = accounts.totp_uri(TOTP_SECRET, "yamada taro:x@y&issuer=Evil", issuer="Renkei Hub")
    assert uri.startswith("otpauth://totp/Renkei%20Hub:yamada%20taro%3Ax%40y%26issuer%3DEvil?")
    assert "issuer=Renkei+Hub" in uri and "issuer=Evil" not in uri


def test_migration_seals_existing_totp_secrets(hub, tmp_path):
    from alembic import command
    from sqlalchemy import text

    from kernel.db import alembic_config, make_engine
    from tests.conftest import fresh_database_url

    url = fresh_database_url(tmp_path, "mig_login")
    cfg = alembic_config(url)
    command.upgrade(cfg, "0004_discovery")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO persons (person_key, username, display_name, password_hash, totp_secret,"
            " failed_logins, created_at) VALUES ('pk-1', 'old', 'old', 'x', :s, 0, :now)"
        ), {"s": TOTP_SECRET, "now": utcnow()})
    command.upgrade(cfg, "0006_login_hardening")
    with engine.connect() as conn:
        sealed = conn.execute(text("SELECT totp_secret FROM persons WHERE person_key = 'pk-1'")).scalar_one()
    assert sealed != TOTP_SECRET
    seed = accounts.open_totp_secret(keys=keystore(), person_key="pk-1", sealed=sealed)
    assert accounts.totp_secret_of(keys=keystore(), person=Person(person_key="pk-1", totp_secret=sealed)) == \
        TOTP_SECRET and len(seed) == 20
    # the tables of this revision agree with the models
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from kernel.db import Base

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    ours = ("'persons'", "'idp_sessions'", "'login_throttles'")
    assert [d for d in diff if any(table in repr(d) for table in ours)] == []
    command.downgrade(cfg, "0004_discovery")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT totp_secret FROM persons WHERE person_key = 'pk-1'")).scalar_one() == \
            TOTP_SECRET
    engine.dispose()


# --- sessions -----------------------------------------------------------------------------------

def _log_in(browser: Browser, sp: TestSP, name: str, password: str, *, force_authn: bool = False) -> str:
    done = submit(browser, pending_login(browser, sp, force_authn=force_authn), name, password)
    assert done.status_code == 200 and "SAMLResponse" in done.text, done.text[-400:]
    return browser.client.cookies["renkei_idp"]


def _sso_with(hub, sp: TestSP, cookie: str) -> int:
    """Status of a fresh SSO carrying only this session cookie: 200 answered, 303 must log in."""
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    with httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=30) as client:
        return client.get("/idp/sso?" + sp.redirect_query(etree.tostring(root)),
                          headers={"cookie": f"renkei_idp={cookie}"}).status_code


def test_force_authn_as_another_person_ends_the_earlier_session(hub, sp, limits):
    limits()
    with session_scope() as db:
        for who in ("first", "second"):
            accounts.add_person(db_session=db, username=f"{who}-{sp.entity_id[-6:]}-{uuid.uuid4().hex[:6]}",
                                password="a good long password")
        names = [p.username for p in db.scalars(select(Person).order_by(Person.id.desc()).limit(2))]
    browser = browser_from(hub, "127.0.0.8")
    old = _log_in(browser, sp, names[1], "a good long password")
    assert _sso_with(hub, sp, old) == 200
    new = _log_in(browser, sp, names[0], "a good long password", force_authn=True)
    assert new != old
    assert _sso_with(hub, sp, old) == 303  # the first person's session is gone
    assert _sso_with(hub, sp, new) == 200


def test_logout_needs_a_post_with_the_csrf_token(hub, sp, person, limits):
    limits()
    name, password = person
    browser = browser_from(hub, "127.0.0.9")
    cookie = _log_in(browser, sp, name, password)
    form = browser.client.get("/idp/logout")
    assert form.status_code == 200 and 'method="post"' in form.text
    assert _sso_with(hub, sp, cookie) == 200  # a GET (a link, an image) logs nobody out
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    forged = browser.client.post("/idp/logout", data={"csrf": "0" * len(csrf)})
    assert forged.status_code == 403
    assert browser.client.post("/idp/logout").status_code == 403
    assert _sso_with(hub, sp, cookie) == 200
    done = browser.client.post("/idp/logout", data={"csrf": csrf})
    assert done.status_code == 200 and "Logged out" in done.text
    assert _sso_with(hub, sp, cookie) == 303


def test_an_idle_session_ends(hub, sp, person, limits):
    name, password = person
    limits(session_idle_seconds=1)
    browser = browser_from(hub, "127.0.0.10")
    cookie = _log_in(browser, sp, name, password)
    assert _sso_with(hub, sp, cookie) == 200
    wait_for(lambda: _sso_with(hub, sp, cookie) == 303)


def test_use_refreshes_the_idle_clock_at_most_once_a_minute(hub, sp, person, limits):
    name, password = person
    limits(session_idle_seconds=600)
    browser = browser_from(hub, "127.0.0.11")
    cookie = _log_in(browser, sp, name, password)
    from idp.service import _hash

    def seen():
        with session_scope() as db:
            return db.get(IdpSession, _hash(cookie)).last_seen_at

    assert _sso_with(hub, sp, cookie) == 200
    assert seen() is None  # used within the minute: no write
    with session_scope() as db:  # as if the last use was five minutes ago
        row = db.get(IdpSession, _hash(cookie))
        row.authn_instant = row.authn_instant - timedelta(minutes=5)
    assert _sso_with(hub, sp, cookie) == 200
    assert seen() is not None and utcnow() - seen() < timedelta(seconds=30)
    with session_scope() as db:  # eleven idle minutes: past the 600 s
        row = db.get(IdpSession, _hash(cookie))
        row.last_seen_at = utcnow() - timedelta(minutes=11)
    assert _sso_with(hub, sp, cookie) == 303


def test_housekeeping_forgets_old_failures_and_idle_sessions(hub):
    from idp import service

    settings = get_settings()
    with session_scope() as db:
        token = service.start_session(db_session=db, settings=settings, person_key="idle-sweep", level=1)
        db.add(LoginThrottle(key="address:192.0.2.1", failures=7,
                             last_failure_at=utcnow() - timedelta(seconds=settings.login_failure_window_seconds + 5)))
        db.add(LoginThrottle(key="address:192.0.2.2", failures=7, last_failure_at=utcnow()))
    later = utcnow() + timedelta(seconds=settings.session_idle_seconds + 1)
    with session_scope() as db:
        service.expire_housekeeping(db_session=db, now=later)
    with session_scope() as db:
        assert db.get(IdpSession, service._hash(token)) is None
        assert db.get(LoginThrottle, "address:192.0.2.1") is None
        assert db.get(LoginThrottle, "address:192.0.2.2") is not None
        db.query(LoginThrottle).filter_by(key="address:192.0.2.2").delete()
