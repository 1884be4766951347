#!/usr/bin/env python
"""Where a worker's CPU goes, from py-spy's collapsed stacks (`py-spy record --format raw`).

    .venv/bin/python bench/breakdown.py bench/profiles/sso-postgresql-worker.txt [--ms-per-op 8.5]

Each sample is put in ONE bucket: the first rule below that any frame of its stack matches, so
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
    ("history: integrator (batch, hashes, checkpoint)", "access_history/service.py", "integrate_all"),
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
FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def bucket_of(frames: list[tuple[str, str]]) -> str:
    for name, part, func in RULES:
        for f, path in frames:
            if part in path and (func is None or f == func):
                return name
    return "other (the rooms' own Python)"


def breakdown(raw: Path) -> tuple[int, dict[str, int]]:
    totals: dict[str, int] = {}
    samples = 0
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
        samples += count
        b = bucket_of(frames)
        totals[b] = totals.get(b, 0) + count
    return samples, totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--ms-per-op", type=float, default=None)
    args = parser.parse_args()
    samples, totals = breakdown(args.raw)
    if not samples:
        print("no samples")
        return 1
    print(f"{args.raw.name}: {samples} samples of busy threads")
    for name, count in sorted(totals.items(), key=lambda kv: -kv[1]):
        share = count / samples
        ms = f"  {share * args.ms_per_op:6.2f} ms/op" if args.ms_per_op else ""
        print(f"  {share * 100:5.1f}%{ms}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
