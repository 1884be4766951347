"""The interactive API docs page (/api/docs), off unless RENKEI_API_DOCS=true.

Swagger UI is served from this origin (the `swagger-ui-py` package ships its files), never
from a CDN, under a CSP that lets the page load scripts and styles from here only.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# the only files of the bundle this page needs
_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
# no inline script: the page starts Swagger UI from this file, so the CSP needs no nonce
_INIT_JS = 'window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui"});\n'
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title} — API</title>
<link rel="stylesheet" href="docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script><script src="docs/init.js"></script></body></html>
"""


def _swagger_ui_dir() -> Path:
    try:
        import swagger_ui
    except ImportError:
        raise RuntimeError("RENKEI_API_DOCS=true needs the docs extra: pip install 'renkei[docs]'") from None
    return Path(swagger_ui.__file__).resolve().parent / "static"


def mount_api_docs(app: FastAPI) -> None:
    """Serve /api/docs and its assets (the OpenAPI document must be at /api/openapi.json)."""
    static = _swagger_ui_dir()
    headers = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"}

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(_PAGE.format(title=app.title), headers=headers)

    @app.get("/api/docs/init.js", include_in_schema=False)
    def api_docs_init() -> Response:
        return Response(_INIT_JS, media_type="text/javascript", headers=headers)

    @app.get("/api/docs/{asset}", include_in_schema=False)
    def api_docs_asset(asset: str) -> FileResponse:
        if asset not in _ASSETS:
            raise HTTPException(404)
        return FileResponse(static / asset, media_type=_ASSETS[asset], headers=headers)
