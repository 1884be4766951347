#!/usr/bin/env python
"""Relay benchmark: electronic envelopes (電子封筒) relayed by the hub per second, with one 1 MB
attachment and with ten small ones, against the same run's discovery decision figure.

A benchmark, not a test: it prints figures and ratios measured in the same run on the same
machine, so the ratios hold when the absolute numbers move with the hardware or load.

What one relayed envelope is (docs/relay.md)
    Sender S (a municipality) signs an envelope (enveloped XML-DSig, RSA-2048; its attachments
    signed by S's department beforehand). The hub, in this process: parses it hardened,
    verifies S's signature against S's registered key, validates it against envelope.xsd,
    checks the receipt number, routes it by (process type, message type), resolves the
    destination in the service registry, decides it on the discovery path (whitelist, the
    person's policy, the access-history entry), translates the pseudonym, re-signs the
    forwarded envelope with its own key and COMMITS the log entry with the outbox row; then
    delivers it over HTTP (SOAP, or JSON with a JWS) to receiver B, a separate process that
    verifies the hub's and the department's signatures and answers the 受領Ack, which the hub
    records. The sender's own signing is done outside the timed part.
    One discovery decision (the baseline): `discovery.pipeline.discover` for one provider with a
    bootstrap token: whitelist, policy, log and commit, and the provider token (RSA signature +
    two RSA-OAEP encryptions), in this process too, on the same database.

Rows: discovery decisions/s; relayed envelopes/s for {1 x 1 MB, 10 x 2 KB} x {SOAP, JSON};
the ratio to the discovery figure; the hub's CPU ms per operation (this process) and the
receiver's (its process, from /proc). SQLite, then PostgreSQL if a URL is given.

How to run (from the repository root)
    .venv/bin/python bench/relay.py                   # SQLite, 5 s per phase
    .venv/bin/python bench/relay.py --seconds 10
    .venv/bin/python bench/relay.py --postgres-url postgresql://postgres@127.0.0.1:5432/postgres
                                                      # (default: RENKEI_BENCH_POSTGRES_URL)
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import ROOT, say

SENDER = "https://sender.relay-bench.example.jp/sp"
RECEIVER = "https://receiver.relay-bench.example.jp/sp"
INBOX = "urn:renkei:bench:relay-inbox"
RESIDENT = "urn:renkei:bench:resident-record"
TASK, INFO = "JUKI", "JUMINHYO"
DEPARTMENT = SENDER + "#juminka"
MASTER_ID = "5555-6666-7777"
SHAPES = {"1x1MB": [1024 * 1024], "10x2KB": [2048] * 10}


def receiver_app():
    """The receiver process's ASGI app (run with --receiver): EnvelopeReceiver over HTTP."""
    from cryptography import x509
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from renkei_provider import EnvelopeReceiver

    hub = [x509.load_pem_x509_certificate(Path(os.environ["RELAY_BENCH_HUB_PEM"]).read_bytes())]
    dept = [x509.load_pem_x509_certificate(Path(os.environ["RELAY_BENCH_DEPT_PEM"]).read_bytes())]
    receiver = EnvelopeReceiver(hub_keys=hub, department_keys={DEPARTMENT: dept})

    async def inbox(request):
        outcome = receiver.receive(await request.body(), request.headers.get("content-type", ""))
        return Response(outcome.body, media_type=outcome.content_type)

    return Starlette(routes=[Route("/inbox", inbox, methods=["POST"])])


def setup(bench: harness.Bench, label: str, db_url: str) -> dict:
    """A hub home the operator's way (`renkei init`, `agency add`), then the registry, person,
    whitelist and routes through the rooms' service functions; and the receiver process."""
    from cryptography.hazmat.primitives import serialization

    home = bench.tmp / f"home-{label}"
    keys = {"s": harness.rsa_key(), "b": harness.rsa_key(), "dept": harness.rsa_key()}
    certs = {k: harness.make_cert(v, k) for k, v in keys.items()}
    md = {}
    for name, entity_id in (("s", SENDER), ("b", RECEIVER)):
        md[name] = bench.tmp / f"{label}-{name}.xml"
        md[name].write_bytes(harness.sp_metadata(entity_id, entity_id.rsplit("/", 1)[0] + "/acs",
                                                 [("signing", certs[name]), ("encryption", certs[name])],
                                                 authn_requests_signed=True))
    env, _ = harness.set_up_home(home, db_url, [
        (["init"], None),
        (["agency", "add", "--metadata", str(md["s"]), "--class", "municipality"], None),
        (["agency", "add", "--metadata", str(md["b"]), "--class", "municipality"], None),
    ])
    from kernel.db import dispose_engines

    dispose_engines()
    from kernel.keys import current_signing_key

    hub_pem = bench.tmp / f"{label}-hub.pem"
    hub_pem.write_bytes(current_signing_key("discovery").cert_pem)
    dept_pem = bench.tmp / f"{label}-dept.pem"
    dept_pem.write_bytes(certs["dept"].public_bytes(serialization.Encoding.PEM))
    port = harness.reserve_port()
    sock = harness.RESERVED.pop(port)
    receiver_log = open(bench.tmp / f"{label}-receiver.log", "wb")  # noqa: SIM115 - closed at exit
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "relay:receiver_app", "--factory", "--app-dir", str(ROOT / "bench"),
         "--fd", str(sock.fileno()), "--log-level", "warning", "--no-access-log"],
        env={**os.environ, "RELAY_BENCH_HUB_PEM": str(hub_pem), "RELAY_BENCH_DEPT_PEM": str(dept_pem),
             "PYTHONPATH": str(ROOT)},
        pass_fds=(sock.fileno(),), stdout=receiver_log, stderr=subprocess.STDOUT, start_new_session=True)
    sock.close()
    harness.CHILDREN.append(proc)
    inbox_url = f"http://127.0.0.1:{port}/inbox"

    from consent import service as consent
    from consent.models import PolicyRuleIn, WhitelistEntryIn
    from discovery import service as location
    from idp import accounts
    from kernel.db import session_scope
    from kernel.keys import keystore
    from kernel.settings import get_settings
    from pseudonym import service as pseudonyms
    from relay import routes as route_table

    settings = get_settings()
    with session_scope() as db:
        person = accounts.add_person(db_session=db, username="relay-bench", password="relay bench password")
        pseudonyms.register_master_id(db_session=db, keys=keystore(), person_key=person.person_key,
                                      master_id=MASTER_ID)
        for agency in (SENDER, RECEIVER):
            pseudonyms.import_local_links(db_session=db, keys=keystore(), agency=agency,
                                          csv_text=f"L-{agency[-20:]},{MASTER_ID}")
        sender_pseudonym = pseudonyms.get_or_create(db_session=db, keys=keystore(), person_key=person.person_key,
                                                    agency=SENDER, scope=settings.scope)
        receiver_pseudonym = pseudonyms.get_or_create(db_session=db, keys=keystore(),
                                                      person_key=person.person_key, agency=RECEIVER,
                                                      scope=settings.scope)
        location.add_service_type(db_session=db, urn=INBOX, name="inbox", info_types=[INFO])
        location.add_service_type(db_session=db, urn=RESIDENT, name="resident", info_types=[INFO])
        location.add_offering(db_session=db, provider=RECEIVER, service_type=INBOX, endpoint=inbox_url)
        location.add_offering(db_session=db, provider=SENDER, service_type=RESIDENT,
                              endpoint="https://sender.relay-bench.example.jp/provide")
        # one entry serves both directions' shape: B learns S's data (relay), B asks S (discovery)
        consent.import_whitelist(db_session=db, entries=[WhitelistEntryIn(
            requester=RECEIVER, provider=SENDER, task_code=TASK, task_name="住基", info_type_code=INFO,
            info_type_name="住民票", legal_basis="bench", consent="required")])
        consent.set_policy(collection_method="bench", db_session=db, person_key=person.person_key,
                           rules=[PolicyRuleIn(effect="allow", requester=RECEIVER)], principal_id="relay-bench")
        for binding in ("soap", "json"):
            route_table.set_route(db_session=db, route=route_table.Route("bench", binding, (
                route_table.Destination("b", RECEIVER, INBOX, TASK, INFO, (), binding),), owner="bench"))
    deadline = time.monotonic() + 30
    import httpx

    while True:
        try:
            httpx.get(inbox_url, timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the receiver process did not start") from None
            time.sleep(0.05)
    return {"env": env, "db_url": db_url, "keys": keys, "sender_pseudonym": sender_pseudonym,
            "receiver_pseudonym": receiver_pseudonym, "receiver": proc, "settings": settings}


def receiver_cpu(proc: subprocess.Popen) -> float:
    return harness.group_cpu_seconds(os.getpgid(proc.pid))


def bench_discovery(ctx: dict, seconds: float) -> dict:
    from discovery import pipeline
    from federation import service as agencies
    from kernel.db import session_scope
    from kernel.keys import keystore
    from pseudonym.bootstrap import issue_bootstrap

    settings = ctx["settings"]
    token = issue_bootstrap(keys=keystore(), audience=pipeline.discovery_entity_id(settings), requester=RECEIVER,
                            pseudonym=ctx["receiver_pseudonym"], expires=int(time.time()) + 3600)
    person = pipeline.PersonRef(bootstrap_token=token)

    def one(_i: int) -> None:
        with session_scope() as db:
            requester = agencies.lookup(db_session=db, entity_id=RECEIVER)
            decisions = pipeline.discover(db_session=db, settings=settings, requester=requester, person=person,
                                          service_type=RESIDENT, task=TASK, info_type=INFO)
            if not decisions or not decisions[0].token:
                raise SystemExit(f"discovery gave no token: {decisions}")

    for i in range(10):
        one(i)
    return harness.time_box("discovery decisions", one, seconds)


def bench_relay(ctx: dict, shape: str, binding: str, seconds: float) -> dict:
    """Envelopes relayed per second, the sender's signing left out of the timed part."""
    from kernel.db import session_scope
    from relay import service
    from renkei_provider import envelope as E

    settings = ctx["settings"]
    dept_key = ctx["keys"]["dept"]
    attachments = []
    for i, size in enumerate(SHAPES[shape]):
        a = E.new_attachment(name=f"doc{i}", file_name=f"doc{i}.bin", media_type="application/octet-stream",
                             content=secrets.token_bytes(size))
        attachments.append(E.sign_attachment_xml(a, dept_key, department=DEPARTMENT))
    nonce = secrets.token_hex(4)

    def signed(i: int) -> bytes | str:
        env = E.new_envelope(
            receipt_number=f"B-{nonce}-{shape}-{binding}-{i}", sender=SENDER, to="b", reply_to="s",
            attributes=[(E.PROCESS_TYPE, "bench"), (E.MESSAGE_TYPE, binding), (E.PERSON, ctx["sender_pseudonym"])],
            attachments=attachments)
        return E.sign_json(env, ctx["keys"]["s"]) if binding == "json" else E.sign_xml(env, ctx["keys"]["s"])

    import httpx

    client = httpx.Client()
    scope = session_scope

    def relay_one(message) -> None:
        with session_scope() as db:
            if binding == "json":
                result = service.receive_jws(db_session=db, settings=settings, token=message)
            else:
                result = service.receive_xml(db_session=db, settings=settings, data=message)
        service.run_deliveries(session_scope=scope, settings=settings, only=result.delivery_ids, client=client)
        with session_scope() as db:
            [state] = service.status(db_session=db, sender=SENDER, receipt_number=result.receipt_number).deliveries
        if state.state != "delivered" or state.ack_status != "received":
            raise SystemExit(f"not delivered: {state}")

    for i in range(3):  # warm-up
        relay_one(signed(10_000_000 + i))
    label = f"relay {shape} {binding}"
    progress = harness.Progress(label, seconds=seconds)
    hub_cpu = hub_wall = 0.0
    recv_start = receiver_cpu(ctx["receiver"])
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        message = signed(done)  # the sender's work, not timed
        c0, w0 = time.process_time(), time.perf_counter()
        relay_one(message)
        hub_cpu += time.process_time() - c0
        hub_wall += time.perf_counter() - w0
        done += 1
        progress.update(done)
    progress.finish()
    client.close()
    recv = receiver_cpu(ctx["receiver"]) - recv_start
    return {"ops": done, "seconds": hub_wall, "rate": done / hub_wall, "cpu_ms_per_op": hub_cpu / done * 1000,
            "receiver_cpu_ms_per_op": recv / done * 1000,
            "bytes": len(signed(0))}


def run_database(bench: harness.Bench, label: str, db_url: str, seconds: float) -> list[tuple]:
    from kernel.db import dispose_engines
    from kernel.settings import reset_settings

    ctx = setup(bench, label, db_url)
    disco = bench_discovery(ctx, seconds)
    rows = [(f"{label}: discovery decision", disco, None)]
    bench.results[f"{label}/discovery"] = disco
    for shape in SHAPES:
        for binding in ("soap", "json"):
            result = bench_relay(ctx, shape, binding, seconds)
            bench.results[f"{label}/relay/{shape}/{binding}"] = result
            rows.append((f"{label}: relay {shape} {binding}", result, disco["rate"]))
    harness.kill_group(ctx["receiver"])
    dispose_engines()
    reset_settings()
    return rows


def run(args, bench: harness.Bench) -> int:
    rows = run_database(bench, "sqlite", f"sqlite:///{bench.tmp / 'relay.sqlite3'}", args.seconds)
    if args.postgres_url:
        url = bench.postgres_database(args.postgres_url, f"renkei_relay_bench_{os.getpid()}")
        rows += run_database(bench, "postgres", url, args.seconds)
    width = 112
    say()
    say("=" * width)
    say(f"{'phase':<34} {'ops/s':>8} {'vs disco':>9} {'hub CPU ms/op':>14} {'CPU vs disco':>13} "
        f"{'receiver ms/op':>15} {'envelope bytes':>15}")
    say("-" * width)
    disco_cpu = {}
    for name, r, baseline in rows:
        db = name.split(":")[0]
        if baseline is None:
            disco_cpu[db] = r["cpu_ms_per_op"]
        ratio = f"{r['rate'] / baseline:.2f}x" if baseline else "-"
        cpu_ratio = f"{disco_cpu[db] / r['cpu_ms_per_op']:.2f}x" if baseline else "-"
        say(f"{name:<34} {r['rate']:>8.1f} {ratio:>9} {r['cpu_ms_per_op']:>14.1f} {cpu_ratio:>13} "
            f"{harness.fmt(r.get('receiver_cpu_ms_per_op'), '.1f'):>15} {harness.fmt(r.get('bytes'), ',d'):>15}")
    say("=" * width)
    say("ops/s: wall-clock of the hub's part (receiver time included for relays: delivery is synchronous).")
    say("'vs disco' = relay rate / discovery rate; 'CPU vs disco' = discovery CPU ms / relay CPU ms (the")
    say("steadier ratio on a shared machine). Receiver ms/op: the receiver process's CPU per envelope.")
    return harness.finish(bench, args, None)


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per timed phase (default 5)")
    parser.add_argument("--postgres-url", default=os.environ.get("RENKEI_BENCH_POSTGRES_URL"),
                        help="admin URL of a PostgreSQL server (default: RENKEI_BENCH_POSTGRES_URL)")
    harness.add_output_arguments(parser)
    args = parser.parse_args()
    return harness.run_bench("Renkei relay benchmark", "renkei-relay-bench-", args, lambda b: run(args, b))


if __name__ == "__main__":
    sys.exit(main())
