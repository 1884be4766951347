"""A hub process killed (SIGKILL) while it delivers envelopes: nothing queued is lost, the
envelopes reach the receiver in order, and any envelope delivered twice is acknowledged as a
duplicate by the receiver (idempotency by receipt number), never taken as new."""
from __future__ import annotations

import collections
import os
import signal
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select

from kernel.db import session_scope, utcnow
from relay.models import QUEUED, RelayDelivery
from renkei_provider import envelope as E
from tests.relay_helpers import envelope_for, wait_for
from tests.test_crash_safety import serve


def test_hub_killed_during_delivery_loses_nothing_and_duplicates_nothing_undetected(hub, hub_env, relay_fed):
    fed = relay_fed
    server = fed["servers"]["b"]
    # a short lease, so another process takes over the killed one's claim soon
    proc, url = serve({**hub_env, "RENKEI_RELAY_LEASE_SECONDS": "2", "RENKEI_RELAY_RETRY_BASE_SECONDS": "0.2",
                       "RENKEI_RELAY_RETRY_MAX_SECONDS": "1"})
    numbers = [f"K-{uuid.uuid4().hex[:12]}" for _ in range(6)]
    server.delay = 0.4  # each delivery takes a while: the kill lands in the middle of one
    # the test hub's own worker waits, so the second process is the one delivering when killed
    test_hub_worker = hub.server.config.app.state.relay_worker
    test_hub_worker.paused = True
    try:
        for n in numbers:
            r = httpx.post(f"{url}/api/relay/envelopes", json={"envelope": E.sign_json(envelope_for(fed, n), fed["s"].key)},
                           headers={"Prefer": "respond-async"}, timeout=30)
            assert r.status_code == 202, r.text

        def killed_process_holds_a_claim() -> bool:
            # a claim whose lease ends within a few seconds was made by the short-lease process
            now = utcnow()
            with session_scope() as db:
                held = db.scalar(select(RelayDelivery.id).where(
                    RelayDelivery.receipt_number.in_(numbers), RelayDelivery.state == QUEUED,
                    RelayDelivery.claimed_until > now, RelayDelivery.claimed_until < now + timedelta(seconds=5)))
            return held is not None and server.in_flight.is_set()

        wait_for(killed_process_holds_a_claim, "the second hub process is delivering an envelope")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # restart: a fresh process on the same database carries on
        proc, url = serve({**hub_env, "RENKEI_RELAY_LEASE_SECONDS": "2"})
        wait_for(lambda: all(n in server.received() for n in numbers), "every envelope was delivered", 120)
    finally:
        test_hub_worker.paused = False
        server.delay = 0.0
        proc.kill()
        proc.wait(timeout=10)

    got = [n for n in server.received() if n in numbers]
    assert got == numbers, "lost or out of order"
    # an envelope the killed process had sent may arrive again: the receiver said "duplicate"
    counts = collections.Counter(n for status, n, _, _ in server.deliveries if n in numbers and status == E.RECEIVED)
    assert set(counts.values()) == {1}
    statuses = {status for status, n, _, _ in server.deliveries if n in numbers}
    assert statuses <= {E.RECEIVED, E.DUPLICATE}
    with session_scope() as db:
        states = set(db.scalars(select(RelayDelivery.state).where(RelayDelivery.receipt_number.in_(numbers),
                                                                   RelayDelivery.logical_to == "tennyu-saki")))
    wait_for(lambda: _all_delivered(numbers), "the hub recorded every ack")
    assert states <= {"delivered", "queued"}


def _all_delivered(numbers: list[str]) -> bool:
    with session_scope() as db:
        states = set(db.scalars(select(RelayDelivery.state).where(RelayDelivery.receipt_number.in_(numbers),
                                                                   RelayDelivery.logical_to == "tennyu-saki")))
    return states == {"delivered"}
