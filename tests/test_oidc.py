"""The OpenID Connect provider over real HTTP: the code flow with PKCE and private_key_jwt,
pairwise `sub` shared with SAML, keys and rotation, acr, logout, and the negative cases of the
OpenID Foundation's basic OP test plan that run offline (reused code, wrong redirect URI,
missing nonce, PKCE downgrade, expired code, wrong client assertion audience)."""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar
from urllib.parse import parse_qs

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws, jwt
from lxml import etree
from sqlalchemy import update

from idp.accounts import totp
from kernel.jose import sign_jws
from renkei.cli import main
from tests.oidc_client import RP, Flow, Person, callback, exchange, hub_keys, s256, verify_id_token
from tests.saml_sp import NS, Browser, TestSP, response_from_page
from tests.test_idp_sso import register

PPT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
TIMESYNC = "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken"
TOTP_SEED = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXQ"


def cli(*args: str, stdin: str | None = None, ok: bool = True) -> str:
    result = CliRunner().invoke(main, list(args), input=stdin)
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
    return result.output


def register_rp(rp: RP, tmp_path_factory, **overrides) -> RP:
    path = rp.write_metadata(tmp_path_factory.mktemp("oidc"), **overrides)
    cli("agency", "add", "--oidc-metadata", str(path), "--class", "municipality")
    return rp


@pytest.fixture(scope="module")
def people(hub):
    cli("person", "add", "--username", "oidc-dana", "--password-stdin", stdin="dana's long password\n")
    cli("person", "add", "--username", "oidc-erin", "--password-stdin", stdin="erin's long password\n")
    from idp import accounts
    from kernel.db import session_scope

    with session_scope() as db:
        accounts.add_person(db_session=db, username="oidc-fumi", password="fumi's long password",
                            totp_secret=TOTP_SEED)
    return {"oidc-dana": "dana's long password", "oidc-erin": "erin's long password",
            "oidc-fumi": "fumi's long password"}


@pytest.fixture(scope="module")
def rp(hub, tmp_path_factory):
    return register_rp(RP("https://rp1.oidc.example.jp", "https://rp1.oidc.example.jp/cb"), tmp_path_factory)


@pytest.fixture(scope="module")
def rp_es(hub, tmp_path_factory):
    return register_rp(RP("https://rp2.oidc.example.jp", "https://rp2.oidc.example.jp/cb",
                          key=ec.generate_private_key(ec.SECP256R1()), id_token_alg="ES256"), tmp_path_factory)


def login_flow(hub, rp: RP, user: str, password: str, person: Person | None = None, **params):
    """Authorize, log in, come back: (person, flow, callback parameters)."""
    person = person or Person(hub.base_url)
    flow = Flow()
    first = person.authorize(rp, flow, **params)
    answer = person.login(first, user, password) if first.status_code == 303 and "/idp/login" in \
        first.headers["location"] else first
    return person, flow, callback(answer, rp)


def full_flow(hub, rp: RP, user: str, password: str, **params):
    person, flow, back = login_flow(hub, rp, user, password, **params)
    answer = exchange(hub.base_url, rp, back["code"], flow)
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    return person, flow, tokens, verify_id_token(hub.base_url, rp, tokens["id_token"], flow)


# --- discovery and keys -------------------------------------------------------------------


def test_provider_configuration_names_the_endpoints_and_what_is_refused(hub):
    config = httpx.get(f"{hub.base_url}/.well-known/openid-configuration", timeout=10).json()
    assert config["issuer"] == hub.base_url
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert set(config["id_token_signing_alg_values_supported"]) == {"RS256", "ES256"}
    assert "none" not in config["id_token_signing_alg_values_supported"]
    assert config["subject_types_supported"] == ["pairwise"]
    assert config["authorization_response_iss_parameter_supported"] is True
    assert {PPT, TIMESYNC} <= set(config["acr_values_supported"])
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri", "end_session_endpoint"):
        assert config[name].startswith(hub.base_url + "/idp/oidc/")


def test_jwks_publishes_the_two_newest_keys_of_each_algorithm_and_rotation_keeps_old_tokens_valid(
        hub, people, rp, tmp_path):
    from idp.oidc import keys as op_keys
    from kernel.keys import keystore

    _, flow, tokens, _ = full_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    old_kid = jws.extract_compact(tokens["id_token"].encode()).headers()["kid"]
    store = keystore()
    store.create_signing_key("idp")
    op_keys.create_es256_key(store)
    published = httpx.get(f"{hub.base_url}/idp/oidc/jwks", timeout=10).json()["keys"]
    by_alg = {alg: [k for k in published if k["alg"] == alg] for alg in ("RS256", "ES256")}
    assert len(by_alg["RS256"]) == 2 and len(by_alg["ES256"]) == 2
    assert all("d" not in k for k in published)
    # a token signed before the rotation still verifies: its key is the second one published
    assert old_kid in {k["kid"] for k in by_alg["RS256"]}
    verify_id_token(hub.base_url, rp, tokens["id_token"], flow)
    # and the next token is signed with the new key
    _, _, later, _ = full_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    new_kid = jws.extract_compact(later["id_token"].encode()).headers()["kid"]
    assert new_kid != old_kid and new_kid == by_alg["RS256"][0]["kid"]


# --- the code flow ----------------------------------------------------------------------------


def test_code_flow_with_pkce_and_private_key_jwt_gives_a_verified_id_token_and_userinfo(hub, people, rp):
    person, flow, back = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    assert back["state"] == flow.state
    assert back["iss"] == hub.base_url  # RFC 9207
    answer = exchange(hub.base_url, rp, back["code"], flow)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    tokens = answer.json()
    claims = verify_id_token(hub.base_url, rp, tokens["id_token"], flow)
    assert claims["acr"] == PPT
    assert claims["sid"] and claims["auth_time"] <= time.time()
    info = httpx.get(f"{hub.base_url}/idp/oidc/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"},
                     timeout=10)
    assert info.status_code == 200 and info.json() == {"sub": claims["sub"]}
    assert httpx.get(f"{hub.base_url}/idp/oidc/userinfo", headers={"Authorization": "Bearer forged"},
                     timeout=10).status_code == 401
    # the same browser is logged in: a second RP request needs no login (one session)
    flow2 = Flow()
    again = callback(person.authorize(rp, flow2), rp)
    assert again["state"] == flow2.state


def test_es256_client_gets_es256_id_tokens(hub, people, rp_es):
    _, _, tokens, claims = full_flow(hub, rp_es, "oidc-dana", people["oidc-dana"])
    assert jws.extract_compact(tokens["id_token"].encode()).headers()["alg"] == "ES256"
    assert claims["aud"] == rp_es.client_id


def test_two_agencies_never_share_a_sub(hub, people, rp, rp_es):
    _, _, _, one = full_flow(hub, rp, "oidc-erin", people["oidc-erin"])
    _, _, _, two = full_flow(hub, rp_es, "oidc-erin", people["oidc-erin"])
    assert one["sub"] != two["sub"]
    _, _, _, again = full_flow(hub, rp, "oidc-erin", people["oidc-erin"])
    assert again["sub"] == one["sub"]  # stable per agency


def test_an_agency_moving_from_saml_to_oidc_keeps_its_pseudonym(hub, people, tmp_path_factory):
    """Same agency (same entity ID): the SAML NameID equals the OIDC sub."""
    tmp = tmp_path_factory.mktemp("move")
    sp = register(TestSP("https://mover.example.jp/sp", "https://mover.example.jp"), tmp)
    browser = Browser(hub.base_url)
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    page = browser.login(browser.start(sp, etree.tostring(root)), "oidc-dana", people["oidc-dana"])
    _, response, _ = response_from_page(page.text)
    name_id = response.find("saml:Assertion/saml:Subject/saml:NameID", NS).text
    mover = RP(sp.entity_id, "https://mover.example.jp/oidc/cb")
    register_rp(mover, tmp_path_factory)
    _, _, _, claims = full_flow(hub, mover, "oidc-dana", people["oidc-dana"])
    assert claims["sub"] == name_id
    # and SAML still works for it after OIDC was added
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    _, again, _ = response_from_page(browser.start(sp, etree.tostring(root)).text)
    assert again.find("saml:Assertion/saml:Subject/saml:NameID", NS).text == name_id


# --- the basic OP test plan's negative cases ----------------------------------------------------


def test_a_code_is_good_once(hub, people, rp):
    _, flow, back = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    assert exchange(hub.base_url, rp, back["code"], flow).status_code == 200
    second = exchange(hub.base_url, rp, back["code"], flow)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"


def test_a_wrong_redirect_uri_is_never_redirected_to(hub, people, rp):
    person = Person(hub.base_url)
    for wrong in ("https://evil.example/cb", rp.redirect_uri + "/", rp.redirect_uri.upper(), rp.redirect_uri + "?x=1"):
        answer = person.authorize(rp, Flow(), redirect_uri=wrong)
        assert answer.status_code == 400 and "location" not in answer.headers, wrong
    # and at the token endpoint the redirect URI must be the authorization request's
    _, flow, back = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    answer = exchange(hub.base_url, rp, back["code"], flow, redirect_uri="https://rp1.oidc.example.jp/other")
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_missing_nonce_is_refused_to_the_redirect_uri_with_state_and_iss(hub, rp):
    flow = Flow()
    back = callback(Person(hub.base_url).authorize(rp, flow, nonce=None), rp)
    assert back["error"] == "invalid_request" and "nonce" in back["error_description"]
    assert back["state"] == flow.state and back["iss"] == hub.base_url


def test_a_nonce_is_good_for_one_authentication(hub, people, rp):
    person, flow, _ = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    replayed = Flow(nonce=flow.nonce)
    back = callback(person.authorize(rp, replayed), rp)
    assert back["error"] == "invalid_request"


@pytest.mark.parametrize("params", [
    {"code_challenge": None, "code_challenge_method": None},  # no PKCE
    {"code_challenge_method": "plain"},  # downgrade to plain
    {"code_challenge_method": None},  # no method means plain (RFC 7636 §4.3)
])
def test_pkce_s256_is_required(hub, rp, params):
    flow = Flow()
    if params.get("code_challenge_method") == "plain":
        params = {**params, "code_challenge": flow.verifier}
    back = callback(Person(hub.base_url).authorize(rp, flow, **params), rp)
    assert back["error"] == "invalid_request" and back["state"] == flow.state


def test_a_wrong_code_verifier_is_refused(hub, people, rp):
    _, flow, back = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    answer = exchange(hub.base_url, rp, back["code"], flow, verifier="W" * 50)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_an_expired_code_is_refused(hub, people, rp):
    from idp.oidc.models import OidcCode
    from kernel.db import session_scope, utcnow

    _, flow, back = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    with session_scope() as db:
        db.execute(update(OidcCode).values(expires_at=utcnow() - timedelta(seconds=1)))
    answer = exchange(hub.base_url, rp, back["code"], flow)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_an_expired_authorization_request_is_refused(hub, people, rp):
    from idp.oidc.models import OidcPending
    from kernel.db import session_scope, utcnow

    person = Person(hub.base_url)
    first = person.authorize(rp, Flow())
    with session_scope() as db:
        db.execute(update(OidcPending).values(expires_at=utcnow() - timedelta(seconds=1)))
    page = person.client.get(first.headers["location"].removeprefix(hub.base_url))
    import re

    pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
    done = person.client.post("/idp/login", data={"pending": pending, "username": "oidc-dana",
                                                  "password": people["oidc-dana"]})
    answer = person.resume(done)
    assert answer.status_code == 400 and "expired" in answer.text


@pytest.mark.parametrize("case", ["wrong_audience", "expired", "replayed", "other_client_key", "alg_none"])
def test_client_assertions_follow_the_discovery_service_rules(hub, people, rp, rp_es, case):
    _, flow, back = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    token_url = f"{hub.base_url}/idp/oidc/token"
    if case == "wrong_audience":
        assertion = rp.assertion(f"{hub.base_url}/api/discovery/query")
    elif case == "expired":
        assertion = rp.assertion(token_url, now=int(time.time()) - 600)
    elif case == "replayed":
        assertion = rp.assertion(token_url)
        first = exchange(hub.base_url, rp, back["code"], flow, assertion=assertion)
        assert first.status_code == 200
        _, flow, back = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    elif case == "other_client_key":  # rp_es's key claiming to be rp
        assertion = rp_es.assertion(token_url, iss=rp.client_id)
    else:
        import base64

        def b64(data: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        now = int(time.time())
        assertion = b64({"alg": "none"}) + "." + b64({"iss": rp.client_id, "sub": rp.client_id, "aud": token_url,
                                                       "jti": uuid.uuid4().hex, "exp": now + 60}) + ".sig"
    answer = exchange(hub.base_url, rp, back["code"], flow, assertion=assertion)
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "invalid_client"


def _request_object(rp: RP, hub_url: str, flow: Flow, *, alg: str = "RS256", key=None, **extra) -> str:
    now = int(time.time())
    claims = {"iss": rp.client_id, "aud": hub_url, "client_id": rp.client_id, "exp": now + 60, "iat": now,
              "response_type": "code", "redirect_uri": rp.redirect_uri, "scope": "openid", "state": flow.state,
              "nonce": flow.nonce, "code_challenge": s256(flow.verifier), "code_challenge_method": "S256", **extra}
    return sign_jws(claims, key=key if key is not None else rp.key, alg=alg, kid="k1")


def test_a_signed_request_object_is_honoured(hub, people, rp):
    person, _, _, _ = full_flow(hub, rp, "oidc-dana", people["oidc-dana"])  # logged in
    flow = Flow()
    query = {"client_id": rp.client_id, "response_type": "code", "scope": "openid",
             "request": _request_object(rp, hub.base_url, flow)}
    back = callback(person.client.get("/idp/oidc/authorize", params=query), rp)
    assert back["state"] == flow.state and back["code"]
    answer = exchange(hub.base_url, rp, back["code"], flow)
    verify_id_token(hub.base_url, rp, answer.json()["id_token"], flow)


@pytest.mark.parametrize("case", ["alg_none", "hmac", "other_client_key", "wrong_audience", "no_expiry", "by_uri"])
def test_request_objects_without_a_registered_signature_are_refused(hub, people, rp, rp_es, case):
    import base64

    person, _, _, _ = full_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    flow = Flow()
    query = {"client_id": rp.client_id, "response_type": "code", "scope": "openid", "redirect_uri": rp.redirect_uri,
             "state": "outer-state"}
    if case == "alg_none":
        header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
        signed = _request_object(rp, hub.base_url, flow)
        query["request"] = header + "." + signed.split(".")[1] + "."
    elif case == "hmac":  # keyed with the client's public key material, the classic confusion
        query["request"] = _request_object(rp, hub.base_url, flow, alg="HS256", key=json.dumps(rp.jwk).encode())
    elif case == "other_client_key":
        query["request"] = _request_object(rp, hub.base_url, flow, alg="ES256", key=rp_es.key)
    elif case == "wrong_audience":
        query["request"] = _request_object(rp, hub.base_url, flow, aud="https://other-op.example")
    elif case == "no_expiry":
        query["request"] = _request_object(rp, hub.base_url, flow, exp=None)
    else:
        query["request_uri"] = "https://rp1.oidc.example.jp/request.jwt"
    answer = person.client.get("/idp/oidc/authorize", params=query)
    back = callback(answer, rp)
    assert "code" not in back
    assert back["error"] in ("invalid_request_object", "invalid_request", "request_uri_not_supported"), back
    assert back["iss"] == hub.base_url


def test_an_unknown_client_gets_a_page_not_a_redirect(hub):
    stranger = RP("https://stranger.example.jp", "https://stranger.example.jp/cb")
    answer = Person(hub.base_url).authorize(stranger, Flow())
    assert answer.status_code == 400 and "location" not in answer.headers


# --- registration -------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, says", [
    ({"id_token_signed_response_alg": "none"}, "id_token_signed_response_alg"),
    ({"id_token_signed_response_alg": "HS256"}, "id_token_signed_response_alg"),
    ({"request_object_signing_alg": "none"}, "request_object_signing_alg"),
    ({"request_object_signing_alg": "HS256"}, "request_object_signing_alg"),
    ({"token_endpoint_auth_method": "client_secret_basic"}, "private_key_jwt"),
    ({"redirect_uris": ["https://rp.example/cb#frag"]}, "fragment"),
    ({"redirect_uris": []}, "redirect_uris"),
    ({"subject_type": "public"}, "pairwise"),
    ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "jwks"),
    ({"jwks_uri": "https://rp.example/jwks"}, "jwks_uri"),
    ({"client_id": "x" * 1100}, "client_id"),
])
def test_client_metadata_is_checked_at_registration(hub, tmp_path, overrides, says):
    candidate = RP(f"https://bad-{uuid.uuid4().hex[:8]}.example.jp", "https://bad.example.jp/cb")
    path = candidate.write_metadata(tmp_path, **overrides)
    output = cli("agency", "add", "--oidc-metadata", str(path), ok=False)
    assert says in output
    listed = cli("agency", "list")
    assert candidate.client_id not in listed


def test_a_private_key_in_the_jwks_is_refused(hub, tmp_path):
    from joserfc.jwk import RSAKey

    candidate = RP(f"https://priv-{uuid.uuid4().hex[:8]}.example.jp", "https://priv.example.jp/cb")
    private = RSAKey.import_key(candidate.key).as_dict(private=True)
    path = candidate.write_metadata(tmp_path, jwks={"keys": [private]})
    assert "private" in cli("agency", "add", "--oidc-metadata", str(path), ok=False)


# --- acr -----------------------------------------------------------------------------------------


def test_acr_values_are_honoured_or_refused(hub, people, rp):
    # a password-only person asking for TOTP: logged in, but the OP cannot meet it
    person = Person(hub.base_url)
    flow = Flow()
    first = person.authorize(rp, flow, acr_values=TIMESYNC)
    back = callback(person.login(first, "oidc-dana", people["oidc-dana"]), rp)
    assert back["error"] == "unmet_authentication_requirements" and back["state"] == flow.state
    # an acr the OP does not know at all
    back = callback(person.authorize(rp, Flow(), acr_values="urn:example:unknown-acr"), rp)
    assert back["error"] == "unmet_authentication_requirements"
    # a TOTP person: the session's strength is reported as the SAML class
    person = Person(hub.base_url)
    flow = Flow()
    first = person.authorize(rp, flow, acr_values=TIMESYNC)
    page = person.client.get(first.headers["location"].removeprefix(hub.base_url))
    import re

    pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
    step = person.client.post("/idp/login", data={"pending": pending, "username": "oidc-fumi",
                                                  "password": people["oidc-fumi"]})
    done = person.client.post("/idp/login/totp", data={"pending": pending, "code": totp(TOTP_SEED)})
    assert step.status_code == 200
    back = callback(person.resume(done), rp)
    answer = exchange(hub.base_url, rp, back["code"], flow)
    claims = verify_id_token(hub.base_url, rp, answer.json()["id_token"], flow)
    assert claims["acr"] == TIMESYNC


# --- logout ---------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[str]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        type(self).received.append(parse_qs(body)["logout_token"][0])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def backchannel():
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/backchannel", _Receiver.received
    server.shutdown()
    thread.join(timeout=10)


def _logout_tokens_for(received: list[str], client_id: str, hub_url: str) -> list[dict]:
    found = []
    for token in received:
        decoded = jwt.decode(token, hub_keys(hub_url), algorithms=["RS256", "ES256"])
        if decoded.claims["aud"] == client_id:
            assert decoded.header["typ"] == "logout+jwt"
            assert "http://schemas.openid.net/event/backchannel-logout" in decoded.claims["events"]
            assert "nonce" not in decoded.claims
            found.append(dict(decoded.claims))
    return found


def test_rp_initiated_logout_ends_the_session_and_tells_the_other_rps(hub, people, backchannel, tmp_path_factory):
    url, received = backchannel
    one = register_rp(RP(f"https://bcl-a-{uuid.uuid4().hex[:6]}.example.jp", "https://bcl-a.example.jp/cb",
                         backchannel_logout_uri=url, post_logout_redirect_uri="https://bcl-a.example.jp/bye"),
                      tmp_path_factory)
    two = register_rp(RP(f"https://bcl-b-{uuid.uuid4().hex[:6]}.example.jp", "https://bcl-b.example.jp/cb",
                         backchannel_logout_uri=url), tmp_path_factory)
    person, _, tokens, claims_one = full_flow(hub, one, "oidc-erin", people["oidc-erin"])
    flow_two = Flow()
    back = callback(person.authorize(two, flow_two), two)  # same login session, no login
    tokens_two = exchange(hub.base_url, two, back["code"], flow_two).json()
    claims_two = verify_id_token(hub.base_url, two, tokens_two["id_token"], flow_two)
    answer = person.client.get("/idp/oidc/logout", params={
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://bcl-a.example.jp/bye",
        "state": "s-123"})
    assert answer.status_code in (302, 303)
    assert answer.headers["location"] == "https://bcl-a.example.jp/bye?state=s-123"
    got_two = _logout_tokens_for(received, two.client_id, hub.base_url)
    assert [(t["sub"], t["sid"]) for t in got_two] == [(claims_two["sub"], claims_two["sid"])]
    assert _logout_tokens_for(received, one.client_id, hub.base_url)[0]["sid"] == claims_one["sid"]
    # the session is gone: the next request needs a login, the access token no longer works
    again = person.authorize(one, Flow())
    assert again.status_code == 303 and "/idp/login" in again.headers["location"]
    assert httpx.get(f"{hub.base_url}/idp/oidc/userinfo", timeout=10,
                     headers={"Authorization": f"Bearer {tokens_two['access_token']}"}).status_code == 401


def test_logout_without_id_token_hint_asks_the_person(hub, people, rp):
    person, _, _, _ = full_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    answer = person.client.get("/idp/oidc/logout", params={"post_logout_redirect_uri": "https://evil.example/"})
    assert answer.status_code == 303 and answer.headers["location"].endswith("/idp/logout")
    assert callback(person.authorize(rp, Flow()), rp).get("code")  # still logged in


def test_saml_single_logout_ends_the_oidc_sessions_too(hub, people, backchannel, tmp_path_factory):
    url, received = backchannel
    tmp = tmp_path_factory.mktemp("slo")
    sp = register(TestSP(f"https://slo-{uuid.uuid4().hex[:6]}.example.jp/sp", "https://slo.example.jp"), tmp)
    oidc_rp = register_rp(RP(f"https://bcl-c-{uuid.uuid4().hex[:6]}.example.jp", "https://bcl-c.example.jp/cb",
                             backchannel_logout_uri=url), tmp_path_factory)
    person, _, _, claims = full_flow(hub, oidc_rp, "oidc-dana", people["oidc-dana"])
    browser = Browser(hub.base_url)
    browser.client = person.client  # the same browser, the same login session
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    _, response, _ = response_from_page(browser.start(sp, etree.tostring(root)).text)
    name_id = response.find("saml:Assertion/saml:Subject/saml:NameID", NS).text
    index = response.find("saml:Assertion/saml:AuthnStatement", NS).get("SessionIndex")
    xml = sp.logout_request(f"{hub.base_url}/idp/slo", name_id, index)
    answer = person.client.get("/idp/slo?" + sp.redirect_query(xml))
    assert answer.status_code == 303
    got = _logout_tokens_for(received, oidc_rp.client_id, hub.base_url)
    assert [t["sid"] for t in got] == [claims["sid"]]
    assert person.authorize(oidc_rp, Flow()).status_code == 303


# --- discovery with an OIDC agency ------------------------------------------------------------------


def test_an_oidc_agency_asks_the_discovery_service_by_its_sub(hub, people, tmp_path_factory):
    """The whitelist and the history treat an OIDC agency as any other: a permitted and a
    denied decision, each in the history under the agency's entity ID."""
    from consent import service as consent
    from consent.models import PolicyRuleIn, WhitelistEntryIn
    from discovery import service as location
    from kernel.db import session_scope
    from kernel.keys import keystore
    from pseudonym import service as pseudonyms
    from tests.saml_sp import TestSP as SP

    tmp = tmp_path_factory.mktemp("odisco")
    requester = register_rp(RP(f"https://oreq-{uuid.uuid4().hex[:6]}.example.jp", "https://oreq.example.jp/cb"),
                            tmp_path_factory)
    provider = register(SP(f"https://oprov-{uuid.uuid4().hex[:6]}.example.jp/sp", "https://oprov.example.jp"), tmp)
    other = register(SP(f"https://oprov2-{uuid.uuid4().hex[:6]}.example.jp/sp", "https://oprov2.example.jp"), tmp)
    urn = f"urn:renkei:test:oidc-{uuid.uuid4().hex[:6]}"
    with session_scope() as db:
        person_key = pseudonyms_person(db, "oidc-erin")
        master = f"oidc-{uuid.uuid4().hex[:8]}"
        pseudonyms.register_master_id(db_session=db, keys=keystore(), person_key=person_key, master_id=master)
        for sp, local in ((provider, "P-1"), (other, "Q-1")):  # both hold data about the person
            pseudonyms.import_local_links(db_session=db, keys=keystore(), agency=sp.entity_id,
                                          csv_text=f"{local},{master}")
        location.add_service_type(db_session=db, urn=urn, name="oidc test", info_types=["OIDCINFO"])
        for sp in (provider, other):
            location.add_offering(db_session=db, provider=sp.entity_id, service_type=urn,
                                  endpoint=f"{sp.base_url}/provide")
        consent.import_whitelist(db_session=db, entries=[WhitelistEntryIn(
            requester=requester.client_id, provider=provider.entity_id, task_code="OIDCTASK", task_name="test",
            info_type_code="OIDCINFO", info_type_name="test", legal_basis="test", consent="required")])
        # the person's own policy names the OIDC agency as it would a SAML one
        consent.set_policy(collection_method="test-setup", db_session=db, person_key=person_key,
                           rules=[PolicyRuleIn(effect="allow", requester=requester.client_id)], principal_id="oidc-erin")
    _, _, tokens, claims = full_flow(hub, requester, "oidc-erin", people["oidc-erin"])
    query_url = f"{hub.base_url}/api/discovery/query"
    answer = httpx.post(query_url, timeout=20, headers={"Authorization": f"Bearer {requester.assertion(query_url)}"},
                        json={"service_type": urn, "task": "OIDCTASK",
                              "person": {"bootstrap_token": tokens["discovery_bootstrap"]}})
    assert answer.status_code == 200, answer.text
    offerings = {o["provider"]: o for o in answer.json()["offerings"]}
    assert offerings[provider.entity_id]["permitted"] is True
    assert offerings[other.entity_id]["permitted"] is False  # no whitelist entry: default deny
    from access_history import service as history

    with session_scope() as db:
        for offering, permitted in ((offerings[provider.entity_id], True), (offerings[other.entity_id], False)):
            entries = history.entries_for_decision(db_session=db, decision_id=offering["decision_id"])
            assert entries and entries[0].requester == requester.client_id
            assert entries[0].person_key == person_key and entries[0].permitted is permitted
        # the ID token's release of the pseudonym is in the person's history too, as SAML's is
        page = history.timeline(db_session=db, person_key=person_key, limit=50)
        assert any(e.entry.requester == requester.client_id and e.entry.task_code == "sso" for e in page.entries)
    # the bootstrap token names the person by the agency's own sub, and only to that agency
    from pseudonym.bootstrap import read_bootstrap

    seen = read_bootstrap(tokens["discovery_bootstrap"], keys=keystore(), audience=f"{hub.base_url}/discovery",
                          requester=requester.client_id, now=int(time.time()))
    assert seen.pseudonym == claims["sub"]


def pseudonyms_person(db, username: str) -> str:
    from idp import accounts

    return accounts.find(db_session=db, username=username).person_key


def test_a_code_exchanged_twice_at_once_is_given_once(hub, people, rp):
    """Codes live in the database: of two simultaneous exchanges (two workers), one wins."""
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(3):
        _, flow, back = login_flow(hub, rp, "oidc-dana", people["oidc-dana"])
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = list(pool.map(lambda pair: exchange(hub.base_url, rp, pair[0], pair[1]),
                                    [(back["code"], flow)] * 2))
        assert sorted(a.status_code for a in answers) == [200, 400], [a.text for a in answers]


@pytest.mark.parametrize("params", [
    {"state": "s" * 5000},
    {"nonce": "n" * 300},
    {"acr_values": "a" * 2000},
    {"scope": "openid " + "x" * 9000},
])
def test_oversized_authorization_parameters_get_a_clear_refusal(hub, rp, params):
    answer = Person(hub.base_url).authorize(rp, Flow(), **params)
    assert 300 <= answer.status_code < 500
    if answer.status_code in (302, 303):
        assert "error=" in answer.headers["location"] and "code=" not in answer.headers["location"]


def test_oversized_token_requests_get_a_clear_refusal(hub, rp):
    answer = exchange(hub.base_url, rp, "c" * 5000, Flow(), assertion="a" * 9000)
    assert answer.status_code in (400, 401) and answer.json()["error"]


def test_an_unreachable_backchannel_rp_is_reported_and_its_session_still_ends(hub, people, tmp_path_factory):
    import socket

    from idp.oidc import logout
    from idp.oidc.models import OidcRpSession
    from kernel.db import session_scope

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/bcl"
    down = register_rp(RP(f"https://down-{uuid.uuid4().hex[:6]}.example.jp", "https://down.example.jp/cb",
                          backchannel_logout_uri=dead), tmp_path_factory)
    _, _, tokens, claims = full_flow(hub, down, "oidc-dana", people["oidc-dana"])
    with session_scope() as db:
        row = db.query(OidcRpSession).filter_by(client_id=down.client_id, sid=claims["sid"]).one()
        results = logout.end_sessions(db, row.login_session_id)
    assert [(r.client_id, r.ok) for r in results if r.client_id == down.client_id] == [(down.client_id, False)]
    assert httpx.get(f"{hub.base_url}/idp/oidc/userinfo", timeout=10,
                     headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401


def test_housekeeping_drops_expired_codes_tokens_and_orphaned_rp_sessions(hub, people, rp):
    from sqlalchemy import func, select

    from idp import service
    from idp.models import IdpSession
    from idp.oidc.models import OidcCode, OidcRpSession, OidcToken
    from kernel.db import session_scope, utcnow

    _, _, _, claims = full_flow(hub, rp, "oidc-dana", people["oidc-dana"])
    login_flow(hub, rp, "oidc-dana", people["oidc-dana"])  # leaves an unused code
    with session_scope() as db:
        login_session = db.scalar(select(OidcRpSession.login_session_id).where(OidcRpSession.sid == claims["sid"]))
        service.expire_housekeeping(db_session=db, now=utcnow() + timedelta(seconds=hub.settings.session_lifetime_seconds + 1))
        assert db.get(IdpSession, login_session) is None
        assert db.scalar(select(func.count()).select_from(OidcRpSession).where(OidcRpSession.sid == claims["sid"])) == 0
        later = utcnow() + timedelta(seconds=hub.settings.session_lifetime_seconds + 1)
        assert db.scalar(select(func.count()).select_from(OidcCode).where(OidcCode.expires_at <= later)) == 0
        assert db.scalar(select(func.count()).select_from(OidcToken).where(OidcToken.expires_at <= later)) == 0


def test_resuming_without_logging_in_is_login_required_and_a_pending_request_is_used_once(hub, rp):
    person = Person(hub.base_url)
    flow = Flow()
    first = person.authorize(rp, flow)
    assert first.status_code == 303 and "/idp/login" in first.headers["location"]
    pending = person.client.cookies.get("renkei_oidc_pending")
    back = callback(person.client.get("/idp/oidc/authorize/resume", params={"pending": pending}), rp)
    assert back["error"] == "login_required" and back["state"] == flow.state
    again = person.client.get("/idp/oidc/authorize/resume", params={"pending": pending})
    assert again.status_code == 400 and "location" not in again.headers
    # and another browser cannot resume it
    stranger = Person(hub.base_url)
    assert stranger.client.get("/idp/oidc/authorize/resume", params={"pending": pending}).status_code == 400


def test_keys_rotate_oidc_es256_adds_an_ec_key_that_signs_next(hub, people, rp_es):
    from joserfc.jwk import ECKey

    before = {k["kid"] for k in httpx.get(f"{hub.base_url}/idp/oidc/jwks", timeout=10).json()["keys"]}
    assert "oidc-es256 now signs with ec-p256 key v" in cli("keys", "rotate", "oidc-es256")
    published = httpx.get(f"{hub.base_url}/idp/oidc/jwks", timeout=10).json()["keys"]
    newest = next(k for k in published if k["alg"] == "ES256")
    assert newest["kid"] not in before and newest["crv"] == "P-256"
    assert isinstance(ECKey.import_key(newest), ECKey)
    _, _, tokens, _ = full_flow(hub, rp_es, "oidc-dana", people["oidc-dana"])
    assert jws.extract_compact(tokens["id_token"].encode()).headers()["kid"] == newest["kid"]
