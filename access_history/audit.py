"""The auditor's export of a log and its offline verification (監査).

An export is JSON lines: a header with the signed checkpoint, the leaf range it covers and
the proof hashes that tie that range to the checkpoint's root; one line per leaf of the range
(an entry's readable fields with its salt and leaf data, or, where a filter leaves an entry
out, only its leaf hash); and an end line. Verification streams the file once in constant
memory: it recomputes every shown entry's commitment, checks the leaf indices run without a
gap, recomputes the root from the leaves and the range proof, and checks the checkpoint's
signature; with an auditor's saved checkpoint it also proves the exported tree extends it, so
a history rewritten after that checkpoint was saved is caught even if every hash was redone.
"""
from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, func, select
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from access_history import ledger, tlog
from access_history.models import ACCESS_LOG, OPERATIONS_LOG, HistoryEntry, LogLeaf, OperationEntry
from access_history.record import FIELDS, PERSON_REF_DOMAIN, commitment
from access_history.service import access_record, operation_record

FORMAT = "renkei-history-export/v1"
CSV_COLUMNS = ("index", *FIELDS[ACCESS_LOG])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class ExportFilter:
    start: datetime | None = None
    end: datetime | None = None
    agency: str | None = None
    outcome: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"from": self.start.isoformat() if self.start else None,
                "to": self.end.isoformat() if self.end else None,
                "agency": self.agency, "outcome": self.outcome}

    def is_full(self) -> bool:
        return self.agency is None and self.outcome is None

    def keeps(self, record: dict[str, Any], recorded_at: datetime) -> bool:
        if self.start is not None and recorded_at < self.start:
            return False
        if self.end is not None and recorded_at >= self.end:
            return False
        if self.agency is not None and self.agency not in (
                record.get("requester"), record.get("provider"), record.get("owner"),
                record.get("actor"), record.get("target")):
            return False
        return self.outcome is None or record.get("outcome") == self.outcome


def _entry_table(log: str):
    return HistoryEntry if log == ACCESS_LOG else OperationEntry


def _leaf_range(db_session: Session, log: str, f: ExportFilter, size: int) -> tuple[int, int]:
    """The leaves [start, end) whose entries fall in the time window (all of them without one)."""
    if f.start is None and f.end is None:
        return 0, size
    # the leaves carry their entry's time: no join, and it holds for pruned entries too
    stmt = (select(func.min(LogLeaf.leaf_index), func.max(LogLeaf.leaf_index))
            .where(LogLeaf.log == log, LogLeaf.leaf_index < size))
    if f.start is not None:
        stmt = stmt.where(LogLeaf.entry_time >= f.start)
    if f.end is not None:
        stmt = stmt.where(LogLeaf.entry_time < f.end)
    lo, hi = db_session.execute(stmt).one()
    return (0, 0) if lo is None else (lo, hi + 1)


def export_header(*, db_session: Session, log: str, verifier_key: str,
                  filters: ExportFilter = ExportFilter(), since_size: int | None = None) -> dict[str, Any]:
    """The export's first line: the newest checkpoint, the leaf range, its range proof (read
    from the stored subtree hashes: O(log n), no leaf hashes in memory)."""
    from access_history.retention import pruned_before

    checkpoint = ledger.latest_checkpoint(db_session=db_session, log=log)
    size = checkpoint.size if checkpoint else 0
    start, end = _leaf_range(db_session, log, filters, size)
    pruned = pruned_before(db_session=db_session, log=log)
    header: dict[str, Any] = {
        "type": "header", "format": FORMAT, "log": log, "tree_size": size,
        "checkpoint": checkpoint.note if checkpoint else None, "verifier_key": verifier_key,
        "start_index": start, "end_index": end, "filters": filters.describe(),
        "complete": filters.is_full(),
        "pruned_before": pruned.isoformat() if pruned else None,
        "range_proof": [_b64(h) for h in ledger.range_proof(
            db_session=db_session, log=log, start=start, end=end, size=size)] if end > start else [],
    }
    if since_size is not None and 0 < since_size <= size:
        header["consistency"] = {"from_size": since_size, "proof": [_b64(h) for h in ledger.consistency_proof(
            db_session=db_session, log=log, old_size=since_size, new_size=size)]}
    return header


def export(*, db_session: Session, log: str, verifier_key: str, filters: ExportFilter = ExportFilter(),
           since_size: int | None = None,
           progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """The export's lines as JSON-ready dicts: header, one per leaf of the range, end.

    Reads the log at its newest checkpoint; integrate first to include what is still queued.
    With `since_size` (an auditor's saved checkpoint), the header carries a consistency proof
    from that size to the exported one.
    """
    header = export_header(db_session=db_session, log=log, verifier_key=verifier_key, filters=filters,
                           since_size=since_size)
    yield header
    start, end = header["start_index"], header["end_index"]
    table = _entry_table(log)
    to_record = access_record if log == ACCESS_LOG else operation_record
    # joined on (id, recorded_at) so PostgreSQL reads only the months of the range; outer, so
    # a leaf whose entry retention dropped still shows (its hash is all the proof needs)
    on = [table.id == LogLeaf.entry_ref, table.recorded_at == LogLeaf.entry_time]
    first, last = db_session.execute(select(func.min(LogLeaf.entry_time), func.max(LogLeaf.entry_time)).where(
        LogLeaf.log == log, LogLeaf.leaf_index >= start, LogLeaf.leaf_index < end)).one()
    if first is not None:
        on.append(table.recorded_at.between(first, last))
    stmt = (select(LogLeaf.leaf_index, LogLeaf.leaf_hash, table)
            .outerjoin(table, and_(*on))
            .where(LogLeaf.log == log, LogLeaf.leaf_index >= start, LogLeaf.leaf_index < end)
            .order_by(LogLeaf.leaf_index).execution_options(yield_per=2000))
    count = 0
    for index, leaf_hash, row in db_session.execute(stmt):
        if row is None:
            yield {"type": "leaf", "index": index, "leaf_hash": _b64(leaf_hash), "pruned": True}
        else:
            record = to_record(row)
            if filters.keeps(record, row.recorded_at):
                yield {"type": "entry", "index": index, "leaf_data": _b64(row.leaf_data),
                       "salt": _b64(row.salt), **record}
            else:
                yield {"type": "leaf", "index": index, "leaf_hash": _b64(leaf_hash)}
            db_session.expunge(row)
        count += 1
        if progress is not None and count % 1000 == 0:
            progress(1000)
    if progress is not None:
        progress(count % 1000)
    yield {"type": "end", "leaves": count}


# --- the fast JSONL export ----------------------------------------------------------------
#
# `export` builds a dict per line: ~50 µs of Python per row. The JSONL export of the CLI is
# instead streamed as bytes: on PostgreSQL the server formats each leaf's line itself in a
# `COPY (SELECT …) TO STDOUT` (no Python per row; blocks of lines go straight to the file),
# elsewhere plain Core rows are formatted with orjson. Both write exactly the bytes that
# `export_jsonl(export(...))` writes (tests compare them), in constant memory.

_ISO_SQL = "'\"' || to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || '\"'"


def _sql_field(log: str, name: str) -> str:
    """The JSON text of one record field of entry `e`, as SQL (NULL-safe: `null`)."""
    times = {"recorded_at", "asked_at", "provided_at", "sealed_until"}
    if name in times:
        return f"CASE WHEN {name} IS NULL THEN 'null' ELSE {_ISO_SQL.format(c=name)} END"
    if name == "detail":
        return "detail"  # stored as canonical JSON: as json.loads + json.dumps would write it
    if name == "person_ref":
        return ("'\"' || encode(sha256(CAST(:person_domain AS bytea) || convert_to(owner, 'UTF8') "
                "|| '\\x00'::bytea || convert_to(person_key, 'UTF8')), 'hex') || '\"'")
    if name == "permitted":
        return "CASE WHEN permitted IS NULL THEN 'null' WHEN permitted THEN 'true' ELSE 'false' END"
    if name == "overridden":
        return "CASE WHEN overridden THEN 'true' ELSE 'false' END"
    return f"coalesce(to_json({name})::text, 'null')"


def _sql_lines(log: str, filters: ExportFilter) -> tuple[str, dict[str, Any]]:
    """SELECT of one text column: the JSON line of every leaf in [:start, :end), in order.

    Each line is one `concat` call (not a chain of `||`, which copies the growing line once
    per piece); the join and its order are computed below a fence (OFFSET 0) so that the sort,
    if any, moves the narrow rows, not the formatted lines."""
    table = _entry_table(log).__table__.name
    params: dict[str, Any] = {"log": log}
    entry: list[str] = ["'{\"type\":\"entry\",\"index\":'", "leaf_index", "',\"leaf_data\":\"'",
                        "encode(leaf_data, 'base64')", "'\",\"salt\":\"'", "encode(salt, 'base64')", "'\"'"]
    for name in FIELDS[log]:
        entry += [f"',\"{name}\":'", _sql_field(log, name)]
    entry.append("'}'")
    leaf = "concat('{\"type\":\"leaf\",\"index\":', leaf_index, ',\"leaf_hash\":\"', encode(leaf_hash, 'base64')"
    keeps = ["true"]
    if filters.start is not None:
        keeps.append("recorded_at >= :f_start")
        params["f_start"] = filters.start
    if filters.end is not None:
        keeps.append("recorded_at < :f_end")
        params["f_end"] = filters.end
    if filters.agency is not None:
        parties = ("requester", "provider", "owner") if log == ACCESS_LOG else ("actor", "target")
        keeps.append(f"coalesce(:f_agency IN ({', '.join(parties)}), false)")
        params["f_agency"] = filters.agency
    if filters.outcome is not None:
        keeps.append("outcome = :f_outcome")
        params["f_outcome"] = filters.outcome
    if log == ACCESS_LOG:
        params["person_domain"] = PERSON_REF_DOMAIN
    sql = (f"SELECT CASE WHEN id IS NULL THEN {leaf}, '\",\"pruned\":true}}') "
           f"WHEN {' AND '.join(keeps)} THEN concat({', '.join(entry)}) ELSE {leaf}, '\"}}') END "
           "FROM (SELECT l.leaf_index, l.leaf_hash, e.* FROM tlog_leaves l "
           f"LEFT OUTER JOIN {table} e ON e.id = l.entry_ref AND e.recorded_at = l.entry_time "
           "AND e.recorded_at BETWEEN :first AND :last AND e.id BETWEEN :id_lo AND :id_hi "
           "WHERE l.log = :log AND l.leaf_index >= :start AND l.leaf_index < :end "
           "ORDER BY l.leaf_index OFFSET 0) s")
    return sql, params


def _dumps(line: dict[str, Any]) -> bytes:
    return orjson.dumps(line) + b"\n"


def export_jsonl_chunks(*, db_session: Session, log: str, verifier_key: str,
                        filters: ExportFilter = ExportFilter(), since_size: int | None = None,
                        counts: dict[str, int] | None = None) -> Iterator[bytes]:
    """The JSONL export as byte blocks of whole lines: header, one line per leaf, end; the
    same bytes as `export_jsonl(export(...))`. `counts` (if given) is kept up to date with
    `leaves` and `entries` written so far."""
    counts = counts if counts is not None else {}
    counts.update(leaves=0, entries=0)
    header = export_header(db_session=db_session, log=log, verifier_key=verifier_key, filters=filters,
                           since_size=since_size)
    yield json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    start, end = header["start_index"], header["end_index"]
    if end > start:
        first, last = db_session.execute(select(func.min(LogLeaf.entry_time), func.max(LogLeaf.entry_time)).where(
            LogLeaf.log == log, LogLeaf.leaf_index >= start, LogLeaf.leaf_index < end)).one()
        if db_session.get_bind().dialect.name == "postgresql":
            blocks = _postgres_lines(db_session, log, filters, start, end, first, last)
        else:
            blocks = _python_lines(db_session, log, filters, start, end, first, last)
        for block in blocks:
            counts["leaves"] += block.count(b"\n")
            counts["entries"] += block.count(b'{"type":"entry"')
            yield block
    yield _dumps({"type": "end", "leaves": counts["leaves"]})


EXPORT_CHUNK = 12_500  # leaves per COPY on PostgreSQL: each chunk's join reads only its own rows
EXPORT_STREAMS = 3  # COPYs running at once, each on its own connection (the server formats lines)
EXPORT_AHEAD = 3  # chunks formatted ahead of the writer at most (~10 MB each): peak ~140 MB, not ~200


def _postgres_lines(db_session: Session, log: str, filters: ExportFilter, start: int, end: int,
                    first: datetime, last: datetime) -> Iterator[bytes]:
    """The leaf lines as PostgreSQL writes them, chunk by chunk of the leaf range, in order.

    Each chunk joins only the entries of its own times and ids, so no step of the plan grows
    with the log. Formatting a line costs the server ~10 µs, more than the client spends, so
    `EXPORT_STREAMS` connections format chunks at once and the chunks are yielded in leaf order;
    at most `EXPORT_AHEAD` chunks wait in memory. The leaves of the range are immutable, so
    every connection reads the same lines whatever its snapshot (a month pruned meanwhile
    would show as pruned leaves, which verify as well)."""
    import threading

    from psycopg import sql as pgsql

    query, params = _sql_lines(log, filters)
    # COPY takes no bind parameters: each value is inlined as a literal quoted by psycopg
    template = query.replace("{", "{{").replace("}", "}}")
    for name in sorted(set(params) | {"start", "end", "first", "last", "id_lo", "id_hi"}, key=len, reverse=True):
        template = re.sub(f":{name}\\b", f"{{{name}}}", template)
    statement = pgsql.SQL("COPY (" + template + ") TO STDOUT")
    chunks = [(lo, min(lo + EXPORT_CHUNK, end)) for lo in range(start, end, EXPORT_CHUNK)]
    def produce(conn, lo: int, hi: int) -> list[bytes]:
        # the chunk's leaves by their key, below a fence (OFFSET 0): a bare min()/max() would be
        # planned as a walk of the entry_time index from one end, through millions of leaves
        rows = (select(LogLeaf.entry_time, LogLeaf.entry_ref)
                .where(LogLeaf.log == log, LogLeaf.leaf_index >= lo, LogLeaf.leaf_index < hi)
                .offset(0).subquery())
        bounds = conn.execute(select(func.min(rows.c.entry_time), func.max(rows.c.entry_time),
                                     func.min(rows.c.entry_ref), func.max(rows.c.entry_ref))).one()
        values = {**params, "start": lo, "end": hi, "first": bounds[0], "last": bounds[1],
                  "id_lo": bounds[2], "id_hi": bounds[3]}
        out, pending = [], b""
        raw = conn.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(statement.format(
                **{k: pgsql.Literal(v) for k, v in values.items()})) as copy:
            for data in copy:
                block = pending + bytes(data)
                cut = block.rfind(b"\n") + 1
                pending = block[cut:]
                if cut:
                    out.append(block[:cut].replace(b"\\\\", b"\\"))
        if pending:
            raise RuntimeError("the COPY stream ended inside a line")
        return out

    engine = db_session.get_bind()
    engine = getattr(engine, "engine", engine)
    done: dict[int, list[bytes] | BaseException] = {}
    state = {"next": 0, "stop": False}
    cond = threading.Condition()

    def worker(first_chunk: int) -> None:
        try:
            with engine.connect() as conn:
                conn.execute(sql_text("SET work_mem = '64MB'"))
                for i in range(first_chunk, len(chunks), EXPORT_STREAMS):
                    with cond:
                        cond.wait_for(lambda i=i: state["stop"] or i < state["next"] + EXPORT_AHEAD)
                        if state["stop"]:
                            return
                    try:
                        result: list[bytes] | BaseException = produce(conn, *chunks[i])
                    except BaseException as exc:  # noqa: BLE001 - raised in the reader
                        result = exc
                    with cond:
                        done[i] = result
                        cond.notify_all()
                    if isinstance(result, BaseException):
                        return
                conn.rollback()
        except BaseException as exc:  # noqa: BLE001 - a connection failure: raised in the reader
            with cond:
                done.setdefault(-1, exc)
                cond.notify_all()

    threads = [threading.Thread(target=worker, args=(w,), name=f"export-{w}", daemon=True)
               for w in range(min(EXPORT_STREAMS, len(chunks)))]
    for t in threads:
        t.start()
    try:
        for i in range(len(chunks)):
            with cond:
                cond.wait_for(lambda i=i: i in done or -1 in done)
                result = done.pop(i) if i in done else done[-1]
                state["next"] = i + 1
                cond.notify_all()
            if isinstance(result, BaseException):
                raise result
            yield from result
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()
        for t in threads:
            t.join()


def _python_lines(db_session: Session, log: str, filters: ExportFilter, start: int, end: int,
                  first: datetime, last: datetime) -> Iterator[bytes]:
    """The leaf lines from Core rows (no ORM objects), serialised with orjson, in blocks."""
    table = _entry_table(log).__table__
    to_record = access_record if log == ACCESS_LOG else operation_record
    on = and_(table.c.id == LogLeaf.entry_ref, table.c.recorded_at == LogLeaf.entry_time,
              table.c.recorded_at.between(first, last))
    stmt = (select(LogLeaf.leaf_index, LogLeaf.leaf_hash, table).outerjoin(table, on)
            .where(LogLeaf.log == log, LogLeaf.leaf_index >= start, LogLeaf.leaf_index < end)
            .order_by(LogLeaf.leaf_index))
    result = db_session.connection().execution_options(stream_results=True, yield_per=5000).execute(stmt)
    for rows in result.partitions():
        out = []
        for row in rows:
            if row.id is None:
                line = {"type": "leaf", "index": row.leaf_index, "leaf_hash": _b64(row.leaf_hash), "pruned": True}
            else:
                record = to_record(row)
                record["detail"] = orjson.Fragment(row.detail)
                if filters.keeps(record, row.recorded_at):
                    line = {"type": "entry", "index": row.leaf_index, "leaf_data": _b64(row.leaf_data),
                            "salt": _b64(row.salt), **record}
                else:
                    line = {"type": "leaf", "index": row.leaf_index, "leaf_hash": _b64(row.leaf_hash)}
            out.append(_dumps(line))
        yield b"".join(out)


def export_jsonl(lines: Iterable[dict[str, Any]], out: io.TextIOBase) -> int:
    """Write export lines as JSON lines; returns how many entries were written."""
    entries = 0
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        entries += line.get("type") == "entry"
    return entries


def export_csv(lines: Iterable[dict[str, Any]], out: io.TextIOBase) -> int:
    """The readable fields of the shown entries as CSV (no proofs: verify the JSONL)."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    entries = 0
    for line in lines:
        if line.get("type") == "entry":
            writer.writerow([_csv_cell(line.get(name)) for name in CSV_COLUMNS])
            entries += 1
    return entries


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


# --- verification -------------------------------------------------------------------------

@dataclass
class Report:
    """What verification found: `ok`, or the first problem and where."""

    ok: bool = True
    problem: str | None = None
    line: int | None = None
    index: int | None = None
    entries: int = 0
    leaves: int = 0
    tree_size: int | None = None
    notes: list[str] = field(default_factory=list)

    def fail(self, problem: str, *, line: int | None = None, index: int | None = None) -> Report:
        self.ok, self.problem, self.line, self.index = False, problem, line, index
        return self

    def summary(self) -> str:
        if self.ok:
            return (f"sound: {self.entries} entries and {self.leaves - self.entries} other leaves "
                    f"verify against the checkpoint of size {self.tree_size}")
        where = "".join(f" {k} {v}" for k, v in (("line", self.line), ("index", self.index)) if v is not None)
        return f"NOT sound:{where}: {self.problem}"


class _Unsound(Exception):
    def __init__(self, problem: str, line: int | None = None, index: int | None = None):
        super().__init__(problem)
        self.problem, self.line, self.index = problem, line, index


def _unb64(value: Any, what: str, line: int, length: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _Unsound(f"{what} is not base64", line) from None
    if length is not None and len(raw) != length:
        raise _Unsound(f"{what} has {len(raw)} bytes, not {length}", line)
    return raw


def verify(lines: Iterable[str], *, verifier_key: str | None = None,
           saved_checkpoint: str | None = None) -> Report:
    """Verify an export (its text lines) offline; the first problem found is reported.

    `verifier_key` is the hub's note verifier key (`GET /history/checkpoint.vkey`); without it
    the export's own is used and the report says so. `saved_checkpoint` is a signed
    checkpoint the auditor kept earlier: the export must extend it.
    """
    report = Report()
    numbered = enumerate(lines, start=1)
    try:
        header = _header(numbered)
        key_text = verifier_key or header.get("verifier_key")
        if verifier_key is None:
            report.notes.append("the hub's key was taken from the export itself; pass --key to pin it")
        try:
            verifier = tlog.parse_verifier_key(str(key_text))
        except tlog.ProofInvalid as exc:
            raise _Unsound(f"the verifier key: {exc}", 1) from None
        log, size = header.get("log"), header.get("tree_size")
        if log not in (ACCESS_LOG, OPERATIONS_LOG) or not isinstance(size, int) or size < 0:
            raise _Unsound("the header names no log or tree size", 1)
        report.tree_size = size
        checkpoint = _open_checkpoint(header.get("checkpoint"), verifier, size, 1)
        start, end = header.get("start_index"), header.get("end_index")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= size):
            raise _Unsound("the header's leaf range does not fit the tree", 1)
        proof = [_unb64(h, "a range-proof hash", 1, 32) for h in header.get("range_proof") or []]
        saved = None
        if saved_checkpoint is not None:
            saved = _open_checkpoint(saved_checkpoint, verifier, None, None, what="the saved checkpoint")
            if saved.origin != checkpoint.origin:
                raise _Unsound("the saved checkpoint is of another log")
            if saved.size > size:
                raise _Unsound(f"the export's tree ({size}) is smaller than the saved checkpoint's "
                               f"({saved.size}): entries were removed")
        prefix: dict[str, bytes] = {}
        stream = _leaf_stream(numbered, log, start, end, report, saved.size if saved and start == 0 else None,
                              prefix)
        if end > start:
            root = tlog.root_from_range_stream(start, end, size, stream, proof)
        else:
            for _ in stream:
                pass
            root = tlog.EMPTY_ROOT if size == 0 else checkpoint.root
            if size and proof:
                raise _Unsound("an empty range carries proof hashes", 1)
        if root != checkpoint.root:
            raise _Unsound("the leaves and the range proof do not hash to the checkpoint's root: "
                           "an entry was replaced, removed or inserted")
        if saved is not None:
            _check_extends(header, saved, checkpoint, prefix)
    except _Unsound as exc:
        return report.fail(exc.problem, line=exc.line, index=exc.index)
    return report


def _header(numbered: Iterator[tuple[int, str]]) -> dict[str, Any]:
    try:
        _, text = next(numbered)
    except StopIteration:
        raise _Unsound("the export is empty") from None
    header = _json(text, 1)
    if header.get("type") != "header" or header.get("format") != FORMAT:
        raise _Unsound(f"not a {FORMAT} export", 1)
    return header


def _json(text: str, line: int) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses but JSON allows (an integer beyond 64 bits in a detail)
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise _Unsound("not a JSON line", line) from None
    if not isinstance(value, dict):
        raise _Unsound("not a JSON object", line)
    return value


def _open_checkpoint(note: Any, verifier: tlog.NoteVerifier, size: int | None, line: int | None,
                     what: str = "the checkpoint") -> tlog.Checkpoint:
    if not isinstance(note, str):
        raise _Unsound(f"{what} is missing", line)
    try:
        checkpoint = tlog.open_checkpoint(note, verifier)
    except tlog.ProofInvalid as exc:
        raise _Unsound(f"{what} does not verify: {exc}", line) from None
    if size is not None and checkpoint.size != size:
        raise _Unsound(f"{what} is of size {checkpoint.size}, the header says {size}", line)
    return checkpoint


def _leaf_stream(numbered: Iterator[tuple[int, str]], log: str, start: int, end: int, report: Report,
                 prefix_size: int | None, prefix: dict[str, bytes]) -> Iterator[bytes]:
    """Each leaf hash of the range in order, checking each line; then the end line."""
    expected = start
    frontier = tlog.Frontier()
    for number, text in numbered:
        line = _json(text, number)
        kind = line.get("type")
        if kind == "end":
            if expected != end:
                raise _Unsound(f"the export ends at index {expected}, the header promised {end}: "
                               "entries are missing at the end", number)
            if line.get("leaves") != end - start:
                raise _Unsound("the end line's count does not match the leaves", number)
            if next(numbered, None) is not None:
                raise _Unsound("lines follow the end line", number + 1)
            return
        index = line.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise _Unsound("a line without a leaf index", number)
        if index != expected:
            what = "missing" if index > expected else "repeated or reordered"
            raise _Unsound(f"leaf {expected} was expected, found {index}: an entry is {what}",
                           number, index)
        if index >= end:
            raise _Unsound("an extra entry beyond the header's range", number, index)
        if kind == "entry":
            leaf_data = _unb64(line.get("leaf_data"), "leaf_data", number, 32)
            salt = _unb64(line.get("salt"), "salt", number, 32)
            if commitment(log, salt, line) != leaf_data:
                raise _Unsound(f"entry {line.get('entry_id')!r}: its fields do not match its leaf "
                               "data (the entry was altered)", number, index)
            leaf = tlog.leaf_hash(leaf_data)
            report.entries += 1
        elif kind == "leaf":
            leaf = _unb64(line.get("leaf_hash"), "leaf_hash", number, 32)
        else:
            raise _Unsound(f"an unknown line type {kind!r}", number, index)
        report.leaves += 1
        expected += 1
        if prefix_size is not None:
            frontier.add(leaf)
            if frontier.size == prefix_size:
                prefix["root"] = frontier.root()
        yield leaf
    raise _Unsound(f"the export is cut after index {expected - 1}: its end line is missing")


def _check_extends(header: dict[str, Any], saved: tlog.Checkpoint, checkpoint: tlog.Checkpoint,
                   prefix: dict[str, bytes]) -> None:
    """The exported tree must contain the saved one as its prefix."""
    consistency = header.get("consistency")
    if isinstance(consistency, dict) and consistency.get("from_size") == saved.size:
        proof = [_unb64(h, "a consistency-proof hash", 1, 32) for h in consistency.get("proof") or []]
        try:
            tlog.verify_consistency(saved.size, checkpoint.size, proof, saved.root, checkpoint.root)
        except tlog.ProofInvalid:
            raise _Unsound("the export's tree does not extend the saved checkpoint: the history "
                           "was rewritten after it was saved") from None
        return
    if "root" in prefix or saved.size == 0:
        if saved.size and prefix["root"] != saved.root:
            raise _Unsound("the first leaves differ from the saved checkpoint: the history was "
                           "rewritten after it was saved")
        return
    raise _Unsound("the export cannot be checked against the saved checkpoint: export again "
                   "with --since, or from the first entry")
