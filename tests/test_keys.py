"""Keys as operators live with them: rotation without a restart, one key per role, and a hub
that refuses to start (creating nothing) when its home, keys, secrets or operator token are
missing or unsound. The hub here is a real `renkei serve` process with a home of its own, so
rotating its keys cannot disturb the shared test hub."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import xmlsec
from click.testing import CliRunner
from cryptography import x509
from lxml import etree

from kernel.settings import reset_settings
from renkei.cli import main
from tests.conftest import fresh_database_url, listening_socket, port_of
from tests.saml_sp import NS, Browser, TestSP, response_from_page, verify_with_xmlsec

RENKEI = str(Path(sys.executable).with_name("renkei"))


def free_port() -> int:
    """A port for a URL or a server that is refused before it listens (nothing binds it)."""
    with listening_socket() as sock:
        return port_of(sock)
MD = "urn:oasis:names:tc:SAML:2.0:metadata"


def renkei(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The command in a child process (for what must not share this process's state)."""
    return subprocess.run([RENKEI, *args], capture_output=True, text=True, input=stdin,
                          env=child_env(env), timeout=120, check=False)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """This environment without the shared test hub's RENKEI_* settings, plus `env`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}, **env}


def cli(env: dict[str, str], *args: str, stdin: str | None = None):
    """The command in this process, under `env` (restored afterwards); a Click result."""
    saved = {k: os.environ.get(k) for k in (*env, "RENKEI_OPERATOR_TOKEN", "RENKEI_DATABASE_URL")}
    try:
        os.environ.pop("RENKEI_OPERATOR_TOKEN", None)
        os.environ.pop("RENKEI_DATABASE_URL", None)
        os.environ.update(env)
        reset_settings()
        return CliRunner().invoke(main, list(args), input=stdin)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = cli(env, *args, stdin=stdin)
    assert result.exit_code == 0, result.output
    return result.output


def new_env(tmp: Path, *, database: bool = True, port: int = 8999) -> dict[str, str]:
    """A fresh hub environment; `port` is only named in its base URL (served hubs bind their own)."""
    env = {"RENKEI_HOME": str(tmp / "home"), "RENKEI_BASE_URL": f"http://127.0.0.1:{port}"}
    if database:
        env["RENKEI_DATABASE_URL"] = fresh_database_url(tmp, f"keys_{uuid.uuid4().hex[:8]}")
    return env


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its content (to show a refusal created or changed nothing)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class ServedHub:
    """`renkei serve` in a child process, waited for until /healthz answers."""

    def __init__(self, env: dict[str, str], sock):
        self.env = env
        self.base_url = env["RENKEI_BASE_URL"]
        try:  # the test bound the socket (port 0) and hands it over: no free-port race
            self.proc = subprocess.Popen([RENKEI, "serve", "--fd", str(sock.fileno())], env=child_env(env),
                                         pass_fds=(sock.fileno(),), stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
        finally:
            sock.close()
        deadline = time.monotonic() + 180  # generous: a loaded machine starts Python slowly
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"renkei serve did not start: {self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def served(tmp_path):
    sock = listening_socket()
    env = new_env(tmp_path, port=port_of(sock))
    ok(env, "init")
    ok(env, "person", "add", "--username", "alice", "--password-stdin", stdin="correct horse battery\n")
    sp = TestSP("https://rotating-city.example.jp/sp", "https://rotating-city.example.jp")
    md = tmp_path / "sp.xml"
    md.write_bytes(sp.metadata())
    ok(env, "agency", "add", "--metadata", str(md), "--class", "municipality")
    hub = ServedHub(env, sock)
    yield hub, sp
    hub.stop()


def sso_response(hub: ServedHub, sp: TestSP) -> etree._Element:
    browser = Browser(hub.base_url)
    _, root = sp.authn_request(f"{hub.base_url}/idp/sso")
    first = browser.start(sp, etree.tostring(root), relay_state="r")
    page = first if first.status_code == 200 else browser.login(first, "alice", "correct horse battery")
    assert page.status_code == 200, page.text[:500]
    return response_from_page(page.text)[1]


def certificate(home: str, role: str, version: int) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(home, "keys", f"{role}-v{version}.cert.pem").read_bytes())


def signed_by(element: etree._Element, cert: x509.Certificate) -> bool:
    try:
        verify_with_xmlsec(element, cert)
    except xmlsec.Error:
        return False
    return True


def published(hub: ServedHub, role: str) -> list[bytes]:
    from cryptography.hazmat.primitives.serialization import Encoding

    from renkei_provider import hub_signing_certificates

    metadata = httpx.get(f"{hub.base_url}/idp/metadata", timeout=10).content
    return [c.public_bytes(Encoding.DER) for c in hub_signing_certificates(metadata, role=role)[1]]


def der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def test_rotation_takes_effect_without_a_restart_and_roles_keep_their_own_keys(served):
    hub, sp = served
    home = hub.env["RENKEI_HOME"]
    v1 = certificate(home, "idp", 1)
    first = sso_response(hub, sp)
    assert signed_by(first, v1)
    assert published(hub, "idp") == [der(v1)]

    assert "v2" in ok(hub.env, "keys", "rotate", "idp")
    v2 = certificate(home, "idp", 2)
    after = sso_response(hub, sp)  # the same process: no restart in between
    assert signed_by(after, v2) and not signed_by(after, v1)
    assert signed_by(after.find("saml:Assertion", NS), v2)
    assert published(hub, "idp") == [der(v2), der(v1)]
    assert hub.proc.poll() is None

    # the discovery role rotates the same way, beside and independent of the IdP's keys
    d1 = certificate(home, "discovery", 1)
    assert published(hub, "discovery") == [der(d1)]
    ok(hub.env, "keys", "rotate", "discovery")
    assert published(hub, "discovery") == [der(certificate(home, "discovery", 2)), der(d1)]
    assert published(hub, "idp") == [der(v2), der(v1)]

    # one key per role: the IdP descriptor carries no discovery key, and the other way round
    idp, disco = published(hub, "idp"), published(hub, "discovery")
    assert idp and disco and not set(idp) & set(disco)
    root = etree.fromstring(httpx.get(f"{hub.base_url}/idp/metadata").content)
    idp_descriptor = root.find(f"{{{MD}}}IDPSSODescriptor")
    assert len(idp_descriptor.findall(f"{{{MD}}}KeyDescriptor")) == len(idp)

    # a token emptied while the hub runs must not let `Bearer ` (nothing after it) in
    token_file = Path(hub.env["RENKEI_HOME"], "keys", "operator-token")
    good = token_file.read_text().strip()
    assert httpx.get(f"{hub.base_url}/api/operator/service-types",
                     headers={"Authorization": f"Bearer {good}"}).status_code == 200
    token_file.write_text("")
    # HTTP strips the trailing space of "Bearer ": the server sees "Bearer" and an empty token
    for headers in ({"Authorization": "Bearer"}, {"Authorization": "bearer"}, {}):
        r = httpx.get(f"{hub.base_url}/api/operator/service-types", headers=headers)
        assert r.status_code == 401, headers


@pytest.fixture
def initialised(tmp_path):
    env = new_env(tmp_path)
    ok(env, "init")
    return env, Path(env["RENKEI_HOME"])


def refused(env: dict[str, str], home: Path, *expected: str) -> str:
    """`renkei serve` exits non-zero with a message holding `expected`, creating nothing."""
    before = tree(home) if home.exists() else None
    result = cli(env, "serve", "--port", "0")
    assert result.exit_code == 1, result.output
    for text in expected:
        assert text in result.output, result.output
    assert (tree(home) if home.exists() else None) == before
    return result.output


def test_serve_refuses_a_missing_key(initialised):
    env, home = initialised
    (home / "keys" / "idp-v1.key.pem").unlink()
    refused(env, home, str(home / "keys" / "idp-v1.key.pem"), "restore it from backup")


def test_serve_refuses_a_corrupt_key_and_a_mismatched_certificate(initialised, tmp_path):
    env, home = initialised
    (home / "keys" / "discovery-v1.key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n")
    refused(env, home, str(home / "keys" / "discovery-v1.key.pem"), "restore it from backup")
    other = new_env(tmp_path / "other")
    ok(other, "init")
    foreign = Path(other["RENKEI_HOME"], "keys", "discovery-v1.key.pem").read_bytes()
    (home / "keys" / "discovery-v1.key.pem").write_bytes(foreign)
    refused(env, home, "does not match", str(home / "keys" / "discovery-v1.cert.pem"))


def test_serve_refuses_a_missing_or_short_secret_and_init_does_not_replace_it(initialised):
    env, home = initialised
    secret = home / "keys" / "pseudonym-v1.secret"  # the pairwise-pseudonym key
    secret.write_bytes(b"short")
    refused(env, home, str(secret), "5 bytes")
    secret.unlink()
    refused(env, home, str(secret), "missing")
    # init refuses to make a new pairwise secret in a home that had one: every pseudonym would change
    before = tree(home / "keys")
    result = cli(env, "init")
    assert result.exit_code == 1 and str(secret) in result.output and "backup" in result.output
    assert tree(home / "keys") == before


@pytest.mark.parametrize("token", ["", "   ", "x" * 31])
def test_serve_refuses_an_empty_or_short_operator_token(initialised, token):
    env, home = initialised
    (home / "keys" / "operator-token").write_text(token)
    refused(env, home, str(home / "keys" / "operator-token"), "at least 32")
    (home / "keys" / "operator-token").write_text("y" * 40)
    refused({**env, "RENKEI_OPERATOR_TOKEN": token}, home, "RENKEI_OPERATOR_TOKEN", "at least 32")


def test_create_app_refuses_what_serve_refuses(initialised, monkeypatch):
    from kernel.settings import get_settings, reset_settings
    from renkei.app import create_app
    from renkei.provisioning import HubNotReady

    env, home = initialised
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    try:
        (home / "keys" / "portal-v1.key.pem").unlink()
        with pytest.raises(HubNotReady, match="portal-v1.key.pem"):
            create_app(get_settings())
    finally:
        monkeypatch.undo()
        reset_settings()


def test_serve_refuses_a_home_that_does_not_exist(tmp_path):
    for env in (new_env(tmp_path), new_env(tmp_path, database=False)):
        home = Path(env["RENKEI_HOME"])
        refused(env, home, str(home), "does not exist", "renkei init")
        assert not home.exists()
    # and the real command, as an operator runs it: a message, no traceback, nothing created
    proc = renkei(env, "serve", "--port", "0")
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not home.exists()


def test_home_and_sqlite_database_are_private(tmp_path):
    env = new_env(tmp_path, database=False)  # the embedded default: SQLite in the home
    ok(env, "init")
    home = Path(env["RENKEI_HOME"])
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "renkei.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "keys" / "operator-token").stat().st_mode) == 0o600
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (home / "keys").glob("*.secret"))


def test_init_names_a_lost_key_and_does_not_replace_it(initialised):
    env, home = initialised
    lost = home / "keys" / "idp-v1.key.pem"
    lost.unlink()
    before = tree(home / "keys")
    result = cli(env, "init")
    assert result.exit_code == 1 and str(lost) in result.output and "backup" in result.output
    assert tree(home / "keys") == before


def test_a_half_written_rotation_is_not_used(tmp_path):
    """Another process writes the certificate before the key: until the key is there, the
    previous version keeps signing and nothing fails."""
    from kernel.keys import KeyStore

    keys = KeyStore(tmp_path / "keys")
    v1 = keys.create_signing_key("idp")
    other = KeyStore(tmp_path / "keys")
    other.create_signing_key("idp")
    (tmp_path / "keys" / "idp-v2.key.pem").rename(tmp_path / "held-back")
    assert keys.current_signing_key("idp").version == 1
    assert [c.serial_number for c in keys.published_certificates("idp")] == [v1.certificate.serial_number]
    (tmp_path / "held-back").rename(tmp_path / "keys" / "idp-v2.key.pem")
    assert keys.current_signing_key("idp").version == 2
