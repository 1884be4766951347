"""The citizen portal in a real browser: Chromium, driven by Playwright, against `renkei demo`.
A person logs in by SSO, every page in the menu passes axe-core (no serious or critical
violation) and is photographed, the policy page works from the keyboard alone with a visible
focus, a refusal set in the portal stops the agency's lookup and shows up in the history, the
English pages and the downloads are right, and no page scrolls sideways at 200 % zoom."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_browser_demo import CHROMIUM, browser, demo, wait_until_seeded  # noqa: F401  (module fixtures)

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "tests" / "assets" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "test-artifacts" / "portal"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]
# every page taro reaches from the portal's menu (the consent record from the policy page, and
# one receipt from the consent record)
MENU = {"overview": "/portal/", "data": "/portal/data", "history": "/portal/history",
        "policy": "/portal/policy", "consent": "/portal/consent", "notices": "/portal/notices",
        "representatives": "/portal/representatives", "procedures": "/portal/procedures"}


@pytest.fixture(scope="module")
def portal_demo(demo):  # noqa: F811
    """The demo once its first run has left its scenarios' exchanges in the history."""
    wait_until_seeded(demo)
    return demo


def _log_in(running, context, next_path: str = "/portal/"):
    """SSO into the portal: the portal sends the browser to the IdP's form, which sends it back."""
    page = context.new_page()
    page.goto(running["hub"] + next_path)
    page.wait_for_url(re.compile(r"/idp/login"))
    page.get_by_label(re.compile("Username")).fill("taro")
    page.get_by_label(re.compile("Password")).fill(running["passwords"]["taro"])
    page.get_by_role("button", name=re.compile("Log in")).click()
    page.wait_for_url(re.compile(re.escape(running["hub"]) + r"/portal/"))
    return page


def _pages(page, running) -> dict[str, str]:
    """The menu's pages and one consent receipt, as reached by following the portal's links."""
    paths = dict(MENU)
    page.goto(running["hub"] + "/portal/")
    nav = page.get_by_role("navigation")
    hrefs = {a.get_attribute("href") for a in nav.get_by_role("link").all()}
    assert set(MENU.values()) - {"/portal/consent"} <= hrefs, hrefs  # each page is in the menu
    page.goto(running["hub"] + "/portal/policy")  # the consent record is reached from the policy page
    assert page.locator("main a[href='/portal/consent']").count() == 1
    page.goto(running["hub"] + "/portal/consent")
    receipt = page.locator("table.consent-record a", has_text=re.compile("読む|Read")).first
    paths["receipt"] = receipt.get_attribute("href")
    return paths


def _axe(page) -> list[dict]:
    """axe-core's violations of impact serious or critical on the page as it stands."""
    page.evaluate(AXE.read_text(encoding="utf-8"))  # the context bypasses CSP for this one script
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


def _focus(page) -> dict:
    """What has the keyboard focus, and whether its outline shows."""
    return page.evaluate("""() => {
        const el = document.activeElement, style = getComputedStyle(el);
        return {tag: el.tagName.toLowerCase(), id: el.id, type: el.type || '', text: (el.innerText || '').trim(),
                outline: style.outlineStyle, outlineWidth: parseFloat(style.outlineWidth) || 0};
    }""")


def _tab_to(page, wanted, limit: int = 400) -> dict:
    """Press Tab until `wanted(focus)` holds, asserting each focused control shows its focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focus = _focus(page)
        if focus["tag"] != "body":
            assert focus["outline"] != "none" and focus["outlineWidth"] > 0, f"focus not visible on {focus}"
        if wanted(focus):
            return focus
    pytest.fail(f"Tab never reached the control (last focus {focus})")


def _resident_record_entry(page) -> str:
    """The policy row id of 転入先 asking for the resident record (JUMINHYO)."""
    row = page.locator("table.policy tbody tr", has_text="JUMINHYO").first
    return row.get_attribute("id").removeprefix("entry-")


def _set_allow(page, running, entry: str) -> None:
    """Put taro's demo rule back (allow), by mouse: the next test starts where the demo did."""
    page.goto(running["hub"] + "/portal/policy")
    page.locator(f"#allow-{entry}").check()
    page.locator(f"#entry-{entry} button").click()
    page.get_by_role("button", name=re.compile("保存する|Save")).click()
    page.wait_for_url(re.compile(r"/portal/consent/.+\?saved=1"))


def test_every_menu_page_passes_axe_and_is_photographed(portal_demo, browser):  # noqa: F811
    if not AXE.exists():
        pytest.skip("axe-core is not installed: run `npm ci --prefix tests/assets`")
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = _log_in(portal_demo, context)
    SHOTS.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, path in _pages(page, portal_demo).items():
        response = page.goto(portal_demo["hub"] + path)
        assert response.status == 200, (name, response.status)
        assert "no-store" in response.headers.get("cache-control", ""), name
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        if violations := _axe(page):
            found[name] = violations
    assert not found, json.dumps(found, ensure_ascii=False, indent=1)
    context.close()


def test_policy_page_works_from_the_keyboard_alone_with_visible_focus(portal_demo, browser):  # noqa: F811
    context = browser.new_context()
    page = _log_in(portal_demo, context, "/portal/policy")
    entry = _resident_record_entry(page)
    # into the entry's radio group (Tab lands on its first radio), then the arrow keys choose
    _tab_to(page, lambda f: f["id"] == f"allow-{entry}")
    page.keyboard.press("ArrowDown")
    assert _focus(page)["id"] == f"deny-{entry}"
    assert page.locator(f"#deny-{entry}").is_checked()
    _tab_to(page, lambda f: f["tag"] == "button" and f["text"] in ("変更を確認する", "Review the change"))
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/portal/policy/preview"))
    refused = page.locator(f"#refused tr.exchange[data-entry='{entry}']")
    assert refused.count() >= 1 and refused.first.get_attribute("data-reason") == "DENIED_BY_PERSON"
    _tab_to(page, lambda f: f["tag"] == "button" and f["text"] in ("保存する", "Save"))
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/portal/consent/.+\?saved=1"))
    page.goto(portal_demo["hub"] + "/portal/policy")
    assert page.locator(f"#entry-{entry} td.setting").get_attribute("data-setting") == "deny"
    _set_allow(page, portal_demo, entry)
    context.close()


def test_refusal_set_in_the_portal_stops_the_lookup_and_is_in_the_history(portal_demo, browser):  # noqa: F811
    context = browser.new_context()
    page = _log_in(portal_demo, context, "/portal/policy")
    entry = _resident_record_entry(page)
    page.locator(f"#deny-{entry}").check()
    page.locator(f"#entry-{entry} button").click()
    page.wait_for_url(re.compile(r"/portal/policy/preview"))
    # the preview lists the refusal before anything is saved
    refused = page.locator(f"#refused tr.exchange[data-entry='{entry}']")
    assert refused.first.get_attribute("data-reason") == "DENIED_BY_PERSON"
    page.get_by_role("button", name=re.compile("保存する|Save")).click()
    page.wait_for_url(re.compile(r"/portal/consent/.+\?saved=1"))
    # 転入先 asks for the resident record: the person said no (same browser, the IdP session carries)
    city_b = portal_demo["agencies"]["city-b"]
    agency = context.new_page()
    agency.goto(city_b + "/")
    agency.get_by_role("link", name=re.compile("ログイン|log in", re.IGNORECASE)).first.click()
    agency.wait_for_url(city_b + "/**")
    agency.get_by_role("button", name=re.compile("resident record from the old municipality")).click()
    agency.wait_for_load_state()
    assert "DENIED_BY_PERSON" in agency.content()
    assert "山田 太郎" not in agency.content()
    # the refusal is in the portal's history, newest first, in words, citing taro's rule
    page.goto(portal_demo["hub"] + "/portal/history")
    newest = page.locator("table.entries tbody tr").first
    assert "JUMINHYO" in newest.inner_text()
    assert re.search(r"あなたのルールによる判断 #\d+", newest.inner_text())
    assert "あなたの拒否のルールにより提供されませんでした" in newest.inner_text()
    _set_allow(page, portal_demo, entry)
    context.close()


def test_english_pages_and_the_history_downloads(portal_demo, browser, tmp_path):  # noqa: F811
    context = browser.new_context(accept_downloads=True)
    page = _log_in(portal_demo, context, "/portal/history")
    page.get_by_role("link", name="English").click()
    page.wait_for_url(re.compile(r"/portal/history"))
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").inner_text() != "やりとり履歴"
    rows = page.locator("table.entries tbody tr").count()
    assert rows >= 3  # the demo's three scenarios, at least
    files = {}
    for kind in ("csv", "pdf"):
        with page.expect_download() as download:
            page.locator(f"a[href^='/portal/history/download.{kind}']").click()
        files[kind] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[kind])
    body = files["csv"].read_bytes()
    assert body.startswith(b"\xef\xbb\xbf")
    table = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert len(table) - 1 >= rows and all(len(r) == len(table[0]) for r in table)
    assert any("JUMINHYO" in cell for r in table[1:] for cell in r)
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(files["pdf"]), "-"], capture_output=True,
                              text=True, check=True).stdout
        assert "JUMINHYO" in text and "KOSEKI-FUHYO" in text
    page.get_by_role("link", name="日本語").click()
    page.wait_for_url(re.compile(r"/portal/history"))
    assert page.locator("html").get_attribute("lang") == "ja"
    context.close()


def test_no_page_scrolls_sideways_at_200_percent_zoom(portal_demo, browser):  # noqa: F811
    # 200 % zoom of a 1280 px window is a 640 px CSS viewport (WCAG 1.4.4 / 1.4.10)
    context = browser.new_context(viewport={"width": 640, "height": 800})
    page = _log_in(portal_demo, context)
    wide = {}
    for name, path in _pages(page, portal_demo).items():
        page.goto(portal_demo["hub"] + path)
        scroll, inner = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        if scroll > inner:
            wide[name] = (scroll, inner)
    assert not wide, wide
    context.close()


def test_the_demo_prints_the_portal_with_its_logins_and_its_history_holds_the_scenarios(portal_demo):
    printed = portal_demo["printed"]
    assert f"{portal_demo['hub']}/portal/" in printed
    assert set(portal_demo["passwords"]) == {"taro", "hanako", "jiro"}  # who logs in there, with what


def test_a_downloaded_inclusion_proof_checks_offline(portal_demo, browser, tmp_path):  # noqa: F811
    context = browser.new_context(accept_downloads=True)
    page = _log_in(portal_demo, context, "/portal/history")
    with page.expect_download() as download:
        page.locator("a[href^='/portal/history/download.json']").click()
    proof = tmp_path / download.value.suggested_filename
    download.value.save_as(proof)
    bundle = json.loads(proof.read_text(encoding="utf-8"))
    assert bundle["entries"], "the demo's exchanges carry proofs"
    vkey = page.request.get(portal_demo["hub"] + "/history/checkpoint.vkey").text().strip()
    renkei = str(Path(sys.executable).with_name("renkei"))
    checked = subprocess.run([renkei, "audit", "check-proof", str(proof), "--key", vkey], capture_output=True,
                             text=True, env=_cli_env(portal_demo), timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # one changed entry and the same check fails
    entry = bundle["entries"][0]
    entry["outcome"] = "DISCLOSED" if entry["outcome"] != "DISCLOSED" else "DENIED_BY_PERSON"
    proof.write_text(json.dumps(bundle, ensure_ascii=False), encoding="utf-8")
    tampered = subprocess.run([renkei, "audit", "check-proof", str(proof), "--key", vkey], capture_output=True,
                              text=True, env=_cli_env(portal_demo), timeout=60, check=False)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    context.close()


def _cli_env(running) -> dict[str, str]:
    import os

    return {**os.environ, **running["env"]}


def _log_in_as(running, context, username: str, next_path: str = "/portal/"):
    """SSO into the portal as a demo person (hanako answers her TOTP code too)."""
    from idp.accounts import totp

    page = context.new_page()
    page.goto(running["hub"] + next_path)
    page.wait_for_url(re.compile(r"/idp/login"))
    page.get_by_label(re.compile("Username")).fill(username)
    page.get_by_label(re.compile("Password")).fill(running["passwords"][username])
    page.get_by_role("button", name=re.compile("Log in")).click()
    if username in running["totp"]:
        page.get_by_label(re.compile("Code")).fill(totp(running["totp"][username]))
        page.get_by_role("button", name=re.compile("Verify")).click()
    page.wait_for_url(re.compile(re.escape(running["hub"]) + r"/portal/"))
    return page


def test_pages_beyond_the_menu_pass_axe_and_are_photographed(portal_demo, browser):  # noqa: F811
    """The representative's pages (taro lets hanako act for him, from the keyboard-free form),
    the policy preview, notice settings, logout, and the auditor's pages: axe and a screenshot
    each; then taro revokes and hanako's pages are gone."""
    if not AXE.exists():
        pytest.skip("axe-core is not installed: run `npm ci --prefix tests/assets`")
    SHOTS.mkdir(parents=True, exist_ok=True)
    renkei = str(Path(sys.executable).with_name("renkei"))
    role = subprocess.run([renkei, "person", "role", "add", "--username", "taro", "auditor"], capture_output=True,
                          text=True, env=_cli_env(portal_demo), timeout=60, check=False)
    assert role.returncode == 0, role.stdout + role.stderr
    hub = portal_demo["hub"]
    taro_context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    hanako_context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    found: dict[str, list] = {}

    def check(page, name: str) -> None:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        if violations := _axe(page):
            found[name] = violations

    try:
        taro = _log_in(portal_demo, taro_context, "/portal/representatives")
        taro.get_by_label(re.compile("代理人の利用者名")).fill("hanako")
        taro.get_by_role("button", name="指定する").click()
        taro.wait_for_url(re.compile(r"/portal/representatives$"))
        assert "hanako" in taro.locator("main table").first.inner_text()
        for name, path in (("notice-settings", "/portal/notices/settings"), ("logout", "/portal/logout"),
                           ("audit", "/portal/audit"), ("audit-anomalies", "/portal/audit/anomalies"),
                           ("audit-export-plan", "/portal/audit/export?log=access&fmt=jsonl")):
            response = taro.goto(hub + path)
            assert response.status == 200, (name, response.status)
            check(taro, name)
        taro.goto(hub + "/portal/policy")
        entry = _resident_record_entry(taro)
        taro.locator(f"#deny-{entry}").check()
        taro.locator(f"#entry-{entry} button").click()
        taro.wait_for_url(re.compile(r"/portal/policy/preview"))
        check(taro, "policy-preview")

        hanako = _log_in_as(portal_demo, hanako_context, "hanako", "/portal/representatives")
        acting = hanako.locator("a[href$='/policy'][href^='/portal/acting/']").first.get_attribute("href")
        base = acting.removesuffix("/policy")
        for name, path in (("acting-history", "/history"), ("acting-data", "/data"), ("acting-policy", "/policy"),
                           ("acting-consent", "/consent")):
            response = hanako.goto(hub + base + path)
            assert response.status == 200, (name, response.status)
            assert "taro" in hanako.locator("p.notice").inner_text()
            check(hanako, name)
        # hanako refuses on taro's behalf, through the preview, and reads the receipt she caused
        hanako.goto(hub + base + "/policy")
        hanako.locator(f"#deny-{entry}").check()
        hanako.locator(f"#entry-{entry} button").click()
        hanako.wait_for_url(re.compile(r"/policy/preview"))
        check(hanako, "acting-policy-preview")
        hanako.get_by_role("button", name=re.compile("保存する|Save")).click()
        hanako.wait_for_url(re.compile(re.escape(base) + r"/consent/.+\?saved=1"))
        assert "hanako" in hanako.locator("main").inner_text()
        check(hanako, "acting-receipt")
        # taro sees what hanako did, then revokes alone: her pages are gone at once
        taro.goto(hub + "/portal/consent")
        assert "hanako" in taro.locator("table.consent-record tbody tr").first.inner_text()
        taro.goto(hub + "/portal/representatives")
        assert "利用許諾を変更しました" in taro.locator("main").inner_text()
        check(taro, "representatives-with-actions")
        taro.locator("form[action$='/revoke'] button").first.click()
        taro.wait_for_url(re.compile(r"/portal/representatives$"))
        assert hanako.goto(hub + base + "/policy").status == 404
        _set_allow(taro, portal_demo, entry)
    finally:
        subprocess.run([renkei, "person", "role", "remove", "--username", "taro", "auditor"], capture_output=True,
                       env=_cli_env(portal_demo), timeout=60, check=False)
        taro_context.close()
        hanako_context.close()
    assert not found, json.dumps(found, ensure_ascii=False, indent=1)
