"""Helpers for tests that read the access history: integrate what is queued, export, verify."""
from __future__ import annotations

import json

from access_history import audit, service
from kernel.db import session_scope
from kernel.keys import keystore


def integrate(hub) -> None:
    """Integrate every queued entry now (the app's background integrator does it within ~0.2 s)."""
    service.integrate_all(session_scope=session_scope, keys=keystore(), scope=hub.settings.scope)


def export_lines(hub, log: str = "access", filters: audit.ExportFilter | None = None,
                 since_size: int | None = None) -> list[str]:
    integrate(hub)
    signer = service.log_signer(keys=keystore(), scope=hub.settings.scope, log=log)
    with session_scope() as db:
        return [json.dumps(line, ensure_ascii=False) for line in audit.export(
            db_session=db, log=log, verifier_key=signer.verifier_key,
            filters=filters or audit.ExportFilter(), since_size=since_size)]


def verify_history(hub, log: str = "access") -> audit.Report:
    signer = service.log_signer(keys=keystore(), scope=hub.settings.scope, log=log)
    return audit.verify(export_lines(hub, log), verifier_key=signer.verifier_key)
