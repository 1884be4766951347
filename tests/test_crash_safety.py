"""A hub process killed in the middle of cross-agency queries: whatever tokens got out have
their decisions in the log, the log chain is unbroken, and the restarted hub answers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from access_history.models import HistoryEntry
from consent.models import PolicyRuleIn
from kernel.db import session_scope
from tests.conftest import free_port
from tests.federation import RESIDENT, ask, set_rules
from tests.history_helpers import verify_history


def serve(env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).with_name("renkei")), "serve", "--port", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("renkei serve did not start")


def test_kill_mid_request_loses_no_log_entry_and_breaks_no_chain(hub, hub_env, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    port = free_port()
    proc = serve(hub_env, port)  # a second process on the same database and keys
    received: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    body = {"service_type": RESIDENT, "task": "JUKI", "person": {"bootstrap_token": bootstrap}}

    def client() -> None:
        while not stop.is_set():
            try:
                r = ask(hub, fed["r"], body, audience=f"{hub.base_url}/api/discovery/query",
                        base=f"http://127.0.0.1:{port}")
            except httpx.HTTPError as exc:
                failures.append(type(exc).__name__)
                continue
            if r.status_code == 200:
                received.extend(o["decision_id"] for o in r.json()["offerings"] if o["token"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)  # no shutdown, no cleanup, mid-request
    proc.wait(timeout=10)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert received, "some queries completed before the kill"
    assert failures, "some queries were cut off by the kill"
    with session_scope() as db:
        logged = {row.decision_id for row in db.query(HistoryEntry).filter(HistoryEntry.decision_id.in_(received))}
        assert set(received) <= logged, "every token that got out has its decision in the log"
    report = verify_history(hub)
    assert report.ok, report.summary()
    restarted = serve(hub_env, port)
    try:
        r = ask(hub, fed["r"], body, base=f"http://127.0.0.1:{port}")
        assert r.status_code == 200 and any(o["token"] for o in r.json()["offerings"])
    finally:
        restarted.terminate()
        restarted.wait(timeout=10)
