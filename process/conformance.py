"""The conformance test kit (適合性試験): drives one agency's endpoints through every activity of
a process it takes part in, with good and bad messages, and writes a report the process owner
can file (Markdown for people, JSON for tools).

For a lookup the agency's provider endpoint must accept a hub token once and refuse a token
signed by another key, a token altered after signing, the same token again, a token for
another provider, an expired token and a token for a service type it does not offer, each
within the answer deadline. Tokens carry a conformance pseudonym no person has, so a
conforming provider answers the good token with "no record" and discloses nothing.
"""
from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session

from discovery import service as location
from discovery import tokens
from discovery.tokens import DISCOVERY_ROLE
from federation import service as agencies
from kernel.db import utcnow
from kernel.keys import SigningKey, current_signing_key, generate_rsa_key, self_signed_certificate
from kernel.settings import Settings
from process.definition import Activity
from process.service import Installed, conformance_parties

ANSWER_DEADLINE_SECONDS = 5.0  # a receiver slower than this fails "answers late"
UNKNOWN_SERVICE_TYPE = "urn:renkei:conformance:unknown-service-type"
# what a conforming provider may answer the one good token, which names nobody it holds
ACCEPTED = {200, 404}


@dataclass
class Check:
    activity: str
    name: str
    passed: bool
    expected: str
    observed: str
    seconds: float


@dataclass
class Report:
    process_id: str
    version: int
    agency: str
    ran_at: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"process": self.process_id, "version": self.version, "agency": self.agency,
                "ran_at": self.ran_at, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    def to_markdown(self) -> str:
        lines = [f"# Conformance report: {self.process_id} v{self.version}", "",
                 f"- agency: `{self.agency}`", f"- run at: {self.ran_at} (UTC)",
                 (f"- verdict: **{'PASSED' if self.passed else 'FAILED'}** "
                  f"({sum(c.passed for c in self.checks)} of {len(self.checks)} checks passed)"), "",
                 "| activity | check | result | expected | observed | seconds |",
                 "|---|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.activity} | {c.name} | {'pass' if c.passed else '**FAIL**'} | "
                         f"{_cell(c.expected)} | {_cell(c.observed)} | {c.seconds:.2f} |")
        failed = [c for c in self.checks if not c.passed]
        if failed:
            lines += ["", "## What to fix", ""]
            lines += [f"- {c.activity} / {c.name}: expected {c.expected}, but {c.observed}." for c in failed]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class _Answer:
    def __init__(self, status: int | None, code: str, seconds: float, has_record: bool):
        self.status, self.code, self.seconds, self.has_record = status, code, seconds, has_record

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.code})"
        return f"HTTP {self.status}" + (f" {self.code}" if self.code else "") + (" with a record" if self.has_record else "")


def _post(http: httpx.Client, endpoint: str, token: bytes, deadline: float) -> _Answer:
    began = time.monotonic()
    try:
        r = http.post(endpoint, json={"token": base64.b64encode(token).decode()},
                      headers={"Accept": "application/json"}, timeout=deadline + 1)
    except httpx.TimeoutException:
        return _Answer(None, "TIMEOUT", time.monotonic() - began, False)
    except httpx.HTTPError as exc:
        return _Answer(None, type(exc).__name__, time.monotonic() - began, False)
    seconds = time.monotonic() - began
    try:
        data = r.json()
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    code = data.get("error") if isinstance(data.get("error"), str) else ""
    return _Answer(r.status_code, code, seconds, isinstance(data.get("record"), dict))


def run_conformance(*, db_session: Session, settings: Settings, installed: Installed, agency: str,
                    deadline: float = ANSWER_DEADLINE_SECONDS, http: httpx.Client | None = None) -> Report:
    """Drive `agency` through every activity of the definition it has an endpoint in."""
    report = Report(installed.process_id, installed.version, agency, utcnow().isoformat(timespec="seconds"))
    if agency not in conformance_parties(installed.definition):
        raise ValueError(f"{agency} has no endpoint in {installed.process_id} (it answers no lookup "
                         f"and receives no notice there)")
    own = http is None
    http = http or httpx.Client()
    try:
        for activity in installed.definition.activities:
            if activity.exchange == "lookup" and activity.provider == agency:
                report.checks += _lookup_checks(db_session, settings, activity, deadline, http)
            elif activity.exchange == "relay" and activity.requester == agency:
                report.checks += _relay_checks(db_session, settings, activity, deadline, http)
    finally:
        if own:
            http.close()
    return report


def _relay_checks(db_session: Session, settings: Settings, activity: Activity, deadline: float,
                  http: httpx.Client) -> list[Check]:
    from process.relaying import envelope_checks

    return envelope_checks(db_session=db_session, settings=settings, activity=activity, deadline=deadline, http=http)


def _lookup_checks(db_session: Session, settings: Settings, activity: Activity, deadline: float,
                   http: httpx.Client) -> list[Check]:
    provider = agencies.lookup(db_session=db_session, entity_id=activity.provider)
    found = location.service_location(db_session=db_session, urn=activity.service_type)
    endpoint = next((o.endpoint for o in (found[1] if found else []) if o.provider == activity.provider), None)
    if provider is None or endpoint is None:
        return [Check(activity.id, "provider endpoint registered", False,
                      f"an offering of {activity.service_type} by this agency",
                      "the agency is not registered" if provider is None else "it has no such offering", 0.0)]
    if not provider.encryption_certs:
        return [Check(activity.id, "encryption certificate", False, "an encryption certificate in its metadata",
                      "none is registered: no token can be addressed to it", 0.0)]
    hub_key = current_signing_key(DISCOVERY_ROLE)
    stranger_key = generate_rsa_key()
    stranger = SigningKey("conformance-stranger", 1, stranger_key,
                          self_signed_certificate(stranger_key, "not the hub"))

    def token(*, signer: SigningKey = hub_key, audience: str = activity.provider, ago: timedelta = timedelta(0),
              service_type: str = activity.service_type) -> bytes:
        facts = tokens.ProviderTokenFacts(
            hub_entity_id=settings.idp_entity_id, provider=audience, endpoint=endpoint,
            provider_pseudonym=f"conformance-{secrets.token_hex(8)}@{settings.scope}",
            requester=activity.requester, task=activity.task, info_types=(activity.info_type,),
            service_type=service_type, whitelist_entry="conformance", decision_id=f"conformance-{secrets.token_hex(8)}",
            local_id=None, now=utcnow() - ago, skew=timedelta(seconds=settings.clock_skew_seconds))
        return tokens.provider_token(facts, signer=signer, provider_cert=provider.encryption_certs[0])

    good = token()
    tampered = good.replace(activity.task.encode(), (activity.task + "-ALTERED").encode(), 1)
    cases: list[tuple[str, bytes, str, Callable[[_Answer], bool]]] = [
        ("accepts a valid hub token", good, "HTTP 200, or 404 for a person it does not hold",
         lambda a: a.status in ACCEPTED),
        ("refuses the same token again (duplicate)", good, "a 4xx refusal", _refused),
        ("refuses a token signed by another key (bad signature)", token(signer=stranger), "a 4xx refusal", _refused),
        ("refuses a token altered after signing", tampered, "a 4xx refusal", _refused),
        ("refuses a token for another provider", token(audience=f"{activity.provider}#someone-else"),
         "a 4xx refusal", _refused),
        ("refuses an expired token", token(ago=timedelta(hours=1)), "a 4xx refusal", _refused),
        ("refuses an unknown service type (unknown attribute)", token(service_type=UNKNOWN_SERVICE_TYPE),
         "a 4xx refusal", _refused),
    ]
    checks = []
    for name, raw, expected, ok in cases:
        answer = _post(http, endpoint, raw, deadline)
        passed = ok(answer)
        observed = answer.describe()
        if passed and answer.seconds > deadline:
            passed, observed = False, f"{observed}, but after {answer.seconds:.1f} s (answers late)"
        checks.append(Check(activity.id, name, passed, f"{expected} within {deadline:g} s", observed, answer.seconds))
    return checks


def _refused(answer: _Answer) -> bool:
    return answer.status is not None and 400 <= answer.status < 500 and not answer.has_record


def report_json(report: Report) -> str:
    return json.dumps(report.to_json(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
