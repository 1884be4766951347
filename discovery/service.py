"""Information location (情報所在管理): service types, offerings, and which providers hold data
about a person. Service functions flush; the caller owns the transaction."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from discovery.models import Offering, ServiceType
from federation import service as agencies
from kernel.cache import TTLCache
from kernel.db import utcnow
from kernel.errors import UserError, shown
from kernel.invalidation import registry_changed
from kernel.validate import identifier_problem

# ID-WSF security mechanism: TLS to the provider, the hub's SAML assertion as bearer token
BEARER_SAML = "urn:liberty:security:2005-02:TLS:SAMLV2"
INFO_TYPE_CODE_MAX = 64  # as long as consent stores an information type code
# the columns' lengths, for boundaries that validate before calling in here
URN_MAX = ServiceType.__table__.c.urn.type.length
SERVICE_NAME_MAX = ServiceType.__table__.c.name.type.length
PROVIDER_MAX = Offering.__table__.c.provider.type.length
ENDPOINT_MAX = Offering.__table__.c.endpoint.type.length
MECHANISM_MAX = Offering.__table__.c.security_mechanism.type.length
_URN = re.compile(r"^urn:[a-z0-9][a-z0-9-]{0,31}:\S+$", re.IGNORECASE)


class LocationError(UserError, ValueError):
    """Bad information-location input; the message names the field."""


@dataclass(frozen=True)
class ServiceTypeView:
    urn: str
    name: str
    info_types: tuple[str, ...]


@dataclass(frozen=True)
class OfferingView:
    provider: str
    service_type: str
    endpoint: str
    security_mechanism: str
    info_types: tuple[str, ...]


def add_service_type(*, db_session: Session, urn: str, name: str, info_types: list[str]) -> ServiceType:
    """Register a service type and the 特定個人情報 codes it discloses."""
    if not _URN.match(urn) or identifier_problem(urn, max_length=ServiceType.__table__.c.urn.type.length):
        raise LocationError(f"service type must be a URN without control characters, got {shown(urn)}")
    if not info_types or any(not c or " " in c or identifier_problem(c, max_length=INFO_TYPE_CODE_MAX) for c in info_types):
        raise LocationError(
            "a service type discloses at least one information type code (1-64 characters, no spaces "
            "or control characters)"
        )
    if db_session.get(ServiceType, urn) is not None:
        raise LocationError(f"service type {urn} already exists")
    row = ServiceType(urn=urn, name=name or urn, info_types=" ".join(info_types))
    db_session.add(row)
    db_session.flush()
    registry_changed(db_session)
    return row


def list_service_types(*, db_session: Session) -> list[ServiceType]:
    """Every service type, by URN."""
    return list(db_session.scalars(select(ServiceType).order_by(ServiceType.urn)))


def get_service_type(*, db_session: Session, urn: str) -> ServiceType | None:
    """One service type by URN."""
    return db_session.get(ServiceType, urn)


def remove_service_type(*, db_session: Session, urn: str) -> None:
    """Remove a service type and its offerings."""
    row = db_session.get(ServiceType, urn)
    if row is None:
        raise LocationError(f"no service type {urn}")
    db_session.delete(row)
    db_session.flush()
    registry_changed(db_session)


def add_offering(
    *, db_session: Session, provider: str, service_type: str, endpoint: str, security_mechanism: str = BEARER_SAML
) -> Offering:
    """Register a provider's endpoint for a service type."""
    if db_session.get(ServiceType, service_type) is None:
        raise LocationError(f"no service type {service_type}")
    if agencies.is_retired(db_session=db_session, entity_id=provider):
        raise LocationError(f"agency {provider} is retired and cannot offer services")
    if not endpoint.startswith(("https://", "http://")):
        raise LocationError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    exists = db_session.scalar(
        select(Offering).where(Offering.provider == provider, Offering.service_type_urn == service_type)
    )
    if exists is not None:
        raise LocationError(f"{provider} already offers {service_type}")
    row = Offering(provider=provider, service_type_urn=service_type, endpoint=endpoint,
                   security_mechanism=security_mechanism)
    db_session.add(row)
    db_session.flush()
    registry_changed(db_session)
    return row


def list_offerings(
    *, db_session: Session, service_type: str | None = None, include_retired: bool = False
) -> list[Offering]:
    """Active offerings (with `include_retired`, retired ones too), optionally of one service type."""
    query = select(Offering).order_by(Offering.service_type_urn, Offering.provider)
    if not include_retired:
        query = query.where(Offering.retired_at.is_(None))
    if service_type:
        query = query.where(Offering.service_type_urn == service_type)
    return list(db_session.scalars(query))


def remove_offering(*, db_session: Session, provider: str, service_type: str) -> None:
    """Withdraw a provider's offering."""
    row = db_session.scalar(
        select(Offering).where(Offering.provider == provider, Offering.service_type_urn == service_type)
    )
    if row is None:
        raise LocationError(f"{provider} does not offer {service_type}")
    db_session.delete(row)
    db_session.flush()
    registry_changed(db_session)


def retire_provider(*, db_session: Session, provider: str, at: datetime | None = None) -> int:
    """Retire every offering of a retired agency; returns how many. Kept for history, never
    listed or decided again, so no token is ever issued to it."""
    result = db_session.execute(
        update(Offering)
        .where(Offering.provider == provider, Offering.retired_at.is_(None))
        .values(retired_at=at or utcnow())
        .execution_options(synchronize_session="fetch")
    )
    db_session.flush()
    registry_changed(db_session)
    return result.rowcount or 0


# Service types and offerings change rarely (operator actions): cached a few seconds.
_location_cache: TTLCache[tuple[ServiceTypeView, tuple[OfferingView, ...]] | None] = TTLCache(seconds=5.0)


def service_location(*, db_session: Session, urn: str) -> tuple[ServiceTypeView, tuple[OfferingView, ...]] | None:
    """A service type and its active offerings (cached a few seconds), or None if there is no such type."""

    def load():
        st = db_session.get(ServiceType, urn)
        if st is None:
            return None
        view = ServiceTypeView(st.urn, st.name, tuple(st.info_type_codes))
        rows = db_session.scalars(
            select(Offering)
            .where(Offering.service_type_urn == urn, Offering.retired_at.is_(None))
            .order_by(Offering.provider)
        )
        return view, tuple(
            OfferingView(o.provider, urn, o.endpoint, o.security_mechanism, view.info_types) for o in rows
        )

    return _location_cache.get(urn, load)


def offerings_for_person(
    *, offerings: tuple[OfferingView, ...], holdings: dict[str, str]
) -> list[OfferingView]:
    """Of these offerings, those by providers that hold data about the person (`holdings`:
    agency → local ID, from `pseudonym.service.holdings`)."""
    return [o for o in offerings if o.provider in holdings]


def load_location_config(*, db_session: Session, config: dict, entity_ids: dict[str, str] | None = None) -> None:
    """Create the service types and offerings a federation file lists (idempotent).

    `entity_ids` maps short agency keys used in the file to entity IDs.
    """
    entity_ids = entity_ids or {}
    for st in config.get("service_types") or []:
        if db_session.get(ServiceType, st["urn"]) is None:
            add_service_type(db_session=db_session, urn=st["urn"], name=st.get("name", ""),
                             info_types=list(st["info_types"]))
    for off in config.get("offerings") or []:
        provider = entity_ids.get(off["provider"], off["provider"])
        endpoint = off["endpoint"]
        for key, entity_id in entity_ids.items():  # `{agency-key}` is that agency's base URL
            endpoint = endpoint.replace("{" + key + "}", entity_id.rsplit("/metadata", 1)[0])
        exists = db_session.scalar(
            select(Offering).where(Offering.provider == provider, Offering.service_type_urn == off["service_type"])
        )
        if exists is None:
            add_offering(db_session=db_session, provider=provider, service_type=off["service_type"],
                         endpoint=endpoint)
        else:
            exists.endpoint = endpoint
            registry_changed(db_session)
