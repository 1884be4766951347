"""The legal whitelist (別表第２) as YAML and CSV files: parse with located errors, and dump.

Parsing checks the whole file before anything is written, and every message names the file
and line of the bad entry, so an import is all or nothing.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from sqlalchemy.orm import Session

from consent import service
from consent.errors import WhitelistImportError
from consent.models import WHITELIST_FIELDS, WhitelistEntryIn, whitelist_entry_problems
from kernel.errors import shown
from kernel.validate import UndecodableText, decode_text

if TYPE_CHECKING:
    from _csv import _reader

DEMO_WHITELIST = Path(__file__).resolve().parent / "examples" / "demo_whitelist.yaml"
MAX_FILE_CHARS = 8 * 1024 * 1024  # 別表第２ has a few hundred rows; far below this
MAX_FILE_BYTES = 4 * MAX_FILE_CHARS  # the most bytes MAX_FILE_CHARS can take (UTF-8)
# whitelist → entry → task/info_type → code/name is 4 deep; nothing legitimate goes past this
MAX_YAML_DEPTH = 8

CSV_COLUMNS = WHITELIST_FIELDS
# the YAML shape nests task and information type: {task: {code, name}, info_type: {...}}
_YAML_FIELDS = {
    "requester": "requester",
    "provider": "provider",
    "task_code": "task.code",
    "task_name": "task.name",
    "info_type_code": "info_type.code",
    "info_type_name": "info_type.name",
    "consent": "consent",
    "legal_basis": "legal_basis",
}
_YAML_KEYS = ("requester", "provider", "task", "info_type", "consent", "legal_basis")


class _Located:
    """Collects problems, each prefixed with `<source> line <n>` (or `entry <n>`)."""

    def __init__(self, source: str, unit: str = "line"):
        self.source = source
        self.unit = unit
        self.problems: list[str] = []

    def add(self, position: int | None, message: str) -> None:
        where = f"{self.source} {self.unit} {position}" if position else self.source
        self.problems.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise WhitelistImportError(self.problems)


# --- YAML ---------------------------------------------------------------------------------


def parse_yaml(text: str, *, source: str = "whitelist.yaml") -> list[WhitelistEntryIn]:
    """The entries of a YAML whitelist (`whitelist:` list), or every problem with its line."""
    errors = _Located(source)
    root, data = _load_yaml(text, source)
    if not isinstance(data, dict) or set(data) != {"whitelist"}:
        errors.add(1, "expected a mapping with one key, 'whitelist', holding a list of entries")
        errors.raise_if_any()
    entries_node = _whitelist_node(root)
    if not isinstance(entries_node, yaml.SequenceNode) or not isinstance(data["whitelist"], list):
        errors.add(_line(entries_node or root), "'whitelist' must be a list of entries")
        errors.raise_if_any()
    located: list[tuple[int, dict[str, object]]] = []
    for node, raw in zip(entries_node.value, data["whitelist"], strict=True):
        line, before = _line(node), len(errors.problems)
        if not isinstance(raw, dict):
            errors.add(line, f"an entry must be a mapping of {', '.join(_YAML_KEYS)}")
            continue
        values, field_lines = _flatten_yaml_entry(node, raw, errors)
        for field, message in whitelist_entry_problems(values):
            shown = _YAML_FIELDS[field]
            errors.add(field_lines.get(field, line), shown + message[len(field):])
        if len(errors.problems) == before:  # cross-entry checks only on sound entries
            located.append((line, values))
    return _finish(located, errors)


def dump_yaml(entries: Sequence[WhitelistEntryIn]) -> str:
    """`entries` as a YAML whitelist that `parse_yaml` reads back unchanged."""
    doc = {
        "whitelist": [
            {
                "requester": e.requester,
                "provider": e.provider,
                "task": {"code": e.task_code, "name": e.task_name},
                "info_type": {"code": e.info_type_code, "name": e.info_type_name},
                "consent": e.consent.value,
                "legal_basis": e.legal_basis,
            }
            for e in entries
        ]
    }
    header = "# Renkei legal whitelist (別表第２ style): requester <- provider, task, information\n"
    return header + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=100)


class _YamlRefused(Exception):
    """A YAML construct the whitelist never needs and an attacker would use."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class _WhitelistYamlLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases, and with a small nesting limit.

    An alias repeats a node by reference: nine nested anchors make a few hundred bytes stand for
    a billion values ("billion laughs"), which any walk or message over the values expands. Deep
    nesting makes the recursive composer end in RecursionError. Both are refused as they appear.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _YamlRefused(line, "YAML anchors and aliases (& and *) are not accepted; write each value out")
        if self._depth >= MAX_YAML_DEPTH:
            raise _YamlRefused(line, f"nested deeper than {MAX_YAML_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _load_yaml(text: str, source: str) -> tuple[yaml.Node | None, object]:
    """The node tree (for line numbers) and the plain values, from one safe parse."""
    _refuse_oversized(text, source)
    loader = _WhitelistYamlLoader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    except _YamlRefused as exc:
        raise WhitelistImportError([f"{source} line {exc.line}: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"{source} line {mark.line + 1}" if mark else source
        raise WhitelistImportError([f"{where}: not valid YAML: {problem}"]) from None
    finally:
        loader.dispose()


def _whitelist_node(root: yaml.Node | None) -> yaml.Node | None:
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if key.value == "whitelist":
            return value
    return None


def _pairs(node: yaml.Node) -> Iterator[tuple[str, yaml.Node]]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield str(key.value), value


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _flatten_yaml_entry(
    node: yaml.Node, raw: dict, errors: _Located
) -> tuple[dict[str, object], dict[str, int]]:
    """The entry's values under the flat field names, and the line of each value."""
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    seen: set[str] = set()
    for key, value_node in _pairs(node):
        if key in seen:  # PyYAML would silently keep the last one
            errors.add(_line(value_node), f"key {shown(key)} appears twice in this entry")
        seen.add(key)
        if key not in _YAML_KEYS:
            errors.add(_line(value_node), f"unknown key {shown(key)}; expected {', '.join(_YAML_KEYS)}")
        elif key in ("task", "info_type"):
            nested = raw.get(key)
            if not isinstance(nested, dict) or set(nested) != {"code", "name"}:
                errors.add(_line(value_node), f"{key} must be a mapping with 'code' and 'name'")
                # reported once above; placeholders keep the field checks quiet
                values[f"{key}_code"] = values[f"{key}_name"] = "?"
                continue
            for sub, sub_node in _pairs(value_node):
                lines[f"{key}_{sub}"] = _line(sub_node)
            values[f"{key}_code"] = _clean(nested.get("code"))
            values[f"{key}_name"] = _clean(nested.get("name"))
        else:
            values[key] = _clean(raw.get(key))
            lines[key] = _line(value_node)
    return values, lines


# --- CSV ----------------------------------------------------------------------------------


def parse_csv(text: str, *, source: str = "whitelist.csv") -> list[WhitelistEntryIn]:
    """The entries of a CSV whitelist (header line first), or every problem with its line."""
    _refuse_oversized(text, source)
    errors = _Located(source)
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")), strict=True)
    header = next((row for _, row in _csv_records(reader, errors)), [])
    header = [name.strip() for name in header]
    missing = [c for c in CSV_COLUMNS if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if not header:
        errors.add(1, f"empty file; expected a header line: {','.join(CSV_COLUMNS)}")
    elif missing or unknown or len(set(header)) != len(header):
        errors.add(
            1,
            f"header must name each column once: {','.join(CSV_COLUMNS)} "
            f"(missing: {', '.join(missing) or '-'}; unknown: {', '.join(unknown) or '-'})",
        )
    errors.raise_if_any()
    located: list[tuple[int, dict[str, object]]] = []
    for line, row in _csv_records(reader, errors):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            errors.add(line, f"expected {len(header)} fields, got {len(row)}")
            continue
        values = {name: _clean(cell) for name, cell in zip(header, row, strict=True)}
        problems = whitelist_entry_problems(values)
        for _field, message in problems:
            errors.add(line, message)
        if not problems:
            located.append((line, values))
    return _finish(located, errors)


def dump_csv(entries: Sequence[WhitelistEntryIn]) -> str:
    """`entries` as a CSV whitelist that `parse_csv` reads back unchanged."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        writer.writerow([e.consent.value if c == "consent" else getattr(e, c) for c in CSV_COLUMNS])
    return out.getvalue()


def _csv_records(reader: _reader, errors: _Located) -> Iterator[tuple[int, list[str]]]:
    """Each record with the line it starts on (a quoted field may span lines)."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise WhitelistImportError([f"{errors.source} line {start}: not valid CSV: {exc}"])
        yield start, row


# --- both formats -------------------------------------------------------------------------


def _refuse_oversized(text: str, source: str) -> None:
    if len(text) > MAX_FILE_CHARS:
        raise WhitelistImportError([f"{source}: file is larger than {MAX_FILE_CHARS} characters"])


def _clean(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _finish(located: list[tuple[int, dict[str, object]]], errors: _Located) -> list[WhitelistEntryIn]:
    """Cross-entry checks (duplicates, one name per code), then the value objects."""
    _check_across_entries(located, errors)
    errors.raise_if_any()
    return [WhitelistEntryIn(**values) for _, values in located]  # type: ignore[arg-type]


def _check_across_entries(
    located: list[tuple[int, dict[str, object]]], errors: _Located
) -> None:
    keys: dict[tuple, int] = {}
    names: dict[tuple[str, object], tuple[object, int]] = {}
    for line, values in located:
        key = tuple(values.get(f) for f in ("requester", "provider", "task_code", "info_type_code"))
        if key in keys:
            errors.add(
                line,
                f"duplicate of the entry on {errors.unit} {keys[key]} "
                "(same requester, provider, task and information type)",
            )
        keys.setdefault(key, line)
        for kind, label in (("task", "task"), ("info_type", "information type")):
            code, name = values.get(f"{kind}_code"), values.get(f"{kind}_name")
            seen = names.setdefault((kind, code), (name, line))
            if seen[0] != name:
                errors.add(
                    line,
                    f"{label} {code} is named {shown(name)} here "
                    f"but {shown(seen[0])} on {errors.unit} {seen[1]}",
                )


# --- files and the database ---------------------------------------------------------------


def read_whitelist_file(path: Path | str, *, encoding: str | None = None) -> list[WhitelistEntryIn]:
    """Parse a `.yaml`/`.yml` or `.csv` whitelist file, in `encoding` or the one its bytes show
    (BOM → UTF-8/UTF-16, else UTF-8, else CP932 as Excel in Japan saves CSV)."""
    path = Path(path)
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise WhitelistImportError([f"{path.name}: file is larger than {MAX_FILE_BYTES} bytes"])
    try:
        text = decode_text(data, source=path.name, encoding=encoding)
    except UndecodableText as exc:
        raise WhitelistImportError([str(exc)]) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml(text, source=path.name)
    if path.suffix.lower() == ".csv":
        return parse_csv(text, source=path.name)
    raise WhitelistImportError([f"{path.name}: unknown whitelist format (use .yaml or .csv)"])


def write_whitelist_file(entries: Sequence[WhitelistEntryIn], path: Path | str) -> None:
    """Write `entries` to a `.yaml`/`.yml` or `.csv` file, chosen by its suffix."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        path.write_text(dump_yaml(entries), encoding="utf-8")
    elif path.suffix.lower() == ".csv":
        path.write_text(dump_csv(entries), encoding="utf-8")
    else:
        raise ValueError(f"{path.name}: unknown whitelist format (use .yaml or .csv)")


def import_whitelist_file(
    *, db_session: Session, path: Path | str, replace: bool = False, encoding: str | None = None
) -> service.ImportSummary:
    """Validate the whole file, then upsert its entries (nothing is written on any error)."""
    entries = read_whitelist_file(path, encoding=encoding)
    return service.import_whitelist(db_session=db_session, entries=entries, replace=replace)


def export_whitelist_file(*, db_session: Session, path: Path | str) -> int:
    """Write the whole whitelist to `path`; returns the number of entries."""
    entries = service.export_whitelist(db_session=db_session)
    write_whitelist_file(entries, path)
    return len(entries)


def entries_from_mappings(
    items: Sequence[Mapping[str, object]], *, source: str = "entries"
) -> list[WhitelistEntryIn]:
    """Validate flat mappings (an operator API body), naming each bad one by its number."""
    errors = _Located(source, unit="entry")
    located = []
    for number, values in enumerate(items, start=1):
        before = len(errors.problems)
        cleaned = {k: _clean(v) for k, v in values.items()}
        for key in cleaned:
            if key not in WHITELIST_FIELDS:
                errors.add(number, f"unknown field {shown(key)}")
        for _field, message in whitelist_entry_problems(cleaned):
            errors.add(number, message)
        if len(errors.problems) == before:
            located.append((number, {f: cleaned.get(f) for f in WHITELIST_FIELDS}))
    return _finish(located, errors)
