"""Notices (お知らせ) over real HTTP: opting in per kind, notices made from integrated history
entries (not in the discovery request), unread counts, marking read, and e-mail through a
local SMTP sink."""
from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from aiosmtpd.smtp import SMTP

from consent.models import PolicyRuleIn
from kernel.settings import reset_settings
from tests.conftest import listening_socket, port_of
from tests.federation import RESIDENT, set_rules
from tests.test_discovery_api import query
from tests.test_portal import JAPANESE, portal_login, visible_text


def csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def wait_for(check, what: str, timeout: float = 15.0):
    """Poll `check` until it returns something truthy (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def save(client, *, kinds: list[str], email: str = ""):
    token = csrf(client.get("/portal/notices/settings").text)
    return client.post("/portal/notices/settings", data={"csrf_token": token, "kind": kinds, "email": email})


def unread(client) -> int:
    return int(re.search(r"(\d+)</strong>", client.get("/portal/notices").text).group(1))


class Sink:
    """An SMTP server on a port the kernel chose, keeping every message it receives."""

    def __init__(self):
        self.messages: list = []
        self.sock = listening_socket()
        self.port = port_of(self.sock)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def handle_DATA(_server, _session, envelope):
            self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=default_policy)))
            return "250 OK"

        handler = type("Handler", (), {"handle_DATA": staticmethod(handle_DATA)})()

        def run():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                self.loop.create_server(lambda: SMTP(handler), sock=self.sock))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def close(self):
        async def shutdown():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def smtp_sink():
    sink = Sink()
    before = {k: os.environ.get(k) for k in ("RENKEI_SMTP_HOST", "RENKEI_SMTP_PORT", "RENKEI_SMTP_FROM")}
    os.environ.update({"RENKEI_SMTP_HOST": "127.0.0.1", "RENKEI_SMTP_PORT": str(sink.port),
                       "RENKEI_SMTP_FROM": "portal@renkei.example.jp"})
    reset_settings()
    yield sink
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_settings()
    sink.close()


def test_settings_need_the_form_token_and_a_valid_address(hub, fed):
    client = portal_login(hub, "disco-person", "disco password", "/portal/notices/settings")
    assert client.post("/portal/notices/settings", data={"csrf_token": "forged", "kind": ["refusal"]}).status_code == 403
    for bad in ("not an address", "a@b\x00c", "x" * 250 + "@example.jp", "a@b.jp\r\nBcc: evil@example.jp"):
        r = save(client, kinds=["refusal"], email=bad)
        assert r.status_code == 400, bad
    r = save(client, kinds=["nonsense"])
    assert r.status_code == 400
    page = client.get("/portal/notices/settings").text
    assert 'checked' not in page  # nothing was stored by the refused posts
    r = save(client, kinds=["refusal", "anomaly"], email="person@example.jp")
    assert r.status_code == 303
    page = client.get("/portal/notices/settings").text
    assert 'value="refusal" checked' in page and 'value="access">' in page and "person@example.jp" in page
    assert client.get("/portal/notices/settings").headers["cache-control"] == "no-store"


def test_refusals_become_notices_and_can_be_marked_read(hub, fed, bootstrap):
    client = portal_login(hub, "disco-person", "disco password", "/portal/notices")
    assert save(client, kinds=["refusal"]).status_code == 303
    before = unread(client)
    set_rules(fed, PolicyRuleIn(effect="allow"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")  # permitted: not a kind this person asked for
    set_rules(fed, PolicyRuleIn(effect="deny"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    page = wait_for(lambda: (text := client.get("/portal/notices").text).count(
        "あなたの拒否のルールにより提供されませんでした") and text, "the notice of the refusal")
    count = unread(client)
    assert count > before and "やりとりが拒否されました" in page
    assert "あなたの情報のやりとりがありました" not in page  # the permitted one made no notice
    assert f"{count}" in client.get("/portal/").text.split("未読のお知らせ")[1][:40]

    client.get("/portal/lang", params={"to": "en", "next": "/portal/"})
    for path in ("/portal/notices", "/portal/history", "/portal/"):  # with notices, a chart and rows
        english = client.get(path).text
        assert '<html lang="en">' in english and not JAPANESE.findall(visible_text(english)), path
    assert "An exchange was refused" in client.get("/portal/notices").text
    client.get("/portal/lang", params={"to": "ja", "next": "/portal/"})

    token = csrf(page)
    assert client.post("/portal/notices/read", data={"csrf_token": "forged"}).status_code == 403
    assert client.post("/portal/notices/read", data={"csrf_token": token, "notice_id": "999999999"}).status_code == 404
    first = re.search(r'name="notice_id" value="(\d+)"', page).group(1)
    assert client.post("/portal/notices/read", data={"csrf_token": token, "notice_id": first}).status_code == 303
    assert unread(client) == count - 1
    assert client.post("/portal/notices/read", data={"csrf_token": token}).status_code == 303
    assert unread(client) == 0


def test_notices_are_mailed_through_the_configured_smtp_server(hub, fed, bootstrap, smtp_sink):
    client = portal_login(hub, "disco-person", "disco password", "/portal/notices")
    assert save(client, kinds=["access"], email="person@example.jp").status_code == 303
    set_rules(fed, PolicyRuleIn(effect="allow"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    wait_for(lambda: smtp_sink.messages, "an e-mail at the SMTP sink")
    recipients, message = smtp_sink.messages[0]
    assert recipients == ["person@example.jp"]
    assert message["From"] == "portal@renkei.example.jp" and "マイ連携ポータル" in message["Subject"]
    body = message.get_content()
    assert "/portal/notices" in body
    assert "PERMITTED" not in body and "disco.example.jp" not in body  # no detail of the exchange by e-mail
    assert save(client, kinds=[]).status_code == 303  # leave the shared person without notices
