"""The hub's own keys and secrets: which exist, created only by `renkei init` and `renkei demo`,
and checked before anything serves."""
from __future__ import annotations

from access_history.service import NOTE_SECRET
from idp.accounts import TOTP_SECRET
from idp.oidc import keys as oidc_keys
from kernel.keys import DEFAULT_KEY_TYPE, KeyProblem, KeyStore, keystore, private_directory
from kernel.settings import get_settings
from pseudonym.bootstrap import BOOTSTRAP_SECRET
from pseudonym.service import MASTER_ID_SECRET, PAIRWISE_SECRET
from renkei.operator_api import (
    OperatorTokenProblem,
    bootstrap_enabled,
    ensure_operator_token,
    operator_token,
)

# idp: SSO responses; discovery: provider tokens and SOAP answers; consent: receipts; log: checkpoints
HUB_ROLES = ("idp", "discovery", "consent", "portal")
# the roles whose key type the operator chooses (`renkei init --key-type`); consent receipts
# (RS256 by their spec here) and the portal's SP key (it also decrypts) stay RSA
KEY_TYPE_ROLES = ("idp", "discovery")
HUB_SECRETS = (PAIRWISE_SECRET, MASTER_ID_SECRET, BOOTSTRAP_SECRET, NOTE_SECRET, TOTP_SECRET)


def register_portal(url: str) -> None:
    """Register (or refresh) the citizen portal as an SP of the federation, from its own metadata."""
    from kernel.db import session_scope
    from portal import service as portal

    with session_scope(url) as db:
        portal.register(db_session=db, settings=get_settings(), keys=keystore())


class HubNotReady(RuntimeError):
    """The hub's home, keys, secrets or operator token are not fit to serve; the message says why
    and what fixes it."""


def ensure_hub_keys(*, create_missing_secrets: bool = False, key_type: str = DEFAULT_KEY_TYPE) -> None:
    """Create whatever hub key, secret or operator token does not exist yet (never replaces one).

    New idp and discovery keys are of `key_type`; the other roles' keys are RSA.

    A missing secret is created only in a home that holds no hub secret yet: in an existing home
    it was lost, and a new one would silently re-key every pseudonym derived from it. Then it must
    be restored from backup, or `create_missing_secrets` said explicitly.
    """
    settings = get_settings()
    private_directory(settings.home)
    keys = keystore()
    fresh = not any(keys.secret_versions(name) for name in HUB_SECRETS)
    for name in HUB_SECRETS:
        if not keys.secret_versions(name) and not (fresh or create_missing_secrets):
            raise HubNotReady(
                f"{keys.directory / (name + '-v1.secret')} is missing but the home already holds other "
                "secrets: restore it from backup (a new one would change every value derived from it), "
                "or, if it never existed, run `renkei init --create-missing-secrets`"
            )
    try:
        for role in HUB_ROLES:
            keys.ensure_signing_key(role, key_type=key_type if role in KEY_TYPE_ROLES else DEFAULT_KEY_TYPE)
        oidc_keys.ensure_es256_key(keys)  # the OP's ES256 ID-token key
    except KeyProblem as exc:
        raise HubNotReady(str(exc)) from None
    for name in HUB_SECRETS:
        keys.ensure_secret(name)
    ensure_operator_token()


def check_hub_ready() -> None:
    """Refuse to serve unless the home exists and every key, secret and the operator token is
    present and sound (nothing is created here)."""
    settings = get_settings()
    if not settings.home.is_dir():
        raise HubNotReady(f"RENKEI_HOME {settings.home} does not exist; run `renkei init` to create it "
                          "(or point RENKEI_HOME at the hub's home)")
    # a fresh store reads every file from disk: the process-wide one may hold keys in memory
    store = KeyStore(settings.keys_dir)
    problems = store.problems(roles=HUB_ROLES, secret_names=HUB_SECRETS) + oidc_keys.problems(store)
    try:
        if bootstrap_enabled():
            operator_token()
    except OperatorTokenProblem as exc:
        problems.append(str(exc))
    if problems:
        raise HubNotReady("the hub cannot start:\n  " + "\n  ".join(problems))


__all__ = ["HUB_ROLES", "HUB_SECRETS", "KEY_TYPE_ROLES", "HubNotReady", "KeyProblem", "check_hub_ready", "ensure_hub_keys",
           "register_portal"]
