"""A representative (代理人) manages the principal's disclosure policy over real HTTP, within the
grant's period: the change is previewed and saved like the principal's own, its signed receipt
names the representative, the next query obeys it, and every view, change and download shows to
the principal (representatives page, history page, consent record) and in the operations log.
Every ID in every representative path is checked: a stranger, a foreign receipt, a revoked or
ended grant all get a 404, for reading and for changing."""
from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import timedelta

import httpx
import pytest

from access_history.person import check_bundle
from consent import receipts
from consent import service as consent
from consent.models import PolicyRuleIn
from kernel.db import session_scope
from kernel.keys import keystore
from tests import test_portal_policy
from tests.federation import RESIDENT, set_rules
from tests.test_discovery_api import query
from tests.test_people import (
    PASSWORD,
    appoint,
    csrf,
    grant_ids,
    operations,
    person,
    utc_now,
    verifier_key,
)
from tests.test_portal import JAPANESE, portal_login, visible_text
from tests.test_portal_policy import listed, policy_version

PRINCIPAL, PRINCIPAL_PASSWORD = "disco-person", "disco password"
entries = test_portal_policy.entries  # the whitelist entries' IDs, a fixture
PDF_TIMEOUT = 120  # seconds to wait for a PDF on a machine shared with other suites


@pytest.fixture
def pair(hub, fed):
    """The shared federation's person (an empty policy) and a fresh helper acting for them now."""
    set_rules(fed)
    principal = portal_login(hub, PRINCIPAL, PRINCIPAL_PASSWORD)
    helper_name = person("helper")
    helper = portal_login(hub, helper_name, PASSWORD)
    now = utc_now()
    assert appoint(principal, helper_name, now - timedelta(minutes=1), now + timedelta(hours=1)).status_code == 303
    grants = re.findall(r'href="/portal/acting/([0-9a-f]+)/policy"', helper.get("/portal/representatives").text)
    assert len(grants) == 1
    return principal, helper, helper_name, grants[0]


def acting_preview(helper: httpx.Client, grant: str, entry_id: int, how: str) -> httpx.Response:
    token = csrf(helper.get(f"/portal/acting/{grant}/policy"))
    return helper.post(f"/portal/acting/{grant}/policy/preview",
                       data={"csrf_token": token, "entry_id": str(entry_id), "change": how})


def acting_change(helper: httpx.Client, grant: str, entry_id: int, how: str) -> str:
    """Preview as the representative, press the preview's own save button; the receipt ID."""
    page = acting_preview(helper, grant, entry_id, how)
    assert page.status_code == 200, page.text[:400]
    confirm = re.search(rf'<form method="post" action="/portal/acting/{grant}/policy">(.*?)</form>',
                        page.text, re.DOTALL).group(1)
    saved = helper.post(f"/portal/acting/{grant}/policy", data=dict(re.findall(r'name="([^"]+)" value="([^"]*)"',
                                                                                confirm)))
    assert saved.status_code == 303, saved.text[:400]
    return re.fullmatch(rf"/portal/acting/{grant}/consent/([0-9a-f-]{{36}})\?saved=1",
                        saved.headers["location"]).group(1)


def test_a_representative_changes_the_policy_and_the_receipt_names_them(hub, fed, bootstrap, entries, pair):
    principal, helper, helper_name, grant = pair
    a = fed["a"].entity_id
    set_rules(fed, PolicyRuleIn(effect="allow", requester=fed["r"].entity_id))
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["permitted"]

    page = helper.get(f"/portal/acting/{grant}/policy")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert PRINCIPAL in page.text and f'<tr id="entry-{entries["JUMINHYO"]}">' in page.text
    assert f'action="/portal/acting/{grant}/policy/preview"' in page.text
    before = policy_version(fed)
    shown = acting_preview(helper, grant, entries["JUMINHYO"], "deny")
    assert (entries["JUMINHYO"], a, "DENIED_BY_PERSON") in listed(shown, "refused", entries.values())
    assert policy_version(fed) == before  # a preview saves nothing

    receipt_id = acting_change(helper, grant, entries["JUMINHYO"], "deny")
    assert policy_version(fed) == before + 1
    # the very next query obeys the representative's change
    assert query(hub, fed, bootstrap, RESIDENT, "JUKI")[a]["reason"] == "DENIED_BY_PERSON"

    # the signed receipt is the principal's (their portal pseudonym) and names who made the change
    jws = helper.get(f"/portal/acting/{grant}/consent/{receipt_id}.jws")
    assert jws.status_code == 200 and jws.headers["cache-control"] == "no-store"
    claims = receipts.verify_receipt(jws.text, public_keys=receipts.receipt_public_keys(keystore()))
    assert claims["collectionMethod"] == f"portal-representative:{helper_name}"
    own_jws = principal.get(f"/portal/consent/{receipt_id}.jws")
    assert own_jws.status_code == 200 and own_jws.text == jws.text  # the principal holds the same receipt
    with session_scope() as db:
        receipt = consent.get_receipt(db_session=db, receipt_id=receipt_id, person_key=fed["person_key"])
        assert receipt is not None
    earlier = re.search(r"<code>([^<]+)</code>", principal.get("/portal/consent/" + receipt_id).text)
    assert earlier and earlier.group(1) == receipt_id
    saved = helper.get(f"/portal/acting/{grant}/consent/{receipt_id}", params={"saved": "1"})
    assert saved.status_code == 200 and "代理人が本人に代わって設定しました" in saved.text and helper_name in saved.text
    assert claims["piiPrincipalId"] in principal.get(f"/portal/consent/{receipt_id}").text

    # the principal sees who changed what: consent record, receipt page, representatives, history
    record = principal.get("/portal/consent").text
    newest = record.split("<tbody>", 1)[1].split("</tr>", 1)[0]
    assert "代理人が変更" in newest and helper_name in newest and receipt_id in newest
    assert "代理人が本人に代わって設定しました" in principal.get(f"/portal/consent/{receipt_id}").text
    reps = principal.get("/portal/representatives").text
    assert "利用許諾を変更しました" in reps and f'href="/portal/consent/{receipt_id}"' in reps
    assert "利用許諾の設定を見ました" in reps and "利用許諾の変更を確認しました（保存なし）" in reps
    history_page = principal.get("/portal/history").text
    acted = re.search(r'<table class="acted">(.*?)</table>', history_page, re.DOTALL).group(1)
    assert helper_name in acted and "利用許諾を変更しました" in acted

    logged = [e["action"] for e in operations(hub)
              if e["target"] == f"representative:{grant}" and e["actor"] == helper_name]
    assert logged == ["representative.view_policy", "representative.view_policy", "representative.preview_policy",
                      "representative.view_policy", "representative.preview_policy",
                      "representative.change_policy", "representative.download_receipt",
                      "representative.view_receipt"]


def test_a_representatives_downloads_are_the_principals_and_are_logged(hub, fed, bootstrap, pair, tmp_path):
    principal, helper, helper_name, grant = pair
    set_rules(fed, PolicyRuleIn(effect="deny"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    page = helper.get(f"/portal/acting/{grant}/history")
    assert f'href="/portal/acting/{grant}/history/download.csv?' in page.text

    got = helper.get(f"/portal/acting/{grant}/history/download.csv", params={"outcome": "DENIED_BY_PERSON"})
    assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
    theirs = list(csv.reader(io.StringIO(got.content.decode("utf-8-sig"))))
    own = principal.get("/portal/history/download.csv", params={"outcome": "DENIED_BY_PERSON"})
    assert theirs == list(csv.reader(io.StringIO(own.content.decode("utf-8-sig")))) and len(theirs) >= 2
    # laying out a PDF with an embedded CJK font takes seconds on a loaded machine: a longer read
    pdf = helper.get(f"/portal/acting/{grant}/history/download.pdf", params={"outcome": "DENIED_BY_PERSON"},
                     timeout=PDF_TIMEOUT)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    bundle = helper.get(f"/portal/acting/{grant}/history/download.json", timeout=PDF_TIMEOUT)
    assert bundle.status_code == 200
    report = check_bundle(json.loads(bundle.content), verifier_key=verifier_key(hub))
    assert report.ok and report.checked + report.pending >= len(theirs) - 1
    assert helper.get(f"/portal/acting/{grant}/history/download.exe").status_code == 404

    reps = principal.get("/portal/representatives").text
    for text in ("やりとり履歴をCSVでダウンロードしました", "やりとり履歴をPDFでダウンロードしました",
                 "やりとり履歴を記録の証明付きJSONでダウンロードしました"):
        assert text in reps
    logged = [e["action"] for e in operations(hub)
              if e["target"] == f"representative:{grant}" and e["actor"] == helper_name]
    assert logged[-3:] == ["representative.download_csv", "representative.download_pdf",
                           "representative.download_json"]


def acting_requests(grant: str, receipt_id: str, entry_id: int, token: str, *, files: bool = True):
    """Every representative path: (method, path, form); `files=False` leaves out the PDF and the
    proofs, which the downloads test makes (a 404 costs nothing, a PDF seconds)."""
    form = {"csrf_token": token, "entry_id": str(entry_id), "change": "allow"}
    base = f"/portal/acting/{grant}"
    heavy = [("GET", f"{base}/history/download.pdf", None), ("GET", f"{base}/history/download.json", None)]
    return [("GET", f"{base}/history", None), ("GET", f"{base}/data", None), ("GET", f"{base}/policy", None),
            ("GET", f"{base}/consent", None), ("GET", f"{base}/consent/{receipt_id}", None),
            ("GET", f"{base}/consent/{receipt_id}.jws", None), ("GET", f"{base}/history/download.csv", None),
            *(heavy if files else []), ("POST", f"{base}/policy/preview", form), ("POST", f"{base}/policy", form)]


def statuses(client: httpx.Client, requests) -> dict[str, int]:
    return {f"{method} {path}": client.request(method, path, data=form).status_code
            for method, path, form in requests}


def test_every_id_in_a_representative_path_is_checked(hub, fed, entries, pair):
    principal, helper, helper_name, grant = pair
    receipt_id = acting_change(helper, grant, entries["FUHYO"], "allow")
    version = policy_version(fed)
    token = csrf(helper.get(f"/portal/acting/{grant}/policy"))
    # live: the representative reaches every path (the save is a new version)
    assert set(statuses(helper, acting_requests(grant, receipt_id, entries["IRYO"], token, files=False)).values()) <= {
        200, 303}
    assert policy_version(fed) == version + 1

    # a stranger, and the principal themself, reach none of them
    stranger = portal_login(hub, person("stranger"), PASSWORD)
    stranger_token = csrf(stranger.get("/portal/representatives"))
    assert set(statuses(stranger, acting_requests(grant, receipt_id, entries["IRYO"], stranger_token)).values()) == {404}
    principal_token = csrf(principal.get("/portal/policy"))
    assert set(statuses(principal, acting_requests(grant, receipt_id, entries["IRYO"], principal_token)).values()) == {404}
    # the representative's own receipts and another person's are not the principal's
    with session_scope() as db:
        from idp import accounts
        other = accounts.find(db_session=db, username=helper_name)
        foreign = consent.set_policy(db_session=db, person_key=other.person_key, rules=[PolicyRuleIn(effect="deny")],
                                     principal_id="helper", collection_method="test-setup").receipt.id
    for path in (f"/portal/acting/{grant}/consent/{foreign}", f"/portal/acting/{grant}/consent/{foreign}.jws"):
        assert helper.get(path).status_code == 404
    assert helper.get(f"/portal/consent/{foreign}").status_code == 200  # it is the helper's own
    # an entry that does not concern the principal, a forged form token
    for entry_id in ("999999",):
        r = helper.post(f"/portal/acting/{grant}/policy/preview",
                        data={"csrf_token": token, "entry_id": entry_id, "change": "deny"})
        assert r.status_code == 404
    forged = helper.post(f"/portal/acting/{grant}/policy",
                         data={"csrf_token": "forged", "entry_id": str(entries["IRYO"]), "change": "deny"})
    assert forged.status_code == 403
    assert helper.get("/portal/acting/" + "f" * 32 + "/policy").status_code == 404
    assert helper.get("/portal/acting/" + "f" * 40 + "/policy").status_code == 404

    # the principal revokes alone; from the very next request every path is a 404, nothing changes
    version = policy_version(fed)
    reps = principal.get("/portal/representatives")
    assert principal.post(f"/portal/representatives/{grant}/revoke", data={"csrf_token": csrf(reps)}).status_code == 303
    assert set(statuses(helper, acting_requests(grant, receipt_id, entries["IRYO"], token)).values()) == {404}
    assert policy_version(fed) == version


def test_a_representative_path_ends_with_the_period(hub, fed, entries):
    set_rules(fed)
    principal = portal_login(hub, PRINCIPAL, PRINCIPAL_PASSWORD)
    helper_name = person("helper")
    helper = portal_login(hub, helper_name, PASSWORD)
    now = utc_now()
    # not yet: a grant that starts tomorrow opens nothing
    assert appoint(principal, helper_name, now + timedelta(days=1), now + timedelta(days=2)).status_code == 303
    future = re.search(rf'<td>{helper_name}</td>.*?/portal/representatives/([0-9a-f]+)/revoke',
                       principal.get("/portal/representatives").text, re.DOTALL).group(1)
    token = csrf(helper.get("/portal/representatives"))
    assert set(statuses(helper, acting_requests(future, "0" * 36, entries["IRYO"], token)).values()) == {404}
    # a short grant: it works, then its end closes every path
    assert appoint(principal, helper_name, now - timedelta(minutes=1), utc_now() + timedelta(seconds=3)).status_code == 303
    [grant] = grant_ids(helper.get("/portal/representatives"))
    assert helper.get(f"/portal/acting/{grant}/policy").status_code == 200
    deadline = time.monotonic() + 20
    while helper.get(f"/portal/acting/{grant}/policy").status_code == 200:  # until the end passes
        assert time.monotonic() < deadline, "the grant outlived its end"
        time.sleep(0.2)
    version = policy_version(fed)
    assert set(statuses(helper, acting_requests(grant, "0" * 36, entries["IRYO"], token)).values()) == {404}
    assert policy_version(fed) == version


def test_the_representative_pages_in_english_have_no_japanese_left(hub, fed, entries, pair):
    principal, helper, _, grant = pair
    receipt_id = acting_change(helper, grant, entries["IRYO"], "deny")
    helper.get(f"/portal/acting/{grant}/history/download.csv")
    for client in (principal, helper):
        client.get("/portal/lang", params={"to": "en", "next": "/portal/"})
    base = f"/portal/acting/{grant}"
    seen = [helper.get(p) for p in (f"{base}/policy", f"{base}/consent", f"{base}/consent/{receipt_id}?saved=1",
                                    f"{base}/history", "/portal/representatives")]
    seen.append(acting_preview(helper, grant, entries["JUMINHYO"], "deny"))
    seen += [principal.get(p) for p in ("/portal/representatives", "/portal/history", "/portal/consent",
                                        f"/portal/consent/{receipt_id}")]
    try:
        for page in seen:
            assert page.status_code == 200 and '<html lang="en">' in page.text
            leftover = JAPANESE.findall(visible_text(page.text))
            assert not leftover, (page.url, "".join(leftover)[:80])
        assert "Changed the disclosure policy" in seen[-4].text and "Changed by representative" in seen[-2].text
    finally:
        for client in (principal, helper):
            client.get("/portal/lang", params={"to": "ja", "next": "/portal/"})
