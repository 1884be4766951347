#!/usr/bin/env python
"""OIDC code exchange benchmark: token endpoint answers per second with private_key_jwt, and CPU
per answer against its crypto floor. Run alone, or from `bench/sso.py` (which calls `run_oidc`).

A benchmark, not a test: figures and same-run ratios, no timed assertions.

What each phase measures
  O1. floor        One client-assertion verification (RS256, the client's registered key, with
                   joserfc as `kernel.jose` uses it) plus one ID-token signature (RS256 with the
                   IdP's key): what each answer must cost whatever else gets faster.
  O2. in-process   POST /idp/oidc/token through the whole app (Starlette's TestClient, one
                   process, one core): the client assertion checked (and its jti written to the
                   replay cache), the code taken from the database, PKCE checked, the pairwise
                   pseudonym read, the history entry, access token and RP session written, the
                   ID token signed. Codes and assertions are made before the clock starts (the
                   codes inserted directly as the authorization endpoint stores them; the
                   assertions signed with the client's key: that is the agency's cost).
  O3. HTTP         The same requests against the hub app under uvicorn with --workers workers,
                   driven by a thread pool of httpx clients for --duration seconds; the server's
                   CPU per answer is read from /proc (the driver's own CPU is not counted).
Every answer must be 200 with an ID token; any other answer is counted and fails the run.

How to run (from the repository root)
    .venv/bin/python bench/oidc.py            # about 20 s
    .venv/bin/python bench/oidc.py --quick    # about 8 s
    .venv/bin/python bench/sso.py             # runs these phases too (after the SAML ones)
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness
from bench.harness import say

CLIENT_ID = "https://bench-oidc.example.jp"
REDIRECT_URI = "https://bench-oidc.example.jp/cb"
PASSWORD = "bench oidc password"


class Hub(harness.HubBase):
    pass


def _client_metadata(key) -> bytes:
    from joserfc.jwk import RSAKey

    jwk = RSAKey.import_key(key.public_key()).as_dict(private=False)
    jwk["kid"] = "bench"
    return json.dumps({"client_id": CLIENT_ID, "client_name": "Bench OIDC agency", "redirect_uris": [REDIRECT_URI],
                       "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [jwk]}}).encode()


def prepare(home: Path, db_url: str, client_key) -> tuple[Hub, str, str]:
    """A hub home with one OIDC agency and one logged-in person: (hub, person_key, login session id)."""
    md = home.parent / "oidc-client.json"
    home.mkdir(parents=True, exist_ok=True)
    md.write_bytes(_client_metadata(client_key))
    env, port = harness.set_up_home(home, db_url, [
        (["init"], None),
        (["agency", "add", "--oidc-metadata", str(md)], None),
        (["person", "add", "--username", "bench-oidc", "--password-stdin"], PASSWORD + "\n"),
    ])
    from idp import accounts
    from idp import service as idp_service
    from idp.models import IdpSession
    from kernel.db import session_scope
    from kernel.settings import get_settings

    with session_scope() as db:
        person_key = accounts.find(db_session=db, username="bench-oidc").person_key
        token = idp_service.start_session(db_session=db, settings=get_settings(), person_key=person_key, level=1)
        session_id = db.get(IdpSession, hashlib.sha256(token.encode()).hexdigest()).id
    return Hub(env=env, db_url=db_url, port=port), person_key, session_id


def make_requests(count: int, *, token_url: str, person_key: str, session_id: str, client_key) -> list[dict]:
    """`count` ready token requests: codes stored as the authorization endpoint stores them, and a
    fresh client assertion for each (signed by the agency, outside the timing)."""
    from idp.oidc.models import OidcCode
    from idp.saml import AC_PPT
    from kernel.db import session_scope, utcnow
    from kernel.jose import sign_client_assertion

    requests, rows = [], []
    now = utcnow()
    for _ in range(count):
        code, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        rows.append(OidcCode(id=hashlib.sha256(code.encode()).hexdigest(), client_id=CLIENT_ID,
                             redirect_uri=REDIRECT_URI, scope="openid", nonce=secrets.token_urlsafe(12),
                             code_challenge=challenge, code_challenge_method="S256", person_key=person_key,
                             login_session_id=session_id, acr=AC_PPT, auth_time=now,
                             expires_at=now + timedelta(minutes=30)))
        requests.append({
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": sign_client_assertion(client_key, issuer=CLIENT_ID, audience=token_url,
                                                      jti=secrets.token_urlsafe(16), lifetime=280)})
    with session_scope() as db:
        db.add_all(rows)
    return requests


def crypto_floor(client_key, count: int) -> dict:
    """CPU ms of one client-assertion verification plus one RS256 ID-token signature."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    from idp.oidc import keys as op_keys
    from kernel.jose import sign_client_assertion
    from kernel.keys import keystore

    assertion = sign_client_assertion(client_key, issuer=CLIENT_ID, audience="https://op.example/token", jti="x")
    public = RSAKey.import_key(client_key.public_key())
    op = op_keys.signing_key(keystore(), "RS256")
    private = RSAKey.import_key(op.private_key)
    claims = {"iss": "https://op.example", "sub": "x" * 43, "aud": CLIENT_ID, "exp": 2_000_000_000, "iat": 1}
    verify = harness.per_call_seconds(lambda: jwt.decode(assertion, public, algorithms=["RS256"]), count)
    sign = harness.per_call_seconds(lambda: jwt.encode({"alg": "RS256", "kid": op.kid}, claims, private), count)
    return {"verify_ms": verify * 1000, "sign_ms": sign * 1000, "floor_ms": (verify + sign) * 1000}


def _check(answer) -> bool:
    return answer.status_code == 200 and "id_token" in answer.json()


def bench_inprocess(hub: Hub, requests: list[dict], seconds: float) -> dict:
    import warnings

    from kernel.settings import get_settings
    from renkei.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    bad = done = 0
    # the request log is not what is measured here (the HTTP phase writes it to its log file)
    settings = get_settings().model_copy(update={"request_log": "off"})
    with TestClient(create_app(settings), base_url=hub.base_url) as client:
        _check(client.post("/idp/oidc/token", data=requests.pop()))  # warm-up
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        while requests and time.perf_counter() - start_wall < seconds:
            bad += not _check(client.post("/idp/oidc/token", data=requests.pop()))
            done += 1
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return {"ops": done, "bad": bad, "seconds": wall, "rate": done / wall, "cpu_ms_per_op": cpu * 1000 / done}


def bench_http(hub: Hub, requests: list[dict], tmp: Path, *, workers: int, seconds: float, threads: int) -> dict:
    import httpx

    server = harness.start_server(hub, workers, tmp / "oidc-server.log")
    url = f"{hub.base_url}/idp/oidc/token"
    counts = {"ok": 0, "bad": 0}
    deadline = time.monotonic() + seconds

    def drive(_: int) -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                try:
                    data = requests.pop()
                except IndexError:
                    return
                counts["ok" if _check(client.post(url, data=data)) else "bad"] += 1

    try:
        with httpx.Client(timeout=30) as client:  # warm both workers up, untimed
            for _ in range(workers * 3):
                _check(client.post(url, data=requests.pop()))
        cpu_before, start = harness.group_cpu_seconds(server.pid), time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(drive, range(threads)))
        wall, cpu = time.perf_counter() - start, harness.group_cpu_seconds(server.pid) - cpu_before
    finally:
        harness.kill_group(server)
    ops = counts["ok"] + counts["bad"]
    return {"ops": ops, "bad": counts["bad"], "seconds": wall, "rate": ops / wall,
            "cpu_ms_per_op": cpu * 1000 / max(ops, 1), "workers": workers, "exhausted": not requests}


def run_oidc(tmp: Path, *, quick: bool, workers: int = 2, seconds: float | None = None) -> dict:
    """The three phases; the figures as a dict (`bad` > 0 means a check failed)."""
    client_key = harness.rsa_key()
    home = tmp / "oidc-home"
    hub, person_key, session_id = prepare(home, f"sqlite:///{home / 'renkei.sqlite3'}", client_key)
    token_url = f"{hub.base_url}/idp/oidc/token"
    seconds = seconds or (1.5 if quick else 5.0)
    results: dict = {}

    say("\n[O1] crypto floor of one token answer: verify the client assertion + sign the ID token (RS256)")
    floor = crypto_floor(client_key, 50 if quick else 200)
    results["floor"] = floor
    say(f"    verify {floor['verify_ms']:.3f} ms + sign {floor['sign_ms']:.3f} ms = {floor['floor_ms']:.3f} ms CPU")

    say("\n[O2] POST /idp/oidc/token in-process (whole app, one core)")
    count = 300 if quick else 1500
    inproc = bench_inprocess(hub, make_requests(count, token_url=token_url, person_key=person_key,
                                                session_id=session_id, client_key=client_key), seconds)
    results["inprocess"] = inproc
    say(f"    {inproc['ops']} answers in {inproc['seconds']:.2f} s = {inproc['rate']:,.1f}/s, "
        f"{inproc['cpu_ms_per_op']:.2f} ms CPU each = {inproc['cpu_ms_per_op'] / floor['floor_ms']:.1f}x floor"
        + (f"; {inproc['bad']} BAD answers" if inproc["bad"] else ""))

    say(f"\n[O3] POST /idp/oidc/token over HTTP, {workers} workers, 8 client threads")
    count = 600 if quick else 4000
    http = bench_http(hub, make_requests(count, token_url=token_url, person_key=person_key, session_id=session_id,
                                         client_key=client_key),
                      tmp, workers=workers, seconds=seconds * 2, threads=8)
    results["http"] = http
    say(f"    {http['ops']} answers in {http['seconds']:.2f} s = {http['rate']:,.1f}/s, server "
        f"{http['cpu_ms_per_op']:.2f} ms CPU each = {http['cpu_ms_per_op'] / floor['floor_ms']:.1f}x floor"
        + (f"; {http['bad']} BAD answers" if http["bad"] else "")
        + ("  (ran out of prepared requests: raise the count)" if http["exhausted"] else ""))
    results["failed"] = bool(inproc["bad"] or http["bad"])
    return results


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers for the HTTP phase (default 2)")
    harness.add_output_arguments(parser)
    args = parser.parse_args()

    def body(bench: harness.Bench) -> int:
        bench.results["oidc"] = results = run_oidc(bench.tmp, quick=args.quick, workers=args.workers)
        return harness.finish(bench, args, "some token answers were not 200 with an ID token"
                              if results["failed"] else None)

    return harness.run_bench("Renkei OIDC token benchmark", "renkei-bench-oidc-", args, body)


if __name__ == "__main__":
    sys.exit(main())
