"""The one settings object, read from the environment (RENKEI_*)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RENKEI_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.cwd() / ".renkei")
    database_url: str | None = None
    base_url: str = "http://127.0.0.1:8000"
    # the operator's privacy policy, named on consent receipts (Kantara CR policyUrl); default: the hub's home page
    privacy_policy_url: str | None = None
    # production refuses an unmigrated database; the demo and `renkei init` upgrade it
    auto_migrate: bool = False
    # always require signed AuthnRequests, whatever the SP metadata says
    require_signed_requests: bool = False
    sign_response: bool = True
    session_lifetime_seconds: int = 8 * 3600
    clock_skew_seconds: int = 60
    max_message_bytes: int = 256 * 1024
    # how often each app process integrates queued history entries into the Merkle tree while
    # entries keep arriving (an append in the process wakes its integrator at once)
    history_integrate_seconds: float = 0.2
    # the longest any background loop of an app process (the integrator, the notifier, the
    # relay's delivery worker) sleeps when nothing woke it: the delay for work another process
    # queued (a CLI command, another worker)
    background_idle_seconds: float = Field(default=2.0, gt=0)
    # the interactive API docs page (/api/docs); /api/openapi.json is served either way
    api_docs: bool = False
    # after this long without a request the IdP session ends, whatever its absolute lifetime
    session_idle_seconds: int = 30 * 60
    # Login throttling (NIST SP 800-63B §5.2.2), per account name and per client address alike:
    # after the free failures each further one doubles the wait, up to the longest delay.
    # The older RENKEI_LOGIN_MAX_FAILURES / RENKEI_LOGIN_LOCKOUT_SECONDS still set them.
    login_free_failures: int = Field(
        5, validation_alias=AliasChoices("RENKEI_LOGIN_FREE_FAILURES", "RENKEI_LOGIN_MAX_FAILURES")
    )
    # one address may be a whole office behind NAT: more room before it slows down
    login_address_free_failures: int = 20
    login_first_delay_seconds: float = 1.0
    login_max_delay_seconds: float = Field(
        3600, validation_alias=AliasChoices("RENKEI_LOGIN_MAX_DELAY_SECONDS", "RENKEI_LOGIN_LOCKOUT_SECONDS")
    )
    # failures older than this are forgotten
    login_failure_window_seconds: int = 24 * 3600
    # how long entries are kept before `renkei history prune` drops their months (7 years)
    history_retention_days: int = Field(default=7 * 365 + 2, ge=1)
    operations_retention_days: int = Field(default=7 * 365 + 2, ge=1)
    # notices (お知らせ) by e-mail: sent only when an SMTP host is set (plain SMTP, port 25 by default)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "renkei@localhost"
    # how often each app process turns newly integrated history entries into notices while
    # entries keep being integrated (an integration in the process wakes the notifier)
    notice_seconds: float = 0.5
    # a permitted discovery decision no provider reported within this long is listed to auditors
    disclosure_report_within_seconds: int = 24 * 3600
    # the largest export an auditor may upload to the portal for verification
    audit_upload_max_bytes: int = 64 * 1024 * 1024
    # the shared operator token (keys/operator-token, RENKEI_OPERATOR_TOKEN) is a bootstrap
    # credential: turn it off once named operators exist (`renkei operator add`)
    operator_bootstrap: bool = True
    # database connections each app process keeps open at most (its pool; they stay open once
    # made, so a busy process does not reconnect per request). Workers x this must fit under the
    # server's max_connections (100 by default) or a PgBouncer in front (docs/scaling.md).
    db_pool_size: int = Field(default=30, ge=1, le=1000)
    # JSON-lines request log: "stderr", "off" or a file path
    request_log: str = "stderr"
    # relay (電子封筒): how long a forwarded envelope is kept for resend (and retried while its
    # receiver is down), the retry backoff, the delivery worker's tick while there is work (idle,
    # it looks as often as the first retry or the background idle time), a claim's lease and the
    # HTTP timeout of one delivery
    relay_retention_days: float = Field(default=30, gt=0)
    relay_retry_base_seconds: float = Field(default=1.0, gt=0)
    relay_retry_max_seconds: float = Field(default=300.0, gt=0)
    relay_worker_seconds: float = 0.2
    relay_lease_seconds: float = Field(default=30.0, gt=0)
    relay_timeout_seconds: float = Field(default=10.0, gt=0)
    # Passkeys (WebAuthn): the relying party ID is the base URL's host unless set (it may be a
    # registrable suffix of it, e.g. "example.jp" for "login.example.jp"); browsers refuse IP
    # addresses, so the demo and local tests use http://localhost. Origins other than the base
    # URL's own that may carry a ceremony (e.g. the hub behind a second name), comma-separated.
    passkey_rp_id: str | None = None
    passkey_origins: str = ""
    # how long a WebAuthn challenge waits for its answer
    passkey_challenge_seconds: int = Field(default=300, ge=10, le=3600)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'renkei.sqlite3'}"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def idp_entity_id(self) -> str:
        return f"{self.base_url.rstrip('/')}/idp/metadata"

    @property
    def webauthn_rp_id(self) -> str:
        return (self.passkey_rp_id or urlsplit(self.base_url).hostname or "localhost").lower()

    @property
    def webauthn_origins(self) -> list[str]:
        """The origins a WebAuthn ceremony may come from: the base URL's, then any others set."""
        parts = urlsplit(self.base_url)
        own = f"{parts.scheme}://{parts.netloc}".lower()
        extra = [o.strip().rstrip("/") for o in self.passkey_origins.split(",") if o.strip()]
        return [own, *(o for o in extra if o != own)]

    @property
    def scope(self) -> str:
        """The pairwise-id scope: the hub's DNS name (SAML Subject Identifier Attributes §3.3)."""
        host = urlsplit(self.base_url).hostname or "localhost"
        if host.replace(".", "").isdigit():
            return "renkei.localhost"
        return host.lower()


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
