#!/usr/bin/env python
"""What the web layer costs per request, without a socket: CPU per call of the hub's ASGI app.

A benchmark, not a test. It builds the app exactly as `renkei serve` does (`renkei.app.create_app`
on a temp home made by `renkei init`), adds two trivial routes to it (one `def`, run through
Starlette's threadpool, one `async def`, run on the event loop), and calls the app directly
through the ASGI interface with pre-built scopes (no socket, no HTTP parsing: uvicorn's own
share is what `GET /healthz` over HTTP costs beyond these figures). The same two routes on a
bare `FastAPI()` without the hub's middleware give the middleware's share by difference. Last,
the HTTP-POST binding page of an SSO answer is rendered alone (`idp.views._post_answer`, Jinja2
+ the CSP headers) with a 10 kB SAMLResponse value. Each figure is process CPU ms per call
(`time.process_time`) over a fixed count after a warm-up.

    .venv/bin/python bench/web_layer.py            # 3,000 calls each
    .venv/bin/python bench/web_layer.py --count 500
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import say


def cpu_ms_per_call(app, path: str, count: int) -> float:
    scope = harness.asgi_scope(path)

    async def run(n: int) -> None:
        for _ in range(n):
            if (await harness.asgi_call(app, dict(scope)))[0] != 200:
                raise SystemExit(f"{path} did not answer 200")

    asyncio.run(run(50))  # warm-up: imports, route caches, the threadpool
    start = time.process_time()
    asyncio.run(run(count))
    return (time.process_time() - start) / count * 1000


def _add_probe_routes(app) -> None:
    def sync_probe() -> dict:
        return {"ok": True}

    async def async_probe() -> dict:
        return {"ok": True}

    app.add_api_route("/bench/sync", sync_probe, methods=["GET"])
    app.add_api_route("/bench/async", async_probe, methods=["GET"])


def page_ms(count: int) -> float:
    from idp import service, views

    answer = service.Answer(url="https://bench-city.example.jp/acs", field="SAMLResponse",
                            value=secrets.token_urlsafe(7500), relay_state="state-1")
    views._post_answer(answer)
    start = time.process_time()
    for _ in range(count):
        views._post_answer(answer)
    return (time.process_time() - start) / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    from fastapi import FastAPI

    with tempfile.TemporaryDirectory(prefix="renkei-web-") as tmp:
        home = Path(tmp) / "home"
        harness.set_up_home(home, f"sqlite:///{home / 'renkei.sqlite3'}", [(["init"], None)])
        import os

        from kernel.settings import reset_settings
        from renkei.app import create_app

        os.environ["RENKEI_REQUEST_LOG"] = str(Path(tmp) / "requests.log")  # as to stderr, but quiet
        reset_settings()
        hub = create_app()
        _add_probe_routes(hub)
        os.environ["RENKEI_REQUEST_LOG"] = "off"
        reset_settings()
        quiet = create_app()
        _add_probe_routes(quiet)
        bare = FastAPI()
        _add_probe_routes(bare)
        rows = [
            ("hub app, GET /healthz (def, threadpool)", cpu_ms_per_call(hub, "/healthz", args.count)),
            ("hub app, def route (threadpool)", cpu_ms_per_call(hub, "/bench/sync", args.count)),
            ("hub app, async def route (event loop)", cpu_ms_per_call(hub, "/bench/async", args.count)),
            ("hub app, request log off, def route", cpu_ms_per_call(quiet, "/bench/sync", args.count)),
            ("bare FastAPI, def route", cpu_ms_per_call(bare, "/bench/sync", args.count)),
            ("bare FastAPI, async def route", cpu_ms_per_call(bare, "/bench/async", args.count)),
            ("HTTP-POST binding page (Jinja2 + CSP), alone", page_ms(args.count)),
        ]
    say(f"\nCPU ms per call, {args.count} calls each, ASGI called directly (no socket, no uvicorn):")
    for name, ms in rows:
        say(f"  {name:<48} {ms:7.3f}")
    by = dict(rows)
    say(f"  threadpool hand-off (def - async def, hub app): {by['hub app, def route (threadpool)'] - by['hub app, async def route (event loop)']:.3f} ms")
    say(f"  the hub's middleware (hub - bare, def route):   {by['hub app, def route (threadpool)'] - by['bare FastAPI, def route']:.3f} ms"
        f", of which the JSON request log {by['hub app, def route (threadpool)'] - by['hub app, request log off, def route']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
