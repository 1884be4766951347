"""The history page's chart and the person's downloads (CSV, PDF, JSON with inclusion proofs),
over real HTTP; the proof checker and `renkei audit check-proof` on a downloaded file."""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess

from click.testing import CliRunner

from access_history.person import check_bundle
from consent.models import PolicyRuleIn
from renkei.cli import main
from tests.federation import RESIDENT, set_rules
from tests.test_discovery_api import query
from tests.test_portal import portal_login


def test_history_page_has_an_accessible_chart_and_table(hub, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    client = portal_login(hub, "disco-person", "disco password", "/portal/history")
    page = client.get("/portal/history").text
    svg = re.search(r"<svg role=\"img\".*?</svg>", page, re.DOTALL).group(0)
    assert "<title id=\"chart-title\">" in svg and "<desc id=\"chart-desc\">" in svg and "<rect" in svg
    assert "<script" not in page
    after = page[page.index("</svg>"):]
    table = re.search(r"<table class=\"chart-data\">.*?</table>", after, re.DOTALL).group(0)
    assert "<caption>" in table and '<th scope="col">' in table and '<th scope="row">' in table
    # this month's row counts the permitted exchanges just made
    import datetime as dt
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    cells = re.search(rf'<th scope="row">{month}</th><td>(\d+)</td>', table)
    assert cells and int(cells.group(1)) >= 1


def test_csv_and_pdf_downloads_carry_the_rows_in_japanese(hub, fed, bootstrap, tmp_path):
    set_rules(fed, PolicyRuleIn(effect="deny"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    client = portal_login(hub, "disco-person", "disco password")
    r = client.get("/portal/history/download.csv", params={"outcome": "DENIED_BY_PERSON"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.content.startswith(b"\xef\xbb\xbf") and "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][0] == "日時 (UTC)" and len(rows) >= 2
    assert {row[5] for row in rows[1:]} == {"あなたの拒否のルールにより提供されませんでした"}
    assert {row[6] for row in rows[1:]} == {"DENIED_BY_PERSON"}

    # laying out a PDF with an embedded CJK font takes seconds on a loaded machine: a longer read
    pdf = client.get("/portal/history/download.pdf", params={"outcome": "DENIED_BY_PERSON"}, timeout=120)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    (tmp_path / "h.pdf").write_bytes(pdf.content)
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "h.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert "やりとり履歴" in text
    assert text.count("あなたの拒否のルールにより提供されませんでした") == len(rows) - 1
    fonts = subprocess.run(["pdffonts", str(tmp_path / "h.pdf")], capture_output=True, text=True, check=True).stdout
    assert "NotoSansCJK" in fonts and " yes yes " in fonts  # embedded, as a subset

    english = client.get("/portal/lang", params={"to": "en", "next": "/portal/"})
    assert english.status_code == 303
    r = client.get("/portal/history/download.csv", params={"outcome": "DENIED_BY_PERSON"})
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][0] == "Time (UTC)" and rows[1][5] == "Not provided because your rule refuses it"
    client.get("/portal/lang", params={"to": "ja", "next": "/portal/"})


def test_proof_download_verifies_offline_and_catches_tampering(hub, fed, bootstrap, tmp_path):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    client = portal_login(hub, "disco-person", "disco password")
    r = client.get("/portal/history/download.json")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    bundle = r.json()
    assert bundle["entries"] and not bundle["pending"]  # integrated before the download
    assert all("person_key" not in e and e["inclusion_proof"] is not None for e in bundle["entries"])
    vkey = client.get("/history/checkpoint.vkey").text.strip()
    report = check_bundle(bundle, verifier_key=vkey)
    assert report.ok and report.checked == len(bundle["entries"]), report.summary()

    good = tmp_path / "proofs.json"
    good.write_bytes(r.content)
    result = CliRunner().invoke(main, ["audit", "check-proof", str(good), "--key", vkey])
    assert result.exit_code == 0 and "sound" in result.output, result.output

    tampered = json.loads(r.content)
    tampered["entries"][0]["outcome"] = "DENIED_BY_PERSON"
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered, ensure_ascii=False), encoding="utf-8")
    result = CliRunner().invoke(main, ["audit", "check-proof", str(bad), "--key", vkey])
    assert result.exit_code == 1 and "altered" in result.output, result.output

    moved = json.loads(r.content)
    if len(moved["entries"]) > 1:  # an entry's proof presented for another leaf index
        moved["entries"][0]["index"], moved["entries"][1]["index"] = moved["entries"][1]["index"], moved["entries"][0]["index"]
        assert not check_bundle(moved, verifier_key=vkey).ok
    forged = json.loads(r.content)
    forged["checkpoint"] = forged["checkpoint"].replace("\n", "\n\n", 1)
    assert not check_bundle(forged, verifier_key=vkey).ok
    assert CliRunner().invoke(main, ["audit", "check-proof", str(tmp_path / "none.json")]).exit_code == 2


def test_downloads_need_a_login(hub, fed, bootstrap):
    import httpx

    anonymous = httpx.Client(base_url=hub.base_url, follow_redirects=False, timeout=20)
    for path in ("/portal/history/download.csv", "/portal/history/download.pdf", "/portal/history/download.json"):
        assert anonymous.get(path).status_code == 303


def test_pdf_is_refused_clearly_without_a_font_or_beyond_its_row_limit(hub, fed, bootstrap, monkeypatch):
    import portal.history_views

    set_rules(fed, PolicyRuleIn(effect="allow"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    client = portal_login(hub, "disco-person", "disco password")
    monkeypatch.setenv("RENKEI_PDF_FONT", "/nonexistent/font.ttc")  # the hub serves from this process
    r = client.get("/portal/history/download.pdf")
    assert r.status_code == 503 and "日本語フォント" in r.text and not r.content.startswith(b"%PDF")
    monkeypatch.delenv("RENKEI_PDF_FONT")
    monkeypatch.setattr(portal.history_views, "PDF_MAX_ROWS", 0)
    r = client.get("/portal/history/download.pdf")
    assert r.status_code == 400 and "CSV" in r.text


def test_entries_show_when_asked_when_provided_and_the_staff_member(hub, fed, tmp_path):
    """A staff member's query, then the provider's disclosure report: the page, the CSV and the
    PDF show the time asked and the time provided apart, and the staff member."""
    import base64
    from datetime import UTC, datetime, timedelta

    from lxml import etree

    from access_history.models import HistoryEntry
    from kernel.db import session_scope
    from renkei_provider import Disclosure
    from tests.federation import ask, sso_assertion
    from tests.saml_sp import NS
    from tests.test_disclosure_reports import accepted_token, reporter

    set_rules(fed, PolicyRuleIn(effect="allow"))
    staff = sso_assertion(hub, fed["r"])
    staff_id = staff.find("saml:Subject/saml:NameID", NS).text
    r = ask(hub, fed["r"], {"service_type": RESIDENT, "task": "JUKI", "person": {
        "pseudonym": staff_id, "staff_assertion": base64.b64encode(etree.tostring(staff)).decode()}})
    assert r.status_code == 200, r.text
    offering = {o["provider"]: o for o in r.json()["offerings"]}[fed["a"].entity_id]
    accepted = accepted_token(hub, fed, None, offering, fed["a"])
    provided = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=7)  # told apart from the ask
    agency = reporter(hub, fed["a"])
    agency.record(Disclosure.of(accepted, provided_at=provided))
    assert agency.flush().accepted
    with session_scope() as db:
        [entry] = db.query(HistoryEntry).filter_by(decision_id=accepted.decision_id, kind="disclosure").all()
        asked_at, provided_at, entry_id = entry.asked_at, entry.provided_at, entry.entry_id
    assert provided_at == provided.replace(tzinfo=None) and asked_at is not None and asked_at != provided_at

    client = portal_login(hub, "disco-person", "disco password", "/portal/history")
    page = client.get("/portal/history").text
    head = re.search(r'<table class="entries">.*?</thead>', page, re.DOTALL).group(0)
    assert re.findall(r'<th scope="col">([^<]+)</th>', head)[:2] == ["照会日時", "提供日時"]
    rows = re.findall(r'<td class="asked">(.*?)</td>\s*<td class="provided">(.*?)</td>\s*<td>(.*?)</td>', page,
                      re.DOTALL)
    from portal import i18n
    i18n.set_language("ja")
    wanted = (i18n.when(asked_at), i18n.when(provided_at))
    assert any((a, p) == wanted and staff_id in who for a, p, who in rows), rows[:3]
    # the decision itself was asked at the same moment; nothing was provided by that entry
    assert any(a == wanted[0] and p == "—" for a, p, _ in rows)

    got = client.get("/portal/history/download.csv")
    table = list(csv.reader(io.StringIO(got.content.decode("utf-8-sig"))))
    assert table[0][8:12] == ["職員", "記録番号", "照会日時 (UTC)", "提供日時 (UTC)"]
    [row] = [row for row in table if row[9] == entry_id]
    assert row[10] == asked_at.strftime("%Y-%m-%d %H:%M:%S") and row[11] == provided_at.strftime("%Y-%m-%d %H:%M:%S")
    assert row[8] == staff_id and row[1] != "" and row[6] == "DISCLOSED"

    pdf = client.get("/portal/history/download.pdf", params={"start": provided.date().isoformat()}, timeout=120)
    assert pdf.status_code == 200
    (tmp_path / "h.pdf").write_bytes(pdf.content)
    text = subprocess.run(["pdftotext", "-raw", str(tmp_path / "h.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "照会日時" in text and "提供日時" in text and "職員" in text
    flat = re.sub(r"\s+", "", text)
    assert provided_at.strftime("%Y-%m-%d%H:%M:%S") in flat and staff_id[:12] in flat
