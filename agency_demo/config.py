"""What an agency sets to join the Renkei federation as a SAML service provider (SP).

Every value here ends up either in the SP metadata the agency registers with the hub or in the
checks the SAML toolkit applies to the hub's responses, so each field says where it shows up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AgencyConfig:
    """One agency's SP settings.

    entity_id      — the SP's SAML entityID; the hub puts it in the Assertion's
                     AudienceRestriction, so it must equal what the agency registered.
    name           — display name, shown on the pages and published in metadata
                     (e.g. "転出元 市役所 (Demo City A)").
    base_url       — the public URL of this app, *as the browser and the hub see it*
                     (e.g. http://127.0.0.1:8101). ACS and SLO URLs are derived from it, and the
                     toolkit compares Destination/Recipient against them, so behind a proxy this
                     is the proxy's URL, not the worker's.
    hub_base_url   — the Renkei hub, e.g. http://127.0.0.1:8000. The IdP entityID and metadata
                     URL are `{hub_base_url}/idp/metadata`.
    key_dir        — where the SP signing key and its self-signed certificate live; created on
                     first run, never committed.
    idp_metadata_xml — the hub's IdP metadata, if the agency pins a copy (recommended in
                     production). If None it is fetched from the hub on first use and refreshed.
    sign_requests  — sign AuthnRequests and LogoutRequests (published as AuthnRequestsSigned).
    requested_authn_context — AuthnContextClassRefs to ask for; empty asks for none and lets
                     the hub choose (the result is shown on the home page either way).
    """

    entity_id: str
    name: str
    base_url: str
    hub_base_url: str
    key_dir: Path
    idp_metadata_xml: str | None = None
    sign_requests: bool = True
    requested_authn_context: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Normalise once so every derived URL is spelled the same way the metadata spells it.
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "hub_base_url", self.hub_base_url.rstrip("/"))
        object.__setattr__(self, "key_dir", Path(self.key_dir))
        object.__setattr__(self, "requested_authn_context", tuple(self.requested_authn_context))

    # -- this SP's endpoints (published in its metadata) ------------------------------------
    @property
    def home_url(self) -> str:
        return f"{self.base_url}/"

    @property
    def login_url(self) -> str:
        return f"{self.base_url}/login"

    @property
    def acs_url(self) -> str:
        """AssertionConsumerService, HTTP-POST binding."""
        return f"{self.base_url}/acs"

    @property
    def logout_url(self) -> str:
        return f"{self.base_url}/logout"

    @property
    def sls_url(self) -> str:
        """SingleLogoutService, HTTP-Redirect binding."""
        return f"{self.base_url}/sls"

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/metadata"

    # -- the hub's IdP --------------------------------------------------------------------------
    @property
    def idp_entity_id(self) -> str:
        """The IdP's entityID; its metadata is served at the same URL."""
        return f"{self.hub_base_url}/idp/metadata"

    @property
    def idp_metadata_url(self) -> str:
        return self.idp_entity_id
