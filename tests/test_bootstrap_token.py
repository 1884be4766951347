"""The bootstrap token as a JWS (HS256) whose kid names the secret version: rotation without
breaking tokens already handed out, and every way a token can be bad is BootstrapInvalid."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kernel.jose import sign_jws
from kernel.keys import KeyStore, keystore
from pseudonym.bootstrap import BOOTSTRAP_SECRET, BootstrapInvalid, issue_bootstrap, read_bootstrap
from tests.federation import RESIDENT, ask, bootstrap_of, sso_assertion

AUD = "https://hub.example/discovery"
R = "https://r.example/sp"
NOW = 1_900_000_000


def header_of(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.fixture()
def keys(tmp_path: Path) -> KeyStore:
    store = KeyStore(tmp_path / "keys")
    store.ensure_secret(BOOTSTRAP_SECRET)  # what `renkei init` does: nothing else creates a secret
    return store


def issue(keys: KeyStore, **over) -> str:
    args = {"audience": AUD, "requester": R, "pseudonym": "p-r-1", "expires": NOW + 600} | over
    return issue_bootstrap(keys=keys, **args)


def read(keys: KeyStore, token: str, **over):
    args = {"audience": AUD, "requester": R, "now": NOW} | over
    return read_bootstrap(token, keys=keys, **args)


def test_a_token_issued_under_v1_verifies_after_v2_and_new_tokens_carry_v2(keys):
    old = issue(keys)
    assert header_of(old) == {"alg": "HS256", "typ": "JWT", "kid": "bootstrap-v1"}
    assert keys.create_secret(BOOTSTRAP_SECRET) == 2
    new = issue(keys, pseudonym="p-r-2")
    assert header_of(new)["kid"] == "bootstrap-v2"
    assert read(keys, old).pseudonym == "p-r-1" and read(keys, new).pseudonym == "p-r-2"


def test_the_kid_decides_the_secret(keys):
    token = issue(keys)
    keys.create_secret(BOOTSTRAP_SECRET)
    body = token.split(".")[1]
    relabelled = sign_jws(json.loads(base64.urlsafe_b64decode(body + "==")), alg="HS256", kid="bootstrap-v2",
                          key=keys.load_secret(BOOTSTRAP_SECRET, 1))
    with pytest.raises(BootstrapInvalid, match="signature"):
        read(keys, relabelled)  # v1's secret under v2's name
    for kid in ("bootstrap-v9", "bootstrap-v0", "bootstrap-v01", "pairwise-v1", "../bootstrap-v1", None):
        forged = sign_jws({"aud": AUD, "req": R, "sub": "p", "exp": NOW + 60}, alg="HS256", kid=kid,
                          key=keys.load_secret(BOOTSTRAP_SECRET, 1))
        with pytest.raises(BootstrapInvalid):
            read(keys, forged)


def test_old_rk1_tokens_are_refused(keys):
    issue(keys)
    with pytest.raises(BootstrapInvalid):
        read(keys, "rk1.eyJhdWQiOiJ4In0.AAAA")


@pytest.mark.parametrize("over, reason", [
    ({"audience": "https://other/discovery"}, "another service"),
    ({"requester": "https://a.example/sp"}, "another agency"),
    ({"now": NOW + 600}, "expired"),
])
def test_audience_holder_and_expiry(keys, over, reason):
    with pytest.raises(BootstrapInvalid, match=reason):
        read(keys, issue(keys), **over)


def test_tampered_or_malformed_tokens_are_refused(keys):
    token = issue(keys)
    head, body, sig = token.split(".")
    public_alg = base64.urlsafe_b64encode(b'{"alg":"none","kid":"bootstrap-v1"}').decode().rstrip("=")
    for bad in (f"{head}.{body}.{sig[:-2]}AA", f"{head}.{body}x.{sig}", f"{public_alg}.{body}.", f"{public_alg}.{body}.x",
                token + "." + sig, token[:-1] + "!", "x" * 5000, "", "a.b.c"):
        with pytest.raises(BootstrapInvalid):
            read(keys, bad)


def test_rotation_over_http(hub, fed, bootstrap):
    """The running hub: tokens from before a rotation still name the person, new SSOs use v2."""
    body = {"service_type": RESIDENT, "task": "JUKI"}
    before = header_of(bootstrap)["kid"]
    version = keystore().create_secret(BOOTSTRAP_SECRET)
    fresh = bootstrap_of(sso_assertion(hub, fed["r"]))
    assert header_of(fresh)["kid"] == f"bootstrap-v{version}" != before
    for token in (bootstrap, fresh):
        r = ask(hub, fed["r"], body | {"person": {"bootstrap_token": token}})
        assert r.status_code == 200, r.text
    r = ask(hub, fed["r"], body | {"person": {"bootstrap_token": "rk1.e30.AAAA"}})
    assert r.status_code == 403 and r.json()["error"] == "BOOTSTRAP_TOKEN_REJECTED"
