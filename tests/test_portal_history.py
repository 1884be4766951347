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

    pdf = client.get("/portal/history/download.pdf", params={"outcome": "DENIED_BY_PERSON"})
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
