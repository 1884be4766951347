"""The `renkei` command as operators script it: help, idempotent init, clear refusals."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from kernel.db import DatabaseNotMigrated, session_scope
from renkei.cli import main
from tests.conftest import cli_home
from tests.saml_sp import TestSP

RENKEI = str(Path(sys.executable).with_name("renkei"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    with cli_home(tmp_path, monkeypatch, "cli") as env:
        yield env


def run(*args, stdin=None):
    return CliRunner().invoke(main, list(args), input=stdin)


@pytest.mark.parametrize("command", [[], ["init"], ["serve"], ["demo"], ["person", "add"], ["agency", "add"],
                                     ["service-type", "add"], ["offering", "add"], ["whitelist", "import"],
                                     ["whitelist", "export"], ["policy", "add"], ["policy", "receipt"],
                                     ["agency", "list"], ["agency", "remove"], ["link", "import"],
                                     ["pseudonym", "rotate"], ["keys", "rotate"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output and len(result.output.splitlines()) > 4


def test_unmigrated_database_refused_with_a_clear_message(home):
    Path(home["RENKEI_HOME"]).mkdir(mode=0o700)
    proc = subprocess.run([RENKEI, "serve", "--port", "1"], capture_output=True, text=True,
                          env={**os.environ, **home}, timeout=60, check=False)
    assert proc.returncode != 0
    assert "renkei init" in proc.stderr and "revision none" in proc.stderr
    from kernel.settings import get_settings
    from renkei.app import create_app

    with pytest.raises(DatabaseNotMigrated):
        create_app(get_settings())


def test_init_is_idempotent_and_creates_keys(home):
    assert run("init").exit_code == 0
    keys = sorted(p.name for p in Path(home["RENKEI_HOME"], "keys").iterdir())
    assert run("init").exit_code == 0
    assert sorted(p.name for p in Path(home["RENKEI_HOME"], "keys").iterdir()) == keys
    assert "idp-v1.key.pem" in keys
    assert oct(Path(home["RENKEI_HOME"], "keys", "idp-v1.key.pem").stat().st_mode)[-3:] == "600"


def test_agency_add_list_remove_and_bad_metadata(home, tmp_path):
    from federation.models import Agency

    assert run("init").exit_code == 0
    sp = TestSP("https://x.example.jp/sp", "https://x.example.jp")
    md = tmp_path / "sp.xml"
    md.write_bytes(sp.metadata())
    assert run("agency", "add", "--metadata", str(md), "--class", "municipality").exit_code == 0
    again = run("agency", "add", "--metadata", str(md))
    assert again.exit_code != 0 and "already registered" in again.output
    listed = run("agency", "list")
    assert "https://x.example.jp/sp\tmunicipality" in listed.output
    bad = tmp_path / "bad.xml"
    bad.write_text('<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>')
    result = run("agency", "add", "--metadata", str(bad))
    assert result.exit_code != 0 and "bad.xml" in result.output
    no_acs = tmp_path / "noacs.xml"
    no_acs.write_bytes(sp.metadata().replace(b"AssertionConsumerService", b"ArtifactResolutionService"))
    result = run("agency", "add", "--metadata", str(no_acs), "--replace")
    assert result.exit_code != 0 and "AssertionConsumerService" in result.output
    assert run("agency", "add", "--metadata", str(tmp_path / "missing.xml")).exit_code != 0
    retired = run("agency", "remove", "https://x.example.jp/sp")
    assert retired.exit_code == 0 and "retired https://x.example.jp/sp" in retired.output
    twice = run("agency", "remove", "https://x.example.jp/sp")
    assert twice.exit_code != 0 and "already retired" in twice.output
    assert run("agency", "remove", "https://nobody.example.jp/sp").exit_code != 0
    # retired, not deleted: the row and its keys stay for history, listed as retired
    with session_scope() as db:
        assert db.scalar(select(func.count()).select_from(Agency).where(Agency.retired_at.is_not(None))) == 1
    assert "https://x.example.jp/sp\tmunicipality" in (listed := run("agency", "list").output)
    assert "\tretired " in listed
    for flags in ((), ("--replace",)):  # a retired entity ID is never taken over
        again = run("agency", "add", "--metadata", str(md), *flags)
        assert again.exit_code != 0 and "retired" in again.output and "cannot be registered again" in again.output


def test_person_add_and_link_import(home, tmp_path):
    from pseudonym.models import LocalLink

    assert run("init").exit_code == 0
    assert run("person", "add", "--username", "u1", "--password-stdin", "--master-id", "123-456",
               stdin="long enough pw\n").exit_code == 0
    dup = run("person", "add", "--username", "u1", "--password-stdin", stdin="long enough pw\n")
    assert dup.exit_code != 0 and "taken" in dup.output
    short = run("person", "add", "--username", "u2", "--password-stdin", stdin="short\n")
    assert short.exit_code != 0 and "at least 8" in short.output
    totp = run("person", "add", "--username", "u3", "--password-stdin", "--totp", stdin="long enough pw\n")
    assert totp.exit_code == 0 and "otpauth://totp/" in totp.output
    sp = TestSP("https://y.example.jp/sp", "https://y.example.jp")
    md = tmp_path / "sp.xml"
    md.write_bytes(sp.metadata())
    assert run("agency", "add", "--metadata", str(md)).exit_code == 0
    csv = tmp_path / "links.csv"
    csv.write_text("local_id,master_id\nY-1,123456\nY-2,999\n")
    result = run("link", "import", "--agency", "https://y.example.jp/sp", str(csv))
    assert result.exit_code != 0 and "links.csv line 3" in result.output and "nothing was imported" in result.output
    with session_scope() as db:
        assert db.scalar(select(func.count()).select_from(LocalLink)) == 0
    csv.write_text("Y-1,123-456\n")
    assert run("link", "import", "--agency", "https://y.example.jp/sp", str(csv)).exit_code == 0
    unknown = run("link", "import", "--agency", "https://nobody.example/sp", str(csv))
    assert unknown.exit_code != 0 and "no agency" in unknown.output
    rotate = run("pseudonym", "rotate", "https://y.example.jp/sp")
    assert rotate.exit_code == 0 and "rotated 0 pseudonyms" in rotate.output


def test_service_types_offerings_and_whitelist_commands(home, tmp_path):
    assert run("init").exit_code == 0
    sp = TestSP("https://z.example.jp/sp", "https://z.example.jp")
    md = tmp_path / "sp.xml"
    md.write_bytes(sp.metadata())
    assert run("agency", "add", "--metadata", str(md), "--class", "municipality").exit_code == 0
    assert run("service-type", "add", "--urn", "urn:renkei:service:r", "--name", "住民票",
               "--info-type", "JUMINHYO").exit_code == 0
    bad = run("service-type", "add", "--urn", "not a urn", "--info-type", "X")
    assert bad.exit_code != 0 and "URN" in bad.output
    assert "urn:renkei:service:r\tJUMINHYO" in run("service-type", "list").output
    assert run("offering", "add", "--provider", sp.entity_id, "--service-type", "urn:renkei:service:r",
               "--endpoint", "https://z.example.jp/provide").exit_code == 0
    nobody = run("offering", "add", "--provider", "https://nobody/sp", "--service-type", "urn:renkei:service:r",
                 "--endpoint", "https://x/")
    assert nobody.exit_code != 0 and "no agency" in nobody.output
    assert sp.entity_id in run("offering", "list").output
    wl = tmp_path / "wl.csv"
    wl.write_text("requester,provider,task_code,task_name,info_type_code,info_type_name,legal_basis,consent\n"
                  f"class:municipality,{sp.entity_id},JUKI,住基,JUMINHYO,住民票,demo,required\n"
                  f"class:municipality,{sp.entity_id},JUKI,住基,KOSEKI,戸籍,demo,maybe\n")
    result = run("whitelist", "import", str(wl))
    assert result.exit_code != 0 and "wl.csv line 3" in result.output and "nothing was imported" in result.output
    wl.write_text(wl.read_text().rsplit("\n", 2)[0] + "\n")
    assert "1 added" in run("whitelist", "import", str(wl)).output
    out = tmp_path / "out.yaml"
    assert run("whitelist", "export", str(out)).exit_code == 0
    assert "JUMINHYO" in out.read_text()
    assert run("offering", "remove", "--provider", sp.entity_id, "--service-type", "urn:renkei:service:r").exit_code == 0
    assert run("service-type", "remove", "urn:renkei:service:r").exit_code == 0


def test_policy_commands_issue_receipts(home):
    assert run("init").exit_code == 0
    assert run("person", "add", "--username", "pol", "--password-stdin", stdin="long enough pw\n").exit_code == 0
    assert "no rules" in run("policy", "show", "--username", "pol").output
    added = run("policy", "add", "--username", "pol", "--effect", "deny", "--info-type", "KOSEKI",
                "--valid-until", "2099-01-01")
    assert added.exit_code == 0, added.output
    receipt_id = added.output.rsplit("consent receipt ", 1)[1].strip()
    shown = run("policy", "show", "--username", "pol").output
    assert "version 1" in shown and "deny  requester=- provider=- task=- info=KOSEKI" in shown
    receipt = run("policy", "receipt", receipt_id)
    assert receipt.exit_code == 0 and f'"consentReceiptID": "{receipt_id}"' in receipt.output
    assert receipt.output.strip().splitlines()[-1].count(".") == 2  # the compact JWS
    rule_id = shown.split("rule ", 1)[1].split(":", 1)[0]
    assert run("policy", "remove", "--username", "pol", "--rule", rule_id).exit_code == 0
    assert "version 2" in run("policy", "show", "--username", "pol").output
    assert run("policy", "remove", "--username", "pol", "--rule", rule_id).exit_code != 0
    assert run("policy", "show", "--username", "nobody").exit_code != 0
    assert run("policy", "receipt", "no-such-receipt").exit_code != 0


def test_ec_certificates_sign_but_never_receive_tokens(home, tmp_path):
    """An EC certificate without `use` is a signing key only; declared for encryption it is
    refused (tokens are RSA-OAEP), so no permitted offering can fail at token time."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from federation import service as agencies
    from tests.saml_sp import make_key_and_cert

    assert run("init").exit_code == 0
    sp = TestSP("https://ec.example.jp/sp", "https://ec.example.jp")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    _, rsa_cert = make_key_and_cert("x")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    ec_cert = (x509.CertificateBuilder().subject_name(rsa_cert.subject).issuer_name(rsa_cert.subject)
               .public_key(ec_key.public_key()).serial_number(1).not_valid_before(rsa_cert.not_valid_before_utc)
               .not_valid_after(rsa_cert.not_valid_after_utc).sign(ec_key, hashes.SHA256()))
    sp.cert, sp.encryption = ec_cert, False
    md = tmp_path / "ec.xml"
    md.write_bytes(sp.metadata().replace(b' use="signing"', b""))  # one KeyDescriptor, no `use`
    assert run("agency", "add", "--metadata", str(md)).exit_code == 0
    with session_scope() as db:
        registered = agencies.lookup(db_session=db, entity_id=sp.entity_id)
        assert registered.signing_keys and not registered.encryption_certs
    sp.encryption = True
    declared = tmp_path / "ec-enc.xml"
    declared.write_bytes(sp.metadata())  # signing + encryption KeyDescriptors, both EC
    result = run("agency", "add", "--metadata", str(declared), "--replace")
    assert result.exit_code != 0 and "RSA key of 2048 bits" in result.output
