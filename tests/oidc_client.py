"""A test OIDC relying party speaking the protocol over HTTP to the test hub: its keys come from
the test (never from the hub), it registers through `renkei agency add --oidc-metadata`, and it
checks what it receives with joserfc against the hub's published JWKS."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from kernel.jose import sign_jws


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class RP:
    """One OIDC agency: client_id, redirect URI, its private key and registered metadata."""

    client_id: str
    redirect_uri: str
    key: object = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    id_token_alg: str = "RS256"
    backchannel_logout_uri: str | None = None
    post_logout_redirect_uri: str | None = None

    @property
    def jwk(self) -> dict:
        cls = ECKey if isinstance(self.key, ec.EllipticCurvePrivateKey) else RSAKey
        data = cls.import_key(self.key.public_key()).as_dict(private=False)
        data["kid"] = "k1"
        return data

    def metadata(self, **overrides) -> dict:
        doc = {
            "client_id": self.client_id,
            "client_name": f"Test RP {self.client_id}",
            "redirect_uris": [self.redirect_uri],
            "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "id_token_signed_response_alg": self.id_token_alg,
            "jwks": {"keys": [self.jwk]},
        }
        if self.backchannel_logout_uri:
            doc["backchannel_logout_uri"] = self.backchannel_logout_uri
        if self.post_logout_redirect_uri:
            doc["post_logout_redirect_uris"] = [self.post_logout_redirect_uri]
        doc.update(overrides)
        return {k: v for k, v in doc.items() if v is not None}

    def write_metadata(self, directory: Path, **overrides) -> Path:
        path = directory / f"oidc-{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(self.metadata(**overrides)), encoding="utf-8")
        return path

    def assertion(self, audience: str, *, lifetime: int = 60, jti: str | None = None, now: int | None = None,
                  iss: str | None = None) -> str:
        now = int(time.time()) if now is None else now
        alg = "ES256" if isinstance(self.key, ec.EllipticCurvePrivateKey) else "RS256"
        claims = {"iss": iss or self.client_id, "sub": iss or self.client_id, "aud": audience,
                  "jti": jti or secrets.token_urlsafe(16), "iat": now, "exp": now + lifetime}
        return sign_jws(claims, key=self.key, alg=alg, kid="k1")


@dataclass
class Flow:
    """One authorization request's secrets, kept by the RP."""

    state: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))


class Person:
    """A person's browser at the hub (cookies kept), never following redirects by itself."""

    def __init__(self, hub_url: str):
        self.hub_url = hub_url
        self.client = httpx.Client(base_url=hub_url, follow_redirects=False, timeout=20)

    def authorize(self, rp: RP, flow: Flow, **params) -> httpx.Response:
        query = {"response_type": "code", "client_id": rp.client_id, "redirect_uri": rp.redirect_uri,
                 "scope": "openid", "state": flow.state, "nonce": flow.nonce,
                 "code_challenge": s256(flow.verifier), "code_challenge_method": "S256"}
        query.update(params)
        return self.client.get("/idp/oidc/authorize?" + urlencode({k: v for k, v in query.items() if v is not None}))

    def login(self, redirect: httpx.Response, username: str, password: str) -> httpx.Response:
        """From the authorize answer's redirect to the login page, through it, back to the RP."""
        assert redirect.status_code == 303, redirect.text[:500]
        page = self.client.get(redirect.headers["location"].removeprefix(self.hub_url))
        assert page.status_code == 200, page.text[-500:]
        pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)
        done = self.client.post("/idp/login", data={"pending": pending, "username": username, "password": password})
        return self.resume(done)

    def resume(self, done: httpx.Response) -> httpx.Response:
        assert done.status_code == 303, done.text[-500:]
        return self.client.get(done.headers["location"].removeprefix(self.hub_url))

    def close(self) -> None:
        self.client.close()


def callback(response: httpx.Response, rp: RP) -> dict[str, str]:
    """The parameters the browser brings back to the RP's redirect URI (asserting it goes there)."""
    assert response.status_code in (302, 303), response.text[-500:]
    location = response.headers["location"]
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == rp.redirect_uri, location
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def exchange(hub_url: str, rp: RP, code: str, flow: Flow, *, assertion: str | None = None,
             redirect_uri: str | None = None, verifier: str | None = None) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri or rp.redirect_uri,
            "code_verifier": verifier if verifier is not None else flow.verifier,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion or rp.assertion(f"{hub_url}/idp/oidc/token")}
    return httpx.post(f"{hub_url}/idp/oidc/token", data={k: v for k, v in data.items() if v}, timeout=20)


def hub_keys(hub_url: str) -> KeySet:
    return KeySet.import_key_set(httpx.get(f"{hub_url}/idp/oidc/jwks", timeout=10).json())


def verify_id_token(hub_url: str, rp: RP, id_token: str, flow: Flow) -> dict:
    """OIDC Core §3.1.3.7 as an RP does it: signature by a published key with the registered
    algorithm, iss, aud, exp, nonce."""
    token = jwt.decode(id_token, hub_keys(hub_url), algorithms=[rp.id_token_alg])
    claims = dict(token.claims)
    assert token.header["alg"] == rp.id_token_alg
    assert claims["iss"] == hub_url
    assert claims["aud"] == rp.client_id
    assert claims["exp"] > time.time()
    assert claims["nonce"] == flow.nonce
    return claims
