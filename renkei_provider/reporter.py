"""Telling the hub what this agency disclosed (DESIGN.md flow 4; seed 001 §5.2 アクセス履歴).

After answering under a provider token, the agency records the disclosure here; `flush` sends
the waiting records to the hub as one batch, a JWS signed with the agency's own key (the one
its registered SAML metadata publishes), over HTTPS. The hub matches each record to the
decision it issued and flags what it did not permit. A batch keeps its ID until the hub
acknowledged it, so a resend after a network failure records nothing twice.

    reporter = DisclosureReporter(report_url=f"{hub}/history/disclosures",
                                  agency_entity_id=my_entity_id, signing_key=sp_private_key)
    reporter.record(Disclosure.of(accepted))     # after answering the token
    reporter.flush()                             # now and then, or when the batch is full
"""
from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from renkei_provider.verifier import AcceptedToken

BATCH_MAX = 500
MEDIA_TYPE = "application/jose"


@dataclass(frozen=True)
class Disclosure:
    """One disclosure: which decision it answered, to whom, which information, when."""

    decision_id: str
    token_id: str
    requester: str
    task: str
    info_types: tuple[str, ...]
    provided_at: datetime

    @classmethod
    def of(cls, accepted: AcceptedToken, *, info_types: tuple[str, ...] | None = None,
           provided_at: datetime | None = None) -> Disclosure:
        """The disclosure of what `accepted` permitted (or of `info_types`, if fewer were sent)."""
        return cls(accepted.decision_id, accepted.assertion_id, accepted.requester, accepted.task,
                   tuple(info_types if info_types is not None else accepted.info_types),
                   provided_at or datetime.now(UTC))

    def as_claim(self) -> dict:
        when = self.provided_at if self.provided_at.tzinfo else self.provided_at.replace(tzinfo=UTC)
        return {"decision_id": self.decision_id, "token_id": self.token_id, "requester": self.requester,
                "task": self.task, "info_types": list(self.info_types),
                "provided_at": when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}


@dataclass(frozen=True)
class ReportResult:
    """The hub's answer to one batch (or why it could not be sent)."""

    sent: int
    accepted: bool
    status: int | None
    body: dict


def _jwk(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
    if isinstance(private_key, rsa.RSAPrivateKey):
        return RSAKey.import_key(private_key), "RS256"
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
        return ECKey.import_key(private_key), "ES256"
    raise ValueError("report signing keys are RSA or ECDSA P-256")


class DisclosureReporter:
    """Collects disclosures and sends them to the hub in signed, idempotent batches."""

    def __init__(self, *, report_url: str, agency_entity_id: str,
                 signing_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                 post: Callable[[str, bytes, dict], tuple[int, dict]] | None = None,
                 batch_max: int = BATCH_MAX):
        self.report_url = report_url
        self.agency_entity_id = agency_entity_id
        self._key, self._alg = _jwk(signing_key)
        self._post = post or _httpx_post
        self._batch_max = batch_max
        self._lock = threading.Lock()
        self._waiting: list[Disclosure] = []
        self._in_flight: tuple[str, list[Disclosure]] | None = None

    def record(self, disclosure: Disclosure) -> None:
        with self._lock:
            self._waiting.append(disclosure)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting) + (len(self._in_flight[1]) if self._in_flight else 0)

    def _next_batch(self) -> tuple[str, list[Disclosure]] | None:
        with self._lock:
            if self._in_flight is None and self._waiting:
                items, self._waiting = self._waiting[:self._batch_max], self._waiting[self._batch_max:]
                self._in_flight = (secrets.token_hex(16), items)
            return self._in_flight

    def signed_batch(self, batch_id: str, items: list[Disclosure]) -> bytes:
        claims = {"iss": self.agency_entity_id, "aud": self.report_url,
                  "iat": int(datetime.now(UTC).timestamp()), "jti": batch_id,
                  "disclosures": [d.as_claim() for d in items]}
        payload = json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode()
        return jws.serialize_compact({"alg": self._alg, "typ": "renkei-disclosures+jwt"}, payload,
                                     self._key).encode()

    def flush(self) -> ReportResult:
        """Send the batch in flight, then every batch waiting, until none is left or one is not
        accepted (it is kept for a resend, same ID, unless refused for good); the last answer.

        Two flushes may run at once (each answer schedules one): the second resends the batch
        in flight (the hub records nothing twice) and both go on with what waits, so a
        disclosure recorded while a send was under way is never left behind until the next one."""
        result = ReportResult(0, True, None, {})
        while (batch := self._next_batch()) is not None:
            result = self._send(*batch)
            if not result.accepted:
                break
        return result

    def _send(self, batch_id: str, items: list[Disclosure]) -> ReportResult:
        try:
            status, body = self._post(self.report_url, self.signed_batch(batch_id, items),
                                      {"Content-Type": MEDIA_TYPE})
        except OSError as exc:  # the hub is unreachable: the batch stays, same ID, for a resend
            return ReportResult(len(items), False, None, {"error": type(exc).__name__})
        # acknowledged, or refused for good (malformed, unknown key: resending cannot help); the
        # batch in flight may already be a newer one that a concurrent flush took
        if 200 <= status < 300 or (400 <= status < 500 and status not in (408, 429)):
            with self._lock:
                if self._in_flight is not None and self._in_flight[0] == batch_id:
                    self._in_flight = None
        return ReportResult(len(items), 200 <= status < 300, status, body)


def _httpx_post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    import httpx

    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise OSError(str(exc)) from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    return response.status_code, answer if isinstance(answer, dict) else {}
