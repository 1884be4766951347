"""The OpenID Connect provider on Authlib's server components (OpenID Connect Core 1.0 §3.1,
the authorization code flow): Authlib's `AuthorizationServer`, `AuthorizationCodeGrant`,
`CodeChallenge` (RFC 7636), `OpenIDCode`, `IssuerParameter` (RFC 9207) and `UserInfoEndpoint`,
wired to the hub: clients are registered agencies (`federation`), the person is the IdP's login
session, `sub` is the agency's pairwise pseudonym (`pseudonym`), codes and tokens live in the
database (several workers), and client authentication is `private_key_jwt` checked by the same
function as the discovery service's client assertions (`kernel.jose.verify_client_assertion`).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc6749.resource_protector import ResourceProtector
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9101 import JWTAuthenticationRequest
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from federation import service as agencies
from federation.oidc import CLIENT_ALGORITHMS, OidcClient
from idp import service as idp_service
from idp.oidc import keys as op_keys
from idp.oidc.models import OidcCode, OidcRpSession, OidcToken
from kernel import replay
from kernel.db import insert_or_ignore_in, utcnow
from kernel.jose import ClientAuthFailed, verify_client_assertion
from kernel.keys import KeyStore
from kernel.replay import SeenMessage
from kernel.settings import Settings
from pseudonym import bootstrap
from pseudonym import service as pseudonyms

CODE_LIFETIME = timedelta(seconds=60)  # RFC 6749 §4.1.2 "MUST expire shortly after it is issued"
TOKEN_LIFETIME = 600  # seconds an access token (UserInfo) and an ID token are good for
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPES = ["openid"]
# request parameters and the database's limits, checked before anything is stored
NONCE_MAX = 256
STATE_MAX = 1024
ACR_VALUES_MAX = 1024


def issuer(settings: Settings) -> str:
    """The OP's Issuer Identifier (OIDC Discovery §4.3: the well-known path hangs off it)."""
    return settings.base_url.rstrip("/")


def endpoint(settings: Settings, name: str) -> str:
    return f"{issuer(settings)}/idp/oidc/{name}"


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- the client: a registered OIDC agency -------------------------------------------------


class Client(ClientMixin):
    """A registered agency seen through Authlib's ClientMixin."""

    def __init__(self, registration: OidcClient):
        self.registration = registration
        self.client_id = registration.client_id
        self.client_metadata = registration.metadata
        self.id_token_signed_response_alg = registration.id_token_signed_response_alg

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # OpenID Connect Core §3.1.2.1: redirect_uri is REQUIRED

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # OpenID Connect Core §3.1.2.1: exact string comparison (RFC 6749 §3.1.2.3)
        return redirect_uri in self.registration.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # no shared secrets: private_key_jwt only

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "private_key_jwt"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Grantee:
    """The person a code or token is for, as the OP knows them in one login session."""

    person_key: str
    login_session_id: str
    acr: str
    auth_time: datetime
    sub: str = ""
    extra: dict = field(default_factory=dict)


class AccessToken(TokenMixin):
    def __init__(self, row: OidcToken, client: Client | None, sub: str):
        self.row, self.client, self.scope, self.sub = row, client, row.scope, sub

    def check_client(self, client) -> bool:
        return client.get_client_id() == self.row.client_id

    def get_scope(self) -> str:
        return self.row.scope

    def get_expires_in(self) -> int:
        return TOKEN_LIFETIME

    def is_expired(self) -> bool:
        return self.row.expires_at <= utcnow()

    def is_revoked(self) -> bool:
        return False  # a revoked token's row is deleted

    def get_user(self) -> Grantee:
        return Grantee(self.row.person_key, self.row.login_session_id, self.row.acr, self.row.auth_time,
                       sub=self.sub)

    def get_client(self) -> Client | None:
        return self.client


# --- requests ----------------------------------------------------------------------------


class HubPayload(OAuth2Payload):
    """The request's parameters: the first value of each name, and every value (Authlib refuses
    repeated parameters with the lists)."""

    def __init__(self, params: list[tuple[str, str]]):
        self._data: dict[str, str] = {}
        self._datalist: dict[str, list[str]] = {}
        for name, value in params:
            self._data.setdefault(name, value)
            self._datalist.setdefault(name, []).append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class HubRequest(OAuth2Request):
    """An OAuth 2 request built from what the route read (query or form, as pairs)."""

    def __init__(self, method: str, uri: str, params: list[tuple[str, str]], headers) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = HubPayload(params)

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data


@dataclass
class Context:
    """What one request's server works with (the caller owns the transaction)."""

    db_session: Session
    settings: Settings
    keys: KeyStore


# --- grants ------------------------------------------------------------------------------


class S256Challenge(CodeChallenge):
    """RFC 7636 with S256 only: `plain` (and a missing method, which means plain, §4.3) is refused."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant, redirect_uri):
        method = grant.request.payload.data.get("code_challenge_method")
        if method != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 (plain is not accepted)")
        return super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["private_key_jwt"]
    AUTHORIZATION_CODE_LENGTH = 43

    @property
    def ctx(self) -> Context:
        return self.server.ctx

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        user: Grantee = request.user
        data = request.payload.data
        nonce = data.get("nonce")
        if nonce:
            try:  # a nonce is good for one authentication (OIDC Core §15.5.2)
                replay.remember(db_session=self.ctx.db_session, issuer=_nonce_issuer(request.client.client_id),
                                message_id=nonce, expires_at=utcnow() + timedelta(days=1))
            except replay.ReplayDetected:
                raise InvalidRequestError("this nonce was already used") from None
        self.ctx.db_session.add(OidcCode(
            id=_hash(code), client_id=request.client.client_id, redirect_uri=request.payload.redirect_uri,
            scope=request.scope, nonce=nonce, code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"], person_key=user.person_key,
            login_session_id=user.login_session_id, acr=user.acr, auth_time=user.auth_time,
            expires_at=utcnow() + CODE_LIFETIME,
        ))
        self.ctx.db_session.flush()

    def query_authorization_code(self, code: str, client: Client) -> OidcCode | None:
        """Take the code out of the database in one statement: of two concurrent exchanges
        (two workers), one gets it (RFC 6749 §4.1.2 "MUST NOT use the authorization code more
        than once")."""
        if not isinstance(code, str) or len(code) > 128:
            return None
        row = self.ctx.db_session.connection().execute(_TAKE_CODE, {"id": _hash(code)}).first()
        if row is None:
            return None
        found = OidcCode(**row._mapping)
        if found.client_id != client.client_id:
            return None
        if found.expires_at <= utcnow():
            raise InvalidGrantError("the authorization code has expired")
        return found

    def delete_authorization_code(self, authorization_code: OidcCode) -> None:
        pass  # already taken out by query_authorization_code

    def authenticate_user(self, authorization_code: OidcCode) -> Grantee | None:
        ctx = self.ctx
        sub = pseudonyms.get_or_create(db_session=ctx.db_session, keys=ctx.keys,
                                       person_key=authorization_code.person_key,
                                       agency=authorization_code.client_id, scope=ctx.settings.scope)
        return Grantee(authorization_code.person_key, authorization_code.login_session_id,
                       authorization_code.acr, authorization_code.auth_time, sub=sub)


def _nonce_issuer(client_id: str) -> str:
    return f"oidc-nonce {client_id}"[:1024]


class HubOpenIDCode(OpenIDCode):
    """ID tokens (OIDC Core §2): signed RS256 or ES256 as the client registered, `sub` its
    pairwise pseudonym, `sid` the login session as this RP knows it, `acr` the SAML class."""

    def __init__(self, ctx: Context):
        super().__init__(require_nonce=True)
        self.ctx = ctx

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        if len(nonce) > NONCE_MAX:
            raise InvalidRequestError(f"nonce must not exceed {NONCE_MAX} characters")
        return self.ctx.db_session.scalar(select(SeenMessage.id).where(
            SeenMessage.issuer == _nonce_issuer(request.payload.client_id or ""),
            SeenMessage.message_id == nonce)) is not None

    def get_client_algorithm(self, client: Client) -> str:
        return client.id_token_signed_response_alg

    def resolve_client_private_key(self, client: Client):
        key = op_keys.signing_key(self.ctx.keys, client.id_token_signed_response_alg)
        cls = ECKey if key.alg == "ES256" else RSAKey
        return cls.import_key(key.private_key, {"kid": key.kid})

    def get_encode_header(self, client: Client) -> dict:
        key = op_keys.signing_key(self.ctx.keys, client.id_token_signed_response_alg)
        return {"alg": key.alg, "kid": key.kid, "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict:
        now = int(utcnow().replace(tzinfo=UTC).timestamp())
        return {"iss": issuer(self.ctx.settings), "aud": client.client_id, "iat": now, "exp": now + TOKEN_LIFETIME}

    def generate_user_info(self, user: Grantee, scope: str) -> UserInfo:
        return UserInfo(sub=user.sub, **user.extra)


class HubUserInfo(UserInfoEndpoint):
    """UserInfo (OIDC Core §5.3): the pairwise `sub`, nothing else is released."""

    def generate_user_info(self, user: Grantee, scope: str) -> UserInfo:
        return UserInfo(sub=user.sub)

    def get_issuer(self) -> str:
        return issuer(self.server.ctx.settings)


class _Bearer(BearerTokenValidator):
    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx

    def authenticate_token(self, token_string: str) -> AccessToken | None:
        if len(token_string) > 128:
            return None
        row = self.ctx.db_session.get(OidcToken, _hash(token_string))
        if row is None:
            return None
        agency = agencies.lookup(db_session=self.ctx.db_session, entity_id=row.client_id)
        if agency is None or agency.oidc is None:
            return None
        sub = pseudonyms.get_or_create(db_session=self.ctx.db_session, keys=self.ctx.keys,
                                       person_key=row.person_key, agency=row.client_id, scope=self.ctx.settings.scope)
        return AccessToken(row, Client(agency.oidc), sub)


class _Protector(ResourceProtector):
    """Authlib's resource protector for the one request being answered."""

    def __init__(self, ctx: Context, request: OAuth2Request):
        super().__init__()
        self.request = request
        self.register_token_validator(_Bearer(ctx))

    def acquire_token(self, scopes=None):
        return self.validate_request([scopes] if isinstance(scopes, str) else scopes, self.request)


class RequestObjects(JWTAuthenticationRequest):
    """Request objects by value (RFC 9101, OIDC Core §6.1): signed with one of the client's
    registered keys by RS256, PS256 or ES256 (its registered `request_object_signing_alg` if it
    named one); "none" and HMAC are never accepted. The object is for this OP (`aud`), from
    this client (`iss`), and expires. `request_uri` is not supported (no fetching by the OP)."""

    def __init__(self, ctx: Context):
        super().__init__(support_request=True, support_request_uri=False)
        self.ctx = ctx
        self.claims_validator = jwt.JWTClaimsRegistry(
            leeway=60, client_id={"essential": True}, iss={"essential": True},
            aud={"essential": True, "value": issuer(ctx.settings)}, exp={"essential": True})

    def resolve_client_public_key(self, client: Client) -> KeySet:
        return KeySet.import_key_set(client.registration.jwks)

    def get_request_object_signing_algorithms(self, client: Client) -> list[str]:
        registered = client.registration.request_object_signing_alg
        return [registered] if registered else list(CLIENT_ALGORITHMS)

    def get_server_metadata(self) -> dict:
        return {"issuer": issuer(self.ctx.settings)}

    def get_client_require_signed_request_object(self, client: Client) -> bool:
        return False

    def apply(self, server: HubServer, request: OAuth2Request) -> None:
        """Replace the request's parameters by the verified request object's, if it has one."""
        if "request" not in request.payload.data and "request_uri" not in request.payload.data:
            return
        client_id = request.payload.client_id
        self.parse_authorization_request(server, request)
        if request.payload.data.get("iss") != client_id:
            raise InvalidRequestError("the request object's iss must be the client_id", state=request.payload.state)


# --- the server ----------------------------------------------------------------------------


class HubIssuer(IssuerParameter):
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def get_issuer(self) -> str:
        return issuer(self.ctx.settings)


@dataclass
class Reply:
    """An answer for the route to send: status, JSON body or '' and headers."""

    status: int
    body: Any
    headers: list[tuple[str, str]]

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"] + [("Location", value)]


_CODES, _TOKENS, _RP_SESSIONS = OidcCode.__table__, OidcToken.__table__, OidcRpSession.__table__
# take a code out in one statement (single use: of two concurrent exchanges one gets the row)
_TAKE_CODE = delete(_CODES).where(_CODES.c.id == bindparam("id")).returning(*_CODES.c)
_RP_SID = select(_RP_SESSIONS.c.sid).where(_RP_SESSIONS.c.login_session_id == bindparam("login_session_id"),
                                           _RP_SESSIONS.c.client_id == bindparam("client_id"))


def _rp_sid(conn, user: Grantee, client_id: str, now: datetime) -> str:
    """The `sid` this RP knows the login session by: the one it was told before, or a new one
    (two exchanges at once for a new RP agree on the first one stored)."""
    key = {"login_session_id": user.login_session_id, "client_id": client_id}
    sid = conn.execute(_RP_SID, key).scalar()
    if sid is None:
        conn.execute(insert_or_ignore_in(conn.dialect.name, OidcRpSession).values(
            **key, person_key=user.person_key, sid=secrets.token_urlsafe(24), created_at=now))
        sid = conn.execute(_RP_SID, key).scalar_one()
    return sid


class HubServer(AuthorizationServer):
    """Authlib's authorization server, framework-free: requests come in as `HubRequest`, answers
    go out as `Reply` for the route to turn into a Starlette response."""

    def __init__(self, ctx: Context):
        super().__init__(scopes_supported=SCOPES)
        self.ctx = ctx
        self.register_token_generator("default", BearerTokenGenerator(
            access_token_generator=lambda **_: secrets.token_urlsafe(32),
            expires_generator=lambda *_: TOKEN_LIFETIME))
        self.register_client_auth_method("private_key_jwt", self._authenticate_private_key_jwt)
        self.register_grant(CodeGrant, [S256Challenge(required=True), HubOpenIDCode(ctx)])
        self.register_extension(lambda server: HubIssuer(ctx)(server))
        self.register_endpoint(HubUserInfo(self))
        self.request_objects = RequestObjects(ctx)

    def query_client(self, client_id: str) -> Client | None:
        if not isinstance(client_id, str) or len(client_id) > 1024:
            return None
        agency = agencies.lookup(db_session=self.ctx.db_session, entity_id=client_id)
        return Client(agency.oidc) if agency is not None and agency.oidc is not None else None

    def _authenticate_private_key_jwt(self, query_client, request: OAuth2Request) -> Client | None:
        """RFC 7523 §2.2 / OIDC Core §9: the assertion is checked against the client's registered
        JWKS with the discovery service's rules (algorithm list, audience, five-minute expiry
        bound, jti once in the database replay cache)."""
        form = request.form
        if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
            return None
        settings = self.ctx.settings

        def keys_for(client_id: str):
            client = query_client(client_id)
            return client.registration.public_keys if client else ()

        try:
            claims = verify_client_assertion(
                form["client_assertion"], keys_for=keys_for, db_session=self.ctx.db_session,
                # the token endpoint (OIDC Core §9) or the issuer (RFC 7523bis, what openid-client sends)
                audience=[endpoint(settings, "token"), issuer(settings)],
            )
        except ClientAuthFailed as exc:
            raise InvalidClientError(description=str(exc), status_code=401) from None
        if form.get("client_id") not in (None, claims["iss"]):
            raise InvalidClientError(description="client_id is not the client assertion's issuer", status_code=401)
        return query_client(claims["iss"])

    def save_token(self, token: dict, request: OAuth2Request) -> None:
        """Store the access token's hash; note the RP in the login session (its `sid`); record
        the release of the pseudonym in the person's history before it leaves (log before
        disclose); add the discovery bootstrap token."""
        ctx, user, client = self.ctx, request.user, request.client
        now = utcnow()
        conn = ctx.db_session.connection()  # prebuilt Core statements: no unit of work to flush
        conn.execute(_TOKENS.insert(), {
            "id": _hash(token["access_token"]), "client_id": client.client_id, "person_key": user.person_key,
            "login_session_id": user.login_session_id, "scope": token.get("scope") or "", "acr": user.acr,
            "auth_time": user.auth_time, "expires_at": now + timedelta(seconds=TOKEN_LIFETIME)})
        user.extra["sid"] = _rp_sid(conn, user, client.client_id, now)
        idp_service.record_release(db_session=ctx.db_session, settings=ctx.settings, agency=client.client_id,
                                   person_key=user.person_key, authn_context=user.acr)
        # ID-WSF's bootstrap, as in the SAML assertion's DiscoveryEPR: lets the agency ask the
        # discovery service about this person by its own sub (docs/oidc.md)
        token["discovery_bootstrap"] = bootstrap.issue_bootstrap(
            keys=ctx.keys, audience=issuer(ctx.settings) + "/discovery", requester=client.client_id,
            pseudonym=user.sub, expires=int(now.replace(tzinfo=UTC).timestamp()) + TOKEN_LIFETIME)

    def create_oauth2_request(self, request) -> OAuth2Request:
        return request

    def create_json_request(self, request):
        return request

    def handle_response(self, status: int, body, headers) -> Reply:
        return Reply(status, body, list(headers))

    def send_signal(self, name, *args, **kwargs) -> None:
        pass

    def protector(self, request: OAuth2Request) -> _Protector:
        return _Protector(self.ctx, request)


def userinfo(server: HubServer, request: HubRequest) -> Reply:
    """Answer UserInfo through Authlib's endpoint, with this request's bearer token."""
    endpoint_ = server._endpoints["userinfo"][0]
    endpoint_.resource_protector = server.protector(request)
    return server.create_endpoint_response("userinfo", request)
