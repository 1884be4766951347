"""A deliberately broken provider endpoint, for the conformance kit to fail (docs/processes.md).

It answers every token with a record: it never checks the hub's signature, the audience, the
expiry or whether it saw the token before, and it can be told to answer late. Never model an
agency on it; `renkei conformance run` against it lists each of these faults.
"""
from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_careless_provider_app(*, delay_seconds: float = 0.0) -> FastAPI:
    app = FastAPI(title="careless provider (conformance counter-example)")

    @app.post("/provide/{name}")
    async def provide(name: str, request: Request) -> JSONResponse:
        await request.body()
        if delay_seconds:
            await asyncio.sleep(delay_seconds)
        return JSONResponse({"record": {"氏名 (name)": "誰でも (anyone)", "service": name}})

    return app
