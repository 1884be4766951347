"""What an agency imports to receive envelopes the hub relays (電子封筒, docs/relay.md).

    from renkei_provider import EnvelopeReceiver, hub_signing_certificates

    _, hub_certs = hub_signing_certificates(hub_metadata, role="discovery")
    receiver = EnvelopeReceiver(hub_keys=hub_certs,
                                department_keys={"https://city-a.example.jp/sp#juminka": [dept_cert]},
                                seen=SqliteSeenStore("seen.sqlite3"))
    outcome = receiver.receive(request_body, content_type)   # SOAP or JSON, as the hub sent it
    if outcome.envelope is not None and outcome.ack.status == "received":
        file_it(outcome.envelope)                            # new, verified, each document checked
    return outcome.body, outcome.content_type               # the 受領Ack, in the request's binding

The hub's signature is checked against the hub's pinned keys alone, then each department
signature (職責署名) against that department's keys; an envelope already received (same From,
receipt number and To) is acknowledged as `duplicate` and not handed over twice.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from renkei_provider import envelope as env_format
from renkei_provider.envelope import (
    DUPLICATE,
    RECEIVED,
    REJECTED,
    Ack,
    Envelope,
    EnvelopeInvalid,
    EnvelopeSignatureInvalid,
)


class SeenStore:
    """Receipt keys already received, kept in memory (one process, lost on restart)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def add(self, key: str) -> bool:
        """Record `key`; False if it was there already."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True


class SqliteSeenStore(SeenStore):
    """Receipt keys in a SQLite file: a receiver's restart does not forget what it received."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen_envelopes (key TEXT PRIMARY KEY, at TEXT NOT NULL)")

    def add(self, key: str) -> bool:
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO seen_envelopes VALUES (?, ?)",
                                   (key, datetime.now(UTC).isoformat()))
            return cur.rowcount == 1


@dataclass(frozen=True)
class Received:
    """The outcome of one delivery: the ack to return (as `body` of `content_type`), and the
    verified envelope when it is new (None when rejected or a duplicate)."""

    ack: Ack
    body: bytes
    content_type: str
    envelope: Envelope | None
    key: str | None = None


def receipt_key(envelope: Envelope) -> str:
    """What makes a delivery the same one: sender, receipt number (受付番号) and logical To."""
    return json.dumps([envelope.header.sender, envelope.header.receipt_number, envelope.header.to])


class EnvelopeReceiver:
    """Verify what the hub delivers, dedupe it by receipt number and produce the 受領Ack."""

    def __init__(self, *, hub_keys: Sequence, department_keys: Mapping[str, Sequence] | None = None,
                 seen: SeenStore | None = None, require_department_signatures: bool = False,
                 check: Callable[[Envelope], str | None] | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        if not hub_keys:
            raise ValueError("pin at least one of the hub's signing keys")
        self._hub_keys = list(hub_keys)
        self._department_keys = {k: list(v) for k, v in (department_keys or {}).items()}
        self._seen = seen if seen is not None else SeenStore()
        self._require = require_department_signatures
        self._check = check  # the agency's own business check: a remark to reject, or None
        self._now = now or (lambda: datetime.now(UTC))

    def verify(self, body: bytes, content_type: str = "text/xml") -> Envelope:
        """The envelope, if the hub signed it and every department signature verifies; raises
        EnvelopeSignatureInvalid or EnvelopeInvalid otherwise."""
        if _is_json(content_type):
            try:
                token = json.loads(body)["envelope"]
            except (ValueError, KeyError, TypeError):
                raise EnvelopeInvalid("the JSON body is not {\"envelope\": <JWS>}") from None
            envelope = env_format.read_jws(token, trusted_keys=self._hub_keys)
        else:
            envelope = env_format.read_xml(body, trusted_keys=self._hub_keys)
        for attachment in envelope.attachments:
            if attachment.signature is None:
                if self._require:
                    raise EnvelopeSignatureInvalid(f"attachment {attachment.name} is not signed by its department")
                continue
            keys = self._department_keys.get(attachment.signature.department)
            if not keys:
                raise EnvelopeSignatureInvalid(
                    f"attachment {attachment.name}: no key pinned for department {attachment.signature.department}")
            env_format.verify_attachment(attachment, keys)
        return envelope

    def receive(self, body: bytes, content_type: str = "text/xml") -> Received:
        """Verify, dedupe and acknowledge one delivery; never raises for a bad envelope."""
        json_binding = _is_json(content_type)
        receipt = "unknown"
        try:
            envelope = self.verify(body, content_type)
        except EnvelopeInvalid as exc:
            return self._answer(Ack(receipt, REJECTED, self._now(), str(exc)[:env_format.REMARK_MAX]),
                                json_binding, None)
        receipt = envelope.header.receipt_number
        if self._check is not None and (remark := self._check(envelope)):
            return self._answer(Ack(receipt, REJECTED, self._now(), remark[:env_format.REMARK_MAX]),
                                json_binding, None)
        key = receipt_key(envelope)
        if not self._seen.add(key):
            return self._answer(Ack(receipt, DUPLICATE, self._now(), "already received"), json_binding, None, key)
        return self._answer(Ack(receipt, RECEIVED, self._now(), ""), json_binding, envelope, key)

    @staticmethod
    def _answer(ack: Ack, json_binding: bool, envelope: Envelope | None, key: str | None = None) -> Received:
        if json_binding:
            return Received(ack, json.dumps({"ack": ack.to_json()}).encode(), "application/json", envelope, key)
        return Received(ack, env_format.soap_wrap(ack.to_element()), "text/xml; charset=utf-8", envelope, key)


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"
