"""The agency's disclosure reporter (renkei_provider) under concurrent flushes: every answer
schedules a flush, so a second one may start while the first is still sending. Nothing recorded
meanwhile may be left behind, and a batch a concurrent flush took is never dropped.

The hub side (signature, matching, idempotence) is tested over HTTP in
test_disclosure_reports.py; here the transport is a recording endpoint that decodes the real
signed batches, so the race can be staged step by step."""
from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.jwk import ECKey

from renkei_provider.reporter import Disclosure, DisclosureReporter

pytestmark = pytest.mark.nodb
KEY = ec.generate_private_key(ec.SECP256R1())


class Endpoint:
    """Verifies each posted batch with the agency's public key and keeps the decision IDs; can
    hold the first post until told to answer."""

    def __init__(self, status: int = 200):
        self.status = status
        self.received: list[list[str]] = []
        self.first_arrived = threading.Event()
        self.release_first = threading.Event()
        self._lock = threading.Lock()

    def post(self, _url: str, body: bytes, _headers: dict) -> tuple[int, dict]:
        claims = json.loads(jws.deserialize_compact(body, ECKey.import_key(KEY.public_key())).payload)
        with self._lock:
            first = not self.received
            self.received.append([d["decision_id"] for d in claims["disclosures"]])
        if first:
            self.first_arrived.set()
            assert self.release_first.wait(10)
        return self.status, {}


def disclosure(decision_id: str) -> Disclosure:
    return Disclosure(decision_id, f"token-{decision_id}", "https://city-b.example.jp/sp", "JUKI",
                      ("JUMINHYO",), datetime.now(UTC))


def reporter(endpoint: Endpoint) -> DisclosureReporter:
    return DisclosureReporter(report_url="https://hub.example.jp/history/disclosures",
                              agency_entity_id="https://city-a.example.jp/sp", signing_key=KEY, post=endpoint.post)


def test_a_disclosure_recorded_while_a_batch_is_sent_is_sent_too():
    endpoint = Endpoint()
    agency = reporter(endpoint)
    agency.record(disclosure("d1"))
    first = threading.Thread(target=agency.flush)
    first.start()
    assert endpoint.first_arrived.wait(10)
    # the second lookup's answer: its disclosure, then its flush, while d1's batch is in flight
    agency.record(disclosure("d2"))
    second = agency.flush()
    endpoint.release_first.set()
    first.join(10)
    assert second.accepted
    sent = {d for batch in endpoint.received for d in batch}
    assert sent == {"d1", "d2"}, endpoint.received
    assert agency.waiting == 0


def test_a_batch_the_hub_did_not_take_stays_for_the_next_flush():
    endpoint = Endpoint(status=503)
    endpoint.release_first.set()
    agency = reporter(endpoint)
    agency.record(disclosure("d1"))
    agency.record(disclosure("d2"))
    assert not agency.flush().accepted
    assert agency.waiting == 2
    endpoint.status = 200
    assert agency.flush().accepted
    assert agency.waiting == 0
    assert endpoint.received[0] == endpoint.received[1] == ["d1", "d2"]  # the same batch, resent
