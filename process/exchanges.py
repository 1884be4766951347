"""How an activity is carried out: a lookup on the discovery decision path, or an envelope
relayed by the hub. Both decide through the whitelist, the person's policy and the access
history, with the run's query group on every entry."""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy.orm import Session

from discovery import pipeline
from discovery.errors import DiscoveryRefused
from federation import service as agencies
from kernel.db import utcnow
from kernel.keys import keystore
from kernel.settings import Settings
from process.definition import Activity
from process.models import StepStatus
from pseudonym import bootstrap
from pseudonym import service as pseudonyms

log = logging.getLogger(__name__)

PROVIDER_TIMEOUT = 15.0
MAX_ANSWER_BYTES = 1024 * 1024


@dataclass
class Outcome:
    """What carrying out one activity came to."""

    status: StepStatus
    reason: str
    decision_ids: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None  # what the requester received


@dataclass(frozen=True)
class RunContext:
    """The run an activity belongs to."""

    instance_id: str
    query_group_id: str
    person_key: str
    process_type: str
    application: dict[str, Any] | None = None  # the application as filed at the counter
    started_at: datetime | None = None


class Exchange(Protocol):
    def perform(self, *, db_session: Session, settings: Settings, run: RunContext,
                activity: Activity) -> Outcome: ...


class LookupExchange:
    """The requester's query on the discovery pipeline, asked by the hub on its behalf: the
    decision is logged (in the run's query group) and committed before the token exists; the
    token is then presented at the provider's endpoint, as the requester itself would."""

    def __init__(self, http: httpx.Client | None = None):
        self._http = http

    def perform(self, *, db_session: Session, settings: Settings, run: RunContext,
                activity: Activity) -> Outcome:
        requester = agencies.lookup(db_session=db_session, entity_id=activity.requester)
        if requester is None:
            return Outcome(StepStatus.FAILED, "REQUESTER_NOT_REGISTERED")
        keys = keystore()
        now = utcnow()
        own = pseudonyms.get_or_create(db_session=db_session, keys=keys, person_key=run.person_key,
                                       agency=requester.entity_id, scope=settings.scope)
        # the hub names the person to its own discovery service as the requester would: by a
        # bootstrap token that says only what the requester already knows (its pseudonym)
        token = bootstrap.issue_bootstrap(
            keys=keys, audience=pipeline.discovery_entity_id(settings), requester=requester.entity_id,
            pseudonym=own, expires=int((now + timedelta(minutes=5)).timestamp()))
        try:
            decisions = pipeline.discover(
                db_session=db_session, settings=settings, requester=requester,
                person=pipeline.PersonRef(bootstrap_token=token), service_type=activity.service_type,
                task=activity.task, info_type=activity.info_type, now=now, query_group_id=run.query_group_id)
        except DiscoveryRefused as exc:
            return Outcome(StepStatus.REFUSED, exc.code)
        mine = [d for d in decisions if d.provider == activity.provider]
        if not mine:
            return Outcome(StepStatus.FAILED, "PROVIDER_HOLDS_NO_DATA")
        d = mine[0]
        if not d.permitted:
            return Outcome(StepStatus.REFUSED, d.reason, [d.decision_id])
        record, error = self._fetch(d.endpoint, d.token_b64)
        if error is not None:
            return Outcome(StepStatus.FAILED, error, [d.decision_id])
        return Outcome(StepStatus.DONE, d.reason, [d.decision_id], record)

    def _fetch(self, endpoint: str, token_b64: str | None) -> tuple[dict[str, Any] | None, str | None]:
        client = self._http or httpx.Client(timeout=PROVIDER_TIMEOUT)
        try:
            answer = client.post(endpoint, json={"token": token_b64}, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            log.warning("process: provider %s unreachable: %s", endpoint, type(exc).__name__)
            return None, "PROVIDER_UNREACHABLE"
        finally:
            if self._http is None:
                client.close()
        try:
            data = answer.json() if len(answer.content) <= MAX_ANSWER_BYTES else {}
        except ValueError:
            data = {}
        if answer.status_code == 200 and isinstance(data, dict) and isinstance(data.get("record"), dict):
            return data["record"], None
        code = data.get("error") if isinstance(data, dict) else None
        return None, f"PROVIDER_{code}" if isinstance(code, str) else f"PROVIDER_HTTP_{answer.status_code}"


def token_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
