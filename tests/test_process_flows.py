"""Business process flows end to end on the running test hub with real demo agency apps:
the lifecycle (no run before a passing conformance test), the conformance kit against a good
and a deliberately broken provider, a run with a branch taken and one not taken, a refused
step that stops what depends on it and nothing else, resuming after a stop, the start API
over HTTP, and metering from the access history."""
from __future__ import annotations

import csv
import json
import re
import uuid
from datetime import timedelta

import httpx
import pytest
import yaml

from kernel.jose import sign_client_assertion
from tests.conftest import agency_entity_id, listening_socket, port_of, serve_in_thread
from tests.test_demo_lookups import AgencyServer, cli

RUN = uuid.uuid4().hex[:8]
RESIDENT, ANNEX, MEDICAL = (f"urn:renkei:test-{RUN}:{n}" for n in ("resident-record", "annex", "medical"))
TASK = f"TENNYU-{RUN}"
MASTER_ID = f"7{int(RUN, 16) % 10**11:011d}"
USERNAME = f"process-{RUN}"
CITY_A_LOCAL, INSURER_LOCAL = f"A-{RUN}", f"INS-{RUN}"
CITY_A_RECORDS = {CITY_A_LOCAL: {
    "resident-record": {"氏名": "山田 太郎", "転出先": "デモB市", "世帯主": "本人"},
    "annex": {"本籍": "デモ市本町2"},
}}
PROCESS = f"moving-{RUN}"


def definition(city_a: str, city_b: str, insurer: str, *, process_id: str = PROCESS, version: int = 1) -> dict:
    def lookup(activity_id, provider, service_type, info_type, **extra):
        return {"id": activity_id, "name": activity_id, "exchange": "lookup", "requester": city_b,
                "provider": provider, "service_type": service_type, "task": TASK, "info_type": info_type, **extra}

    return {
        "id": process_id, "version": version, "name": "転入 (test)", "owner": {"name": "デジタル庁 (test)"},
        "process_type": "HIKKOSHI", "trigger": {"kind": "application", "channels": ["counter"], "requester": city_b},
        "activities": [
            lookup("record", city_a, RESIDENT, "JUMINHYO"),
            # parallel to `record`: no whitelist entry for this task, so refused
            lookup("medical", insurer, MEDICAL, "IRYO"),
            # depends on the refused one: blocked
            lookup("after-medical", city_a, ANNEX, "FUHYO", after=["medical"]),
            # a branch on the record: taken
            lookup("annex-if-moving", city_a, ANNEX, "FUHYO", after=["record"],
                   when=[{"activity": "record", "field": "転出先", "equals": "デモB市"}]),
            # a branch on the record: not taken
            lookup("annex-if-elsewhere", city_a, ANNEX, "FUHYO", after=["record"],
                   when=[{"activity": "record", "field": "転出先", "equals": "よそ"}]),
            # after the branch not taken: skipped too
            lookup("after-elsewhere", city_a, RESIDENT, "JUMINHYO", after=["annex-if-elsewhere"]),
        ],
    }


@pytest.fixture(scope="module")
def federation(hub, tmp_path_factory):
    from consent import service as consent
    from consent.models import PolicyRuleIn, WhitelistEntryIn
    from discovery import service as location
    from idp import accounts
    from kernel.db import session_scope

    tmp = tmp_path_factory.mktemp("process")
    city_b = AgencyServer(hub, tmp, "city-b", "転入先 (process test)", "municipality")
    city_a = AgencyServer(hub, tmp, "city-a", "転出元 (process test)", "municipality",
                          provides=(RESIDENT, ANNEX), records=CITY_A_RECORDS)
    insurer = AgencyServer(hub, tmp, "insurer", "保険者 (process test)", "health_insurer",
                           provides=(MEDICAL,), records={INSURER_LOCAL: {"給付": "なし"}})
    cli("person", "add", "--username", USERNAME, "--password-stdin", "--master-id", MASTER_ID,
        stdin="process test password\n")
    for agency, local_id in ((city_a, CITY_A_LOCAL), (insurer, INSURER_LOCAL)):
        links = tmp / f"links-{agency.config.key_dir.name}.csv"
        links.write_text(f"{local_id},{MASTER_ID}\n", encoding="utf-8")
        cli("link", "import", "--agency", agency.entity_id, str(links))
    with session_scope() as db:
        for urn, info in ((RESIDENT, "JUMINHYO"), (ANNEX, "FUHYO"), (MEDICAL, "IRYO")):
            location.add_service_type(db_session=db, urn=urn, name=urn, info_types=[info])
        for provider, urn in ((city_a, RESIDENT), (city_a, ANNEX), (insurer, MEDICAL)):
            location.add_offering(db_session=db, provider=provider.entity_id, service_type=urn,
                                  endpoint=provider.config.provide_url(urn))
        for info in ("JUMINHYO", "FUHYO"):
            consent.create_whitelist_entry(db_session=db, entry=WhitelistEntryIn(
                requester=city_b.entity_id, provider=city_a.entity_id, task_code=TASK, task_name=TASK,
                info_type_code=info, info_type_name=info, legal_basis="住民基本台帳法 (test)", consent="required"))
        person_key = accounts.find(db_session=db, username=USERNAME).person_key
        consent.set_policy(collection_method="test-setup", db_session=db, person_key=person_key,
                           principal_id=USERNAME,
                           rules=[PolicyRuleIn(effect="allow", requester=city_b.entity_id)])
    yield {"city_a": city_a, "city_b": city_b, "insurer": insurer, "person_key": person_key, "tmp": tmp}
    for server in (city_a, city_b, insurer):
        server.stop()


def install(tmp, data: dict) -> None:
    path = tmp / f"{data['id']}-v{data['version']}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    cli("process", "install", str(path))


def conformance(agency: str, process_id: str, out) -> tuple[int, str, dict]:
    from click.testing import CliRunner

    from renkei.cli import main

    result = CliRunner().invoke(main, ["conformance", "run", "--agency", agency, "--process", process_id,
                                       "--out", str(out), "--deadline", "3"])
    reports = sorted(out.glob(f"conformance-{process_id}-*.json"))
    return result.exit_code, result.output, json.loads(reports[-1].read_text(encoding="utf-8")) if reports else {}


@pytest.fixture(scope="module")
def operating(federation):
    """The test process taken through its lifecycle to `operating`."""
    from click.testing import CliRunner

    from renkei.cli import main

    f = federation
    install(f["tmp"], definition(f["city_a"].entity_id, f["city_b"].entity_id, f["insurer"].entity_id))
    refused = CliRunner().invoke(main, ["process", "operate", PROCESS])
    assert refused.exit_code == 1 and "cannot operate before it passes its conformance test" in refused.output
    cli("process", "implemented", PROCESS)
    code, output, report = conformance(f["city_a"].entity_id, PROCESS, f["tmp"] / "reports-a")
    assert code == 0, output
    assert report["passed"] is True and len(report["checks"]) == 7 * 5  # five lookups answered by city-a
    still = CliRunner().invoke(main, ["process", "operate", PROCESS])
    assert still.exit_code == 1 and f["insurer"].entity_id in still.output  # not yet passed
    code, output, report = conformance(f["insurer"].entity_id, PROCESS, f["tmp"] / "reports-i")
    assert code == 0, output
    assert "conformance-tested" in output
    assert "operating" in cli("process", "operate", PROCESS)
    return f


def run_view(federation, instance_id=None):
    from kernel.db import session_scope
    from kernel.settings import get_settings
    from process import engine

    with session_scope() as db:
        instance_id = instance_id or engine.start(db_session=db, process_id=PROCESS,
                                                  person_key=federation["person_key"],
                                                  started_by=federation["city_b"].entity_id, channel="counter")
    delivered: dict = {}
    view = engine.run(session_scope=session_scope, settings=get_settings(), instance_id=instance_id,
                      delivered=delivered)
    return view, delivered


def test_a_definition_cannot_run_before_it_operates(federation):
    from kernel.db import session_scope
    from process import engine, service

    f = federation
    install(f["tmp"], definition(f["city_a"].entity_id, f["city_b"].entity_id, f["insurer"].entity_id,
                                 process_id=f"not-yet-{RUN}"))
    with session_scope() as db, pytest.raises(service.NotOperating):
        engine.start(db_session=db, process_id=f"not-yet-{RUN}", person_key=f["person_key"],
                     started_by=f["city_b"].entity_id, channel="counter")


def test_branches_and_a_refused_step_stop_only_what_depends_on_them(operating):
    view, delivered = run_view(operating)
    steps = {s.activity_id: s for s in view.steps}
    status = {k: str(s.status) for k, s in steps.items()}
    assert status == {
        "record": "done", "medical": "refused", "after-medical": "blocked",
        "annex-if-moving": "done", "annex-if-elsewhere": "skipped", "after-elsewhere": "skipped",
    }
    assert steps["medical"].reason == "NO_WHITELIST_ENTRY"
    assert steps["after-medical"].reason == "DEPENDS_ON_MEDICAL"
    assert steps["annex-if-elsewhere"].reason == "BRANCH_NOT_TAKEN"
    assert str(view.status) == "incomplete"
    # the requester got the providers' records; the hub kept only the field a branch reads
    assert delivered["record"] == CITY_A_RECORDS[CITY_A_LOCAL]["resident-record"]
    assert delivered["annex-if-moving"] == CITY_A_RECORDS[CITY_A_LOCAL]["annex"]
    assert steps["record"].result == {"転出先": "デモB市"}
    assert steps["annex-if-moving"].result == {}


def test_every_step_is_one_query_group_in_the_access_history(operating):
    from access_history import service as history
    from kernel.db import session_scope

    view, _ = run_view(operating)
    with session_scope() as db:
        page = history.timeline(db_session=db, person_key=operating["person_key"], limit=200)
        grouped = [e.entry for e in page.entries if e.entry.query_group_id == view.query_group_id]
    by_decision = {e.decision_id: e for e in grouped}
    ran = [s for s in view.steps if s.decision_ids]
    assert {d for s in ran for d in s.decision_ids} <= set(by_decision)
    assert {s.activity_id for s in ran} == {"record", "medical", "annex-if-moving"}  # blocked/skipped ask nothing
    refused = by_decision[next(s for s in view.steps if s.activity_id == "medical").decision_ids[0]]
    assert refused.permitted is False and refused.outcome == "NO_WHITELIST_ENTRY"


def test_a_run_left_unfinished_resumes_where_it_stopped(operating):
    """A hub stopped mid-run: the steps already decided stay decided, the rest run on resume."""
    from kernel.db import session_scope
    from kernel.settings import get_settings
    from process import engine
    from process.exchanges import LookupExchange

    class StopAfterFirst(LookupExchange):
        calls = 0

        def perform(self, **kwargs):
            StopAfterFirst.calls += 1
            if StopAfterFirst.calls > 1:
                raise KeyboardInterrupt  # the hub goes down inside the second exchange
            return super().perform(**kwargs)

    with session_scope() as db:
        instance_id = engine.start(db_session=db, process_id=PROCESS, person_key=operating["person_key"],
                                   started_by=operating["city_b"].entity_id, channel="counter")
    with pytest.raises(KeyboardInterrupt):
        engine.run(session_scope=session_scope, settings=get_settings(), instance_id=instance_id,
                   exchanges={"lookup": StopAfterFirst()})
    with session_scope() as db:
        half = engine.view(db_session=db, instance_id=instance_id)
    assert str(half.status) == "running"
    assert str(half.steps[0].status) == "done" and str(half.steps[1].status) == "pending"
    first_decision = half.steps[0].decision_ids
    # a young run is left to whoever started it; a stopped one is taken up
    assert instance_id not in _resumed_ids(engine, session_scope, get_settings(), grace=timedelta(hours=1))
    engine.resume_unfinished(session_scope=session_scope, settings=get_settings(), grace=timedelta(0))
    with session_scope() as db:
        done = engine.view(db_session=db, instance_id=instance_id)
    assert str(done.status) == "incomplete"
    assert done.steps[0].decision_ids == first_decision  # not asked again
    assert {s.activity_id: str(s.status) for s in done.steps}["annex-if-moving"] == "done"


def _resumed_ids(engine, session_scope, settings, *, grace):
    taken = []

    class Recording(engine.LookupExchange):
        def perform(self, *, run, **kwargs):
            taken.append(run.instance_id)
            raise KeyboardInterrupt

    try:
        engine.resume_unfinished(session_scope=session_scope, settings=settings, grace=grace,
                                 exchanges={"lookup": Recording()})
    except KeyboardInterrupt:
        pass
    return taken


def test_the_counter_starts_a_run_over_http(operating, hub):
    """The 転入先 counter: client assertion, the person's bootstrap token, each step's outcome."""
    from kernel.db import session_scope
    from kernel.keys import keystore
    from pseudonym import bootstrap
    from pseudonym import service as pseudonyms

    city_b = operating["city_b"]
    with session_scope() as db:
        own = pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=operating["person_key"],
                                       agency=city_b.entity_id, scope=hub.settings.scope)
    token = bootstrap.issue_bootstrap(keys=keystore(), audience=f"{hub.base_url}/discovery",
                                      requester=city_b.entity_id, pseudonym=own, expires=2**31 - 1)
    url = f"{hub.base_url}/api/process/start"

    def post(body, issuer=city_b):
        jwt = sign_client_assertion(issuer.private_key(), issuer=issuer.entity_id, audience=url,
                                    jti=uuid.uuid4().hex)
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer {jwt}"}, timeout=60)

    r = post({"process": PROCESS, "channel": "counter", "person": {"bootstrap_token": token}})
    assert r.status_code == 200, r.text
    answer = r.json()
    steps = {s["activity"]: s for s in answer["steps"]}
    assert steps["record"]["status"] == "done"
    assert steps["record"]["received"] == CITY_A_RECORDS[CITY_A_LOCAL]["resident-record"]
    assert steps["medical"]["status"] == "refused" and steps["medical"]["reason"] == "NO_WHITELIST_ENTRY"
    # only the trigger's agency starts it; an unknown process is a 404; the portal is no channel here
    assert post({"process": PROCESS, "person": {"bootstrap_token": token}},
                issuer=operating["city_a"]).status_code == 403
    assert post({"process": f"nope-{RUN}", "person": {"bootstrap_token": token}}).status_code == 404
    bad = post({"process": PROCESS, "channel": "portal", "person": {"bootstrap_token": token}})
    assert bad.status_code == 400 and "not started at the portal" in bad.json()["message"]
    assert post({"process": "x" * 65, "person": {"bootstrap_token": token}}).status_code in (400, 422)
    # the application is checked before anything is written: too large, or not text
    too_big = post({"process": PROCESS, "person": {"bootstrap_token": token}, "application": {"x": "y" * 20000}})
    assert too_big.status_code == 400 and "larger than" in too_big.json()["message"]
    surrogate = httpx.post(url, content=b'{"process": "' + PROCESS.encode() + b'", "person": {"bootstrap_token": "'
                           + token.encode() + b'"}, "application": {"x": "\\ud800"}}',
                           headers={"Authorization": "Bearer " + sign_client_assertion(
                               city_b.private_key(), issuer=city_b.entity_id, audience=url, jti=uuid.uuid4().hex),
                               "Content-Type": "application/json"}, timeout=30)
    assert surrogate.status_code in (400, 422), surrogate.text


def test_a_broken_provider_fails_conformance_with_readable_reasons(federation, hub):
    from agency_demo import AgencyConfig, sp_metadata
    from agency_demo.careless import create_careless_provider_app

    from discovery import service as location
    from kernel.db import session_scope

    f = federation
    sock = listening_socket()
    port = port_of(sock)
    config = AgencyConfig(entity_id=agency_entity_id(port), name="careless (test)",
                          base_url=f"http://127.0.0.1:{port}", hub_base_url=hub.base_url,
                          key_dir=f["tmp"] / "careless", provides=(RESIDENT,))
    md = f["tmp"] / "careless.xml"
    md.write_text(sp_metadata(config))
    cli("agency", "add", "--metadata", str(md), "--class", "municipality")
    with session_scope() as db:
        location.add_offering(db_session=db, provider=config.entity_id, service_type=RESIDENT,
                              endpoint=config.provide_url(RESIDENT))
    server, thread = serve_in_thread(create_careless_provider_app(delay_seconds=1.5), sock)
    try:
        data = definition(config.entity_id, f["city_b"].entity_id, f["insurer"].entity_id,
                          process_id=f"careless-{RUN}")
        data["activities"] = data["activities"][:1]
        install(f["tmp"], data)
        cli("process", "implemented", f"careless-{RUN}")
        from click.testing import CliRunner

        from renkei.cli import main

        out = f["tmp"] / "reports-careless"
        result = CliRunner().invoke(main, ["conformance", "run", "--agency", config.entity_id,
                                           "--process", f"careless-{RUN}", "--out", str(out), "--deadline", "1"])
        assert result.exit_code == 1
        report = json.loads(next(out.glob("*.json")).read_text(encoding="utf-8"))
        assert report["passed"] is False
        failed = {c["name"]: c["observed"] for c in report["checks"] if not c["passed"]}
        assert "refuses a token signed by another key (bad signature)" in failed
        assert "HTTP 200 with a record" in failed["refuses a token signed by another key (bad signature)"]
        assert "refuses the same token again (duplicate)" in failed
        assert "answers late" in failed["accepts a valid hub token"]
        markdown = next(out.glob("*.md")).read_text(encoding="utf-8")
        assert "**FAILED**" in markdown and "## What to fix" in markdown
        refused = CliRunner().invoke(main, ["process", "operate", f"careless-{RUN}"])
        assert refused.exit_code == 1 and config.entity_id in refused.output
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_metering_counts_the_runs_from_the_access_history(operating, tmp_path):
    from kernel.db import utcnow

    run_view(operating)
    month = utcnow().strftime("%Y-%m")
    out = tmp_path / "meter.csv"
    cli("metering", "export", "--month", month, "--out", str(out))
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    city_a, city_b, insurer = (operating[k].entity_id for k in ("city_a", "city_b", "insurer"))
    mine = {(r["requester"], r["provider"]): r for r in rows if r["process"] == PROCESS}
    to_a, to_insurer = mine[(city_b, city_a)], mine[(city_b, insurer)]
    # each run asks city-a twice (record, annex-if-moving) and the insurer once, refused
    runs = int(to_insurer["queries"])
    assert runs >= 1
    assert int(to_a["queries"]) == 2 * runs and int(to_a["permitted"]) == 2 * runs
    assert int(to_insurer["refused"]) == runs and int(to_insurer["permitted"]) == 0
    assert list(rows[0]) == ["month", "requester", "provider", "process", "queries", "permitted", "refused",
                             "provided"]


def test_a_notice_is_relayed_in_an_envelope_and_waits_while_the_receiver_is_down(federation, hub):
    """A relay activity: the route is installed when the definition operates; the receiver gets
    one envelope naming the person by its own pseudonym, with the application filed; while the
    receiver is down the step waits, and the run completes once it is back."""
    from consent import service as consent
    from consent.models import PolicyRuleIn, WhitelistEntryIn
    from discovery import service as location
    from kernel.db import session_scope
    from kernel.keys import keystore
    from kernel.settings import get_settings
    from process import engine
    from pseudonym import service as pseudonyms
    from relay import routes as route_table
    from relay.service import hub_certificates
    from renkei_provider import EnvelopeReceiver
    from renkei_provider import envelope as E
    from tests.relay_helpers import ReceiverServer, wait_for

    f = federation
    city_a, city_b = f["city_a"].entity_id, f["city_b"].entity_id
    # ASCII names: the session's hub is shared, and other modules' portal pages (test_portal's
    # English pages) list this entry, whose provider class holds their person's data too
    power = AgencyServer(hub, f["tmp"], "power", "Power company (process test)", "electricity_company")
    inbox_urn, notice_task = f"urn:renkei:test-{RUN}:inbox", f"NOTICE-{RUN}"
    receiver = ReceiverServer("power", EnvelopeReceiver(hub_keys=hub_certificates()))
    receiver.start()
    try:
        with session_scope() as db:
            location.add_service_type(db_session=db, urn=inbox_urn, name="inbox", info_types=["TENKYO"])
            location.add_offering(db_session=db, provider=power.entity_id, service_type=inbox_urn,
                                  endpoint=receiver.url)
            consent.create_whitelist_entry(db_session=db, entry=WhitelistEntryIn(
                requester=power.entity_id, provider="class:municipality", task_code=notice_task,
                task_name=notice_task, info_type_code="TENKYO", info_type_name="new address",
                legal_basis="the person's consent (test)", consent="required"))
            consent.set_policy(collection_method="test-setup", db_session=db, person_key=f["person_key"],
                               principal_id=USERNAME, rules=[
                                   PolicyRuleIn(effect="allow", requester=city_b),
                                   PolicyRuleIn(effect="allow", requester=power.entity_id, info_type_code="TENKYO")])
        process_id = f"notice-{RUN}"
        data = definition(city_a, city_b, f["insurer"].entity_id, process_id=process_id)
        data["activities"] = [data["activities"][0], {
            "id": "notice", "name": "電力会社へ転居通知", "exchange": "relay", "requester": power.entity_id,
            "provider": city_b, "service_type": inbox_urn, "message_type": "TENKYO-TSUCHI", "task": notice_task,
            "info_type": "TENKYO", "after": ["record"],
            "when": [{"activity": "record", "field": "転出先", "equals": "デモB市"}]}]
        data["process_type"] = f"HIKKOSHI-{RUN}"
        install(f["tmp"], data)
        cli("process", "implemented", process_id)
        for agency, out in ((city_a, "r-a"), (power.entity_id, "r-p")):
            code, output, report = conformance(agency, process_id, f["tmp"] / out)
            assert code == 0, output
        assert {c["name"] for c in report["checks"]} >= {
            "acknowledges a valid envelope", "answers the same envelope again as a duplicate",
            "rejects an envelope signed by another key (bad signature)"}
        receiver.deliveries.clear()
        assert "operating" in cli("process", "operate", process_id)
        with session_scope() as db:
            route = route_table.get_route(db_session=db, process_type=f"HIKKOSHI-{RUN}", message_type="TENKYO-TSUCHI")
            assert route.destinations[0].agency == power.entity_id
            p_power = pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=f["person_key"],
                                               agency=power.entity_id, scope=hub.settings.scope)
            p_city_b = pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=f["person_key"],
                                                agency=city_b, scope=hub.settings.scope)

        def start_and_run():
            with session_scope() as db:
                instance_id = engine.start(db_session=db, process_id=process_id, person_key=f["person_key"],
                                           started_by=city_b, channel="counter",
                                           application={"新住所 (new address)": "デモB市 1-1"})
            return engine.run(session_scope=session_scope, settings=get_settings(), instance_id=instance_id)

        view = start_and_run()
        steps = {s.activity_id: s for s in view.steps}
        assert str(steps["notice"].status) == "done", steps["notice"]
        assert str(view.status) == "completed"
        [(status, _receipt, body, envelope)] = receiver.deliveries
        assert status == "received"
        assert envelope.person == p_power and p_city_b.encode() not in body
        assert "デモB市 1-1" in envelope.attachments[0].content.decode()
        assert envelope.attribute(E.MESSAGE_TYPE) == "TENKYO-TSUCHI"

        port = receiver.port
        receiver.stop()
        waiting = start_and_run()
        notice = {s.activity_id: s for s in waiting.steps}["notice"]
        assert str(notice.status) == "pending" and notice.reason == "AWAITING_DELIVERY"
        assert str(waiting.status) == "running"
        receiver.start(port=port)

        last = []

        def finished() -> bool:
            engine.resume_unfinished(session_scope=session_scope, settings=get_settings(), grace=timedelta(0))
            with session_scope() as db:
                last[:] = [engine.view(db_session=db, instance_id=waiting.instance_id)]
            return str(last[0].status) != "running"

        wait_for(finished, "the waiting run goes on once the receiver is back", timeout=90)
        assert str(last[0].status) == "completed", last[0]
        assert receiver.received()[-1] == receiver.deliveries[-1][1]
    finally:
        if not receiver.server.should_exit:
            receiver.stop()
        power.stop()


def test_the_person_sees_the_procedure_as_one_story_in_the_portal(operating, hub):
    from tests.test_portal import portal_login

    view, _ = run_view(operating)
    client = portal_login(hub, USERNAME, "process test password", "/portal/procedures")
    page = client.get("/portal/procedures", params={"group": view.query_group_id})
    assert page.status_code == 200 and "手続の流れ" in page.text
    story = re.search(rf'<section class="procedure" data-group="{view.query_group_id}".*?</section>',
                      page.text, re.DOTALL).group(0)
    steps = dict(re.findall(r'data-activity="([^"]+)" data-status="([^"]+)"', story))
    assert steps == {"record": "done", "medical": "refused", "after-medical": "blocked",
                     "annex-if-moving": "done", "annex-if-elsewhere": "skipped", "after-elsewhere": "skipped"}
    assert 'data-reason="NO_WHITELIST_ENTRY"' in story and "転出元 (process test)" in story
    # another person's procedure is not shown to this one
    other = client.get("/portal/procedures", params={"group": "0" * 32})
    assert other.status_code == 200 and "data-group=" not in other.text
    assert "data-group=" in client.get("/portal/procedures").text
