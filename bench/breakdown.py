#!/usr/bin/env python
"""Where a worker's CPU goes, from py-spy's collapsed stacks (`py-spy record --format raw`).

    .venv/bin/python bench/breakdown.py bench/profiles/sso-postgresql-worker.txt [--ms-per-op 8.5]

Samples whose innermost frame is a wait (a PostgreSQL round trip in flight, an idle pool
thread, the event loop's select) are off-CPU and counted apart. Each other sample is put in ONE bucket: the first rule below that any frame of its stack matches, so
the buckets add up to 100 % (of the samples of busy threads; py-spy skips idle ones). With
--ms-per-op (the server's CPU ms per operation the benchmark printed for the same run) each
share is also given in ms per operation.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# (bucket, file part, function name or None for any): first match over the whole stack wins
RULES: list[tuple[str, str, str | None]] = [
    ("signing (RSA/ECDSA private-key op)", "kernel/xml/_dsig.py", "_sign_octets"),
    ("encryption (AES-GCM + RSA-OAEP)", "kernel/xml/_enc.py", "encrypt_element"),
    ("commit (flush + COMMIT, incl. history rows)", "sqlalchemy/orm/session.py", "commit"),
    ("history: integrator thread (polls, batches, checkpoint)", "access_history/ledger.py", None),
    ("history: append (entry + queue row)", "access_history/", None),
    ("JWT client assertion (joserfc, ES256 verify)", "kernel/jose.py", None),
    ("XML: signature c14n + digest", "kernel/xml/_dsig.py", "sign_enveloped"),
    ("XML: parse, build, serialise", "lxml", None),
    ("XML: parse, build, serialise", "kernel/xml/", None),
    ("XML: parse, build, serialise", "idp/saml.py", None),
    ("XML: parse, build, serialise", "discovery/tokens.py", None),
    ("ORM statements (SQLAlchemy + driver)", "sqlalchemy/", None),
    ("ORM statements (SQLAlchemy + driver)", "psycopg", None),
    ("ORM statements (SQLAlchemy + driver)", "sqlite3", None),
    ("HTML page (Jinja2)", "jinja2/", None),
    ("web layer (uvicorn, Starlette, FastAPI, pydantic)", "uvicorn/", None),
    ("web layer (uvicorn, Starlette, FastAPI, pydantic)", "starlette/", None),
    ("web layer (uvicorn, Starlette, FastAPI, pydantic)", "fastapi/", None),
    ("web layer (uvicorn, Starlette, FastAPI, pydantic)", "pydantic", None),
    ("web layer (uvicorn, Starlette, FastAPI, pydantic)", "h11/", None),
    ("web layer (uvicorn, Starlette, FastAPI, pydantic)", "httptools", None),
    ("threadpool hand-off (anyio, threading)", "anyio/", None),
    ("threadpool hand-off (anyio, threading)", "threading.py", None),
    ("threadpool hand-off (anyio, threading)", "concurrent/futures", None),
    ("asyncio event loop", "asyncio/", None),
]
# leaf frames of a thread that waits (py-spy's idle detection does not work in every container,
# so blocked threads are sampled too): these samples are off-CPU time, reported apart
WAITS: list[tuple[str, str]] = [
    ("Connection.wait", "psycopg/connection.py"),  # a PostgreSQL round trip in flight
    ("Condition.wait", "threading.py"), ("Event.wait", "threading.py"),
    ("EpollSelector.select", "selectors.py"), ("Runner.run", "runners.py"),
    ("_ConnectionBase.recv", "multiprocessing/connection.py"), ("Connection._recv", "multiprocessing/connection.py"),
    ("wait_conn", "psycopg/waiting.py"), ("wait", "psycopg/waiting.py"),
]
INSTRUMENT = "bench/counted_app.py"  # the benchmark's own counter thread: neither the app's CPU nor a wait
FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def bucket_of(frames: list[tuple[str, str]]) -> str:
    for name, part, func in RULES:
        for f, path in frames:
            if part in path and (func is None or f == func):
                return name
    return "other (the rooms' own Python)"


def breakdown(raw: Path) -> tuple[int, dict[str, int], int, int]:
    """(on-CPU samples, samples per bucket, waiting samples, instrument samples)."""
    totals: dict[str, int] = {}
    samples = waiting = instrument = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f)
            if m:
                frames.append((m.group(1), m.group(2)))
        count = int(n)
        if any(INSTRUMENT in path for _f, path in frames):
            instrument += count
            continue
        if frames and any(frames[-1][0] == f and part in frames[-1][1] for f, part in WAITS):
            waiting += count
            continue
        samples += count
        b = bucket_of(frames)
        totals[b] = totals.get(b, 0) + count
    return samples, totals, waiting, instrument


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--ms-per-op", type=float, default=None)
    args = parser.parse_args()
    samples, totals, waiting, instrument = breakdown(args.raw)
    if not samples:
        print("no samples")
        return 1
    print(f"{args.raw.name}: {samples} on-CPU samples (left out: {waiting} of threads waiting on a "
          f"socket, queue or lock; {instrument} of the benchmark's counter thread)")
    for name, count in sorted(totals.items(), key=lambda kv: -kv[1]):
        share = count / samples
        ms = f"  {share * args.ms_per_op:6.2f} ms/op" if args.ms_per_op else ""
        print(f"  {share * 100:5.1f}%{ms}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
