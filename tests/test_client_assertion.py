"""RFC 7523 client assertions at the discovery service's JSON face, over HTTP: every malformed
header, claim or size is a 401 invalid_client with a reason, never a 500 (SQLite and PostgreSQL)."""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import OctKey, RSAKey

from kernel.jose import sign_jws
from tests.federation import RESIDENT, ask


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _url(hub) -> str:
    return f"{hub.base_url}/api/discovery/query"


def _claims(hub, fed, **over) -> dict:
    now = int(time.time())
    iss = fed["r"].entity_id
    claims = {"iss": iss, "sub": iss, "aud": _url(hub), "jti": uuid.uuid4().hex, "iat": now, "exp": now + 60}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not ...}  # `...` drops a claim


def _post(hub, bootstrap, jwt: str) -> httpx.Response:
    body = {"service_type": RESIDENT, "task": "JUKI", "person": {"bootstrap_token": bootstrap}}
    return httpx.post(_url(hub), json=body, headers={"Authorization": f"Bearer {jwt}"}, timeout=20)


def _signed_raw(fed, payload: bytes) -> str:
    """Signed by R's registered key, so only the claims themselves can make it fail."""
    return jws.serialize_compact({"alg": "RS256"}, payload, RSAKey(fed["r"].key, fed["r"].key), algorithms=["RS256"])


def _refused(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    return response.json()["message"]


def test_a_well_formed_assertion_is_accepted(hub, fed, bootstrap):
    """The baseline the refusals below differ from by one thing each."""
    assert _post(hub, bootstrap, sign_jws(_claims(hub, fed), key=fed["r"].key, alg="RS256")).status_code == 200
    listed = _claims(hub, fed, aud=[_url(hub), "https://other.example/"], nbf=int(time.time()) - 5)
    assert _post(hub, bootstrap, sign_jws(listed, key=fed["r"].key, alg="RS256")).status_code == 200


@pytest.mark.parametrize("header", [
    {"alg": []}, {"alg": {}}, {"alg": None}, {}, {"alg": "none"}, {"alg": "RS256", "crit": ["exp"]},
    {"alg": "RS256", "b64": False, "crit": ["b64"]}, {"alg": "RS256", "kid": {"a": 1}},
    {"alg": "RS256", "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
    [1, 2], "RS256", "alg", ["alg"],
])
def test_malformed_headers_are_refused(hub, fed, bootstrap, header):
    signature = _b64(b"\x00" * 256)
    _refused(_post(hub, bootstrap, f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims(hub, fed)).encode())}"
                                   f".{signature}"))


def test_deeply_nested_header_is_refused(hub, fed, bootstrap):
    header = '{"alg":"RS256","x":' + "[" * 5000 + "]" * 5000 + "}"
    _refused(_post(hub, bootstrap, f"{_b64(header.encode())}.{_b64(b'{}')}.AAAA"))


def test_hmac_keyed_with_the_registered_public_key_is_refused(hub, fed, bootstrap):
    """Key confusion: HS256 whose secret is the agency's public key (xml-crypto CVE-2024-32962 in JOSE)."""
    public_pem = fed["r"].key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    # joserfc itself refuses to import a public key as an HMAC secret, so build the key raw
    forged = sign_jws(_claims(hub, fed), key=OctKey(public_pem, public_pem), alg="HS256")
    assert "algorithm must be" in _refused(_post(hub, bootstrap, forged))


@pytest.mark.parametrize("over", [
    {"iss": "https://r.disco.example.jp/sp\x00"}, {"iss": 7}, {"iss": ["https://r.disco.example.jp/sp"]},
    {"iss": ...}, {"iss": ""}, {"iss": "x" * 5000},
    {"sub": ...}, {"sub": "https://a.disco.example.jp/sp"}, {"sub": 1},
    {"jti": "j" * 300}, {"jti": "j" * 253}, {"jti": "abc\x00def"}, {"jti": 12345}, {"jti": ...}, {"jti": ""},
    {"aud": ...}, {"aud": 1}, {"aud": [1, 2]}, {"aud": "https://elsewhere/"},
    {"exp": ...}, {"exp": "later"}, {"exp": True}, {"exp": None}, {"exp": 10**30}, {"exp": int(time.time()) - 120},
    {"exp": int(time.time()) + 3600},  # lifetime over five minutes
    {"iat": int(time.time()) + 3600}, {"iat": "now"}, {"nbf": int(time.time()) + 3600}, {"nbf": [1]},
])
def test_bad_claims_are_refused(hub, fed, bootstrap, over):
    jwt = _signed_raw(fed, json.dumps(_claims(hub, fed, **over)).encode())
    _refused(_post(hub, bootstrap, jwt))


@pytest.mark.parametrize("payload", [
    b'{"iss":"https://r.disco.example.jp/sp","x":' + b"[" * 3000 + b"]" * 3000 + b"}",
    b"[" * 3000 + b"]" * 3000, b"null", b"not json", b"\xff\xfe",
])
def test_payloads_that_are_not_claims_are_refused(hub, fed, bootstrap, payload):
    _refused(_post(hub, bootstrap, _signed_raw(fed, payload)))


def test_huge_and_non_base64url_tokens_are_refused(hub, fed, bootstrap):
    good = sign_jws(_claims(hub, fed), key=fed["r"].key, alg="RS256")
    head, body, sig = good.split(".")
    _refused(_post(hub, bootstrap, f"{head}.{body}{'A' * 200_000}.{sig}"))
    # a lenient decoder drops the stray characters and accepts the token as if unchanged
    for stray in (f"{head}.{body[:10]}!{body[10:]}.{sig}", f"{head}.{body}.{sig[:5]}*{sig[5:]}",
                  f"{head}.{body}.{sig}.", f"{head}..{sig}", f"{head}.{body}.{sig}=="):
        _refused(_post(hub, bootstrap, stray))
    assert _post(hub, bootstrap, good).status_code == 200, "the unaltered token is still fresh"


def test_concurrent_copies_of_one_assertion_get_one_answer_and_one_logged_query(hub, fed, bootstrap):
    """The jti is remembered with the decisions' log entries, in their group commit: eight
    copies of one client assertion sent at once get one 200 and seven 401s, and the log holds
    the decisions of one query."""
    jwt = sign_jws(_claims(hub, fed), key=fed["r"].key, alg="RS256")
    before = _decisions_asked_by(fed["r"].entity_id)
    barrier = threading.Barrier(8)

    def send(_: int) -> httpx.Response:
        barrier.wait(timeout=30)
        return _post(hub, bootstrap, jwt)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [401] * 7, [a.text[:200] for a in answers]
    assert all("already used" in a.json()["message"] for a in answers if a.status_code == 401)
    offerings = next(a for a in answers if a.status_code == 200).json()["offerings"]
    assert offerings and _decisions_asked_by(fed["r"].entity_id) == before + len(offerings)


def test_an_assertion_is_used_up_by_a_refused_query_too(hub, fed, bootstrap):
    """An answer that logs nothing (a refusal) remembers the jti before it leaves: the same
    assertion cannot then ask again, with another body."""
    jwt = sign_jws(_claims(hub, fed), key=fed["r"].key, alg="RS256")
    unknown = {"service_type": "urn:renkei:no-such-service", "task": "JUKI", "person": {"bootstrap_token": bootstrap}}
    first = httpx.post(_url(hub), json=unknown, headers={"Authorization": f"Bearer {jwt}"}, timeout=20)
    assert first.status_code == 404, first.text
    assert "already used" in _refused(_post(hub, bootstrap, jwt))


def _decisions_asked_by(requester: str) -> int:
    from sqlalchemy import func, select

    from access_history.models import HistoryEntry
    from kernel.db import session_scope

    with session_scope() as db:
        return db.scalar(select(func.count()).select_from(HistoryEntry).where(
            HistoryEntry.requester == requester, HistoryEntry.channel == "discovery"))


def test_replayed_jti_and_foreign_key_are_refused(hub, fed, bootstrap):
    body = {"service_type": RESIDENT, "task": "JUKI", "person": {"bootstrap_token": bootstrap}}
    jti = uuid.uuid4().hex
    assert ask(hub, fed["r"], body, jti=jti).status_code == 200
    assert "already used" in _refused(ask(hub, fed["r"], body, jti=jti))
    assert "registered keys" in _refused(ask(hub, fed["r"], body, key=fed["a"].key))
