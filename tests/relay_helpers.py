"""A relay federation for the envelope tests: sender S (a municipality, 転出元) with one of its
departments, receivers B (a municipality, 転入先) and P (an electricity company), each receiver a
real HTTP server built on renkei_provider's EnvelopeReceiver; one person linked at S."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consent import service as consent
from consent.models import PolicyRuleIn, WhitelistEntryIn
from discovery import service as location
from idp import accounts
from kernel.db import session_scope
from kernel.keys import keystore
from pseudonym import service as pseudonyms
from relay import routes as route_table
from relay.service import hub_certificates
from renkei_provider import EnvelopeReceiver
from renkei_provider import envelope as E
from tests.conftest import listening_socket, port_of, serve_in_thread
from tests.saml_sp import TestSP, make_key_and_cert
from tests.test_idp_sso import register

INBOX = "urn:renkei:test:relay-inbox"
PROCESS = "moving"
MESSAGE = "resident-record"
NOTICE_ONLY = "address-notice"


@dataclass
class ReceiverServer:
    """An agency's envelope endpoint: verifies with the hub's and the department's keys, dedupes
    by receipt number, and remembers every delivery in arrival order."""

    name: str
    receiver: EnvelopeReceiver
    delay: float = 0.0  # seconds each delivery takes, to catch a hub in the middle of one
    deliveries: list = field(default_factory=list)  # (ack status, receipt number, raw body)
    in_flight: threading.Event = field(default_factory=threading.Event)
    sock: object = None
    server: object = None
    thread: object = None

    def app(self) -> Starlette:
        async def inbox(request: Request) -> Response:
            body = await request.body()
            self.in_flight.set()
            if self.delay:
                import anyio

                await anyio.sleep(self.delay)
            outcome = self.receiver.receive(body, request.headers.get("content-type", ""))
            self.deliveries.append((outcome.ack.status, outcome.ack.receipt_number, body, outcome.envelope))
            self.in_flight.clear()
            return Response(outcome.body, media_type=outcome.content_type)

        return Starlette(routes=[Route("/inbox", inbox, methods=["POST"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/inbox"

    def start(self, port: int | None = None) -> None:
        if port is None:
            self.sock = listening_socket()
        else:
            import socket

            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))
        self.port = port_of(self.sock)
        self.server, self.thread = serve_in_thread(self.app(), self.sock)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def received(self) -> list[str]:
        """Receipt numbers of the envelopes accepted as new, in arrival order."""
        return [r for status, r, _, _ in self.deliveries if status == E.RECEIVED]


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def relay_fed(hub, tmp_path_factory):
    """S sends; B and P receive; a department of S signs documents; the person is linked at S."""
    tmp = tmp_path_factory.mktemp("relay")
    tag = uuid.uuid4().hex[:8]
    s = register(TestSP(f"https://s{tag}.relay.example.jp/sp", f"https://s{tag}.relay.example.jp"), tmp,
                 "municipality")
    b = register(TestSP(f"https://b{tag}.relay.example.jp/sp", f"https://b{tag}.relay.example.jp"), tmp,
                 "municipality")
    p = register(TestSP(f"https://p{tag}.relay.example.jp/sp", f"https://p{tag}.relay.example.jp"), tmp,
                 "electricity_company")
    x = register(TestSP(f"https://x{tag}.relay.example.jp/sp", f"https://x{tag}.relay.example.jp"), tmp,
                 "municipality")  # a receiver no whitelist entry names
    dept_key, dept_cert = make_key_and_cert("juminka")
    department = f"{s.entity_id}#juminka"
    hub_certs = hub_certificates()
    servers = {}
    for name in ("b", "p", "x"):
        server = ReceiverServer(name, EnvelopeReceiver(hub_keys=hub_certs, department_keys={department: [dept_cert]}))
        server.start()
        servers[name] = server
    inbox = f"{INBOX}:{tag}"
    keys = keystore()
    master = f"88-{tag}"
    with session_scope() as db:
        person = accounts.add_person(db_session=db, username=f"relay-{tag}", password="relay person pass")
        pseudonyms.register_master_id(db_session=db, keys=keys, person_key=person.person_key, master_id=master)
        pseudonyms.import_local_links(db_session=db, keys=keys, agency=s.entity_id, csv_text=f"S-1,{master}")
        sender_pseudonym = pseudonyms.get_or_create(db_session=db, keys=keys, person_key=person.person_key,
                                                    agency=s.entity_id, scope=hub.settings.scope)
        location.add_service_type(db_session=db, urn=inbox, name="relay inbox", info_types=["JUMINHYO"])
        for sp, name in ((b, "b"), (p, "p"), (x, "x")):
            location.add_offering(db_session=db, provider=sp.entity_id, service_type=inbox,
                                  endpoint=servers[name].url)
        consent.import_whitelist(db_session=db, entries=[
            WhitelistEntryIn(requester=b.entity_id, provider=s.entity_id, task_code=f"JUKI{tag}", task_name="住基",
                             info_type_code="JUMINHYO", info_type_name="住民票", legal_basis="demo", consent="override"),
            WhitelistEntryIn(requester=p.entity_id, provider="class:municipality", task_code=f"TENKYO{tag}",
                             task_name="転居通知", info_type_code="TENKYO", info_type_name="転居先",
                             legal_basis="demo", consent="required"),
        ])
        route_table.set_route(db_session=db, route=route_table.Route(PROCESS + tag, MESSAGE, (
            route_table.Destination("tennyu-saki", "@" + E.DESTINATION_MUNICIPALITY, inbox, f"JUKI{tag}", "JUMINHYO",
                                    ("juminhyo",), "soap"),
            route_table.Destination("denryoku", p.entity_id, inbox, f"TENKYO{tag}", "TENKYO", ("notice",), "json"),
        ), owner="tests"))
        route_table.set_route(db_session=db, route=route_table.Route(PROCESS + tag, NOTICE_ONLY, (
            route_table.Destination("unlisted", x.entity_id, inbox, f"JUKI{tag}", "JUMINHYO", (), "soap"),
        ), owner="tests"))
        person_key = person.person_key
    yield {"s": s, "b": b, "p": p, "x": x, "servers": servers, "dept_key": dept_key, "dept_cert": dept_cert,
           "department": department, "person_key": person_key, "pseudonym": sender_pseudonym,
           "process": PROCESS + tag, "tag": tag, "inbox": inbox}
    for server in servers.values():
        if server.server is not None and not server.server.should_exit:
            server.stop()


def set_rules(fed, *rules: PolicyRuleIn) -> None:
    with session_scope() as db:
        consent.set_policy(collection_method="test-setup", db_session=db, person_key=fed["person_key"],
                           rules=list(rules), principal_id="relay-person")


def envelope_for(fed, receipt: str, *, message_type: str = MESSAGE, big: bytes | None = None,
                 person: str | None = None, json_department: bool = False) -> E.Envelope:
    """A moving envelope from S: a resident record signed by S's department, and a notice."""
    record = E.new_attachment(name="juminhyo", file_name="juminhyo.xml", media_type="application/xml",
                              content=big if big is not None else "<住民票><氏名>山田 太郎</氏名></住民票>".encode())
    sign = E.sign_attachment_jws if json_department else E.sign_attachment_xml
    record = sign(record, fed["dept_key"], department=fed["department"])
    notice = E.new_attachment(name="notice", file_name="notice.txt", media_type="text/plain",
                              content="新住所: デモB市 1-1".encode())
    return E.new_envelope(
        receipt_number=receipt, sender=fed["s"].entity_id, to="moving-one-stop", reply_to="tenshutsu-moto",
        attributes=[(E.PROCESS_TYPE, fed["process"]), (E.MESSAGE_TYPE, message_type),
                    (E.SOURCE_MUNICIPALITY, fed["s"].entity_id), (E.DESTINATION_MUNICIPALITY, fed["b"].entity_id),
                    (E.PERSON, person or fed["pseudonym"]), (E.ASSURANCE_LEVEL, "2")],
        attachments=[record, notice],
    )
