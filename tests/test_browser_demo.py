"""The demo federation in a real browser: Chromium, driven by Playwright, logs a person into
two demo agencies through the IdP's login page and reads the pseudonym each agency sees."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from idp.accounts import totp
from tests.conftest import demo_on_free_ports, demo_urls

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


@contextmanager
def running_demo(tmp: Path, host: str | None = None) -> Iterator[dict]:
    """`renkei demo` as a subprocess on free ports, with its printed URLs and passwords."""
    config_path, config, demo_env = demo_on_free_ports(tmp, host)
    env = {**os.environ, **demo_env}
    log = tmp / "demo.log"
    # the child writes through its own file description and this test reads through another:
    # one shared description would share its offset, and a seek to 0 here would make the
    # demo's next line overwrite the start of the log
    with log.open("w") as child_out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("renkei")), "demo", "--config",
                                 str(config_path)], stdout=child_out, stderr=subprocess.STDOUT, env=env)
    out = log.open(encoding="utf-8")
    deadline = time.monotonic() + 60
    urls = None
    while time.monotonic() < deadline and proc.poll() is None:
        out.seek(0)
        urls = urls or demo_urls(out.read(), config)  # the ports the demo bound, as it printed them
        try:
            if urls and all(httpx.get(u + "/metadata").status_code == 200 for u in urls[1].values()):
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        out.seek(0)
        proc.kill()
        pytest.fail("the demo did not start:\n" + out.read())
    hub, agencies = urls
    out.seek(0)
    printed = out.read()
    passwords = dict(re.findall(r"^  (\w+) / (\S+)", printed, re.MULTILINE))
    secrets = dict(re.findall(r"^  (\w+) / \S+\s+TOTP secret (\w+)", printed, re.MULTILINE))
    try:
        yield {"hub": hub, "agencies": agencies, "passwords": passwords, "totp": secrets, "printed": printed,
               "tmp": tmp, "env": env}
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with running_demo(tmp_path_factory.mktemp("demo")) as running:
        yield running


def wait_until_seeded(running: dict, timeout: float = 90) -> None:
    """Until the demo's first run has left its scenarios' exchanges in the history: before
    that its seeding (scenarios, the moving process) competes with a test for the database."""
    log = running["tmp"] / "demo.log"
    deadline = time.monotonic() + timeout
    while "stops everything" not in log.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, "the demo never finished seeding:\n" + log.read_text(encoding="utf-8")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # the demo binds IPv4 only; `localhost` (the passkey tests' host) resolves to ::1 first,
        # where another test's server may hold the same port number: ask 127.0.0.1 alone
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP localhost 127.0.0.1"])
        yield b
        b.close()


def test_demo_prints_urls_and_people(demo):
    assert demo["hub"] in demo["printed"]
    assert all(url in demo["printed"] for url in demo["agencies"].values())
    assert set(demo["passwords"]) == {"taro", "hanako", "jiro"} and "hanako" in demo["totp"]


def test_person_logs_into_two_agencies_and_each_sees_its_own_pseudonym(demo, browser):
    page = browser.new_context().new_page()
    page.goto(demo["agencies"]["city-a"] + "/")
    page.get_by_role("link", name=re.compile("ログイン|log in", re.IGNORECASE)).first.click()
    page.wait_for_url(re.compile(r"/idp/login"))
    # the login form is labelled and autocompletes as password managers expect
    assert page.get_by_label(re.compile("Username")).get_attribute("autocomplete") == "username"
    assert page.get_by_label(re.compile("Password")).get_attribute("autocomplete") == "current-password"
    page.get_by_label(re.compile("Username")).fill("taro")
    page.get_by_label(re.compile("Password")).fill(demo["passwords"]["taro"])
    page.get_by_role("button", name=re.compile("Log in")).click()
    page.wait_for_url(demo["agencies"]["city-a"] + "/**")
    page.screenshot(path=os.environ.get("RENKEI_SCREENSHOT", str(demo["tmp"] / "city-a.png")), full_page=True)
    seen_a = re.search(r"[a-z2-7]{52}@[\w.-]+", page.content()).group(0)
    # the second agency: the IdP session is reused, no password asked
    page.goto(demo["agencies"]["city-b"] + "/")
    page.get_by_role("link", name=re.compile("ログイン|log in", re.IGNORECASE)).first.click()
    page.wait_for_url(demo["agencies"]["city-b"] + "/**")
    seen_b = re.search(r"[a-z2-7]{52}@[\w.-]+", page.content()).group(0)
    assert seen_a != seen_b
    assert "PasswordProtectedTransport" in page.content()


def test_totp_person_gets_the_stronger_context(demo, browser):
    page = browser.new_context().new_page()
    page.goto(demo["agencies"]["insurer"] + "/")
    page.get_by_role("link", name=re.compile("ログイン|log in", re.IGNORECASE)).first.click()
    page.get_by_label(re.compile("Username")).fill("hanako")
    page.get_by_label(re.compile("Password")).fill(demo["passwords"]["hanako"])
    page.get_by_role("button", name=re.compile("Log in")).click()
    page.get_by_label(re.compile("Code")).fill(totp(demo["totp"]["hanako"]))
    page.get_by_role("button", name=re.compile("Verify")).click()
    page.wait_for_url(demo["agencies"]["insurer"] + "/**")
    assert "TimeSyncToken" in page.content()


def test_wrong_password_is_announced(demo, browser):
    page = browser.new_context().new_page()
    page.goto(demo["agencies"]["power"] + "/")
    page.get_by_role("link", name=re.compile("ログイン|log in", re.IGNORECASE)).first.click()
    page.get_by_label(re.compile("Username")).fill("taro")
    page.get_by_label(re.compile("Password")).fill("not the password")
    page.get_by_role("button", name=re.compile("Log in")).click()
    alert = page.get_by_role("alert")
    assert "wrong password" in alert.inner_text()


def test_visitor_runs_the_three_lookups_from_the_agency_page(demo, browser):
    """From 転入先's page: a permitted lookup (with the provider's record), one refused for lack
    of a whitelist entry, one refused because the person said no."""
    page = browser.new_context().new_page()
    city_b = demo["agencies"]["city-b"]
    page.goto(city_b + "/")
    page.get_by_role("link", name=re.compile("ログイン|log in", re.IGNORECASE)).first.click()
    page.get_by_label(re.compile("Username")).fill("taro")
    page.get_by_label(re.compile("Password")).fill(demo["passwords"]["taro"])
    page.get_by_role("button", name=re.compile("Log in")).click()
    page.wait_for_url(city_b + "/**")
    outcomes = {}
    for title, reason in (("resident record", "PERMITTED_BY_CONSENT"), ("not in the law", "NO_WHITELIST_ENTRY"),
                          ("the person said no", "DENIED_BY_PERSON")):
        page.goto(city_b + "/")
        page.get_by_role("button", name=re.compile(re.escape(title))).click()
        page.wait_for_load_state()
        outcomes[reason] = page.content()
        assert reason in outcomes[reason]
    assert "山田 太郎" in outcomes["PERMITTED_BY_CONSENT"]
    assert "山田 太郎" not in outcomes["DENIED_BY_PERSON"]
    page.screenshot(path=str(demo["tmp"] / "lookup.png"), full_page=True)
