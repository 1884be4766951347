"""A hub process killed in the middle of cross-agency queries: whatever tokens got out have
their decisions in the log, the log chain is unbroken, and the restarted hub answers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from access_history.models import HistoryEntry
from consent.models import PolicyRuleIn
from kernel.db import session_scope
from tests.conftest import listening_socket, port_of
from tests.federation import RESIDENT, ask, set_rules
from tests.history_helpers import verify_history


def serve(env: dict) -> tuple[subprocess.Popen, str]:
    """The hub's app in a process of its own, on a socket this test bound (port 0) and handed
    over as a file descriptor; (the process, its URL) once it answers /healthz."""
    sock = listening_socket()
    url = f"http://127.0.0.1:{port_of(sock)}"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "renkei.app:create_app", "--factory", "--fd", str(sock.fileno()),
             "--log-level", "warning", "--no-access-log"],
            env={**os.environ, **env}, pass_fds=(sock.fileno(),),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    finally:
        sock.close()  # the child's copy alone listens: when it dies, clients are refused at once
    wait_for(lambda: healthy(url), "the second hub process answers /healthz", proc=proc)
    return proc, url


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition, what: str, *, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before: {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def test_kill_mid_request_loses_no_log_entry_and_breaks_no_chain(hub, hub_env, fed, bootstrap):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    proc, url = serve(hub_env)  # a second process on the same database and keys
    received: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    body = {"service_type": RESIDENT, "task": "JUKI", "person": {"bootstrap_token": bootstrap}}

    def client() -> None:
        while not stop.is_set():
            try:
                r = ask(hub, fed["r"], body, audience=f"{hub.base_url}/api/discovery/query", base=url)
            except httpx.HTTPError as exc:
                failures.append(type(exc).__name__)
                continue
            if r.status_code == 200:
                received.extend(o["decision_id"] for o in r.json()["offerings"] if o["token"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # enough traffic that the kill lands while queries are in flight, however slow the machine
        wait_for(lambda: len(received) >= 8, "some queries completed before the kill")
        proc.send_signal(signal.SIGKILL)  # no shutdown, no cleanup, mid-request
        proc.wait(timeout=10)
        wait_for(lambda: len(failures) >= 4, "the clients saw the process die")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert received, "some queries completed before the kill"
    assert failures, "some queries were cut off by the kill"
    with session_scope() as db:
        logged = {row.decision_id for row in db.query(HistoryEntry).filter(HistoryEntry.decision_id.in_(received))}
        assert set(received) <= logged, "every token that got out has its decision in the log"
    report = verify_history(hub)
    assert report.ok, report.summary()
    restarted, url = serve(hub_env)
    try:
        r = ask(hub, fed["r"], body, base=url)
        assert r.status_code == 200 and any(o["token"] for o in r.json()["offerings"])
    finally:
        restarted.terminate()
        restarted.wait(timeout=10)
