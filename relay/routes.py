"""The route table (BPM routing, seed 001 §5.1): (process type, message type) → the logical
destinations an envelope goes to. Routing reads message attributes only, never the payload.
The process room installs the routes of an operating process definition here; the demo loads
them from YAML. Service functions flush; the caller owns the transaction."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kernel.db import utcnow
from kernel.errors import UserError
from relay.models import CODE_MAX, LOGICAL_MAX, NAME_MAX, PARTY_MAX, URN_MAX, RelayRoute

BINDINGS = ("soap", "json")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RouteError(UserError, ValueError):
    """A route that cannot be installed; the message names the field."""


@dataclass(frozen=True)
class Destination:
    """One logical destination of a route.

    `agency` is a fixed entity ID, or `@AttributeName` (e.g. `@DestinationMunicipality`): the
    agency named by that message attribute. The physical endpoint is that agency's offering
    of `service_type` in the service registry (情報所在管理, discovery offerings). `task` and
    `info_type` are what the whitelist and the person's policy decide (the receiver asks, the
    sender provides). `attachments` names the attachments sent there; empty means all.
    """

    logical_to: str
    agency: str
    service_type: str
    task: str
    info_type: str
    attachments: tuple[str, ...] = ()
    binding: str = "soap"


@dataclass(frozen=True)
class Route:
    process_type: str
    message_type: str
    destinations: tuple[Destination, ...] = field(default_factory=tuple)
    owner: str = ""


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or _CONTROL.search(value) \
            or value != value.strip():
        raise RouteError(f"{what} must be 1-{limit} characters without control characters")
    return value


def _check(route: Route) -> None:
    for what, value in (("process type", route.process_type), ("message type", route.message_type)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise RouteError(f"{what} must be a name (a letter, then letters, digits or . _ -; at most 128)")
    _text(route.owner or "-", "owner", NAME_MAX)
    if not route.destinations:
        raise RouteError("a route has at least one destination")
    seen = set()
    for d in route.destinations:
        _text(d.logical_to, "logical destination", LOGICAL_MAX)
        if d.logical_to in seen:
            raise RouteError(f"logical destination {d.logical_to} appears twice")
        seen.add(d.logical_to)
        _text(d.agency, "agency", PARTY_MAX)
        if d.agency.startswith("@") and not _NAME.fullmatch(d.agency[1:]):
            raise RouteError("an agency reference is @ and a message attribute name")
        if not d.service_type.startswith("urn:"):
            raise RouteError("service type must be a URN")
        _text(d.service_type, "service type", URN_MAX)
        _text(d.task, "task", CODE_MAX)
        _text(d.info_type, "information type", CODE_MAX)
        if d.binding not in BINDINGS:
            raise RouteError(f"binding must be one of {', '.join(BINDINGS)}")
        for name in d.attachments:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise RouteError("attachment names are names")
        if len(" ".join(d.attachments)) > 2048:
            raise RouteError("too many attachment names")


def set_route(*, db_session: Session, route: Route) -> Route:
    """Install (or replace) the destinations of (process type, message type)."""
    _check(route)
    db_session.execute(delete(RelayRoute).where(RelayRoute.process_type == route.process_type,
                                                RelayRoute.message_type == route.message_type))
    now = utcnow()
    for position, d in enumerate(route.destinations):
        db_session.add(RelayRoute(
            process_type=route.process_type, message_type=route.message_type, logical_to=d.logical_to,
            position=position, agency=d.agency, service_type=d.service_type, task_code=d.task,
            info_type_code=d.info_type, attachments=" ".join(d.attachments), binding=d.binding,
            owner=route.owner or "-", created_at=now,
        ))
    db_session.flush()
    return route


def remove_route(*, db_session: Session, process_type: str, message_type: str) -> bool:
    """Withdraw a route; True if there was one."""
    result = db_session.execute(delete(RelayRoute).where(RelayRoute.process_type == process_type,
                                                         RelayRoute.message_type == message_type))
    db_session.flush()
    return bool(result.rowcount)


def remove_routes_of(*, db_session: Session, owner: str) -> int:
    """Withdraw every route an owner (e.g. a process definition) installed; returns how many rows."""
    result = db_session.execute(delete(RelayRoute).where(RelayRoute.owner == owner))
    db_session.flush()
    return result.rowcount or 0


def _routes(rows: Iterable[RelayRoute]) -> list[Route]:
    grouped: dict[tuple[str, str], list[RelayRoute]] = {}
    for row in rows:
        grouped.setdefault((row.process_type, row.message_type), []).append(row)
    return [
        Route(pt, mt, tuple(
            Destination(r.logical_to, r.agency, r.service_type, r.task_code, r.info_type_code,
                        tuple(r.attachments.split()), r.binding)
            for r in sorted(group, key=lambda r: r.position)
        ), owner=group[0].owner)
        for (pt, mt), group in grouped.items()
    ]


def get_route(*, db_session: Session, process_type: str, message_type: str) -> Route | None:
    """The route of (process type, message type), or None."""
    rows = db_session.scalars(select(RelayRoute).where(RelayRoute.process_type == process_type,
                                                       RelayRoute.message_type == message_type))
    found = _routes(rows)
    return found[0] if found else None


def list_routes(*, db_session: Session) -> list[Route]:
    """Every route, by process type and message type."""
    rows = db_session.scalars(select(RelayRoute).order_by(RelayRoute.process_type, RelayRoute.message_type,
                                                          RelayRoute.position))
    return _routes(rows)


def routes_from_config(config: Mapping, *, entity_ids: Mapping[str, str] | None = None,
                       owner: str = "config") -> list[Route]:
    """Routes from a YAML document's `routes:` list; `entity_ids` maps short agency keys to entity IDs.

        routes:
          - process_type: moving
            message_type: resident-record
            destinations:
              - {to: tennyu-saki, agency: "@DestinationMunicipality", binding: soap,
                 service_type: "urn:renkei:service:relay-inbox", task: JUKI-TENNYU, info_type: JUMINHYO,
                 attachments: [juminhyo]}
    """
    entity_ids = entity_ids or {}
    out = []
    for item in config.get("routes") or []:
        if not isinstance(item, Mapping):
            raise RouteError("each route is a mapping")
        dests = []
        for d in item.get("destinations") or []:
            if not isinstance(d, Mapping):
                raise RouteError("each destination is a mapping")
            agency = str(d.get("agency", ""))
            dests.append(Destination(
                logical_to=str(d.get("to", "")), agency=entity_ids.get(agency, agency),
                service_type=str(d.get("service_type", "")), task=str(d.get("task", "")),
                info_type=str(d.get("info_type", "")), attachments=tuple(d.get("attachments") or ()),
                binding=str(d.get("binding", "soap")),
            ))
        route = Route(str(item.get("process_type", "")), str(item.get("message_type", "")), tuple(dests),
                      owner=str(item.get("owner", owner)))
        _check(route)
        out.append(route)
    return out


def load_routes(*, db_session: Session, config: Mapping, entity_ids: Mapping[str, str] | None = None,
                owner: str = "config") -> int:
    """Install every route of a YAML document (idempotent); returns how many."""
    routes = routes_from_config(config, entity_ids=entity_ids, owner=owner)
    for route in routes:
        set_route(db_session=db_session, route=route)
    return len(routes)
