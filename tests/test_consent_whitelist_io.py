"""Whitelist files: YAML and CSV round trips, errors that name the line, all-or-nothing imports."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from consent import service, whitelist_io
from consent.errors import DuplicateWhitelistEntry, WhitelistImportError
from consent.models import ConsentMode, WhitelistEntryIn
from consent.whitelist_io import (
    DEMO_WHITELIST,
    dump_csv,
    dump_yaml,
    parse_csv,
    parse_yaml,
    read_whitelist_file,
)
from kernel.db import Base, make_engine

pytestmark = pytest.mark.nodb  # a private SQLite file, whatever the pass; the PostgreSQL pass skips it

HEADER = "requester,provider,task_code,task_name,info_type_code,info_type_name,consent,legal_basis"
CITY_A = "http://127.0.0.1:8101/metadata"
CITY_B = "http://127.0.0.1:8102/metadata"


def csv_row(n: int, consent: str = "required", requester: str = CITY_B) -> str:
    return f"{requester},{CITY_A},T{n},事務{n},I{n},情報{n},{consent},法第{n}条"


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'consent.sqlite3'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


@pytest.fixture()
def demo() -> list[WhitelistEntryIn]:
    return read_whitelist_file(DEMO_WHITELIST)


def problems_of(excinfo: pytest.ExceptionInfo[WhitelistImportError]) -> list[str]:
    return excinfo.value.problems


# --- the demo file and round trips ----------------------------------------------------------


def test_demo_whitelist_has_the_federations_exchanges(demo):
    by_task = {e.task_code: e for e in demo}
    resident = by_task["JUKI-TENNYU"]
    assert (resident.requester, resident.provider) == (CITY_B, CITY_A)
    assert resident.task_name == "住民基本台帳事務"
    assert resident.info_type_name == "住民票情報"
    assert resident.consent is ConsentMode.REQUIRED
    relief = by_task["YOBO-KYUSAI"]
    assert (relief.requester, relief.provider) == ("class:municipality", "class:health_insurer")
    assert relief.info_type_name == "医療保険給付関係情報"
    assert relief.consent is ConsentMode.OVERRIDE
    notice = by_task["TENKYO-TSUCHI"]
    assert notice.requester == "http://127.0.0.1:8104/metadata"
    assert notice.consent is ConsentMode.REQUIRED
    assert all(e.legal_basis for e in demo)


def test_yaml_round_trip_keeps_every_field(demo):
    text = dump_yaml(demo)
    assert "住民票情報" in text  # written as readable Japanese, not escapes
    assert parse_yaml(text) == demo


def test_csv_round_trip_keeps_every_field_including_commas_quotes_and_newlines(demo):
    tricky = WhitelistEntryIn(
        requester="urn:example:agency:1", provider="class:municipality", task_code="X-1",
        task_name='事務, "引用" 付き', info_type_code="I-1", info_type_name="情報",
        legal_basis="第1項\n第2項", consent=ConsentMode.OVERRIDE,
    )
    entries = [*demo, tricky]
    assert parse_csv(dump_csv(entries)) == entries
    assert parse_yaml(dump_yaml(entries)) == entries


def test_database_export_round_trips_through_both_formats(db, demo, tmp_path):
    service.import_whitelist(db_session=db, entries=demo)
    for name in ("out.yaml", "out.csv"):
        assert whitelist_io.export_whitelist_file(db_session=db, path=tmp_path / name) == 4
        assert read_whitelist_file(tmp_path / name) == demo


def test_csv_with_a_byte_order_mark_from_a_spreadsheet_is_read(tmp_path):
    path = tmp_path / "whitelist.csv"
    path.write_bytes(("\ufeff" + HEADER + "\n" + csv_row(1) + "\n").encode("utf-8"))
    assert [e.task_code for e in read_whitelist_file(path)] == ["T1"]


def test_unknown_file_format_is_refused(tmp_path):
    path = tmp_path / "whitelist.json"
    path.write_text("{}")
    with pytest.raises(WhitelistImportError, match="unknown whitelist format"):
        read_whitelist_file(path)


# --- CSV errors name the line ---------------------------------------------------------------


def test_csv_bad_consent_names_line_seven():
    text = "\n".join([HEADER, *(csv_row(n) for n in range(2, 7)), csv_row(7, consent="maybe")])
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_csv(text)
    assert problems_of(excinfo) == [
        "whitelist.csv line 7: consent must be 'required' or 'override', got 'maybe'"
    ]


def test_csv_reports_every_bad_line_not_just_the_first():
    text = "\n".join([
        HEADER,
        csv_row(2),
        csv_row(3, requester="Demo City B"),
        csv_row(4, consent=""),
        f"{CITY_B},{CITY_A},T5,,I5,情報5,required,法",
        "too,few,fields",
    ])
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_csv(text, source="w.csv")
    problems = problems_of(excinfo)
    assert problems[0].startswith("w.csv line 3: requester must be an agency entity ID")
    assert problems[1] == "w.csv line 4: consent must be 'required' or 'override', got ''"
    assert problems[2].startswith("w.csv line 5: task_name must be a non-empty text")
    assert problems[3] == "w.csv line 6: expected 8 fields, got 3"
    assert len(problems) == 4


def test_csv_line_numbers_count_quoted_newlines_and_skip_blank_lines():
    multiline = f'{CITY_B},{CITY_A},T2,事務2,I2,情報2,required,"第1項\n第2項\n第3項"'
    text = "\n".join([HEADER, multiline, "", csv_row(6, consent="always")])
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_csv(text)
    assert problems_of(excinfo) == [
        "whitelist.csv line 6: consent must be 'required' or 'override', got 'always'"
    ]


def test_csv_line_numbers_hold_for_windows_line_endings():
    text = "\r\n".join([HEADER, csv_row(2), csv_row(3, consent="Required")]) + "\r\n"
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_csv(text)
    assert problems_of(excinfo) == [
        "whitelist.csv line 3: consent must be 'required' or 'override', got 'Required'"
    ]


def test_csv_broken_quoting_names_the_line():
    text = "\n".join([HEADER, csv_row(2), csv_row(3).replace("事務3", '"事務"3')])
    with pytest.raises(WhitelistImportError, match=r"^whitelist.csv line 3: not valid CSV"):
        parse_csv(text)


def test_csv_header_must_name_each_column():
    text = HEADER.replace(",legal_basis", ",basis") + "\n" + csv_row(2)
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_csv(text)
    (problem,) = problems_of(excinfo)
    assert problem.startswith("whitelist.csv line 1: header must name each column once")
    assert "missing: legal_basis" in problem and "unknown: basis" in problem


def test_csv_empty_file_is_refused():
    with pytest.raises(WhitelistImportError, match="line 1: empty file"):
        parse_csv("")


def test_csv_duplicates_and_inconsistent_names_point_at_both_lines():
    renamed = csv_row(2).replace("事務2", "別の名前")
    text = "\n".join([HEADER, csv_row(2), csv_row(3), csv_row(2),
                      renamed.replace("I2", "I9")])
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_csv(text)
    assert problems_of(excinfo) == [
        (
            "whitelist.csv line 4: duplicate of the entry on line 2 "
            "(same requester, provider, task and information type)"
        ),
        "whitelist.csv line 5: task T2 is named '別の名前' here but '事務2' on line 2",
    ]


# --- YAML errors name the line --------------------------------------------------------------

GOOD_YAML_ENTRY = """\
  - requester: http://127.0.0.1:8102/metadata
    provider: http://127.0.0.1:8101/metadata
    task: {code: T1, name: 事務1}
    info_type: {code: I1, name: 情報1}
    consent: required
    legal_basis: 法第1条
"""


def test_yaml_bad_consent_names_the_line_of_the_value():
    text = "whitelist:\n" + GOOD_YAML_ENTRY + GOOD_YAML_ENTRY.replace("T1", "T2").replace(
        "consent: required", "consent: maybe"
    )
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_yaml(text)
    assert problems_of(excinfo) == [
        "whitelist.yaml line 12: consent must be 'required' or 'override', got 'maybe'"
    ]


def test_yaml_structure_errors_name_their_lines():
    text = (
        "whitelist:\n"
        + GOOD_YAML_ENTRY.replace("task: {code: T1, name: 事務1}", "task: T1")
        + GOOD_YAML_ENTRY.replace("consent: required", "consent: required\n    note: x")
        + "  - just a string\n"
        + GOOD_YAML_ENTRY.replace("code: I1", "code: 010").replace("T1", "T3")
    )
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_yaml(text, source="demo.yaml")
    problems = problems_of(excinfo)
    assert problems[0] == "demo.yaml line 4: task must be a mapping with 'code' and 'name'"
    assert problems[1].startswith("demo.yaml line 13: unknown key 'note'; expected requester")
    assert problems[2].startswith("demo.yaml line 15: an entry must be a mapping of requester")
    # an unquoted 010 is the YAML integer 8: refused rather than silently turned into "8"
    assert problems[3] == "demo.yaml line 19: info_type.code must be a non-empty text, got 8"
    assert len(problems) == 4


def test_yaml_key_given_twice_in_one_entry_is_refused_not_silently_overwritten():
    text = "whitelist:\n" + GOOD_YAML_ENTRY + "    consent: override\n"
    with pytest.raises(WhitelistImportError) as excinfo:
        parse_yaml(text)
    assert problems_of(excinfo) == [
        "whitelist.yaml line 8: key 'consent' appears twice in this entry"
    ]


def test_oversized_files_are_refused_before_parsing():
    with pytest.raises(WhitelistImportError, match="larger than"):
        parse_csv(HEADER + "\n" + "x" * (whitelist_io.MAX_FILE_CHARS + 1))


def test_yaml_syntax_error_names_the_line():
    text = "whitelist:\n" + GOOD_YAML_ENTRY + "  - requester: [unclosed\n"
    with pytest.raises(WhitelistImportError, match=r"^whitelist.yaml line \d+: not valid YAML"):
        parse_yaml(text)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "entries: []\n", "whitelist: 3\n"])
def test_yaml_must_be_a_whitelist_mapping_holding_a_list(text):
    with pytest.raises(WhitelistImportError, match=r"^whitelist.yaml line 1: "):
        parse_yaml(text)


def test_yaml_empty_whitelist_is_valid():
    assert parse_yaml("whitelist: []\n") == []


def test_operator_api_mappings_are_validated_by_entry_number():
    good = {"requester": CITY_B, "provider": CITY_A, "task_code": "T1", "task_name": "事務",
            "info_type_code": "I1", "info_type_name": "情報", "consent": "override",
            "legal_basis": "法"}
    with pytest.raises(WhitelistImportError) as excinfo:
        whitelist_io.entries_from_mappings([good, dict(good, consent="maybe", extra=1), good])
    assert problems_of(excinfo) == [
        "entries entry 2: unknown field 'extra'",
        "entries entry 2: consent must be 'required' or 'override', got 'maybe'",
        (
            "entries entry 3: duplicate of the entry on entry 1 "
            "(same requester, provider, task and information type)"
        ),
    ]
    (entry,) = whitelist_io.entries_from_mappings([good])
    assert entry.consent is ConsentMode.OVERRIDE


def test_value_object_refuses_invalid_values_too():
    with pytest.raises(WhitelistImportError, match="consent must be"):
        WhitelistEntryIn(requester=CITY_B, provider=CITY_A, task_code="T", task_name="n",
                         info_type_code="I", info_type_name="n", legal_basis="b",
                         consent="maybe")  # type: ignore[arg-type]


# --- imports are all or nothing ---------------------------------------------------------------


def test_import_with_one_bad_line_writes_nothing(db, demo, tmp_path):
    service.import_whitelist(db_session=db, entries=demo)
    db.commit()
    before = service.export_whitelist(db_session=db)
    path = tmp_path / "whitelist.csv"
    # good new entries, a changed existing one, and one bad line
    changed = dump_csv([demo[0].__class__(**{**demo[0].__dict__, "legal_basis": "changed"})])
    path.write_text("\n".join([
        HEADER, csv_row(2), changed.splitlines()[1], csv_row(4, consent="maybe"), csv_row(5),
    ]))
    with pytest.raises(WhitelistImportError, match="whitelist.csv line 4: consent"):
        whitelist_io.import_whitelist_file(db_session=db, path=path, replace=True)
    assert service.export_whitelist(db_session=db) == before  # not even flushed
    db.rollback()
    assert service.export_whitelist(db_session=db) == before


def test_import_upserts_and_replace_removes_what_the_file_lacks(db, demo):
    first = service.import_whitelist(db_session=db, entries=demo)
    assert (first.created, first.updated, first.unchanged, first.removed) == (4, 0, 0, 0)
    ids = {e.task_code: e.id for e in service.list_whitelist(db_session=db)}
    edited = [demo[0].__class__(**{**demo[0].__dict__, "consent": ConsentMode.OVERRIDE}),
              *demo[1:]]
    again = service.import_whitelist(db_session=db, entries=edited)
    assert (again.created, again.updated, again.unchanged, again.removed) == (0, 1, 3, 0)
    rows = {e.task_code: e for e in service.list_whitelist(db_session=db)}
    assert rows["JUKI-TENNYU"].consent == "override"
    assert rows["JUKI-TENNYU"].id == ids["JUKI-TENNYU"]  # updated in place, ID kept
    replaced = service.import_whitelist(db_session=db, entries=edited[:2], replace=True)
    assert (replaced.created, replaced.updated, replaced.unchanged, replaced.removed) == (
        0, 0, 2, 2)
    assert sorted(e.task_code for e in service.export_whitelist(db_session=db)) == sorted(
        e.task_code for e in edited[:2])


def test_import_refuses_duplicate_entries_before_writing(db, demo):
    with pytest.raises(WhitelistImportError, match="entry 5: duplicate of entry 1"):
        service.import_whitelist(db_session=db, entries=[*demo, demo[0]])
    assert service.list_whitelist(db_session=db) == []


def test_creating_an_entry_twice_is_refused(db, demo):
    service.create_whitelist_entry(db_session=db, entry=demo[0])
    with pytest.raises(DuplicateWhitelistEntry):
        service.create_whitelist_entry(db_session=db, entry=demo[0])
    entry = service.list_whitelist(db_session=db)[0]
    assert service.delete_whitelist_entry(db_session=db, entry_id=entry.id)
    assert not service.delete_whitelist_entry(db_session=db, entry_id=entry.id)
    assert service.get_whitelist_entry(db_session=db, entry_id=entry.id) is None


# --- hostile or foreign files (hardening 8) ---------------------------------------------------


def test_a_cp932_csv_from_excel_imports_with_its_japanese_names(tmp_path: Path, db: Session):
    path = tmp_path / "別表第二.csv"
    path.write_bytes(f"{HEADER}\r\n{csv_row(1)}\r\n{csv_row(2)}\r\n".encode("cp932"))
    summary = whitelist_io.import_whitelist_file(db_session=db, path=path)
    assert summary.created == 2
    names = sorted(e.task_name for e in service.export_whitelist(db_session=db))
    assert names == ["事務1", "事務2"]


@pytest.mark.parametrize("codec", ["utf-16", "utf-8-sig", "utf-8"])
def test_utf_files_with_or_without_a_bom(tmp_path: Path, codec: str):
    path = tmp_path / "wl.csv"
    path.write_bytes(f"{HEADER}\n{csv_row(1)}\n".encode(codec))
    assert [e.info_type_name for e in read_whitelist_file(path)] == ["情報1"]


def test_latin1_needs_its_name_and_undecodable_bytes_are_refused_plainly(tmp_path: Path):
    path = tmp_path / "wl.csv"
    path.write_bytes(f"{HEADER}\n{CITY_B},{CITY_A},T1,Café ñ,I1,Info,required,Art. 1\n".encode("latin-1"))
    assert read_whitelist_file(path, encoding="latin-1")[0].task_name == "Café ñ"
    path.write_bytes(f"{HEADER}\n".encode() + b"\x81 \xff\n")
    with pytest.raises(WhitelistImportError, match="wl.csv: neither UTF-8 nor Shift_JIS"):
        read_whitelist_file(path)


def _billion_laughs() -> str:
    """One entry whose requester stands for 9**9 strings by reference (a few hundred bytes)."""
    lines = ["whitelist:", '  - x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"    x{i}: &a{i} [{','.join(['*a' + str(i - 1)] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n    requester: [*a8,*a8,*a8,*a8,*a8,*a8,*a8,*a8,*a8]\n"


def test_a_yaml_alias_bomb_is_refused_at_once():
    bomb = _billion_laughs()
    assert len(bomb.encode()) < 1000  # a billion "lol"s by reference
    with pytest.raises(WhitelistImportError) as caught:
        parse_yaml(bomb, source="bomb.yaml")
    assert "bomb.yaml line 2: YAML anchors and aliases" in str(caught.value)
    with pytest.raises(WhitelistImportError, match="anchors and aliases"):
        parse_yaml("whitelist:\n  - &e {requester: x}\n  - *e\n")


@pytest.mark.parametrize("nested", ["[" * 5000 + "]" * 5000, "whitelist:\n  " + "- " * 5000 + "x\n",
                                    "{a: " * 5000 + "x" + "}" * 5000])
def test_deep_yaml_nesting_is_refused_not_a_recursion_error(nested: str):
    with pytest.raises(WhitelistImportError, match=f"nested deeper than {whitelist_io.MAX_YAML_DEPTH}"):
        parse_yaml(nested, source="deep.yaml")


def test_a_huge_value_is_never_repeated_in_full():
    huge = "k" * 1_000_000
    with pytest.raises(WhitelistImportError) as caught:
        parse_yaml(f"whitelist:\n  - {huge}: 1\n    requester: x\n", source="w.yaml")
    assert len(str(caught.value)) < 2000
    with pytest.raises(WhitelistImportError) as caught:
        parse_csv(f"{HEADER}\n{CITY_B},{CITY_A},T1,a,I1,b,{huge},c\n")
    assert len(str(caught.value)) < 2000
