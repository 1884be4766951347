"""Passkeys in a real browser: Chromium, driven by Playwright, with its virtual authenticator
(Chrome DevTools Protocol `WebAuthn.addVirtualAuthenticator`: CTAP2, internal, resident keys,
user verification), against `renkei demo` served on localhost (browsers refuse WebAuthn on an
IP address). A person adds a passkey, logs out, and logs in at an agency with the passkey alone
(from the keyboard), or after the password; the agency's demo page shows the assertion's
AuthnContextClassRef. The pages pass axe-core, run their script under the hub's CSP, and the
password path works with JavaScript off."""
from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from idp.saml import AC_PASSKEY, AC_PPT
from tests.test_browser_demo import CHROMIUM, browser, running_demo, wait_until_seeded  # noqa: F401
from tests.test_browser_portal import AXE, _axe, _focus, _tab_to

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]
PASSWORD = "a passkey person's password"
LOGIN_LINK = re.compile("ログイン|log in", re.IGNORECASE)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with running_demo(tmp_path_factory.mktemp("passkey-demo"), host="localhost") as running:
        assert running["hub"].startswith("http://localhost:")
        wait_until_seeded(running)
        yield running


def new_person(demo) -> str:
    """A fresh account in the demo's database (each test its own: xdist may split the module)."""
    name = f"pk{uuid.uuid4().hex[:8]}"
    result = subprocess.run([str(Path(sys.executable).with_name("renkei")), "person", "add", "--username", name,
                             "--password-stdin"], input=PASSWORD + "\n", env=demo["env"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return name


def with_authenticator(context):
    """A page with a virtual platform authenticator (it lives as long as the page)."""
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})
    return page, cdp, added["authenticatorId"]


def to_idp_login(page, agency: str) -> None:
    page.goto(agency + "/")
    page.get_by_role("link", name=LOGIN_LINK).first.click()
    page.wait_for_url(re.compile(r"/idp/login"))


def password(page, name: str) -> None:
    page.get_by_label(re.compile("Username")).fill(name)
    page.get_by_label(re.compile("Password")).fill(PASSWORD)
    page.get_by_role("button", name="ログイン / Log in", exact=True).click()


def class_ref_at(page, agency: str) -> str:
    """The AuthnContextClassRef the agency's page shows for its login."""
    page.wait_for_url(agency + "/**")
    return page.locator("dt", has_text="AuthnContextClassRef").locator("xpath=following-sibling::dd[1]").inner_text()


def add_passkey(page, hub: str, label: str) -> None:
    """At /idp/passkeys, from the keyboard: Tab to the name, type it, Enter."""
    page.goto(hub + "/idp/passkeys")
    _tab_to(page, lambda f: f["id"] == "passkey-name")
    page.keyboard.type(label)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/idp/passkeys\?saved=1"))
    assert page.get_by_role("cell", name=label, exact=True).count() == 1


def log_out(page, hub: str) -> None:
    page.goto(hub + "/idp/logout")
    page.get_by_role("button", name=re.compile("Log out of Renkei only")).click()
    page.wait_for_load_state()
    assert "You are logged out" in page.content()


def test_add_a_passkey_then_log_in_with_it_alone_at_an_agency(demo, browser):  # noqa: F811
    name = new_person(demo)
    context = browser.new_context()  # the hub's own CSP applies: passkeys.js must run under it
    page, cdp, authenticator = with_authenticator(context)
    city_a, city_b = demo["agencies"]["city-a"], demo["agencies"]["city-b"]
    to_idp_login(page, city_a)
    password(page, name)
    assert class_ref_at(page, city_a) == AC_PPT
    add_passkey(page, demo["hub"], "仮想の鍵")
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert credential["isResidentCredential"] and credential["rpId"] == "localhost"
    log_out(page, demo["hub"])
    # another agency, no IdP session: the passkey button, reached and pressed from the keyboard
    to_idp_login(page, city_b)
    focus = _tab_to(page, lambda f: f["tag"] == "button" and "Log in with a passkey" in f["text"])
    assert focus["outline"] != "none"
    page.keyboard.press("Enter")
    assert class_ref_at(page, city_b) == AC_PASSKEY
    used = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"][0]
    assert used["signCount"] > credential["signCount"]
    context.close()


def test_passkey_as_the_second_factor_after_the_password(demo, browser):  # noqa: F811
    name = new_person(demo)
    context = browser.new_context()
    page, _, _ = with_authenticator(context)
    insurer = demo["agencies"]["insurer"]
    to_idp_login(page, insurer)
    password(page, name)
    assert class_ref_at(page, insurer) == AC_PPT
    add_passkey(page, demo["hub"], "laptop")
    log_out(page, demo["hub"])
    to_idp_login(page, demo["agencies"]["power"])
    password(page, name)
    page.wait_for_url(re.compile(r"/idp/login$"))
    assert page.get_by_role("heading", name=re.compile("Confirm it is you")).is_visible()
    page.get_by_role("button", name=re.compile("Use a passkey")).click()
    assert class_ref_at(page, demo["agencies"]["power"]) == AC_PASSKEY
    context.close()


def test_passkey_pages_pass_axe(demo, browser):  # noqa: F811
    if not AXE.exists():
        pytest.skip("axe-core is not installed: run `npm ci --prefix tests/assets`")
    name = new_person(demo)
    context = browser.new_context(bypass_csp=True)  # for axe's own script
    page, _, _ = with_authenticator(context)
    found = {}
    to_idp_login(page, demo["agencies"]["city-a"])
    assert page.get_by_role("button", name=re.compile("Log in with a passkey")).is_visible()
    found["login"] = _axe(page)
    password(page, name)
    page.wait_for_url(demo["agencies"]["city-a"] + "/**")
    page.goto(demo["hub"] + "/idp/passkeys")
    found["passkeys-empty"] = _axe(page)
    add_passkey(page, demo["hub"], "key one")
    found["passkeys-listed"] = _axe(page)
    log_out(page, demo["hub"])
    to_idp_login(page, demo["agencies"]["city-b"])
    password(page, name)
    page.get_by_role("button", name=re.compile("Use a passkey")).wait_for()
    found["second-step"] = _axe(page)
    assert not any(found.values()), found
    context.close()


def test_failed_passkey_prompt_is_announced_and_the_password_still_works(demo, browser):  # noqa: F811
    name = new_person(demo)
    context = browser.new_context()
    page, _, _ = with_authenticator(context)  # an authenticator holding no passkey for the hub
    city_a = demo["agencies"]["city-a"]
    to_idp_login(page, city_a)
    page.get_by_role("button", name=re.compile("Log in with a passkey")).click()
    alert = page.locator("[data-passkey-error]")
    alert.wait_for(state="visible", timeout=30_000)
    assert alert.get_attribute("role") == "alert" and "passkey" in alert.inner_text()
    assert _focus(page)["tag"] == "button"
    password(page, name)
    assert class_ref_at(page, city_a) == AC_PPT
    context.close()


def test_password_login_works_without_javascript(demo, browser):  # noqa: F811
    name = new_person(demo)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    city_b = demo["agencies"]["city-b"]
    to_idp_login(page, city_b)
    assert not page.get_by_role("button", name=re.compile("Log in with a passkey")).is_visible()
    password(page, name)
    page.get_by_role("button", name=re.compile("Continue")).click()  # the POST binding, by hand
    assert class_ref_at(page, city_b) == AC_PPT
    context.close()
