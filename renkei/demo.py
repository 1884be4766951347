"""`renkei demo`: build the demo federation from config/demo.yaml and serve it on localhost.

Creates keys and the schema, registers each demo agency from its own SP metadata, adds demo
people with generated passwords (kept in RENKEI_HOME/demo-people.txt, printed), links local
record IDs, then runs the hub and the agency apps in one process.
"""
from __future__ import annotations

import asyncio
import html
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import uvicorn
import yaml
from agency_demo import AgencyConfig, create_agency_app, sp_metadata
from agency_demo.oidc_rp import client_metadata_json, create_oidc_agency_app

from consent import service as consent
from consent.models import PolicyRuleIn
from consent.receipts import COLLECTED_AT_DEMO_SETUP
from consent.whitelist_io import parse_yaml
from discovery import service as location
from federation import oidc as oidc_agencies
from federation import service as agencies
from idp import accounts
from idp.accounts import totp
from kernel.db import session_scope, upgrade
from kernel.keys import keystore
from kernel.settings import get_settings, reset_settings
from pseudonym import service as pseudonyms
from renkei.app import create_app
from renkei.provisioning import ensure_hub_keys, register_portal

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"


@dataclass
class DemoAgency:
    key: str
    name: str
    agency_class: str
    port: int
    host: str
    protocol: str = "saml"  # or "oidc": an OpenID Connect relying party (agency_demo.oidc_rp)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def entity_id(self) -> str:
        return f"{self.base_url}/metadata"


def fill_placeholders(text: str, values: dict[str, str]) -> str:
    """Replace `{agency-key}` with the agency's entity ID (other braces stay as they are)."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def load_config(path: Path | None) -> dict:
    path = path or DEFAULT_CONFIG
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise click.ClickException(f"cannot read the demo federation {path}: {exc}") from None


def agency_config(agency: DemoAgency, hub_url: str, home: Path, config: dict | None = None):
    """The demo agency app's settings: its lookups (scenarios), what it provides, its records."""
    config = config or {}
    return AgencyConfig(
        entity_id=agency.entity_id,
        name=agency.name,
        base_url=agency.base_url,
        hub_base_url=hub_url,
        key_dir=home / "agencies" / agency.key,
        scenarios=tuple(
            (s["title"], s["service_type"], s["task"], s.get("info_type"), s["expect"])
            for s in config.get("scenarios") or []
            if s["requester"] == agency.key
        ),
        provides=tuple(o["service_type"] for o in config.get("offerings") or []
                       if o["provider"] == agency.key and "/provide/" in o["endpoint"]),
        records=(config.get("records") or {}).get(agency.key, {}),
        processes=tuple((c["process"], c["title"]) for c in (config.get("counters") or {}).get(agency.key, [])),
    )


def setup(config: dict, config_dir: Path = DEFAULT_CONFIG.parent) -> tuple[list[DemoAgency], dict[str, str]]:
    """Create everything the demo needs (idempotent); returns the agencies and people's passwords."""

    settings = get_settings()
    upgrade(settings.db_url)
    ensure_hub_keys()
    register_portal(settings.db_url)
    keys = keystore()
    host = config["hub"].get("host", "127.0.0.1")
    demo_agencies = [
        DemoAgency(a["key"], a["name"], a.get("class", ""), int(a["port"]), host, a.get("protocol", "saml"))
        for a in config["agencies"]
    ]
    passwords = _passwords(settings.home, [p["username"] for p in config["people"]])
    with session_scope() as db:
        for a in demo_agencies:
            if a.protocol == "oidc":
                oidc_agencies.register_oidc(
                    db_session=db, metadata=client_metadata_json(agency_config(a, settings.base_url, settings.home)),
                    agency_class=a.agency_class, name=a.name, replace=True)
                continue
            metadata = sp_metadata(agency_config(a, settings.base_url, settings.home, config))
            agencies.register(db_session=db, metadata=metadata.encode(), agency_class=a.agency_class,
                              name=a.name, replace=True)
        for p in config["people"]:
            existing = accounts.find(db_session=db, username=p["username"])
            if existing is None:
                person = accounts.add_person(
                    db_session=db, username=p["username"], password=passwords[p["username"]],
                    display_name=p.get("display_name", ""),
                    totp_secret=accounts.new_totp_secret() if p.get("totp") else None,
                )
                if p.get("master_id"):
                    pseudonyms.register_master_id(
                        db_session=db, keys=keys, person_key=person.person_key, master_id=p["master_id"]
                    )
        by_key = {a.key: a for a in demo_agencies}
        for agency_key, rows in (config.get("links") or {}).items():
            text = "\n".join(f"{local},{master}" for local, master in rows)
            pseudonyms.import_local_links(
                db_session=db, keys=keys, agency=by_key[agency_key].entity_id, csv_text=text,
                source=f"demo.yaml links.{agency_key}",
            )
        entity_ids = {a.key: a.entity_id for a in demo_agencies}
        _load_exchange_rules(db, config, entity_ids, config_dir)
    return demo_agencies, passwords


def _load_exchange_rules(db, config: dict, entity_ids: dict[str, str], config_dir: Path) -> None:
    """Service types, offerings, the whitelist and people's policies of the demo federation."""

    location.load_location_config(db_session=db, config=config, entity_ids=entity_ids)
    if config.get("whitelist"):
        path = config_dir / config["whitelist"]
        text = fill_placeholders(path.read_text(encoding="utf-8"), entity_ids)
        consent.import_whitelist(db_session=db, entries=parse_yaml(text, source=path.name), replace=True)
    for username, rules in (config.get("policies") or {}).items():
        person = accounts.find(db_session=db, username=username)
        if consent.get_current_policy(db_session=db, person_key=person.person_key) is not None:
            continue  # the person may have changed it since; keep theirs
        consent.set_policy(
            db_session=db, person_key=person.person_key, principal_id=username,
            collection_method=COLLECTED_AT_DEMO_SETUP,
            rules=[PolicyRuleIn(effect=r["effect"], requester=entity_ids.get(r.get("requester"), r.get("requester")),
                                provider=entity_ids.get(r.get("provider"), r.get("provider")),
                                task_code=r.get("task"), info_type_code=r.get("info_type"))
                   for r in rules],
        )


def _passwords(home: Path, usernames: list[str]) -> dict[str, str]:
    """Demo passwords, generated once and kept beside the keys (never in git)."""
    path = home / "demo-people.txt"
    known: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, pw = line.partition(" ")
            known[name] = pw
    for name in usernames:
        known.setdefault(name, secrets.token_urlsafe(9))
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{n} {pw}\n" for n, pw in known.items()))
    return known


def bind_ports(config: dict) -> dict[str, socket.socket]:
    """Bind the hub's and every agency's listening socket before any URL is written down.

    A port of 0 lets the kernel choose a free one (the config is updated with it, and the
    hub's base URL follows); the sockets stay open until uvicorn serves on them, so no other
    process can take a port between choosing and serving."""
    host = config["hub"].get("host", "127.0.0.1")
    sockets: dict[str, socket.socket] = {}
    for key, entry in [("hub", config["hub"]), *((a["key"], a) for a in config["agencies"])]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(entry.get("port", 8000))))
        except OSError as exc:
            sock.close()
            for bound in sockets.values():
                bound.close()
            raise click.ClickException(f"cannot listen on {host}:{entry.get('port')} ({key}): {exc}") from None
        if int(entry.get("port", 8000)) == 0 and key == "hub":
            # the hub's URL is in its metadata and every agency's config: it must be the real one
            os.environ["RENKEI_BASE_URL"] = f"http://{host}:{sock.getsockname()[1]}"
            reset_settings()
        entry["port"] = sock.getsockname()[1]
        sockets[key] = sock
    return sockets


def run(*, config_file: Path | None, serve: bool, run_scenarios: bool = False) -> None:
    """Set up the demo federation, print its URLs and people, and serve it (or run its lookups)."""

    config = load_config(config_file)
    sockets = bind_ports(config) if serve or run_scenarios else {}
    settings = get_settings()
    demo_agencies, passwords = setup(config, (config_file or DEFAULT_CONFIG).parent)
    with session_scope() as db:
        totp = {p["username"]: accounts.totp_secret_of(
                    keys=keystore(), person=accounts.find(db_session=db, username=p["username"]))
                for p in config["people"]}
    click.echo("Renkei demo federation")
    click.echo(f"  hub (IdP):          {settings.base_url}/   metadata {settings.idp_entity_id}")
    for a in demo_agencies:
        click.echo(f"  {a.name}:\n                      {a.base_url}/")
    click.echo(f"  マイ連携ポータル (citizen portal):\n                      {settings.base_url}/portal/")
    click.echo("people (username / password; each logs in at the agencies and at the portal):")
    for name, pw in passwords.items():
        extra = f"   TOTP secret {totp[name]} (e.g. `oathtool --totp -b {totp[name]}`)" if totp.get(name) else ""
        click.echo(f"  {name} / {pw}{extra}")
    click.echo(f"state kept in {settings.home} (delete it to start afresh)")
    if not serve and not run_scenarios:
        return
    if not os.environ.get("RENKEI_REQUEST_LOG"):  # the terminal is the demo's; its requests go to a file
        settings = settings.model_copy(update={"request_log": str(settings.home / "requests.log")})
        click.echo(f"request log in {settings.request_log}")
    servers = [(uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning")), sockets["hub"])]
    for a in demo_agencies:
        make_app = create_oidc_agency_app if a.protocol == "oidc" else create_agency_app
        app = make_app(agency_config(a, settings.base_url, settings.home, config))
        servers.append((uvicorn.Server(uvicorn.Config(app, log_level="warning")), sockets[a.key]))

    async def serve_all() -> None:
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in servers))

    if run_scenarios:
        thread = threading.Thread(target=lambda: asyncio.run(serve_all()), daemon=True)
        thread.start()
        try:
            ok = run_lookups(config, demo_agencies, passwords, totp, [server for server, _ in servers])
            ok = run_processes(config, demo_agencies, (config_file or DEFAULT_CONFIG).parent, passwords,
                               totp) and ok
        finally:
            for server, _ in servers:
                server.should_exit = True
            thread.join(timeout=10)
        if not ok:
            raise SystemExit(1)
        return
    thread = threading.Thread(target=lambda: asyncio.run(serve_all()), daemon=True)
    thread.start()
    seeded = settings.home / "demo-history-seeded"
    if not seeded.exists():  # the first run leaves the scenarios' exchanges in the history
        run_lookups(config, demo_agencies, passwords, totp, [server for server, _ in servers])
        run_processes(config, demo_agencies, (config_file or DEFAULT_CONFIG).parent, passwords, totp)
        seeded.write_text("the demo scenarios ran once; the portal's history shows them\n")
    click.echo("Open an agency URL or the portal above and log in. Ctrl-C stops everything.")
    try:
        while thread.is_alive():
            thread.join(timeout=1)
    except KeyboardInterrupt:
        for server, _ in servers:
            server.should_exit = True
        thread.join(timeout=10)


def run_lookups(config: dict, demo_agencies: list[DemoAgency], passwords: dict[str, str],
                totp_secrets: dict[str, str | None], servers) -> bool:
    """Each scenario as a browser would run it: log the person in at the requesting agency,
    press its lookup button, print the hub's decision for every provider. True if all came
    out as the configuration expects."""
    deadline = time.monotonic() + 30
    while not all(s.started for s in servers):
        if time.monotonic() > deadline:
            raise click.ClickException("the demo servers did not start")
        time.sleep(0.05)
    by_key = {a.key: a for a in demo_agencies}
    all_ok = True
    click.echo("\nscenarios:")
    for scenario in config.get("scenarios") or []:
        agency = by_key[scenario["requester"]]
        index = [s for s in config["scenarios"] if s["requester"] == agency.key].index(scenario)
        with httpx.Client(timeout=30, follow_redirects=True) as browser:
            home = _log_in(browser, agency, scenario["person"], passwords, totp_secrets)
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', home).group(1)
            answer = browser.post(f"{agency.base_url}/lookup", data={"csrf_token": csrf, "scenario": str(index)},
                                  headers={"Accept": "application/json"})
        if answer.status_code != 200:
            click.echo(f"  ✗ {scenario['title']}: the agency answered {answer.status_code} {answer.text[:200]}")
            all_ok = False
            continue
        results = answer.json()
        matched = any(r["reason"] == scenario["expect"] for r in results)
        all_ok = all_ok and matched
        click.echo(f"  {'✓' if matched else '✗'} {scenario['title']}  [{agency.key} asks, task {scenario['task']}]")
        for r in results:
            verdict = "permitted" if r["permitted"] else "refused"
            fetched = f"; record: {r['record']}" if r.get("record") else ""
            click.echo(f"      {r['provider_name']}: {verdict} ({r['reason']}), decision {r['decision_id']}{fetched}")
        if not results:
            click.echo("      no provider holds data for this person")
    click.echo("all scenarios decided as expected" if all_ok else "some scenarios did not decide as expected")
    return all_ok


def run_processes(config: dict, demo_agencies: list[DemoAgency], config_dir: Path, passwords: dict[str, str],
                  totp_secrets: dict[str, str | None]) -> bool:
    """The demo's business process flows: each definition through its lifecycle (installed,
    implemented, conformance-tested against the running demo agencies, operating), then each
    run filed by its person at the trigger agency's counter app, every step's outcome printed.
    True if every run's steps ended as the configuration expects."""
    from process import conformance, service
    from process.definition import DefinitionInvalid, load_definition

    if not config.get("processes"):
        return True
    settings = get_settings()
    entity_ids = {a.key: a.entity_id for a in demo_agencies}
    click.echo("\nbusiness process flows:")
    for name in config["processes"]:
        try:
            definition, text = load_definition(config_dir / name, placeholders=entity_ids)
        except DefinitionInvalid as exc:
            raise click.ClickException(str(exc)) from None
        with session_scope() as db:
            try:
                installed, _ = service.install(db_session=db, definition=definition, source=text)
            except service.ProcessError as exc:  # e.g. the agencies' ports changed since the last run
                click.echo(f"  ✗ {exc} (delete {settings.home} to start afresh)")
                return False
            if installed.status.value == "defined":
                installed = service.mark_implemented(db_session=db, process_id=definition.id,
                                                     version=definition.version)
        for party in sorted(service.conformance_parties(definition)):
            # the agencies write to the hub while they are tested: hold no transaction meanwhile
            with session_scope() as db:
                report = conformance.run_conformance(db_session=db, settings=settings, installed=installed,
                                                     agency=party)
            with session_scope() as db:
                installed = service.record_conformance(db_session=db, installed=installed, agency=party,
                                                       passed=report.passed, report=report.to_json())
            click.echo(f"  conformance of {_agency_name(demo_agencies, party)}: "
                       f"{'passed' if report.passed else 'FAILED'} "
                       f"({sum(c.passed for c in report.checks)}/{len(report.checks)} checks)")
            for c in report.checks:
                if not c.passed:
                    click.echo(f"      ✗ {c.activity}: {c.name}: expected {c.expected}, but {c.observed}")
        if installed.status.value == "conformance-tested":
            with session_scope() as db:
                installed = service.put_into_operation(db_session=db, process_id=definition.id,
                                                       version=definition.version)
        click.echo(f"  {definition.name} v{definition.version} (owner {definition.owner.name}): "
                   f"{installed.status}")
    all_ok = True
    for scenario in config.get("process_runs") or []:
        answer = _file_at_counter(config, demo_agencies, scenario, passwords, totp_secrets)
        if answer.status_code != 200:
            click.echo(f"  ✗ {scenario['title']}: the hub answered {answer.status_code} {answer.text[:300]}")
            all_ok = False
            continue
        run = answer.json()
        got = {s["activity"]: s["status"] for s in run["steps"]}
        ok = all(got.get(k) == v for k, v in (scenario.get("expect") or {}).items())
        all_ok = all_ok and ok
        click.echo(f"  {'✓' if ok else '✗'} {scenario['title']}  [run {run['instance_id']}, {run['status']}]")
        for s in run["steps"]:
            received = f"; received: {s['received']}" if s.get("received") else ""
            click.echo(f"      {s['name']}: {s['status']} ({s['reason']}){received}")
    click.echo("all process runs ended as expected" if all_ok else "some process runs did not end as expected")
    return all_ok


def _agency_name(demo_agencies: list[DemoAgency], entity_id: str) -> str:
    return next((a.name for a in demo_agencies if a.entity_id == entity_id), entity_id)


def _file_at_counter(config: dict, demo_agencies: list[DemoAgency], scenario: dict, passwords: dict[str, str],
                     totp_secrets: dict[str, str | None]) -> httpx.Response:
    """As a browser would: the person signs in at the counter agency and files the application."""
    counter = next(a for a in demo_agencies if a.key == scenario["counter"])
    offered = [c["process"] for c in (config.get("counters") or {}).get(counter.key, [])]
    with httpx.Client(timeout=120, follow_redirects=True) as browser:
        home = _log_in(browser, counter, scenario["person"], passwords, totp_secrets)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', home).group(1)
        return browser.post(f"{counter.base_url}/process", headers={"Accept": "application/json"},
                            data={"csrf_token": csrf, "process": str(offered.index(scenario["process"])),
                                  "new_address": scenario["new_address"]})


def _log_in(browser, agency: DemoAgency, username: str, passwords: dict[str, str],
            totp_secrets: dict[str, str | None]) -> str:
    """SP-initiated SSO through the hub's login page; returns the agency's home page."""

    page = browser.get(f"{agency.base_url}/login")
    pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
    page = browser.post(str(page.url), data={"pending": pending, "username": username,
                                             "password": passwords[username]})
    if 'name="code"' in page.text:
        page = browser.post(str(page.url).rsplit("/", 1)[0] + "/login/totp",
                            data={"pending": pending, "code": totp(totp_secrets[username])})
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.text))
    return browser.post(html.unescape(action), data={k: html.unescape(v) for k, v in fields.items()}).text
