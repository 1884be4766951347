"""The app factory: one ASGI app serving every room (`renkei serve`)."""
from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from kernel.db import check_migrated, upgrade
from kernel.settings import Settings, get_settings
from kernel.web import Pages, RequestLog, SecurityHeaders, add_security_headers, request_log_sink
from renkei import __version__

_pages = Pages(Path(__file__).resolve().parent / "templates")
page, error_page = _pages.page, _pages.error_page


def _background_work(settings: Settings):
    """The app's lifespan: while the app serves, the history integrator sequences queued
    entries into the Merkle tree and signs checkpoints, and the notifier turns integrated
    entries into people's notices, and the relay's worker delivers queued envelopes; on
    PostgreSQL a listener clears the registry caches when another process changes the registry."""
    import gc
    from contextlib import asynccontextmanager

    from access_history import ledger
    from access_history.service import log_signer
    from kernel.db import session_scope
    from kernel.keys import keystore

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        keys = keystore()
        integrator = ledger.Integrator(
            lambda: session_scope(settings.db_url),
            lambda log: log_signer(keys=keys, scope=settings.scope, log=log),
            interval=settings.history_integrate_seconds, idle_interval=settings.background_idle_seconds,
        )
        integrator.start()
        # notices are made from integrated entries, never inside a discovery request
        from portal.notices import Notifier

        notifier = Notifier(lambda: session_scope(settings.db_url), get_settings, interval=settings.notice_seconds,
                            idle_interval=settings.background_idle_seconds)
        notifier.start()
        # the relay's durable outbox: envelopes committed with their decisions are delivered here
        from relay.service import DeliveryWorker

        relay_worker = DeliveryWorker(lambda: session_scope(settings.db_url), settings)
        relay_worker.start()
        _app.state.relay_worker = relay_worker
        # process runs a stopped hub left, and runs waiting for a notice's delivery, go on here
        from process.engine import ProcessResumer

        process_resumer = ProcessResumer(lambda: session_scope(settings.db_url), settings)
        process_resumer.start()
        # on PostgreSQL, a registry change committed by any process clears this one's caches
        from kernel.invalidation import RegistryListener

        registry_listener = RegistryListener(settings.db_url) if settings.db_url.startswith("postgresql") else None
        if registry_listener is not None:
            registry_listener.start()
        _settle_garbage_collector()
        try:
            yield
        finally:
            gc.unfreeze()  # a test process goes on after the app: its objects may be collected again
            if registry_listener is not None:
                registry_listener.stop()
            process_resumer.stop()
            relay_worker.stop()
            notifier.stop()
            integrator.stop()

    return lifespan


def _settle_garbage_collector() -> None:
    """Once the app is up: what startup made (modules, templates, metadata, keys) lives as long
    as the process, so it is moved out of the collector's sight (`gc.freeze`); otherwise every
    full collection walks it all again, a pause of up to ~150 ms that some request waits out
    (bench/portal.py counted them: the p99 of the history page)."""
    import gc

    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the hub. Refuses an unmigrated database unless the settings say to upgrade it, and
    a home whose keys, secrets or operator token are missing or unsound (HubNotReady)."""
    from renkei.provisioning import check_hub_ready

    settings = settings or get_settings()
    if not settings.home.is_dir():
        check_hub_ready()  # raises before the database: SQLite would create the home
    if settings.auto_migrate:
        upgrade(settings.db_url)
    else:
        check_migrated(settings.db_url)
    check_hub_ready()

    from access_history.api import router as history_api
    from discovery.api import router as discovery_api
    from discovery.soap import router as discovery_soap
    from idp.federation_views import router as federation_router
    from idp.oidc.views import router as oidc_router
    from idp.passkey_views import router as passkey_router
    from idp.views import router as idp_router
    from portal.routes import router as portal_router
    from portal.views import LoginRequired, login_redirect_handler, portal_static
    from process.api import router as process_api
    from relay.views import router as relay_router
    from renkei.operator_api import router as operator_api

    app = FastAPI(title="Renkei", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", lifespan=_background_work(settings))
    hsts = settings.base_url.startswith("https://")
    app.add_middleware(SecurityHeaders, hsts=hsts)
    if (sink := request_log_sink(settings.request_log)) is not None:
        app.add_middleware(RequestLog, sink=sink)  # outermost: it times and sees every answer
    # the liveness probe, then the hot paths: FastAPI matches a request against the routes in
    # order, a few µs each (last of all, /healthz took 0.2 ms to find past eleven routers)
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    app.include_router(idp_router)
    app.include_router(discovery_api)
    app.include_router(discovery_soap)
    app.include_router(oidc_router)
    app.include_router(federation_router)
    app.include_router(passkey_router)
    app.include_router(operator_api)
    app.include_router(history_api)
    app.include_router(process_api)
    app.include_router(relay_router)
    app.include_router(portal_router)
    app.mount("/portal/static", portal_static(), name="portal-static")
    if settings.api_docs:
        from renkei.api_docs import mount_api_docs

        mount_api_docs(app)
    app.add_exception_handler(LoginRequired, login_redirect_handler)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return page("home.html", title="Renkei 連携", settings=settings)

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "invalid_request", "message": f"bad input: {fields}"}, 400)
        return error_page(400, f"入力が不正です。Bad input: {fields or 'request'}")

    @app.exception_handler(SQLAlchemyError)
    async def database_refused(request: Request, _exc: SQLAlchemyError) -> Response:
        # the request's unit of work rolled back (kernel.db.session_scope): nothing was written;
        # a database failure is the hub's, never the client's, and never shown in detail
        logging.getLogger("renkei").warning("database error on %s: %s", request.url.path, type(_exc).__name__)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "temporarily_unavailable",
                                 "message": "the hub cannot answer right now; nothing was written"}, 503)
        return error_page(503, "ただいま処理できません。The hub cannot answer right now; please try again.")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, _exc: Exception) -> Response:
        # never a stack trace to the client; the server log has it
        if request.url.path.startswith("/api/"):
            response: Response = JSONResponse({"error": "server_error", "message": "internal error"}, 500)
        else:
            response = error_page(500, "内部エラーが発生しました。An internal error occurred.", title="Error")
        # Starlette answers this outside every middleware: the headers are added here
        add_security_headers(response.headers, hsts=hsts)
        return response

    return app
