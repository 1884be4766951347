"""What an agency sets to join the Renkei federation as a SAML service provider (SP).

Every value here ends up either in the SP metadata the agency registers with the hub or in the
checks the SAML toolkit applies to the hub's responses, so each field says where it shows up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (title, service_type URN, task code, info_type code or None, expected reason code)
Scenario = tuple[str, str, str, str | None, str]
_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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

    Cross-agency lookups (DESIGN.md flow 2, docs/discovery.md):

    scenarios      — lookups this agency offers as buttons once someone is signed in, as
                     requester: (title, service_type URN, task code, info_type code or None,
                     expected reason code). Run with POST /lookup through the hub's JSON API.
    provides       — service type URNs this agency answers as provider, each at
                     `{base_url}/provide/{last segment of the URN}` (e.g.
                     urn:renkei:service:resident-record → /provide/resident-record); the hub's
                     offerings must name exactly these URLs.
    records        — the demo data it provides: local record ID (the one linked at the hub) →
                     fields. A record may hold a sub-dict under a service type URN or its
                     endpoint name; that part is then what this service discloses.
    hub_metadata_xml — the hub metadata whose signing keys provider tokens must carry. None:
                     the IdP metadata (pinned `idp_metadata_xml`, or fetched and refreshed).

    Envelopes the hub relays (電子封筒, docs/relay.md), received at `{base_url}/relay/inbox`:

    departments    — issuing department (as envelopes name it in SignedBy) → PEM certificates
                     of its signing key (職責署名); a signed document of any other department is
                     refused. Envelopes are verified against the hub's discovery-role keys.
    """

    entity_id: str
    name: str
    base_url: str
    hub_base_url: str
    key_dir: Path
    idp_metadata_xml: str | None = None
    sign_requests: bool = True
    requested_authn_context: tuple[str, ...] = field(default_factory=tuple)
    scenarios: tuple[Scenario, ...] = field(default_factory=tuple)
    provides: tuple[str, ...] = field(default_factory=tuple)
    records: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    hub_metadata_xml: str | None = None
    departments: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    # business processes this agency's counter (窓口) starts: (process ID, title)
    processes: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Normalise once so every derived URL is spelled the same way the metadata spells it.
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "hub_base_url", self.hub_base_url.rstrip("/"))
        object.__setattr__(self, "key_dir", Path(self.key_dir))
        object.__setattr__(self, "requested_authn_context", tuple(self.requested_authn_context))
        object.__setattr__(self, "scenarios", tuple(_scenario(s) for s in self.scenarios or ()))
        provides = tuple(str(urn) for urn in self.provides or ())
        names = [provide_name(urn) for urn in provides]
        if len(set(names)) != len(names):
            raise ValueError(f"two provided service types share an endpoint name: {names}")
        object.__setattr__(self, "provides", provides)
        object.__setattr__(
            self, "records", {str(k): dict(v) for k, v in (self.records or {}).items()}
        )

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

    @property
    def lookup_url(self) -> str:
        """Where the home page's scenario buttons POST (requester side)."""
        return f"{self.base_url}/lookup"

    @property
    def relay_inbox_url(self) -> str:
        """Where the hub delivers relayed envelopes (the offering of a relay service type)."""
        return f"{self.base_url}/relay/inbox"

    def provide_url(self, service_type: str) -> str:
        """The endpoint answering `service_type` (provider side); the hub's offering URL."""
        return f"{self.base_url}/provide/{provide_name(service_type)}"

    # -- the hub's IdP --------------------------------------------------------------------------
    @property
    def idp_entity_id(self) -> str:
        """The IdP's entityID; its metadata is served at the same URL."""
        return f"{self.hub_base_url}/idp/metadata"

    @property
    def idp_metadata_url(self) -> str:
        return self.idp_entity_id

    @property
    def discovery_query_url(self) -> str:
        """The hub's discovery service, JSON face (also the client assertion's audience)."""
        return f"{self.hub_base_url}/api/discovery/query"


def provide_name(service_type: str) -> str:
    """The endpoint name of a service type: the URN's last segment."""
    name = service_type.rsplit(":", 1)[-1]
    if not service_type.lower().startswith("urn:") or not _ENDPOINT_NAME.fullmatch(name):
        raise ValueError(f"provided service types must be URNs ending in a plain name, got {service_type!r}")
    return name


def _scenario(value: Any) -> Scenario:
    """(title, service_type, task, info_type | None, expect); a list from YAML is fine, and
    so is a mapping with those keys (extra keys such as `person` or `requester` are ignored)."""
    if isinstance(value, Mapping):
        value = tuple(value.get(k) for k in ("title", "service_type", "task", "info_type", "expect"))
    items = tuple(value)
    if len(items) != 5 or not all(isinstance(items[i], str) and items[i] for i in (0, 1, 2)):
        raise ValueError(
            f"a scenario is (title, service_type, task, info_type or None, expect), got {value!r}"
        )
    title, service_type, task, info_type, expect = items
    return (title, service_type, task, info_type or None, str(expect or ""))
