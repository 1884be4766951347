"""The hub's own keys and secrets: which exist, created only by `renkei init` and `renkei demo`."""
from __future__ import annotations

from access_history.service import NOTE_SECRET
from idp.accounts import TOTP_SECRET
from kernel.keys import keystore
from pseudonym.bootstrap import BOOTSTRAP_SECRET
from pseudonym.service import MASTER_ID_SECRET, PAIRWISE_SECRET


def register_portal(url: str) -> None:
    """Register (or refresh) the citizen portal as an SP of the federation, from its own metadata."""
    from kernel.db import session_scope
    from kernel.settings import get_settings
    from portal import service as portal

    with session_scope(url) as db:
        portal.register(db_session=db, settings=get_settings(), keys=keystore())


def ensure_hub_keys() -> None:
    """Create whatever hub key or secret does not exist yet (never replaces one)."""
    keys = keystore()
    for role in ("idp", "consent", "portal"):
        keys.ensure_signing_key(role)
    for secret in (PAIRWISE_SECRET, MASTER_ID_SECRET, BOOTSTRAP_SECRET, NOTE_SECRET, TOTP_SECRET):
        keys.ensure_secret(secret)
