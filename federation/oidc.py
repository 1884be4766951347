"""Agencies that connect over OpenID Connect: their client metadata (RFC 7591 §2 fields, and
OpenID Connect Registration 1.0 §2 / Back-Channel Logout 1.0 §2.2 / RP-Initiated Logout 1.0 §3.1),
checked once here, at registration, against what the OP supports and what the database holds.

An OIDC agency is an agency like any other: one row in `agencies` (its `client_id` is its
entity ID), so whitelist entries, the person's policy, pseudonyms and history name it the same
way, and an agency that already speaks SAML keeps its entity ID (and every pseudonym) when it
adds OIDC.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from federation.models import Agency, AgencyOidcClient
from kernel.errors import shown
from kernel.invalidation import registry_changed
from kernel.validate import control_problem, identifier_problem

MAX_METADATA_BYTES = 64 * 1024
URI_MAX = 1024  # agencies.entity_id and every URL column
MAX_REDIRECT_URIS = 20
MAX_KEYS = 10
NAME_MAX = 300
# ID tokens, logout tokens and signed UserInfo: never "none", never HMAC (the client's secret
# would be a key the OP must keep; these RPs hold only public keys)
ID_TOKEN_ALGORITHMS = ("RS256", "ES256")
# what a client may sign its assertions and request objects with
CLIENT_ALGORITHMS = ("RS256", "PS256", "ES256")
AUTH_METHOD = "private_key_jwt"


class ClientMetadataError(ValueError):
    """Client metadata that cannot be registered (RFC 7591 §3.2.2 invalid_client_metadata)."""


@dataclass(frozen=True)
class OidcClient:
    """An OIDC agency's registered client metadata, immutable and safe to cache."""

    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    backchannel_logout_uri: str | None
    backchannel_logout_session_required: bool
    id_token_signed_response_alg: str
    request_object_signing_alg: str | None
    jwks: dict
    public_keys: tuple = ()

    @property
    def metadata(self) -> dict:
        """The registered metadata as Authlib reads it (`client.client_metadata`)."""
        data = {
            "client_id": self.client_id,
            "client_name": self.client_name,
            "redirect_uris": list(self.redirect_uris),
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
            "token_endpoint_auth_method": AUTH_METHOD,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "id_token_signed_response_alg": self.id_token_signed_response_alg,
            "subject_type": "pairwise",
            "jwks": self.jwks,
        }
        if self.backchannel_logout_uri:
            data["backchannel_logout_uri"] = self.backchannel_logout_uri
            data["backchannel_logout_session_required"] = self.backchannel_logout_session_required
        if self.request_object_signing_alg:
            data["request_object_signing_alg"] = self.request_object_signing_alg
        return data


def _url(value: object, field: str, *, https_only: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise ClientMetadataError(f"{field} must be a non-empty string")
    if len(value) > URI_MAX or control_problem(value) or " " in value:
        raise ClientMetadataError(f"{field} must be a URL of at most {URI_MAX} characters without spaces")
    parts = urlsplit(value)
    schemes = ("https",) if https_only else ("https", "http")
    if parts.scheme not in schemes or not parts.netloc:
        raise ClientMetadataError(f"{field} {shown(value)} must be an absolute {' or '.join(schemes)} URL")
    if parts.fragment or value.endswith("#"):
        raise ClientMetadataError(f"{field} {shown(value)} must not carry a fragment (RFC 6749 §3.1.2)")
    return value


def _url_list(value: object, field: str, *, required: bool) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (required and not value):
        raise ClientMetadataError(f"{field} must be a {'non-empty ' if required else ''}list of URLs")
    if len(value) > MAX_REDIRECT_URIS:
        raise ClientMetadataError(f"{field} lists more than {MAX_REDIRECT_URIS} URLs")
    return tuple(dict.fromkeys(_url(v, field) for v in value))


def _choice(data: dict, field: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = data.get(field, default)
    if value is None:
        return None
    if value not in allowed:
        raise ClientMetadataError(f"{field} must be {' or '.join(allowed)}, got {shown(str(value))}")
    return value


def _keys(jwks: object) -> tuple[dict, tuple]:
    """The client's public keys: RSA of 2048 bits or more, or EC P-256; never a private or
    symmetric key."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ClientMetadataError("jwks must be a JWK Set with at least one key (jwks_uri is not accepted)")
    if len(jwks["keys"]) > MAX_KEYS:
        raise ClientMetadataError(f"jwks holds more than {MAX_KEYS} keys")
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict):
            raise ClientMetadataError("every jwks entry must be a JSON object")
        if jwk.get("kty") not in ("RSA", "EC"):
            raise ClientMetadataError(f"jwks keys must be RSA or EC, not {shown(str(jwk.get('kty')))}")
        if {"d", "p", "q", "dp", "dq", "qi", "k"} & jwk.keys():
            raise ClientMetadataError("jwks must hold public keys only: a private key was registered")
        if jwk.get("use", "sig") != "sig":
            raise ClientMetadataError("jwks keys must be signing keys (use: sig)")
    try:
        key_set = KeySet.import_key_set({"keys": jwks["keys"]})
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ClientMetadataError(f"jwks cannot be read: {type(exc).__name__}") from None
    public = []
    for key in key_set.keys:
        if isinstance(key, RSAKey):
            pub = key.public_key
            if not isinstance(pub, rsa.RSAPublicKey) or pub.key_size < 2048:
                raise ClientMetadataError("RSA keys in jwks must have 2048 bits or more")
        elif isinstance(key, ECKey):
            pub = key.public_key
            if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
                raise ClientMetadataError("EC keys in jwks must be on curve P-256")
        else:  # pragma: no cover - kty checked above
            raise ClientMetadataError("jwks keys must be RSA or EC")
        public.append(pub)
    return {"keys": [key.as_dict(private=False) for key in key_set.keys]}, tuple(public)


def parse_client_metadata(data: bytes) -> OidcClient:
    """Read and check one client's metadata JSON; every refusal names the field."""
    if len(data) > MAX_METADATA_BYTES:
        raise ClientMetadataError(f"client metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ClientMetadataError("client metadata must be a UTF-8 JSON object") from None
    if not isinstance(doc, dict):
        raise ClientMetadataError("client metadata must be a JSON object")
    client_id = doc.get("client_id")
    if not isinstance(client_id, str) or (problem := identifier_problem(client_id, max_length=URI_MAX)):
        raise ClientMetadataError(f"client_id {problem or 'must be a string'} (it is the agency's entity ID)")
    name = doc.get("client_name", client_id)
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX or control_problem(name):
        raise ClientMetadataError(f"client_name must be text of at most {NAME_MAX} characters")
    if doc.get("token_endpoint_auth_method", AUTH_METHOD) != AUTH_METHOD:
        raise ClientMetadataError("token_endpoint_auth_method must be private_key_jwt")
    if doc.get("token_endpoint_auth_signing_alg") is not None:
        _choice(doc, "token_endpoint_auth_signing_alg", CLIENT_ALGORITHMS, None)
    if not set(doc.get("grant_types", ["authorization_code"])) <= {"authorization_code"}:
        raise ClientMetadataError("grant_types may list authorization_code only")
    if not set(doc.get("response_types", ["code"])) <= {"code"}:
        raise ClientMetadataError("response_types may list code only (the code flow with PKCE)")
    if doc.get("subject_type", "pairwise") != "pairwise":
        raise ClientMetadataError("subject_type must be pairwise: every agency gets its own sub")
    if "jwks_uri" in doc:
        raise ClientMetadataError("jwks_uri is not accepted: register the keys themselves in jwks")
    for refused in ("userinfo_signed_response_alg", "id_token_encrypted_response_alg", "request_uris"):
        if refused in doc:
            raise ClientMetadataError(f"{refused} is not supported by this OP")
    id_token_alg = _choice(doc, "id_token_signed_response_alg", ID_TOKEN_ALGORITHMS, "RS256")
    request_alg = _choice(doc, "request_object_signing_alg", CLIENT_ALGORITHMS, None)
    backchannel = doc.get("backchannel_logout_uri")
    session_required = doc.get("backchannel_logout_session_required", True)
    if not isinstance(session_required, bool):
        raise ClientMetadataError("backchannel_logout_session_required must be true or false")
    jwks, public = _keys(doc.get("jwks"))
    return OidcClient(
        client_id=client_id,
        client_name=name.strip(),
        redirect_uris=_url_list(doc.get("redirect_uris"), "redirect_uris", required=True),
        post_logout_redirect_uris=_url_list(doc.get("post_logout_redirect_uris"), "post_logout_redirect_uris",
                                            required=False),
        backchannel_logout_uri=_url(backchannel, "backchannel_logout_uri") if backchannel is not None else None,
        backchannel_logout_session_required=session_required,
        id_token_signed_response_alg=id_token_alg,
        request_object_signing_alg=request_alg,
        jwks=jwks,
        public_keys=public,
    )


def client_from_json(text: str) -> OidcClient:
    """A stored (already checked) registration, read back."""
    return parse_client_metadata(text.encode())


def register_oidc(
    *, db_session: Session, metadata: bytes, agency_class: str = "", name: str | None = None, replace: bool = False
) -> Agency:
    """Register an agency from its OIDC client metadata, or add OIDC to an agency registered
    from SAML metadata (same entity ID: same pseudonyms, same whitelist entries)."""
    if agency_class and (problem := identifier_problem(agency_class, max_length=100)):
        raise ClientMetadataError(f"agency class {shown(agency_class)} {problem}")
    client = parse_client_metadata(metadata)
    existing = db_session.scalar(select(Agency).where(Agency.entity_id == client.client_id))
    if existing is not None and existing.retired_at is not None:
        raise ClientMetadataError(
            f"agency {client.client_id} was retired on {existing.retired_at:%Y-%m-%d}; "
            "a retired entity ID cannot be registered again"
        )
    if existing is not None and existing.oidc_client is not None and not replace:
        raise ClientMetadataError(f"agency {client.client_id} already has OIDC client metadata (use --replace)")
    agency = existing or Agency(entity_id=client.client_id, name=name or client.client_name,
                                agency_class=agency_class, authn_requests_signed=False,
                                want_assertions_signed=True, metadata_xml="")
    if name:
        agency.name = name
    if agency_class:
        agency.agency_class = agency_class
    stored = json.dumps(client.metadata, ensure_ascii=False, sort_keys=True)
    if agency.oidc_client is None:
        agency.oidc_client = AgencyOidcClient(metadata_json=stored)
    else:
        agency.oidc_client.metadata_json = stored
    db_session.add(agency)
    db_session.flush()
    registry_changed(db_session)
    return agency
