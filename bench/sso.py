#!/usr/bin/env python
"""SSO throughput benchmark: pysaml2 + xmlsec1 against Renkei, in-process and over HTTP.

A benchmark, not a test: it prints figures and ratios measured in the same run on the same
machine, so the ratios hold even when the absolute numbers move with the hardware or load.

What each phase measures
  1. baseline      pysaml2's IdP (`saml2.server.Server`) with its default crypto backend,
                   which runs the `xmlsec1` binary once per signature, creating SSO responses
                   signed twice (`create_authn_response(sign_response=True,
                   sign_assertion=True)`) for a generated SP. Responses/second over a fixed
                   count (30; --quick 5), after one untimed warm-up response.
  2. in-process    Renkei's own path: for each response a new `idp.saml.AuthnRequest`, then in
                   one `renkei.db.session_scope()` the session lookup
                   (`idp.service.current_session`) and `idp.service.answer_success` (builds
                   the assertion, gets the pairwise pseudonym from the database, signs the
                   assertion and the Response with `renkei.xmlsecurity.sign_enveloped`, base64).
                   Time-boxed (5 s; --quick 1.5 s) in this one process, i.e. on one core.
  2b. full path    What `GET /idp/sso` does without the web stack: inflate and parse an unsigned
                   HTTP-Redirect AuthnRequest, `idp.service.check_authn_request` (agency
                   lookup, bounds, replay-cache insert), session lookup, `answer_success` and
                   the HTTP-POST-binding page. Same time box.
  2c. crypto floor What one RSA-2048 signature with the IdP's key costs here: two per response
                   bound phase 2 (and the ratio it can reach) whatever else gets faster.
  3. HTTP          `renkei serve --workers 2` in a subprocess, driven by `wrk` (2 threads,
                   50 connections, 10 s; --duration) with real SSO requests: distinct unsigned
                   AuthnRequests (HTTP-Redirect binding by default, --binding post for the
                   HTTP-POST binding) precomputed into a file that a generated wrk Lua script
                   cycles through, carrying the session cookie `renkei_idp=<token>`. Each ID is
                   used once (the IdP refuses replays). One request is checked before the run
                   (200, a SAMLResponse form holding a doubly-signed Success Response); after
                   it, non-2xx responses, short bodies (an error Response instead of an
                   assertion), socket errors and wrapped-around request lists must all be zero,
                   and the replay cache must hold a row for every answered request.
                   Requests/second and latency p50/p99 (wrk --latency), plus the server's CPU
                   per request read from /proc. wrk runs on the same 2 cores as the two
                   workers, so it takes a share of them. Before the SSO run, a 3 s wrk run on
                   GET /healthz of the same server gives the web stack's own floor.
  3b. PostgreSQL   Phase 3 again against a fresh database created on the server that
                   RENKEI_BENCH_POSTGRES_URL names (dropped at the end); skipped without it.

The table at the end has, per phase, ops/s, the ratio to the baseline and CPU ms per op (for
pysaml2 including its xmlsec1 children; for HTTP the server's processes), which moves less than
wall-clock rates when other work shares the machine. The exit status is 1 if an HTTP check
failed, 0 otherwise (missed targets are reported, not failed).

Setup is done the operator's way: a temp RENKEI_HOME, `renkei init` and `renkei agency add
--metadata` (through click's CliRunner), `idp.accounts.add_person`, `idp.service.start_session`.
Keys, databases, request files and logs live in a temp dir that is removed at exit; the server
subprocess (its own process group) is stopped on exit, on error and on Ctrl-C.

How to run (from the repository root)
    .venv/bin/python bench/sso.py                 # full run, about 45 s (+20 s with PostgreSQL)
    .venv/bin/python bench/sso.py --quick         # smoke run, under 30 s
    .venv/bin/python bench/sso.py --skip-http     # phases 1 and 2 only
    .venv/bin/python bench/sso.py --duration 30   # longer wrk run
    .venv/bin/python bench/sso.py --profile       # also cProfile the in-process full path
    RENKEI_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/sso.py             # adds phase 3b

Needs pysaml2 (the `test` extra), the `xmlsec1` binary and `wrk` (Debian packages).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from urllib.parse import quote_plus, unquote_plus

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MD_NS = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"

SP_ENTITY_ID = "https://bench-city.example.jp/sp"
SP_ACS = "https://bench-city.example.jp/acs"
USERNAME = "bench-person"
PASSWORD = "bench password 1234"
SESSION_COOKIE = "renkei_idp"

TARGET_RATIO = 100.0
TARGET_HTTP = 1500.0

_children: list[subprocess.Popen] = []  # started process groups, stopped at exit


# --- small helpers -------------------------------------------------------------------------

def say(msg: str = "") -> None:
    print(msg, flush=True)


class Progress:
    """A one-line progress indication on stderr, at most once a second."""

    def __init__(self, label: str, total: int | None = None, seconds: float | None = None,
                 show_rate: bool = True):
        self.label, self.total, self.seconds, self.show_rate = label, total, seconds, show_rate
        self.start = time.perf_counter()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        elapsed = now - self.start
        parts = [f"  {self.label}"]
        if self.show_rate or self.total:
            parts.append(f": {done}")
        if self.total:
            parts.append(f"/{self.total}")
        if self.seconds:
            parts.append(f" ({min(elapsed, self.seconds):.0f}/{self.seconds:.0f} s)")
        if self.show_rate and done and elapsed > 0:
            parts.append(f", {done / elapsed:,.1f}/s")
        line = "".join(parts)
        if self.tty:
            sys.stderr.write("\r" + line.ljust(70))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saml_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_key_and_cert(common_name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now.replace(year=now.year - 1)).not_valid_after(now.replace(year=now.year + 1))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def sp_metadata(entity_id: str, acs: str, cert, *, authn_requests_signed: bool = False) -> bytes:
    """An SP EntityDescriptor with one signing certificate and one HTTP-POST ACS."""
    from cryptography.hazmat.primitives import serialization

    der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<md:EntityDescriptor xmlns:md="{MD_NS}" xmlns:ds="{DS_NS}" entityID="{entity_id}">'
        f'<md:SPSSODescriptor protocolSupportEnumeration="{SAMLP_NS}" '
        f'AuthnRequestsSigned="{str(authn_requests_signed).lower()}" WantAssertionsSigned="true">'
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{der}'
        f"</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        f'<md:AssertionConsumerService Binding="{POST}" Location="{acs}" index="0" isDefault="true"/>'
        f"</md:SPSSODescriptor></md:EntityDescriptor>\n"
    ).encode()


def check_response_xml(xml: bytes, *, what: str) -> None:
    """A Success Response whose Response and Assertion are both signed, or SystemExit."""
    from lxml import etree

    root = etree.fromstring(xml)
    status = root.find(f"{{{SAMLP_NS}}}Status/{{{SAMLP_NS}}}StatusCode")
    assertion = root.find(f"{{{SAML_NS}}}Assertion")
    ok = (
        root.tag == f"{{{SAMLP_NS}}}Response"
        and status is not None and status.get("Value") == SUCCESS
        and root.find(f"{{{DS_NS}}}Signature") is not None
        and assertion is not None and assertion.find(f"{{{DS_NS}}}Signature") is not None
    )
    if not ok:
        message = root.findtext(f"{{{SAMLP_NS}}}Status/{{{SAMLP_NS}}}StatusMessage")
        codes = [c.get("Value") for c in root.iter(f"{{{SAMLP_NS}}}StatusCode")]
        raise SystemExit(f"{what}: not a doubly-signed Success Response: status {codes}, "
                         f"message {message!r}, assertion {'present' if assertion is not None else 'absent'}")


# --- phase 1: pysaml2 with the xmlsec1 binary ----------------------------------------------

def bench_pysaml2(tmp: Path, count: int, idp_base: str) -> dict:
    warnings.filterwarnings("ignore", module="saml2")
    warnings.filterwarnings("ignore", message=".*CFB.*")
    from cryptography.hazmat.primitives import serialization
    from saml2 import BINDING_HTTP_REDIRECT, xmldsig
    from saml2.config import IdPConfig
    from saml2.saml import (
        AUTHN_PASSWORD_PROTECTED,
        NAME_FORMAT_URI,
        NAMEID_FORMAT_PERSISTENT,
        NameID,
    )
    from saml2.server import Server

    xmlsec = shutil.which("xmlsec1")
    if not xmlsec:
        raise SystemExit("the xmlsec1 binary is not installed (apt-get install xmlsec1)")
    d = tmp / "pysaml2"
    d.mkdir()
    key, cert = make_key_and_cert("pysaml2 bench idp")
    (d / "idp.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (d / "idp.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _sp_key, sp_cert = make_key_and_cert("bench sp")
    (d / "sp.xml").write_bytes(sp_metadata(SP_ENTITY_ID, SP_ACS, sp_cert))
    entity_id = f"{idp_base}/idp/metadata"
    config = IdPConfig()
    config.load({
        "entityid": entity_id,
        "xmlsec_binary": xmlsec,  # no crypto_backend: the default, xmlsec1 as a subprocess
        "key_file": str(d / "idp.key"),
        "cert_file": str(d / "idp.crt"),
        "metadata": {"local": [str(d / "sp.xml")]},
        "service": {"idp": {
            "endpoints": {"single_sign_on_service": [(f"{idp_base}/idp/sso", BINDING_HTTP_REDIRECT)]},
            "policy": {"default": {"lifetime": {"minutes": 5}, "attribute_restrictions": None,
                                   "name_form": NAME_FORMAT_URI}},
            "name_id_format": [NAMEID_FORMAT_PERSISTENT],
        }},
        "delete_tmpfiles": True,
    })
    server = Server(config=config)
    backend = type(server.sec.crypto).__name__
    pseudonym = "u4kd2n5xq7w3bench@renkei.localhost"

    def one(i: int) -> str:
        return str(server.create_authn_response(
            {"pairwise-id": [pseudonym]}, f"_pysaml2req{i}", SP_ACS, SP_ENTITY_ID,
            name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=pseudonym,
                           name_qualifier=entity_id, sp_name_qualifier=SP_ENTITY_ID),
            authn={"class_ref": AUTHN_PASSWORD_PROTECTED},
            sign_response=True, sign_assertion=True,
            sign_alg=xmldsig.SIG_RSA_SHA256, digest_alg=xmldsig.DIGEST_SHA256,
        ))

    check_response_xml(one(0).encode(), what="pysaml2")  # warm-up, and a check
    progress = Progress("pysaml2 responses", total=count)
    cpu_start = _cpu_with_children()
    start = time.perf_counter()
    for i in range(1, count + 1):
        one(i)
        progress.update(i)
    elapsed = time.perf_counter() - start
    cpu = _cpu_with_children() - cpu_start
    progress.finish()
    return {"ops": count, "seconds": elapsed, "rate": count / elapsed, "backend": backend,
            "cpu_ms_per_op": cpu / count * 1000}


def _cpu_with_children() -> float:
    """CPU seconds of this process and its waited-for children (pysaml2's xmlsec1 runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# --- hub setup -----------------------------------------------------------------------------

@dataclass
class Hub:
    """A Renkei home and database prepared the operator's way, with one SP and one session."""

    env: dict[str, str]
    db_url: str
    port: int
    token: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.env["RENKEI_BASE_URL"]


def prepare_hub(home: Path, db_url: str, sp_md_path: Path) -> Hub:
    from click.testing import CliRunner

    from idp import accounts, service
    from renkei.cli import main
    from renkei.db import session_scope
    from renkei.settings import get_settings, reset_settings

    port = free_port()
    env = {
        "RENKEI_HOME": str(home),
        "RENKEI_DATABASE_URL": db_url,
        "RENKEI_BASE_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(env)
    reset_settings()
    runner = CliRunner()
    for args in (["init"], ["agency", "add", "--metadata", str(sp_md_path)]):
        result = runner.invoke(main, args)
        if result.exit_code != 0:
            raise SystemExit(f"renkei {' '.join(args)} failed:\n{result.output}")
    settings = get_settings()
    with session_scope(db_url) as db:
        person = accounts.add_person(db_session=db, username=USERNAME, password=PASSWORD)
        person_key = person.person_key
    with session_scope(db_url) as db:
        token = service.start_session(db_session=db, settings=settings, person_key=person_key, level=1)
    return Hub(env=env, db_url=db_url, port=port, token=token)


def authn_request_xml(request_id: str, destination: str, instant: str) -> bytes:
    """An unsigned AuthnRequest as an SP sends it, by string template (fast to make in bulk)."""
    return (
        f'<samlp:AuthnRequest xmlns:samlp="{SAMLP_NS}" xmlns:saml="{SAML_NS}" ID="{request_id}" '
        f'Version="2.0" IssueInstant="{instant}" Destination="{destination}" '
        f'AssertionConsumerServiceURL="{SP_ACS}" ProtocolBinding="{POST}">'
        f"<saml:Issuer>{SP_ENTITY_ID}</saml:Issuer>"
        f'<samlp:NameIDPolicy Format="{PERSISTENT}" AllowCreate="true"/>'
        f"</samlp:AuthnRequest>"
    ).encode()


def redirect_query(xml: bytes) -> str:
    """HTTP-Redirect binding: raw DEFLATE, base64, URL-encoded (bindings §3.4.4.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = compressor.compress(xml) + compressor.flush()
    return "SAMLRequest=" + quote_plus(base64.b64encode(deflated).decode())


def post_body(xml: bytes) -> str:
    """HTTP-POST binding: base64 in a urlencoded form field (bindings §3.5.4)."""
    return "SAMLRequest=" + quote_plus(base64.b64encode(xml).decode())


# --- phase 2: Renkei in-process ------------------------------------------------------------

def bench_inprocess(hub: Hub, seconds: float) -> dict:
    """`answer_success` (with the session lookup) in one transaction per response."""
    from idp import agencies, saml, service
    from renkei.db import session_scope, utcnow
    from renkei.keys import keystore
    from renkei.settings import get_settings

    settings = get_settings()
    keys = keystore()
    sso = service.sso_url(settings)
    nonce = secrets.token_hex(4)

    def one(i: int) -> service.Answer:
        request = saml.AuthnRequest(
            id=f"_inproc{nonce}{i:09d}", issuer=SP_ENTITY_ID, issue_instant=utcnow(),
            destination=sso, acs_url=SP_ACS, acs_index=None, protocol_binding=POST,
            force_authn=False, is_passive=False, name_id_format=PERSISTENT,
            requested_context=None, acs_location=SP_ACS,
        )
        with session_scope(hub.db_url) as db:
            agency = agencies.lookup(db_session=db, entity_id=SP_ENTITY_ID)
            session = service.current_session(db_session=db, token=hub.token)
            return service.answer_success(
                db_session=db, settings=settings, keys=keys, agency=agency, request=request,
                session=session, authn_context=saml.AC_PPT,
            )

    for i in range(20):  # warm-up: key load, pseudonym creation, connection pool
        answer = one(-1 - i)
    check_response_xml(base64.b64decode(answer.value), what="Renkei answer_success")
    return _time_box("answer_success", one, seconds)


def bench_full_path(hub: Hub, seconds: float, profile: bool) -> dict:
    """The work of GET /idp/sso without uvicorn/FastAPI: parse, check, replay, answer, page."""
    from idp import saml, service
    from renkei.db import session_scope
    from renkei.keys import keystore
    from renkei.settings import get_settings
    from renkei.web import page
    from renkei.xmlsecurity import inflate_redirect

    settings = get_settings()
    keys = keystore()
    sso = service.sso_url(settings)
    nonce = secrets.token_hex(4)
    instant = saml_now()
    # 4x the rate any laptop reaches, so the list is never reused (replays would be refused)
    pool = [redirect_query(authn_request_xml(f"_full{nonce}{i:09d}", sso, instant))
            for i in range(int(seconds * 4000) + 100)]

    def one(i: int):
        query = pool[i]
        encoded = query.split("=", 1)[1]
        with session_scope(hub.db_url) as db:
            xml = inflate_redirect(unquote_plus(encoded), max_bytes=settings.max_message_bytes)
            agency, authn = service.check_authn_request(
                db_session=db, settings=settings, xml=xml, relay_state=None, raw_query=query)
            session = service.current_session(db_session=db, token=hub.token)
            context = saml.context_for_level(authn.requested_context, service.session_level(session))
            answer = service.answer_success(
                db_session=db, settings=settings, keys=keys, agency=agency, request=authn,
                session=session, authn_context=context)
            return page("post_binding.html", title="t", url=answer.url, field=answer.field,
                        value=answer.value, relay_state=answer.relay_state)

    counter = iter(range(len(pool)))
    for _ in range(20):
        html = one(next(counter))
    check_response_xml(_saml_response_from_page(html.body.decode()), what="Renkei full path")
    offset = next(counter)
    result = _time_box("full SSO path", lambda i: one(offset + i), seconds, limit=len(pool) - offset - 1)
    if profile:
        result["profile"] = _profile(lambda i: one(offset + result["ops"] + 1 + i),
                                     min(2000, len(pool) - offset - result["ops"] - 2))
    return result


def rsa_floor(count: int = 300) -> dict:
    """What the two RSA signatures alone cost with the IdP's own key: the ceiling of phase 2."""
    from idp import service
    from renkei.keys import keystore
    from renkei.xmlsecurity import RSA_SHA256, _sign_octets

    key = service.signing_key(str(keystore().directory)).private_key
    data = b"<ds:SignedInfo>" + b"x" * 600 + b"</ds:SignedInfo>"
    _sign_octets(key, RSA_SHA256, data)
    start = time.perf_counter()
    for _ in range(count):
        _sign_octets(key, RSA_SHA256, data)
    sign_s = (time.perf_counter() - start) / count
    return {"sign_ms": sign_s * 1000, "cap_rate": 1 / (2 * sign_s)}


def _time_box(label: str, fn, seconds: float, limit: int | None = None) -> dict:
    progress = Progress(label, seconds=seconds)
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    done = 0
    while True:
        fn(done)
        done += 1
        now = time.perf_counter()
        if now >= deadline or (limit is not None and done >= limit):
            break
        progress.update(done)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    progress.finish()
    return {"ops": done, "seconds": elapsed, "rate": done / elapsed, "cpu_ms_per_op": cpu / done * 1000}


def _profile(fn, count: int) -> str:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for i in range(count):
        fn(i)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return f"cProfile of {count} full-path SSO answers\n" + out.getvalue()


def _saml_response_from_page(html: str) -> bytes:
    match = re.search(r'name="SAMLResponse" value="([^"]*)"', html)
    if not match:
        raise SystemExit(f"no SAMLResponse form in the page:\n{html[:800]}")
    return base64.b64decode(unescape(match.group(1)))


# --- phase 3: Renkei over HTTP with wrk ----------------------------------------------------

WRK_SCRIPT = r"""
-- Generated by bench/sso.py: each wrk thread takes every n-th line of the request file and
-- sends each once; `bad` counts responses that are not a 200 SAMLResponse form of full size.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local items = {}
local pos = 0
local post = false
local minlen = 0
bad = 0
wrapped = 0
sent = 0
loaded = 0

function init(args)
  local file, cookie, nthreads, binding = args[1], args[2], tonumber(args[3]), args[5]
  minlen = tonumber(args[4])
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == tid then items[#items + 1] = line end
    n = n + 1
  end
  loaded = #items
  wrk.headers["Cookie"] = "renkei_idp=" .. cookie
  if binding == "post" then
    post = true
    wrk.method = "POST"
    wrk.path = "/idp/sso"
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  end
end

function request()
  pos = pos + 1
  if pos > #items then
    pos = 1
    wrapped = wrapped + 1
  end
  sent = sent + 1
  if post then
    return wrk.format(nil, nil, nil, items[pos])
  end
  return wrk.format(nil, "/idp/sso?" .. items[pos])
end

function response(status, headers, body)
  if status ~= 200 or #body < minlen or not string.find(body, 'name="SAMLResponse"', 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local b, w, s, l = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    b = b + t:get("bad")
    w = w + t:get("wrapped")
    s = s + t:get("sent")
    l = l + t:get("loaded")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "err_connect": %d, ' ..
    '"err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"bad": %d, "wrapped": %d, "sent": %d, "loaded": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, b, w, s, l))
end
"""


def _kill_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process group this benchmark started (the server and its workers, or wrk)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers left behind by a supervisor that died first
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _group_cpu_seconds(pgid: int) -> float:
    """user+system CPU seconds of the live processes in a process group (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # field 5, pgrp
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def start_server(hub: Hub, workers: int, log_path: Path) -> subprocess.Popen:
    import httpx

    env = dict(os.environ)
    env.update(hub.env)
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "renkei.cli", "serve", "--workers", str(workers), "--port", str(hub.port)],
        env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _children.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"renkei serve exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{hub.base_url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise SystemExit("renkei serve did not answer /healthz within 60 s")
    # /healthz may be answered by one worker before the other is up: give both a moment
    time.sleep(1.0)
    return proc


def make_request_file(hub: Hub, path: Path, count: int, binding: str, nonce: str) -> None:
    destination = f"{hub.base_url}/idp/sso"
    instant = saml_now()
    encode = redirect_query if binding == "redirect" else post_body
    progress = Progress("precomputing AuthnRequests", total=count)
    with open(path, "w") as out:
        for i in range(count):
            out.write(encode(authn_request_xml(f"_wrk{nonce}{i:09d}", destination, instant)))
            out.write("\n")
            if i % 5000 == 0:
                progress.update(i)
    progress.finish()


def probe(hub: Hub, binding: str) -> int:
    """One SSO request before the timed run: 200 with a doubly-signed Success SAMLResponse."""
    import httpx

    xml = authn_request_xml(f"_probe{secrets.token_hex(8)}", f"{hub.base_url}/idp/sso", saml_now())
    cookies = {SESSION_COOKIE: hub.token}
    with httpx.Client(base_url=hub.base_url, cookies=cookies, timeout=10) as client:
        if binding == "redirect":
            resp = client.get("/idp/sso?" + redirect_query(xml))
        else:
            resp = client.post("/idp/sso", content=post_body(xml),
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    if resp.status_code != 200:
        raise SystemExit(f"probe SSO request answered {resp.status_code}:\n{resp.text[:800]}")
    check_response_xml(_saml_response_from_page(resp.text), what="probe over HTTP")
    return len(resp.content)


def count_seen(hub: Hub, nonce: str) -> int:
    from sqlalchemy import text

    from renkei.db import get_engine

    with get_engine(hub.db_url).connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM seen_messages WHERE message_id LIKE :p"),
            {"p": f"_wrk{nonce}%"},
        ).scalar_one()


def bench_http(hub: Hub, args, tmp: Path, label: str, expected_rate: float) -> dict:
    from renkei.db import dispose_engines

    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    dispose_engines()  # no pooled connection of ours stays open while the workers run
    nonce = secrets.token_hex(4)
    # enough distinct requests for `expected_rate` over the run, with a wide margin
    count = args.requests or max(2000, int(args.duration * max(expected_rate, 1500) * 2.5))
    req_file = tmp / f"requests-{label}.txt"
    make_request_file(hub, req_file, count, args.binding, nonce)
    script = tmp / "sso.lua"
    script.write_text(WRK_SCRIPT)

    server = start_server(hub, args.workers, tmp / f"server-{label}.log")
    try:
        size = probe(hub, args.binding)
        min_len = int(size * 0.85)  # an error Response (e.g. a refused replay) is far shorter
        floor = web_stack_floor(wrk, hub, server, args) if label == "sqlite" else None
        cpu_before = _group_cpu_seconds(server.pid)
        cmd = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
               "--timeout", "10s", "-s", str(script), hub.base_url, "--",
               str(req_file), hub.token, str(args.threads), str(min_len), args.binding]
        wrk_log = tmp / f"wrk-{label}.log"
        with open(wrk_log, "wb") as out:
            usage_before = os.times()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            _children.append(proc)
            progress = Progress(f"wrk against {label}", seconds=args.duration, show_rate=False)
            started = time.perf_counter()
            while proc.poll() is None:
                time.sleep(0.25)
                progress.update(int(time.perf_counter() - started))
            progress.finish()
            usage_after = os.times()
        cpu_after = _group_cpu_seconds(server.pid)
        seen = count_seen(hub, nonce)
    finally:
        _kill_group(server)
    output = wrk_log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}):\n{output}")
    match = re.search(r"^BENCH_JSON (.*)$", output, re.MULTILINE)
    if not match:
        raise SystemExit(f"wrk printed no result:\n{output}")
    r = json.loads(match.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    seconds = r["duration_us"] / 1e6
    wrk_cpu = (usage_after.children_user + usage_after.children_system
               - usage_before.children_user - usage_before.children_system)
    return {
        "label": label,
        "rate": r["requests"] / seconds,
        "ops": r["requests"],
        "seconds": seconds,
        "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"],
        "bad": r["bad"], "wrapped": r["wrapped"], "sent": r["sent"], "precomputed": count,
        "replay_rows": seen,
        "server_cpu_s": cpu_after - cpu_before, "wrk_cpu_s": wrk_cpu,
        "healthz": floor,
        "wrk_output": output,
    }


def web_stack_floor(wrk: str, hub: Hub, server: subprocess.Popen, args) -> dict:
    """A short wrk run on /healthz: what uvicorn+FastAPI cost per request without SAML or DB."""
    seconds = 1 if args.quick else 3
    cpu_before = _group_cpu_seconds(server.pid)
    out = subprocess.run(
        [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", f"{hub.base_url}/healthz"],
        check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=seconds + 30,
    ).stdout
    cpu = _group_cpu_seconds(server.pid) - cpu_before
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rate or not total or re.search(r"Non-2xx", out):
        return {"rate": None, "output": out}
    return {"rate": float(rate.group(1)), "cpu_ms_per_op": cpu / int(total.group(1)) * 1000}


def fresh_postgres_database(admin_url: str, name: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base, _, _ = admin_url.partition("?")[0].rpartition("/")
    return f"{base}/{name}"


def drop_postgres_database(admin_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def _psycopg(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


# --- report --------------------------------------------------------------------------------

def report(rows: list[tuple], baseline: float | None) -> None:
    """The summary table: phase, ops/s, ratio to the pysaml2 baseline, CPU ms per op, notes."""
    width = 118
    say()
    say("=" * width)
    say(f"{'phase':<44} {'ops/s':>9} {'vs baseline':>11} {'CPU ms/op':>10}  notes")
    say("-" * width)
    for name, rate, cpu_ms, note, *rest in rows:
        compare = rest[0] if rest else True
        if rate is None:
            say(f"{name:<44} {'-':>9} {'-':>11} {'-':>10}  {note}")
            continue
        ratio = f"{rate / baseline:,.1f}x" if baseline and compare else "-"
        cpu = f"{cpu_ms:.2f}" if cpu_ms is not None else "-"
        say(f"{name:<44} {rate:>9,.1f} {ratio:>11} {cpu:>10}  {note}")
    say("=" * width)
    say("CPU ms/op: pysaml2 includes its xmlsec1 child processes; HTTP rows count the server's "
        "processes only (wrk shares the CPUs).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run under ~30 s")
    parser.add_argument("--skip-http", action="store_true", help="skip the HTTP phases (3, 3b)")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds of each wrk run (default 10, --quick 3)")
    parser.add_argument("--baseline-count", type=int, default=None,
                        help="pysaml2 responses to time (default 30, --quick 5)")
    parser.add_argument("--inproc-seconds", type=float, default=None,
                        help="time box of each in-process phase (default 5, --quick 1.5)")
    parser.add_argument("--workers", type=int, default=2, help="renkei serve --workers (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--binding", choices=("redirect", "post"), default="redirect",
                        help="how AuthnRequests reach /idp/sso (default HTTP-Redirect)")
    parser.add_argument("--requests", type=int, default=None,
                        help="distinct AuthnRequests to precompute per HTTP run (default: enough)")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of the in-process full SSO path")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")
    args = parser.parse_args()
    args.duration = args.duration or (3 if args.quick else 10)
    baseline_count = args.baseline_count or (5 if args.quick else 30)
    inproc_seconds = args.inproc_seconds or (1.5 if args.quick else 5.0)
    if args.duration > 240:
        parser.error("--duration above 240 s: precomputed AuthnRequests would leave the IdP's "
                     "IssueInstant window (5 min) during the run")

    pg_admin = os.environ.get("RENKEI_BENCH_POSTGRES_URL")
    tmp = Path(tempfile.mkdtemp(prefix="renkei-bench-"))
    pg_name = f"renkei_bench_{os.getpid()}"
    pg_created = False
    results: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
                     "args": {k: str(v) for k, v in vars(args).items()}}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        load = os.getloadavg()[0]
        say(f"Renkei SSO benchmark: {os.cpu_count()} CPUs, load average {load:.2f}"
            + ("  (the machine is busy: figures will be low and noisy)" if load > 0.7 else ""))
        say(f"temp dir {tmp}")

        say("\n[1] pysaml2 IdP, default crypto backend (xmlsec1 binary), sign_response+sign_assertion")
        base = bench_pysaml2(tmp, baseline_count, "http://127.0.0.1:9")
        results["baseline"] = base
        say(f"    backend {base['backend']}: {base['ops']} responses in {base['seconds']:.2f} s "
            f"= {base['rate']:.1f} responses/s ({base['cpu_ms_per_op']:.1f} ms CPU each, "
            f"xmlsec1 included)")

        say("\n[2] Renkei in-process (renkei init, agency add, add_person, start_session)")
        _sp_key, sp_cert = make_key_and_cert("bench city sp")
        sp_md = tmp / "sp-metadata.xml"
        sp_md.write_bytes(sp_metadata(SP_ENTITY_ID, SP_ACS, sp_cert, authn_requests_signed=False))
        home = tmp / "home"
        hub = prepare_hub(home, f"sqlite:///{home / 'renkei.sqlite3'}", sp_md)
        inproc = bench_inprocess(hub, inproc_seconds)
        results["inprocess"] = inproc
        say(f"    answer_success: {inproc['ops']} responses in {inproc['seconds']:.2f} s "
            f"= {inproc['rate']:,.1f} responses/s = {inproc['rate'] / base['rate']:,.1f}x baseline "
            f"({inproc['cpu_ms_per_op']:.2f} ms CPU each)")
        full = bench_full_path(hub, inproc_seconds, args.profile)
        profile_text = full.pop("profile", None)
        results["full_path"] = full
        say(f"    full SSO path:  {full['ops']} responses in {full['seconds']:.2f} s "
            f"= {full['rate']:,.1f} responses/s = {full['rate'] / base['rate']:,.1f}x baseline "
            f"({full['cpu_ms_per_op']:.2f} ms CPU each)")
        floor = rsa_floor()
        results["rsa_floor"] = floor
        say(f"    crypto floor:   one RSA-2048 PKCS#1 v1.5 signature takes {floor['sign_ms']:.2f} ms "
            f"here; two per response cap one core at {floor['cap_rate']:,.0f} responses/s "
            f"= {floor['cap_rate'] / base['rate']:,.1f}x baseline")
        if profile_text:
            say("\n" + profile_text)

        http: list[dict] = []
        if not args.skip_http:
            say(f"\n[3] Renkei over HTTP: renkei serve --workers {args.workers}, wrk -t{args.threads} "
                f"-c{args.connections} -d{args.duration:g}s, {args.binding} binding, SQLite")
            http_failed: list[tuple[str, str]] = []

            def run_http(phase_hub: Hub, label: str) -> None:
                try:
                    h = bench_http(phase_hub, args, tmp, label, expected_rate=full["rate"] * args.workers)
                except SystemExit as exc:  # a failed check: report it, go on with the others
                    if not isinstance(exc.code, str):
                        raise
                    say(f"    {label}: FAILED: {exc.code}")
                    http_failed.append((label, exc.code))
                    return
                http.append(h)
                say(f"    {h['label']}: {h['ops']} requests in {h['seconds']:.1f} s = "
                    f"{h['rate']:,.1f} requests/s, latency p50 {h['p50_ms']:.1f} ms, "
                    f"p99 {h['p99_ms']:.1f} ms, max {h['max_ms']:.1f} ms")
                say(f"      checks: non-2xx {h['non2xx']}, socket errors {h['socket_errors']}, "
                    f"not a full SAMLResponse form {h['bad']}, request list wrapped {h['wrapped']}, "
                    f"replay-cache rows {h['replay_rows']} for {h['ops']} answered "
                    f"({h['sent']} sent, {h['precomputed']} precomputed)")
                cpu_per = h["server_cpu_s"] / h["ops"] * 1000 if h["ops"] else 0
                say(f"      CPU: server {h['server_cpu_s']:.1f} s ({cpu_per:.2f} ms/request), "
                    f"wrk {h['wrk_cpu_s']:.1f} s, over {h['seconds']:.1f} s wall on "
                    f"{os.cpu_count()} CPUs")

            run_http(hub, "sqlite")
            if pg_admin:
                say("\n[3b] the same against PostgreSQL (fresh database)")
                pg_url = fresh_postgres_database(pg_admin, pg_name)
                pg_created = True
                run_http(prepare_hub(home, pg_url, sp_md), "postgresql")
            else:
                say("\n[3b] PostgreSQL skipped (set RENKEI_BENCH_POSTGRES_URL to run it)")
            results["http"] = [{k: v for k, v in h.items() if k != "wrk_output"} for h in http]
            results["http_failed"] = http_failed

        rows = [
            (f"pysaml2 + xmlsec1 binary ({base['ops']} responses)", base["rate"],
             base["cpu_ms_per_op"], "baseline"),
            ("Renkei in-process answer_success (1 core)", inproc["rate"], inproc["cpu_ms_per_op"],
             f"target >= {TARGET_RATIO:.0f}x: "
             + ("met" if inproc["rate"] / base["rate"] >= TARGET_RATIO else "NOT met")
             + f" (2 RSA signatures alone cap it at {floor['cap_rate'] / base['rate']:,.0f}x)"),
            ("Renkei in-process full SSO path (1 core)", full["rate"], full["cpu_ms_per_op"],
             "parse+check+replay+answer+page"),
        ]
        failed = False
        for h in http:
            ok = (h["non2xx"] == 0 and h["bad"] == 0 and h["wrapped"] == 0 and h["socket_errors"] == 0
                  and h["replay_rows"] >= h["ops"])
            failed |= not ok
            note = (f"p50 {h['p50_ms']:.1f} ms p99 {h['p99_ms']:.1f} ms; target {TARGET_HTTP:,.0f}/s "
                    + ("met" if h["rate"] >= TARGET_HTTP else "NOT met")
                    + ("" if ok else "; CHECKS FAILED"))
            cpu_ms = h["server_cpu_s"] / h["ops"] * 1000 if h["ops"] else None
            rows.append((f"Renkei HTTP, {args.workers} workers, {h['label']}", h["rate"], cpu_ms, note))
            if h.get("healthz") and h["healthz"].get("rate"):
                rows.append(("  (calibration: GET /healthz, same server)", h["healthz"]["rate"],
                             h["healthz"]["cpu_ms_per_op"], "web-stack floor: no SAML, no DB", False))
        if args.skip_http:
            rows.append(("Renkei HTTP", None, None, "skipped (--skip-http)"))
        else:
            for label, reason in http_failed:
                failed = True
                rows.append((f"Renkei HTTP, {args.workers} workers, {label}", None, None,
                             f"FAILED: {reason[:200]}"))
        report(rows, base["rate"])
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
            say(f"results written to {args.json}")
        if failed:
            say("HTTP checks failed: see the counts above" + (f" and {tmp}" if args.keep else ""))
            return 1
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        for proc in reversed(_children):
            _kill_group(proc)
        if pg_created:
            try:
                from renkei.db import dispose_engines

                dispose_engines()
                drop_postgres_database(pg_admin, pg_name)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning up
                say(f"could not drop PostgreSQL database {pg_name}: {exc}")
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
