"""A demo agency that signs people in over OpenID Connect instead of SAML, with Authlib's client:
the integration example for agencies whose newer systems speak OIDC (docs/oidc.md).

  GET  /                    home: who is signed in (the pairwise `sub`, `acr`)
  GET  /login               authorization code flow with PKCE (S256), state and nonce
  GET  /callback            checks `state` and `iss` (RFC 9207), exchanges the code with
                            private_key_jwt, verifies the ID token against the hub's JWKS
  GET  /logout              RP-initiated logout at the hub (id_token_hint)
  POST /backchannel-logout  the hub's logout token: ends this agency's session of that `sid`
  GET  /metadata            this client's registration metadata (RFC 7591 JSON)

Its key (ECDSA P-256) is made on first run in its key directory and never leaves it; the hub
knows only the public half, from the registration metadata.
"""
from __future__ import annotations

import html
import json
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Form
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from agency_demo.config import AgencyConfig
from agency_demo.sessions import SessionStore

KEY_FILE = "oidc-client.key.pem"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def client_key(config: AgencyConfig) -> ec.EllipticCurvePrivateKey:
    """The client's signing key, created (0600) on first run."""
    path = Path(config.key_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path} is not an EC private key")
    return key


def client_metadata(config: AgencyConfig) -> dict:
    """What the hub registers (`renkei agency add --oidc-metadata`): RFC 7591 fields."""
    jwk = ECKey.import_key(client_key(config).public_key()).as_dict(private=False)
    jwk.update({"kid": "demo-1", "use": "sig"})
    return {
        "client_id": config.entity_id,
        "client_name": config.name,
        "redirect_uris": [f"{config.base_url}/callback"],
        "post_logout_redirect_uris": [f"{config.base_url}/"],
        "backchannel_logout_uri": f"{config.base_url}/backchannel-logout",
        "token_endpoint_auth_method": "private_key_jwt",
        "id_token_signed_response_alg": "ES256",
        "jwks": {"keys": [jwk]},
    }


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html lang='ja'><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>", status_code=status_code,
        headers={"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'; form-action 'self'"})


def create_oidc_agency_app(config: AgencyConfig) -> FastAPI:
    """Build the OIDC agency's web app (its key is created on first run)."""
    key = ECKey.import_key(client_key(config), {"kid": "demo-1"})
    hub = config.hub_base_url
    provider: dict = {}  # the hub's discovery document, fetched on first use

    def discovered() -> dict:
        if not provider:
            provider.update(httpx.get(f"{hub}/.well-known/openid-configuration", timeout=10).json())
            if provider.get("issuer") != hub:
                raise ValueError("the hub's discovery document names another issuer")
        return provider

    def oauth(meta: dict) -> OAuth2Client:
        client = OAuth2Client(client_id=config.entity_id, client_secret=key, scope="openid",
                              redirect_uri=f"{config.base_url}/callback", code_challenge_method="S256",
                              token_endpoint_auth_method="private_key_jwt", timeout=10)
        # the hub accepts client assertions living at most five minutes (Authlib's default is an hour)
        client.register_client_auth_method(PrivateKeyJWT(meta["token_endpoint"], alg="ES256", headers={"kid": "demo-1"},
                                                         claims={"exp": int(time.time()) + 60}))
        return client

    sessions = SessionStore(cookie_name="agency_oidc_" + secrets.token_hex(4),
                            path=urlsplit(config.base_url).path or "/", secure=config.base_url.startswith("https://"))
    ended_sids: set[str] = set()  # sessions the hub ended over the back channel
    app = FastAPI(title=config.name, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.agency_config = config

    @app.get("/metadata")
    def metadata() -> JSONResponse:
        return JSONResponse(client_metadata(config))

    @app.get("/")
    def home(request: Request) -> Response:
        login = sessions.load(request).get("login")
        if login and login["sid"] in ended_sids:
            login = None
        if not login:
            return _page(config.name, "<p>OpenID Connect でログインします。Sign in over OpenID Connect.</p>"
                                      "<p><a href='/login'>ログイン / Log in</a></p>")
        return _page(config.name, f"<p>sub: <code id='sub'>{html.escape(login['sub'])}</code></p>"
                                  f"<p>acr: <code id='acr'>{html.escape(login['acr'])}</code></p>"
                                  "<p><a href='/logout'>ログアウト / Log out</a></p>")

    @app.get("/login")
    def login(request: Request) -> Response:
        meta = discovered()
        state, nonce, verifier = (secrets.token_urlsafe(24) for _ in range(3))
        verifier += secrets.token_urlsafe(24)
        url, _ = oauth(meta).create_authorization_url(meta["authorization_endpoint"], state=state, nonce=nonce,
                                                      code_verifier=verifier)
        response = RedirectResponse(url, status_code=303)
        sessions.save(request, response, {"pending": {"state": state, "nonce": nonce, "verifier": verifier}})
        return response

    @app.get("/callback")
    def callback(request: Request) -> Response:
        meta = discovered()
        session = sessions.load(request)
        pending = session.pop("pending", None)
        params = request.query_params
        if pending is None or params.get("state") != pending["state"]:
            return _page("ログインできません / Login failed", "<p>state does not match this browser's request</p>", 400)
        if params.get("iss") != meta["issuer"]:  # RFC 9207: the answer is from our OP
            return _page("ログインできません / Login failed", "<p>iss is missing or not the hub</p>", 400)
        if "error" in params:
            return _page("ログインできません / Login failed",
                         f"<p>{html.escape(params['error'])}: {html.escape(params.get('error_description', ''))}</p>",
                         400)
        try:
            token = oauth(meta).fetch_token(meta["token_endpoint"], code=params.get("code", ""),
                                            code_verifier=pending["verifier"], grant_type="authorization_code")
            keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"], timeout=10).json())
            id_token = jwt.decode(token["id_token"], keys, algorithms=["ES256"])
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": meta["issuer"]},
                                  aud={"essential": True, "value": config.entity_id},
                                  nonce={"essential": True, "value": pending["nonce"]},
                                  exp={"essential": True}, sub={"essential": True}).validate(id_token.claims)
        except (OAuthError, JoseError, httpx.HTTPError, KeyError, ValueError) as exc:
            return _page("ログインできません / Login failed", f"<p>{html.escape(type(exc).__name__)}: "
                                                               f"{html.escape(str(exc))[:300]}</p>", 400)
        claims = id_token.claims
        response = RedirectResponse(f"{config.base_url}/", status_code=303)
        sessions.save(request, response, {"login": {
            "sub": claims["sub"], "acr": claims.get("acr", ""), "sid": claims.get("sid", ""),
            "id_token": token["id_token"], "at": int(time.time())}}, renew=True)
        return response

    @app.get("/logout")
    def logout(request: Request) -> Response:
        login = sessions.load(request).get("login")
        meta = discovered()
        query = {"post_logout_redirect_uri": f"{config.base_url}/"}
        if login:
            query["id_token_hint"] = login["id_token"]
        response = RedirectResponse(f"{meta['end_session_endpoint']}?{urlencode(query)}", status_code=303)
        sessions.end(request, response)
        return response

    @app.post("/backchannel-logout")
    def backchannel_logout(logout_token: str = Form("")) -> Response:
        """Back-Channel Logout 1.0 §2.6: verify the token, then end the session it names."""
        meta = discovered()
        try:
            keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"], timeout=10).json())
            decoded = jwt.decode(logout_token, keys, algorithms=["ES256", "RS256"])
            if decoded.header.get("typ") != "logout+jwt":
                raise ValueError("not a logout token")
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": meta["issuer"]},
                                  aud={"essential": True, "value": config.entity_id},
                                  sid={"essential": True}, exp={"essential": True}).validate(decoded.claims)
            if BACKCHANNEL_EVENT not in (decoded.claims.get("events") or {}) or "nonce" in decoded.claims:
                raise ValueError("not a back-channel logout event")
        except (JoseError, httpx.HTTPError, ValueError) as exc:
            return JSONResponse({"error": "invalid_request", "error_description": str(exc)[:200]}, 400)
        ended_sids.add(decoded.claims["sid"])
        return Response(status_code=200, headers={"Cache-Control": "no-store"})

    return app


def client_metadata_json(config: AgencyConfig) -> bytes:
    return json.dumps(client_metadata(config), ensure_ascii=False).encode()
