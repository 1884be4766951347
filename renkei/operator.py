"""The operator's API credential: a bearer token from RENKEI_OPERATOR_TOKEN, or one generated
into RENKEI_HOME/keys/operator-token on first use (printed by `renkei init`)."""
from __future__ import annotations

import hmac
import os
import secrets

from fastapi import Header, HTTPException

from renkei.settings import get_settings


def operator_token() -> str:
    """The configured operator token, created (0600) if there is none."""
    configured = os.environ.get("RENKEI_OPERATOR_TOKEN")
    if configured:
        return configured
    path = get_settings().keys_dir / "operator-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def require_operator(authorization: str = Header("", description="Bearer <operator token>")) -> None:
    """FastAPI dependency: only the operator may manage the federation's registry."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), operator_token().encode()):
        raise HTTPException(status_code=401, detail="operator token required",
                            headers={"WWW-Authenticate": "Bearer"})
