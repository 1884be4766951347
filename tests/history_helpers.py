"""Helpers for tests that read the access history: integrate what is queued, export, verify."""
from __future__ import annotations

import json
import time

from access_history import audit, ledger, service
from kernel.db import session_scope
from kernel.keys import keystore


def integrate(hub, timeout: float = 30.0) -> None:
    """Integrate every queued entry now. The app's background integrator may hold a log's lock
    at that moment (on PostgreSQL a second integrator then skips the log), so repeat, with a
    deadline, until no entry of any log is pending."""
    deadline = time.monotonic() + timeout
    while True:
        service.integrate_all(session_scope=session_scope, keys=keystore(), scope=hub.settings.scope)
        with session_scope() as db:
            waiting = {log: ledger.pending(db_session=db, log=log) for log in ledger.LOG_NAMES}
        if not any(waiting.values()):
            return
        assert time.monotonic() < deadline, f"entries still waiting to be integrated: {waiting}"
        time.sleep(0.05)


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
