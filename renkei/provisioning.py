"""The hub's own keys and secrets: which exist, created only by `renkei init` and `renkei demo`."""
from __future__ import annotations

from idp.accounts import TOTP_SECRET
from kernel.keys import keystore
from pseudonym.bootstrap import BOOTSTRAP_SECRET
from pseudonym.service import MASTER_ID_SECRET, PAIRWISE_SECRET


def ensure_hub_keys() -> None:
    """Create whatever hub key or secret does not exist yet (never replaces one)."""
    keys = keystore()
    for role in ("idp", "consent", "log"):
        keys.ensure_signing_key(role)
    for secret in (PAIRWISE_SECRET, MASTER_ID_SECRET, BOOTSTRAP_SECRET, TOTP_SECRET):
        keys.ensure_secret(secret)
