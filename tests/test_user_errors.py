"""Bad input at the `renkei` command: one clear line, a non-zero exit, nothing written, never a
traceback. Runs on SQLite and, with RENKEI_TEST_POSTGRES_URL, on PostgreSQL."""
from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text

from discovery import errors as discovery_errors
from idp.models import Person
from kernel.db import dispose_engines, session_scope
from kernel.errors import shown
from kernel.settings import reset_settings
from kernel.validate import decode_text, identifier_problem
from pseudonym.models import LocalLink
from renkei.cli import main
from tests.conftest import POSTGRES_URL, cli_home
from tests.saml_sp import TestSP

AGENCY = "https://links.example.jp/sp"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with cli_home(tmp_path, monkeypatch, "usererr") as env:
        yield env


def run(*args, stdin=None):
    return CliRunner().invoke(main, list(args), input=stdin)


def refused(result, *needles: str) -> str:
    """A clean refusal: exit 1 through click (SystemExit), no exception escaping, the reason said."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


def count(model) -> int:
    with session_scope() as db:
        return db.scalar(select(func.count()).select_from(model))


@pytest.fixture
def hub_with_agency(home, tmp_path):
    assert run("init").exit_code == 0
    assert run("person", "add", "--username", "linked", "--password-stdin", "--master-id", "1234-5678",
               stdin="long enough pw\n").exit_code == 0
    md = tmp_path / "sp.xml"
    md.write_bytes(TestSP(AGENCY, "https://links.example.jp").metadata())
    assert run("agency", "add", "--metadata", str(md)).exit_code == 0
    return home


# --- link import ----------------------------------------------------------------------------


def test_link_import_refuses_an_oversized_field_naming_the_line(hub_with_agency, tmp_path):
    csv = tmp_path / "links.csv"
    csv.write_text("local_id,master_id\nL-1,1234-5678\n" + "x" * 200_000 + ",1234-5678\n")
    out = refused(run("link", "import", "--agency", AGENCY, str(csv)), "links.csv line 3", "field larger")
    assert len(out) < 500  # the 200 KB field is not repeated back
    assert count(LocalLink) == 0


@pytest.mark.parametrize("local_id, reason", [("L" * 257, "longer than 256"), ("L-\x001", "control characters"),
                                              ("L-\t1", "control characters")])
def test_link_import_refuses_local_ids_the_database_would_refuse(hub_with_agency, tmp_path, local_id, reason):
    csv = tmp_path / "links.csv"
    csv.write_text(f"L-ok,1234-5678\n{local_id},1234-5678\n")
    out = refused(run("link", "import", "--agency", AGENCY, str(csv)), "links.csv line 2", reason)
    assert len(out) < 500
    assert count(LocalLink) == 0


def test_link_import_reads_shift_jis(hub_with_agency, tmp_path):
    csv = tmp_path / "links.csv"
    csv.write_bytes("住民-1,1234-5678\n".encode("cp932"))
    result = run("link", "import", "--agency", AGENCY, str(csv))
    assert result.exit_code == 0, result.output
    with session_scope() as db:
        assert db.scalar(select(LocalLink.local_id)) == "住民-1"


# --- person add -----------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["tab\tname", "nul\x00name", "line\nbreak", "bidi\u202ename"])
def test_person_add_refuses_control_characters_in_usernames(home, username):
    assert run("init").exit_code == 0
    refused(run("person", "add", "--username", username, "--password-stdin", stdin="long enough pw\n"),
            "control characters")
    assert count(Person) == 0


def _set_read_only(url: str, on: bool) -> None:
    """PostgreSQL: make every new session of the test database read-only (or not again)."""
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET default_transaction_read_only = '
                          + ("on" if on else "off")))
    admin.dispose()
    dispose_engines()


def test_person_add_on_a_read_only_database(home, tmp_path, monkeypatch):
    assert run("init").exit_code == 0
    url = home["RENKEI_DATABASE_URL"]
    if url.startswith("sqlite"):
        # root ignores file modes, so open the file read-only the way SQLite itself offers
        monkeypatch.setenv("RENKEI_DATABASE_URL", f"sqlite:///file:{url.split('///', 1)[1]}?mode=ro&uri=true")
    else:
        _set_read_only(url, True)
    reset_settings()
    try:
        refused(run("person", "add", "--username", "ro", "--password-stdin", stdin="long enough pw\n"),
                "read-only", "nothing was written")
    finally:
        monkeypatch.setenv("RENKEI_DATABASE_URL", url)
        reset_settings()
        if not url.startswith("sqlite"):
            _set_read_only(url, False)
    assert count(Person) == 0


# --- schema newer than the code -------------------------------------------------------------


def test_a_schema_newer_than_the_code_is_named_as_such(home):
    assert run("init").exit_code == 0
    with session_scope() as db:
        db.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    dispose_engines()
    for command in (["serve", "--port", "1"], ["person", "add", "--username", "x", "--password-stdin"], ["init"]):
        out = refused(run(*command, stdin="long enough pw\n"), "migrated by a newer Renkei", "9999_from_the_future")
        assert "run `renkei init`" not in out and "Can't locate revision" not in out
    assert count(Person) == 0


# --- identifiers everywhere they enter --------------------------------------------------------


def test_identifiers_with_control_characters_are_refused_at_every_door(hub_with_agency, tmp_path):
    from discovery.models import ServiceType

    refused(run("service-type", "add", "--urn", "urn:renkei:service:x\x00y", "--info-type", "A"), "control")
    refused(run("service-type", "add", "--urn", "urn:renkei:service:x\n", "--info-type", "A"), "control")
    refused(run("service-type", "add", "--urn", "urn:renkei:service:x", "--info-type", "A\tB"), "control")
    assert count(ServiceType) == 0
    md = tmp_path / "other.xml"
    md.write_bytes(TestSP("https://other.example.jp/sp", "https://other.example.jp").metadata())
    refused(run("agency", "add", "--metadata", str(md), "--class", "muni\tcipality"), "agency class",
            "control characters")
    wl = tmp_path / "wl.csv"
    wl.write_text("requester,provider,task_code,task_name,info_type_code,info_type_name,consent,legal_basis\n"
                  f"{AGENCY},{AGENCY},T\t1,事務,I1,情報,required,法\n")
    refused(run("whitelist", "import", str(wl)), "wl.csv line 2", "task_code must not contain control")
    refused(run("policy", "add", "--username", "linked", "--effect", "deny", "--task", "T\x001"), "task_code")


def test_identifier_problem_and_a_huge_value_shown_short():
    assert identifier_problem("住民票-1", max_length=10) is None
    assert identifier_problem("外字\ue000", max_length=10) is None  # private use: 外字 live there
    assert "U+0000" in identifier_problem("x" * 1000 + "\x00", max_length=2000)
    assert "longer than 10" in identifier_problem("x" * 11, max_length=10)
    assert len(shown("x" * 1_000_000)) < 150


def test_decode_text_by_bom_then_utf8_then_cp932():
    assert decode_text("事務".encode("utf-16"), source="f") == "事務"
    assert decode_text("\ufeff事務".encode(), source="f") == "事務"
    assert decode_text("事務".encode("cp932"), source="f") == "事務"
    assert decode_text("café".encode("latin-1"), source="f", encoding="latin-1") == "café"
    with pytest.raises(ValueError, match="neither UTF-8 nor Shift_JIS"):
        decode_text(b"a,\x81 b\n", source="f")


# --- discovery refusals by type ---------------------------------------------------------------


def test_every_discovery_refusal_has_its_own_code_status_and_rule():
    classes = [c for c in vars(discovery_errors).values()
               if isinstance(c, type) and issubclass(c, discovery_errors.DiscoveryRefused)
               and c is not discovery_errors.DiscoveryRefused]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)) >= 9
    assert all(c.__doc__ and 400 <= c.status < 600 for c in classes)
    assert discovery_errors.UnknownPerson("m").status == 404 and discovery_errors.LogWriteFailed().status == 503


def test_yaml_bomb_refused_fast(tmp_path):
    """Mirror of the whitelist test, through the CLI's file path: a few hundred bytes, refused at once."""
    from consent.errors import WhitelistImportError
    from consent.whitelist_io import read_whitelist_file

    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join(['*a' + str(i - 1)] * 9)}]" for i in range(1, 10)]
    lines.append("whitelist: *a9")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(WhitelistImportError, match="anchors and aliases"):
        read_whitelist_file(bomb)
    assert time.perf_counter() - started < 5  # generous: unrefused, the walk never ends

