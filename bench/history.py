#!/usr/bin/env python
"""Access-history benchmark on PostgreSQL: durable appends, the integrator, one person's
timeline page and the auditor's export, against a plain INSERT+COMMIT baseline measured in the
same run.

A benchmark, not a test: it prints figures and same-run ratios (this machine's speed swings
2-3x from run to run, so read the ratios and the CPU ms per operation).

Phases (a fresh database `renkei_bench_history_<pid>` on RENKEI_BENCH_POSTGRES_URL, migrated
with the real migrations, dropped at the end)
    [a] appends   1, 4, 8 and 16 appender processes, each a loop of `service.append` (one
                  decision entry) + COMMIT, i.e. one durable transaction per entry as a
                  discovery decision makes; meanwhile an integrator process runs the real
                  `ledger.integrate` in a loop. Baseline: the same number of processes doing
                  single-row INSERT + COMMIT into a plain table (id bigserial, 200 bytes).
    [b] timeline  N entries (default 1,000,000; 10,000,000 with --full; --entries N) generated
                  by INSERT ... SELECT generate_series over the last 12 months (13 month
                  partitions), with their real salted commitments computed in SQL (checked
                  against `record.commitment` on a sample) and the tree built in bulk by SQL
                  (leaves, then every level of complete-subtree nodes), its root checked
                  against `tlog.root_of` over the leaf hashes; then `service.timeline` (first
                  page, 50 entries) for 300 random people (200 entries each): p50, p99.
    [c] export    `audit.export` of the whole log, written as JSONL to a sink that counts
                  bytes, in a child process: rows/s and the child's peak RSS (getrusage).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    ROOT,
    Bench,
    Progress,
    add_output_arguments,
    argument_parser,
    finish,
    postgres_settings,
    run_bench,
    say,
)

TARGET_APPENDS = 5000.0
TARGET_TIMELINE_P99_MS = 50.0
TARGET_EXPORT_ROWS = 100_000.0
TARGET_EXPORT_MB = 200.0
CONCURRENCY = (1, 4, 8, 16)
SCOPE = "renkei.bench"


def _engine(url: str):
    from kernel.db import make_engine

    return make_engine(url)


def _keys(home: Path):
    from access_history import service
    from kernel.keys import KeyStore

    keys = KeyStore(home / "keys")
    if not keys.secret_versions(service.NOTE_SECRET):
        keys.create_secret(service.NOTE_SECRET)
    return keys


def _decision(i: int):
    from access_history.models import Channel, EntryIn, EntryKind

    return EntryIn(kind=EntryKind.DECISION, channel=Channel.DISCOVERY,
                   requester="https://city-b.example.jp/sp", provider="https://city-a.example.jp/sp",
                   person_key=f"person-{i % 5000}", task_code="JUKI-1", info_type_code="RESIDENT",
                   outcome="PERMITTED_BY_CONSENT", permitted=True, decision_id=f"d-{os.getpid()}-{i}",
                   whitelist_entry="WL-1", legal_basis="番号法 別表第二 1")


# --- [a] appends --------------------------------------------------------------------------

def _appender(url: str, kind: str, seconds: float, start_at: float, out) -> None:
    """One appender process: durable single-entry transactions until the time is up."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from access_history import service

    engine = _engine(url)
    payload = os.urandom(200)
    with Session(engine) as db:  # connect and warm up before the clock starts
        db.execute(text("SELECT 1"))
        while time.time() < start_at:
            time.sleep(0.001)
        cpu0, count, end = time.process_time(), 0, time.time() + seconds
        while time.time() < end:
            if kind == "plain":
                db.execute(text("INSERT INTO bench_plain (payload) VALUES (:p)"), {"p": payload})
            else:
                service.append(db_session=db, entry=_decision(count))
            db.commit()
            count += 1
        out.put((count, time.process_time() - cpu0))
    engine.dispose()


def _integrator(url: str, home: str, stop, out) -> None:
    """The integrator as the app runs it, in a loop, until told to stop; entries integrated."""
    from sqlalchemy.orm import Session

    from access_history import ledger, service

    engine = _engine(url)
    keys = _keys(Path(home))
    signer = service.log_signer(keys=keys, scope=SCOPE, log="access")
    done, busy, cpu0 = 0, 0.0, time.process_time()
    while not stop.is_set():
        t0 = time.perf_counter()
        with Session(engine) as db:
            count = ledger.integrate(db_session=db, log="access", signer=signer)
            db.commit()
        done += count
        if count:
            busy += time.perf_counter() - t0
        else:
            stop.wait(0.05)
    out.put((done, busy, time.process_time() - cpu0))
    engine.dispose()


def run_appends(url: str, home: Path, seconds: float) -> list[dict]:
    from sqlalchemy import text

    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_plain (id bigserial PRIMARY KEY, payload bytea NOT NULL)"))
    rows = []
    ctx = mp.get_context("spawn")
    for concurrency in CONCURRENCY:
        figures = {}
        for kind in ("plain", "append"):
            out, stop = ctx.Queue(), ctx.Event()
            integ = None
            if kind == "append":
                with engine.connect() as conn:
                    backlog0 = conn.execute(text("SELECT count(*) FROM tlog_queue")).scalar()
                integ = ctx.Process(target=_integrator, args=(url, str(home), stop, out))
                integ.start()
            start_at = time.time() + 3.0  # spawned processes import and connect first
            procs = [ctx.Process(target=_appender, args=(url, kind, seconds, start_at, out))
                     for _ in range(concurrency)]
            for p in procs:
                p.start()
            results = [out.get() for _ in procs]
            for p in procs:
                p.join()
            count = sum(r[0] for r in results)
            cpu = sum(r[1] for r in results)
            figures[kind] = {"per_s": count / seconds, "cpu_ms": 1000 * cpu / max(count, 1)}
            if integ is not None:
                with engine.connect() as conn:
                    backlog = conn.execute(text("SELECT count(*) FROM tlog_queue")).scalar()
                stop.set()
                done, busy, icpu = out.get()
                integ.join()
                figures["integrated_per_s"] = done / seconds  # it waits for appends otherwise
                figures["integrator_capacity_per_s"] = done / busy if busy else None
                figures["integrator_cpu_ms"] = 1000 * icpu / max(done, 1)
                figures["backlog"] = backlog - backlog0
        say(f"  {concurrency:>2} appenders: plain {figures['plain']['per_s']:,.0f}/s, "
            f"appends {figures['append']['per_s']:,.0f}/s, integrated {figures['integrated_per_s']:,.0f}/s, "
            f"queue left {figures['backlog']:,}")
        rows.append({"concurrency": concurrency, **figures})
    # what is still queued is integrated now, so the later phases read a whole tree
    from access_history import service
    from kernel.db import session_scope

    service.integrate_all(session_scope=lambda: session_scope(url), keys=_keys(home), scope=SCOPE)
    engine.dispose()
    return rows


# --- [b] many entries, built in bulk ------------------------------------------------------

_ISO = "to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


def _commitment_sql() -> str:
    """The entry's canonical JSON (sorted keys, no spaces) and salted commitment, in SQL; valid
    for the ASCII values generated here (no JSON escaping needed)."""
    def s(col: str) -> str:
        return f"'\"' || {col} || '\"'"

    fields = [  # sorted by key, as canonical_json writes them
        ("asked_at", s(_ISO.format(c="asked_at"))), ("channel", s("channel")),
        ("decision_id", s("decision_id")), ("detail", "detail"), ("entry_id", s("entry_id")),
        ("info_type_code", s("info_type_code")), ("kind", s("kind")),
        ("legal_basis", s("legal_basis")), ("outcome", s("outcome")),
        ("overridden", "CASE WHEN overridden THEN 'true' ELSE 'false' END"), ("owner", s("owner")),
        ("permitted", "CASE WHEN permitted THEN 'true' ELSE 'false' END"),
        ("person_ref", s("encode(sha256('renkei/history-person/v1'::bytea || '\\x00'::bytea"
                         " || convert_to(owner, 'UTF8') || '\\x00'::bytea"
                         " || convert_to(person_key, 'UTF8')), 'hex')")),
        ("person_rule", "'null'"), ("provided_at", "'null'"), ("provider", s("provider")),
        ("query_group_id", "'null'"), ("query_id", "'null'"),
        ("recorded_at", s(_ISO.format(c="recorded_at"))), ("requester", s("requester")),
        ("sealed_reason", "'null'"), ("sealed_until", "'null'"), ("staff", "'null'"),
        ("task_code", s("task_code")), ("whitelist_entry", s("whitelist_entry")),
    ]
    body = " || ',' || ".join(f"'\"{k}\":' || {v}" for k, v in fields)
    return ("sha256('renkei/history-entry/v1'::bytea || '\\x00'::bytea || salt || "
            f"convert_to('{{' || {body} || '}}', 'UTF8'))")


def build_entries(url: str, home: Path, total: int) -> dict:
    """`total` more entries over the last 12 months, their leaves and the tree, in bulk."""
    from sqlalchemy import select, text
    from sqlalchemy.orm import Session

    from access_history import ledger, retention, service, tlog
    from access_history.models import HistoryEntry, LogState
    from access_history.record import commitment
    from kernel.db import utcnow

    engine = _engine(url)
    now = utcnow().replace(microsecond=0)
    first = now - timedelta(days=365)
    people = max(total // 200, 1)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        retention.ensure_partitions(conn, now=now, since=first)
        base = conn.execute(text("SELECT coalesce(max(leaf_index) + 1, 0) FROM tlog_leaves "
                                 "WHERE log = 'access'")).scalar()
        queued = conn.execute(text("SELECT count(*) FROM tlog_queue")).scalar()
        assert queued == 0, "integrate the queue first"
    step_us = int(365 * 86400 * 1e6 // total)
    chunk = 500_000
    with engine.connect() as conn:
        max_id = conn.execute(text("SELECT coalesce(max(id), 0) FROM history_entries")).scalar()
    bar = Progress("generating entries", total=total)
    for lo in range(0, total, chunk):
        hi = min(lo + chunk, total)
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            conn.execute(text(f"""
                INSERT INTO history_entries (id, entry_id, recorded_at, kind, channel, owner, asked_at,
                    requester, provider, person_key, task_code, legal_basis, whitelist_entry,
                    info_type_code, permitted, outcome, overridden, decision_id, detail, salt, leaf_data)
                SELECT nextval('history_entries_id_seq'), entry_id, recorded_at, kind, channel, owner,
                    asked_at, requester, provider, person_key, task_code, legal_basis, whitelist_entry,
                    info_type_code, permitted, outcome, overridden, decision_id, detail, salt,
                    {_commitment_sql()}
                FROM (SELECT md5('e' || g) AS entry_id, t AS recorded_at, 'decision' AS kind,
                             'discovery' AS channel, 'hub' AS owner, t AS asked_at,
                             'https://city-b.example.jp/sp' AS requester,
                             'https://city-a.example.jp/sp' AS provider,
                             'bulk-' || (g % :people) AS person_key, 'JUKI-1' AS task_code,
                             'law-1' AS legal_basis, 'WL-1' AS whitelist_entry,
                             'RESIDENT' AS info_type_code, true AS permitted,
                             'PERMITTED_BY_CONSENT' AS outcome, false AS overridden,
                             'bulk-' || g AS decision_id, '{{}}' AS detail,
                             sha256(int8send(g) || CAST(:seed AS bytea)) AS salt
                      FROM (SELECT g, CAST(:first AS timestamp) + make_interval(secs => g * CAST(:step AS float8) / 1e6) AS t
                            FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) g) gs) s
                ORDER BY recorded_at
            """), {"people": people, "first": first, "step": step_us, "lo": lo, "hi": hi,
                   "seed": os.urandom(16)})
        bar.update(hi, force=True)
    bar.finish()
    say("  leaves (SQL) ...")
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(text("""INSERT INTO tlog_leaves (log, leaf_index, entry_ref, entry_time, leaf_hash)
            SELECT 'access', :base + row_number() OVER (ORDER BY id) - 1, id, recorded_at,
                   sha256('\\x00'::bytea || leaf_data) FROM history_entries WHERE id > :max_id"""),
                     {"base": base, "max_id": max_id})
    # the complete subtrees level by level: nodes of level L from pairs of level L-1
    say("  building the tree's nodes (SQL) ...")
    size = base + total
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        # nodes that include the new leaves: drop nothing (append-only); only add missing ones
        level = 1
        while (1 << level) <= size:
            below = ("SELECT leaf_index AS i, leaf_hash AS h FROM tlog_leaves WHERE log = 'access'"
                     if level == 1 else
                     f"SELECT node_index AS i, hash AS h FROM tlog_nodes WHERE log = 'access' AND level = {level - 1}")
            conn.execute(text(f"""INSERT INTO tlog_nodes (log, level, node_index, hash)
                SELECT 'access', {level}, l.i / 2, sha256('\\x01'::bytea || l.h || r.h)
                FROM ({below}) l JOIN ({below}) r ON r.i = l.i + 1
                WHERE l.i % 2 = 0 AND (l.i + 2) * {1 << (level - 1)} <= :size
                ON CONFLICT DO NOTHING"""), {"size": size})
            level += 1
    build_s = time.perf_counter() - t0
    # the state and checkpoint, from the stored subtrees; checked against tlog.root_of
    with Session(engine) as db:
        subtree = ledger.subtree_reader(db, "access")
        frontier, lo = [], 0
        for bit in reversed(range(size.bit_length())):
            if size & (1 << bit):
                frontier.append(subtree(lo, lo + (1 << bit)))
                lo += 1 << bit
        root = frontier[-1]
        for left in reversed(frontier[:-1]):
            root = tlog.node_hash(left, root)
        if size <= 1 << 21:  # every leaf: the stored tree against the library's root_of
            hashes = db.scalars(text("SELECT leaf_hash FROM tlog_leaves WHERE log = 'access' "
                                     "ORDER BY leaf_index")).all()
            tree_ok = tlog.root_of(hashes) == root
        else:  # the first 2^20 leaves against their stored subtree node
            hashes = db.scalars(text("SELECT leaf_hash FROM tlog_leaves WHERE log = 'access' "
                                     "ORDER BY leaf_index LIMIT 1048576")).all()
            tree_ok = tlog.root_of(hashes) == subtree(0, 1 << 20)
        del hashes
        sample = db.scalars(select(HistoryEntry).where(HistoryEntry.entry_id.in_(
            [__import__("hashlib").md5(f"e{g}".encode()).hexdigest()
             for g in random.sample(range(total), min(200, total))]))).all()
        leaves_ok = all(commitment("access", r.salt, service.access_record(r)) == r.leaf_data for r in sample)
        state = db.get(LogState, "access")
        if state is None:  # run without phase [a]: no entry was integrated yet
            state = LogState(log="access")
            db.add(state)
        state.size, state.root_hash, state.frontier = size, root, b"".join(frontier)
        state.updated_at = utcnow()
        signer = service.log_signer(keys=_keys(home), scope=SCOPE, log="access")
        from access_history.models import LogCheckpoint

        note = tlog.sign_note(tlog.Checkpoint(signer.origin, size, root).body(), signer.name,
                              signer.private_key)
        db.add(LogCheckpoint(log="access", size=size, root_hash=root, note=note, signed_at=utcnow()))
        db.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE history_entries"))
        conn.execute(text("VACUUM ANALYZE tlog_leaves"))
    engine.dispose()
    return {"entries": total, "tree_size": size, "people": people, "build_s": build_s,
            "tree_root_matches_root_of": tree_ok, "sample_commitments_match": leaves_ok}


def run_timeline(url: str, people: int, pages: int = 300) -> dict:
    from sqlalchemy.orm import Session

    from access_history import service

    engine = _engine(url)
    times, cpus = [], []
    with Session(engine) as db:
        for person in random.sample(range(people), min(20, people)):  # warm-up
            service.timeline(db_session=db, person_key=f"bulk-{person}")
        for person in (random.randrange(people) for _ in range(pages)):
            t0, c0 = time.perf_counter(), time.process_time()
            page = service.timeline(db_session=db, person_key=f"bulk-{person}", limit=50)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            assert len(page.entries) == 50, len(page.entries)
            db.expunge_all()
            db.rollback()
    engine.dispose()
    times.sort()
    return {"p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[int(len(times) * 0.99) - 1],
            "cpu_ms": 1000 * sum(cpus) / len(cpus), "pages": len(times)}


def explain_partitions(url: str) -> dict[str, str]:
    """Which month partitions the timeline and the export's join read (EXPLAIN ANALYZE)."""
    from sqlalchemy import text

    engine = _engine(url)
    plans = {}
    with engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'history_entries'::regclass")).scalar()
        mid = conn.execute(text("SELECT recorded_at, id FROM history_entries WHERE person_key = 'bulk-1' "
                                "ORDER BY recorded_at LIMIT 1 OFFSET 100")).one()
        lo, hi = conn.execute(text("SELECT min(leaf_index), max(leaf_index) + 1 FROM tlog_leaves "
                                   "WHERE log = 'access' AND entry_time >= date_trunc('month', now()) - interval '6 months' "
                                   "AND entry_time < date_trunc('month', now()) - interval '5 months'")).one()
        t_lo, t_hi = conn.execute(text("SELECT min(entry_time), max(entry_time) FROM tlog_leaves WHERE log = 'access' "
                                       "AND leaf_index >= :lo AND leaf_index < :hi"), {"lo": lo, "hi": hi}).one()
        queries = {
            "timeline, first page": "SELECT * FROM history_entries WHERE person_key = 'bulk-1' "
                                    "ORDER BY recorded_at DESC, id DESC LIMIT 51",
            "timeline, a page 6 months back": (
                f"SELECT * FROM history_entries WHERE person_key = 'bulk-1' AND recorded_at <= '{mid[0]}' "
                f"AND (recorded_at < '{mid[0]}' OR id < {mid[1]}) ORDER BY recorded_at DESC, id DESC LIMIT 51"),
            "export of one month (leaf range + join)": (
                "SELECT l.leaf_index, e.* FROM tlog_leaves l LEFT OUTER JOIN history_entries e "
                f"ON e.id = l.entry_ref AND e.recorded_at = l.entry_time AND e.recorded_at BETWEEN '{t_lo}' AND '{t_hi}' "
                f"WHERE l.log = 'access' AND l.leaf_index >= {lo} AND l.leaf_index < {hi} ORDER BY l.leaf_index"),
        }
        for name, sql in queries.items():
            plan = [r[0] for r in conn.execute(text("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql))]
            read = {m for line in plan if "never executed" not in line
                    for m in __import__("re").findall(r" on (history_entries_\w+)", line)}
            plans[name] = f"{len(read)} of {total} partitions read: {', '.join(sorted(read))}"
    engine.dispose()
    return plans


# --- [c] export in a child process --------------------------------------------------------

class _Sink:
    """A file that keeps nothing: the export's own cost, not the disk's."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, text: str) -> int:
        self.bytes += len(text)
        return len(text)


def export_child(url: str, home: str) -> None:
    """Run one full export to a sink; print rows, seconds, CPU seconds, peak RSS (MB), bytes."""
    from sqlalchemy.orm import Session

    from access_history import audit, service

    engine = _engine(url)
    signer = service.log_signer(keys=_keys(Path(home)), scope=SCOPE, log="access")
    sink = _Sink()
    t0, c0 = time.perf_counter(), time.process_time()
    with Session(engine) as db:
        lines = audit.export(db_session=db, log="access", verifier_key=signer.verifier_key)
        rows = audit.export_jsonl(lines, sink)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"EXPORT {rows} {elapsed:.3f} {cpu:.3f} {peak_mb:.1f} {sink.bytes}", flush=True)


def run_export(url: str, home: Path) -> dict:
    import subprocess

    proc = subprocess.run([sys.executable, __file__, "--export-child", url, str(home)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("EXPORT ")), None)
    if line is None:
        raise SystemExit(f"the export failed: {proc.stderr[-2000:]}")
    _, rows, elapsed, cpu, peak, size = line.split()
    return {"rows": int(rows), "seconds": float(elapsed), "rows_per_s": int(rows) / float(elapsed),
            "cpu_us_per_row": 1e6 * float(cpu) / max(int(rows), 1), "peak_rss_mb": float(peak),
            "bytes": int(size)}


# --- the run ------------------------------------------------------------------------------

def body(bench: Bench, args) -> int:
    from kernel.db import upgrade

    admin = os.environ.get("RENKEI_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    say(f"PostgreSQL: {postgres_settings(admin)}")
    url = bench.postgres_database(admin, f"renkei_bench_history_{os.getpid()}")
    upgrade(url)
    home = bench.tmp
    _keys(home)
    total = args.entries or (10_000_000 if args.full else 1_000_000)
    results = bench.results

    say(f"[a] durable appends, {args.seconds:.0f} s per run")
    appends = run_appends(url, home, args.seconds)
    results["appends"] = appends
    say(f"[b] {total:,} entries in bulk, then timelines")
    built = build_entries(url, home, total)
    results["build"] = built
    say(f"  built in {built['build_s']:.0f} s; tree root = root_of(leaves): {built['tree_root_matches_root_of']}; "
        f"sample commitments match: {built['sample_commitments_match']}")
    timeline = run_timeline(url, built["people"])
    results["timeline"] = timeline
    results["plans"] = explain_partitions(url)
    for name, read in results["plans"].items():
        say(f"  EXPLAIN {name}: {read}")
    say("[c] full export in a child process")
    export = run_export(url, home)
    results["export"] = export

    say()
    say(f"{'phase':<44} {'ops/s':>10} {'vs base':>8} {'CPU ms/op':>10}  notes")
    say("-" * 100)
    for row in appends:
        c, plain, app = row["concurrency"], row["plain"], row["append"]
        say(f"{f'plain INSERT+COMMIT, {c} procs (baseline)':<44} {plain['per_s']:>10,.0f} {'1.00x':>8} "
            f"{plain['cpu_ms']:>10.2f}  client CPU only")
        say(f"{f'history append+COMMIT, {c} procs':<44} {app['per_s']:>10,.0f} "
            f"{app['per_s'] / plain['per_s']:>7.2f}x {app['cpu_ms']:>10.2f}  "
            f"integrated {row['integrated_per_s']:,.0f}/s, capacity "
            f"{row['integrator_capacity_per_s'] or 0:,.0f}/s ({row['integrator_cpu_ms']:.3f} CPU ms/entry), "
            f"queue grew {row['backlog']:,}")
    label = f"timeline page (50 of ~200), {built['tree_size']:,} entries"
    say(f"{label:<44} "
        f"{1000 / timeline['p50_ms']:>10,.0f} {'-':>8} {timeline['cpu_ms']:>10.2f}  "
        f"p50 {timeline['p50_ms']:.1f} ms p99 {timeline['p99_ms']:.1f} ms")
    say(f"{'full export, JSONL to a sink':<44} {export['rows_per_s']:>10,.0f} {'-':>8} "
        f"{export['cpu_us_per_row'] / 1000:>10.3f}  {export['rows']:,} rows in {export['seconds']:.1f} s, "
        f"peak RSS {export['peak_rss_mb']:.0f} MB")
    say()
    best = max(row["append"]["per_s"] for row in appends)
    scale = f" (measured at {total:,} entries, the target is for 10,000,000)" if total < 10_000_000 else ""
    targets = [
        (f"durable appends >= {TARGET_APPENDS:,.0f}/s", best >= TARGET_APPENDS, f"best {best:,.0f}/s"),
        (f"timeline p99 <= {TARGET_TIMELINE_P99_MS:.0f} ms", timeline["p99_ms"] <= TARGET_TIMELINE_P99_MS,
         f"{timeline['p99_ms']:.1f} ms{scale}"),
        (f"export >= {TARGET_EXPORT_ROWS:,.0f} rows/s", export["rows_per_s"] >= TARGET_EXPORT_ROWS,
         f"{export['rows_per_s']:,.0f} rows/s{scale}"),
        (f"export peak RSS <= {TARGET_EXPORT_MB:.0f} MB", export["peak_rss_mb"] <= TARGET_EXPORT_MB,
         f"{export['peak_rss_mb']:.0f} MB{scale}"),
    ]
    for name, met, detail in targets:
        say(f"target {name}: {'met' if met else 'NOT met'} ({detail})")
    failure = None
    if not (built["tree_root_matches_root_of"] and built["sample_commitments_match"]):
        failure = "the bulk-built tree or commitments do not match the library's: figures void"
    return finish(bench, args, failure)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--export-child":
        export_child(sys.argv[2], sys.argv[3])
        return 0
    parser = argument_parser(__doc__)
    parser.add_argument("--entries", type=int, default=None, help="entries for [b] and [c] (default 1,000,000)")
    parser.add_argument("--full", action="store_true", help="10,000,000 entries (the targets' size)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per append run")
    add_output_arguments(parser)
    args = parser.parse_args()
    return run_bench("history benchmark", "renkei-bench-history-", args, lambda bench: body(bench, args))


if __name__ == "__main__":
    sys.exit(main())
