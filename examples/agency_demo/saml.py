"""The agency's side of SAML Web SSO, configured on OneLogin's python3-saml toolkit.

This module is the part an agency copies: the toolkit settings (what is signed, what is
required of the hub), reading the hub's IdP metadata, and handing a Starlette request to the
toolkit in the shape it expects. Nothing here parses or verifies XML itself; the toolkit does.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import zlib
from base64 import b64decode
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import httpx
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.metadata import OneLogin_Saml2_Metadata
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Error
from starlette.requests import Request

from agency_demo.config import AgencyConfig
from agency_demo.keys import SpKeyPair, load_or_create_sp_keys

log = logging.getLogger(__name__)

# SAML Subject Identifier Attributes Profile v1.0 §3.3: the hub repeats the pairwise pseudonym
# (the persistent NameID) as this attribute.
PAIRWISE_ID_ATTRIBUTE = "urn:oasis:names:tc:SAML:attribute:pairwise-id"
PERSISTENT = C.NAMEID_PERSISTENT

# A SAMLResponse is a few kilobytes; refuse anything absurd before the toolkit decodes it.
MAX_MESSAGE_BYTES = 256 * 1024
IDP_METADATA_REFRESH_SECONDS = 600


class IdpMetadataError(Exception):
    """The hub's IdP metadata could not be fetched or does not describe a usable IdP."""


def sp_keys(config: AgencyConfig) -> SpKeyPair:
    common_name = urlsplit(config.entity_id).hostname or "agency"
    return load_or_create_sp_keys(config.key_dir, common_name=common_name)


def sp_settings(config: AgencyConfig, keys: SpKeyPair) -> dict[str, Any]:
    """The SP half of the toolkit settings: who we are and what we demand of the IdP."""
    return {
        # strict: the toolkit enforces Destination, Recipient, Audience, Issuer, time window,
        # InResponseTo and schema validity. An agency never turns this off.
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": config.entity_id,
            "assertionConsumerService": {"url": config.acs_url, "binding": C.BINDING_HTTP_POST},
            "singleLogoutService": {"url": config.sls_url, "binding": C.BINDING_HTTP_REDIRECT},
            # The hub's pairwise pseudonym: stable for this agency, different for every other.
            "NameIDFormat": PERSISTENT,
            "x509cert": keys.certificate_pem,
            "privateKey": keys.private_key_pem,
        },
        "security": {
            "authnRequestsSigned": config.sign_requests,
            "logoutRequestSigned": config.sign_requests,
            "logoutResponseSigned": config.sign_requests,
            # The Assertion itself must carry the hub's signature; a signature on the outer
            # Response alone is not enough. Message-level signatures are checked when present.
            "wantAssertionsSigned": True,
            "wantMessagesSigned": False,
            "wantNameId": True,
            # The hub always releases pairwise-id, so an Assertion without attributes is wrong.
            "wantAttributeStatement": True,
            "wantAssertionsEncrypted": False,
            "wantNameIdEncrypted": False,
            "requestedAuthnContext": list(config.requested_authn_context) or False,
            "failOnAuthnContextMismatch": bool(config.requested_authn_context),
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
            # Refuse SHA-1 signatures and digests, also on the Redirect binding.
            "rejectDeprecatedAlgorithm": True,
            # Host names such as http://hub:8000 inside a container network.
            "allowSingleLabelDomains": True,
            # The metadata stays valid as long as its certificate does, so a hub that
            # registered it once does not see it expire under the default two days.
            "metadataValidUntil": keys.certificate.not_valid_after_utc.strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        },
        # The toolkit pastes these into XML unescaped (metadata, AuthnRequest ProviderName).
        "organization": {
            "ja": {
                "name": _xml_text(config.name),
                "displayname": _xml_text(config.name),
                "url": _xml_text(config.base_url),
            }
        },
    }


def sp_metadata(config: AgencyConfig) -> str:
    """This agency's SP metadata XML, to register with the hub (no IdP needed)."""
    settings = OneLogin_Saml2_Settings(
        sp_settings(config, sp_keys(config)), sp_validation_only=True
    )
    # The hub encrypts provider tokens (their subject and local-ID attribute) to the SP's
    # encryption certificate: publish the SP certificate for encryption as well as signing.
    settings.metadata_class = _MetadataWithEncryptionKey
    metadata = settings.get_sp_metadata()
    if isinstance(metadata, bytes):
        metadata = metadata.decode()
    errors = settings.validate_metadata(metadata)
    if errors:
        raise ValueError(f"generated SP metadata is invalid: {', '.join(errors)}")
    return metadata


class _MetadataWithEncryptionKey(OneLogin_Saml2_Metadata):
    """The toolkit adds a KeyDescriptor use="encryption" only when the SP wants encrypted
    assertions or NameIDs at SSO; this SP does not, but it does receive encrypted tokens."""

    @classmethod
    def add_x509_key_descriptors(cls, metadata, cert=None, add_encryption=True):
        return super().add_x509_key_descriptors(metadata, cert, True)


def idp_settings_from_metadata(metadata_xml: str | bytes, *, entity_id: str) -> dict[str, Any]:
    """The `idp` block of the toolkit settings, read from the hub's IdP metadata.

    Only the IdP's own facts are taken (entityID, endpoints, signing certificates). The parser
    also proposes SP-side values (AuthnRequestsSigned, NameIDFormat); those stay ours. All
    signing certificates are kept, so responses verify across a key rotation.
    """
    try:
        parsed = OneLogin_Saml2_IdPMetadataParser.parse(
            metadata_xml,
            required_sso_binding=C.BINDING_HTTP_REDIRECT,
            required_slo_binding=C.BINDING_HTTP_REDIRECT,
            entity_id=entity_id,
        )
    except Exception as exc:  # the toolkit raises lxml and its own errors alike
        raise IdpMetadataError(f"IdP metadata is not readable XML: {exc}") from exc
    idp = parsed.get("idp", {})
    if idp.get("entityId") != entity_id:
        raise IdpMetadataError(f"IdP metadata has no IDPSSODescriptor for entityID {entity_id}")
    if not idp.get("singleSignOnService", {}).get("url"):
        raise IdpMetadataError("IdP metadata has no HTTP-Redirect SingleSignOnService")
    signing = idp.get("x509certMulti", {}).get("signing") or (
        [idp["x509cert"]] if idp.get("x509cert") else []
    )
    if not signing:
        raise IdpMetadataError("IdP metadata has no signing certificate")
    idp.pop("x509cert", None)
    idp["x509certMulti"] = {"signing": signing}
    return idp


class IdpMetadata:
    """The hub's IdP settings, pinned from config or fetched from the hub and refreshed.

    A pinned copy never changes. A fetched copy is re-read every few minutes so a new signing
    certificate published during rotation is picked up; if a refresh fails the last good copy
    stays in use.
    """

    def __init__(self, config: AgencyConfig, sp_part: dict[str, Any]):
        self._config = config
        self._sp_part = sp_part
        self._settings: OneLogin_Saml2_Settings | None = None
        self._document: str | bytes | None = None  # the metadata the settings were built from
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        if config.idp_metadata_xml is not None:
            self._settings = self._build(config.idp_metadata_xml)  # fail at startup, not login
            self._document = config.idp_metadata_xml

    async def settings(self) -> OneLogin_Saml2_Settings:
        """Toolkit settings (SP + IdP), ready to hand to OneLogin_Saml2_Auth."""
        if self._settings is not None and (
            self._config.idp_metadata_xml is not None or self._fresh()
        ):
            return self._settings
        async with self._lock:
            if self._settings is not None and self._fresh():
                return self._settings
            try:
                document = await self._fetch()
                self._settings = self._build(document)
                self._document = document
            except (httpx.HTTPError, IdpMetadataError) as exc:
                if self._settings is None:
                    raise IdpMetadataError(str(exc)) from exc
                log.warning("keeping the previous IdP metadata: %s", exc)
            self._fetched_at = time.monotonic()
            return self._settings

    async def document(self) -> str | bytes:
        """The metadata document the current settings come from (pinned, or last good fetch).

        The provider side pins the hub's token-signing keys from it (renkei_provider)."""
        await self.settings()
        assert self._document is not None
        return self._document

    def _fresh(self) -> bool:
        return time.monotonic() - self._fetched_at < IDP_METADATA_REFRESH_SECONDS

    async def _fetch(self) -> bytes:
        # Production: fetch over TLS, or pin the document (idp_metadata_xml) after checking it
        # out of band; metadata is what every later signature check trusts.
        url = self._config.idp_metadata_url
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url)
        response.raise_for_status()
        if len(response.content) > 1024 * 1024:
            raise IdpMetadataError(f"IdP metadata at {url} is larger than 1 MiB")
        return response.content

    def _build(self, metadata_xml: str | bytes) -> OneLogin_Saml2_Settings:
        settings = copy.deepcopy(self._sp_part)  # the toolkit edits the dict it is given
        settings["idp"] = idp_settings_from_metadata(
            metadata_xml, entity_id=self._config.idp_entity_id
        )
        try:
            return OneLogin_Saml2_Settings(settings)
        except OneLogin_Saml2_Error as exc:  # e.g. an endpoint URL the toolkit refuses
            raise IdpMetadataError(f"IdP metadata gives unusable settings: {exc}") from exc


def toolkit_request(
    endpoint_url: str, request: Request, post_data: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The request dict python3-saml reads, for a request that arrived at `endpoint_url`.

    Host, scheme and path come from the configured public URL rather than from the request's
    Host header: the toolkit compares Destination and Recipient with this URL, and the URL the
    hub was told (in our metadata) is the one that matters, whatever proxy sits in between.
    The raw query string is passed so a Redirect-binding signature is checked over the exact
    bytes the IdP signed, not over a re-encoding of the decoded parameters.
    """
    public = urlsplit(endpoint_url)
    return {
        "https": "on" if public.scheme == "https" else "off",
        "http_host": public.netloc,  # includes the port; `server_port` is deprecated
        "script_name": public.path,
        "get_data": dict(request.query_params),
        "post_data": dict(post_data or {}),
        "query_string": request.url.query,
        "validate_signature_from_qs": True,
        "lowercase_urlencoding": False,
    }


def redirect_message_too_large(value: str) -> bool:
    """True if a deflated Redirect-binding message is oversized before or after inflating.

    The toolkit inflates without a limit; this stops a small deflate bomb first.
    """
    if len(value) > MAX_MESSAGE_BYTES:
        return True
    try:
        inflated = zlib.decompressobj(-15).decompress(b64decode(value), MAX_MESSAGE_BYTES + 1)
    except (ValueError, zlib.error):
        return False  # not deflated base64 at all; the toolkit reports that properly
    return len(inflated) > MAX_MESSAGE_BYTES


def _xml_text(value: str) -> str:
    return escape(value, {'"': "&quot;"})
