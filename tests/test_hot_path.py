"""The hot path's one-statement reads answer exactly what the separate reads did, and never
hand out what changed: a revoked pseudonym (the requester's or a holder's) is not used."""
from __future__ import annotations

import pytest

from kernel.db import session_scope, upgrade
from kernel.keys import KeyStore
from pseudonym import service as ps
from pseudonym.models import LocalLink
from tests.conftest import fresh_database_url

REQ, HOLDER_A, HOLDER_B = ("https://req.example.jp/sp", "https://holder-a.example.jp/sp",
                           "https://holder-b.example.jp/sp")
SCOPE = "renkei.example.jp"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hot-path")
    url = fresh_database_url(tmp, "hot_path")
    upgrade(url)
    keys = KeyStore(tmp / "keys")
    keys.ensure_secret(ps.PAIRWISE_SECRET)
    return url, keys


def _pseudonym(db, keys, person, agency):
    return ps.get_or_create(db_session=db, keys=keys, person_key=person, agency=agency, scope=SCOPE)


def test_one_statement_equals_the_separate_reads(env):
    url, keys = env
    with session_scope(url) as db:
        requester = _pseudonym(db, keys, "person-1", REQ)
        at_a = _pseudonym(db, keys, "person-1", HOLDER_A)
        _pseudonym(db, keys, "person-2", HOLDER_A)  # another person's rows stay out
        db.add_all([LocalLink(agency=HOLDER_A, local_id="A-old", person_key="person-1"),
                    LocalLink(agency=HOLDER_A, local_id="A-new", person_key="person-1"),
                    LocalLink(agency=HOLDER_B, local_id="B-1", person_key="person-1"),
                    LocalLink(agency=HOLDER_B, local_id="B-other", person_key="person-2")])
    with session_scope(url) as db:
        found = ps.resolve_with_holdings(db_session=db, agency=REQ, value=requester)
        assert found.resolved == ps.resolve(db_session=db, agency=REQ, value=requester)
        assert found.holdings == ps.holdings(db_session=db, person_key="person-1") == {HOLDER_A: "A-old",
                                                                                       HOLDER_B: "B-1"}
        assert found.holder_pseudonyms == {HOLDER_A: at_a}  # none at B yet
        many = ps.get_or_create_many(db_session=db, keys=keys, person_key="person-1", agencies=[HOLDER_A, HOLDER_B],
                                     scope=SCOPE, known=found.holder_pseudonyms)
        assert many[HOLDER_A] == at_a
        assert many[HOLDER_B] == _pseudonym(db, keys, "person-1", HOLDER_B)  # created on first use


def test_revoked_pseudonyms_are_not_used(env):
    url, keys = env
    with session_scope(url) as db:
        requester = _pseudonym(db, keys, "person-3", REQ)
        at_a = _pseudonym(db, keys, "person-3", HOLDER_A)
        db.add(LocalLink(agency=HOLDER_A, local_id="A-3", person_key="person-3"))
    with session_scope(url) as db:
        ps.revoke(db_session=db, agency=HOLDER_A, value=at_a)
        # revoked in this very transaction, not yet committed: still not used
        found = ps.resolve_with_holdings(db_session=db, agency=REQ, value=requester)
        assert found.holdings == {HOLDER_A: "A-3"} and HOLDER_A not in found.holder_pseudonyms
        fresh = ps.get_or_create_many(db_session=db, keys=keys, person_key="person-3", agencies=[HOLDER_A],
                                      scope=SCOPE, known=found.holder_pseudonyms)[HOLDER_A]
        assert fresh != at_a
    with session_scope(url) as db:
        ps.revoke(db_session=db, agency=REQ, value=requester)
        with pytest.raises(ps.PseudonymError):
            ps.resolve_with_holdings(db_session=db, agency=REQ, value=requester)


def test_the_session_read_for_an_answer_equals_the_separate_reads(env):
    """An SSO answer reads the login session, the person's live pseudonym at the agency and
    whether the agency already took part under it in one statement: the same answers as the
    separate reads, through a first visit, a recorded participant, a transient NameID, another
    session and a revoked pseudonym."""
    from idp import participants
    from idp import service as idp
    from idp.saml import NAMEID_PERSISTENT, NAMEID_TRANSIENT
    from kernel.settings import get_settings

    url, keys = env
    settings = get_settings()

    def read(token: str, agency: str):
        with session_scope(url) as db:
            both = idp.current_session(db_session=db, token=token, settings=settings, agency=agency)
            alone = idp.current_session(db_session=db, token=token, settings=settings)
            live = ps.find(db_session=db, person_key="person-4", agency=agency)
            known = live is not None and db.connection().execute(participants._KNOWN, {
                "session_id": alone.id, "sp": agency, "name_id": live}).first() is not None
        assert (both.id, both.person_key, both.expires_at) == (alone.id, alone.person_key, alone.expires_at)
        assert (both.agency, both.pseudonym, both.participant_known) == (agency, live, known)
        return both

    with session_scope(url) as db:
        token = idp.start_session(db_session=db, settings=settings, person_key="person-4", level=2)
        other = idp.start_session(db_session=db, settings=settings, person_key="person-4", level=2)
    assert read(token, REQ).pseudonym is None  # a first visit: nothing yet
    with session_scope(url) as db:
        session = idp.current_session(db_session=db, token=token, settings=settings)
        value = _pseudonym(db, keys, "person-4", REQ)
        participants.record(db_session=db, session=session, sp=HOLDER_A, name_id=participants.new_transient(),
                            name_id_format=NAMEID_TRANSIENT)  # a transient NameID is never "the pseudonym"
    first = read(token, REQ)
    assert first.pseudonym == value and not first.participant_known
    with session_scope(url) as db:
        participants.record(db_session=db, session=first, sp=REQ, name_id=value, name_id_format=NAMEID_PERSISTENT)
    assert read(token, REQ).participant_known
    assert not read(other, REQ).participant_known  # the same person's other session
    assert not read(token, HOLDER_A).participant_known
    with session_scope(url) as db:
        ps.revoke(db_session=db, agency=REQ, value=value)
    revoked = read(token, REQ)
    assert revoked.pseudonym is None and not revoked.participant_known


def test_a_querys_decisions_read_in_one_statement_equal_the_one_by_one_decisions(env):
    """A discovery query decides all its (provider, information type) pairs from one statement
    (`consent.decide_all`: the live whitelist entries and the person's newest policy): the same
    decisions as `consent.decide` one by one, through entries naming an agency or its class, a
    retired entry, no policy, rules in and out of force, deny beside allow, an override, and a
    newest version without rules."""
    from datetime import timedelta

    from consent import service as consent
    from consent.models import ConsentMode, Effect, PolicyRuleIn, WhitelistEntryIn
    from consent.receipts import PiiController, ReceiptIssuer
    from consent.whitelist_io import DEMO_WHITELIST, read_whitelist_file
    from kernel.db import utcnow

    url, keys = env
    issuer = ReceiptIssuer(signing_key=keys.ensure_signing_key("consent"), policy_url="http://127.0.0.1/policy",
                           controller=PiiController(url="http://127.0.0.1"))
    city_a, city_b, insurer, electric = (f"http://127.0.0.1:{port}/metadata" for port in (8101, 8102, 8103, 8104))
    classes = {city_a: {"municipality"}, city_b: {"municipality"}, insurer: {"health_insurer"},
               electric: {"electricity_company"}}
    person, now = "person-decide-all", utcnow()
    entries = read_whitelist_file(DEMO_WHITELIST)
    more = [WhitelistEntryIn(requester=city_b, provider="class:health_insurer", task_code="YOBO-KYUSAI",
                             task_name="t", info_type_code="IRYO-HOKEN-KYUFU", info_type_name="i",
                             legal_basis="City B's own entry beats its class's", consent=ConsentMode.REQUIRED),
            WhitelistEntryIn(requester=city_a, provider=city_b, task_code="JUKI-TENNYU", task_name="t",
                             info_type_code="JUMINHYO", info_type_name="i", legal_basis="to be retired",
                             consent=ConsentMode.OVERRIDE)]
    with session_scope(url) as db:
        consent.import_whitelist(db_session=db, entries=entries)
        for entry in more:
            consent.create_whitelist_entry(db_session=db, entry=entry)
        retired = consent.find_whitelist_entry(db_session=db, requester=city_a, provider=city_b,
                                               task_code="JUKI-TENNYU", info_type_code="JUMINHYO", classes_of=classes)
        retired.retired_at = now - timedelta(minutes=1)
    agencies = list(classes)
    tasks = sorted({e.task_code for e in entries})
    info_types = sorted({e.info_type_code for e in entries}) + ["NOT-LISTED"]
    day = timedelta(days=1)
    policies = [
        None,
        [PolicyRuleIn(effect=Effect.ALLOW, provider="class:municipality", task_code="JUKI-TENNYU")],
        [PolicyRuleIn(effect=Effect.DENY, requester=electric), PolicyRuleIn(effect=Effect.ALLOW),
         PolicyRuleIn(effect=Effect.DENY, provider="class:health_insurer", info_type_code="IRYO-HOKEN-KYUFU")],
        [PolicyRuleIn(effect=Effect.ALLOW, valid_from=now - 2 * day, valid_until=now - day),
         PolicyRuleIn(effect=Effect.ALLOW, requester=city_a, valid_from=now - day, valid_until=now + day),
         PolicyRuleIn(effect=Effect.DENY, provider=city_a, valid_from=now + day)],
        [],
    ]
    compared = permitted = 0
    for rules in policies:
        if rules is not None:
            with session_scope(url) as db:
                consent.set_policy(db_session=db, person_key=person, rules=rules, principal_id="p",
                                   collection_method="test-setup", issuer=issuer)
        with session_scope(url) as db:
            for requester in agencies:
                for task in tasks:
                    pairs = [(p, code) for p in agencies if p != requester for code in info_types]
                    together = consent.decide_all(db_session=db, person_key=person, requester=requester,
                                                  task_code=task, exchanges=pairs, classes_of=classes, at=now)
                    one_by_one = {(p, code): consent.decide(
                        db_session=db, person_key=person, requester=requester, provider=p, task_code=task,
                        info_type_code=code, classes_of=classes, at=now) for p, code in pairs}
                    assert together == one_by_one, (rules, requester, task)
                    compared += len(pairs)
                    permitted += sum(d.permitted for d in together.values())
    assert compared == len(policies) * len(agencies) * len(tasks) * 3 * len(info_types)
    assert 0 < permitted < compared  # the grid holds both answers, not only refusals


def test_a_serving_hub_keeps_its_startup_objects_out_of_the_collectors_sight(hub):
    """`gc.freeze` once the app is up: a full collection no longer walks every module, template
    and key the app holds for its life (a pause of up to ~150 ms that some request would wait
    out). Its own app's lifespan is run here: another test's hub stopping unfreezes (a test
    process goes on after an app), so the session hub's freeze is not what this reads."""
    import asyncio
    import gc

    from renkei.app import create_app

    app = create_app(hub.settings)
    seen: list[int] = []

    async def serve_and_look() -> None:
        gc.unfreeze()
        async with app.router.lifespan_context(app):
            seen.append(gc.get_freeze_count())
        seen.append(gc.get_freeze_count())

    asyncio.run(serve_and_look())
    assert seen[0] > 10_000, "nothing frozen while the app is up"
    assert seen[1] == 0, "still frozen after the app stopped"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/healthz"), ("GET", "/idp/sso"), ("POST", "/idp/sso"),
    ("POST", "/api/discovery/query"), ("POST", "/discovery/soap"),
])
def test_the_hot_paths_and_the_liveness_probe_are_found_among_the_first_routes(hub, method, path):
    """FastAPI tries the app's routes in order, each included router's in turn: the probe a
    load balancer sends every few seconds and the hot paths sit in the first five (FastAPI's
    own /api/openapi.json comes first), not behind the portal's and operators' routers (where
    /healthz took 0.2 ms of matching)."""
    from starlette.routing import Match

    from renkei.app import create_app

    app = create_app(hub.settings)
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    tried = 0
    for route in app.router.routes:
        tried += 1
        if route.matches(dict(scope))[0] == Match.FULL:
            break
    else:
        pytest.fail(f"no route answers {method} {path}")
    assert tried <= 5, f"{method} {path} is matched against {tried} routes"
