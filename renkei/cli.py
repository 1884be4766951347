"""The `renkei` command: init, serve, demo, and the operator's people/agency/link/key tools."""
from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import click

from kernel.settings import get_settings, reset_settings
from renkei.audit_cli import audit
from renkei.process_cli import conformance, metering
from renkei.process_cli import process as process_group


class RenkeiError(click.ClickException):
    """A clear, non-zero exit for bad input."""


def _first_line(exc: BaseException) -> str:
    """The gist of a driver's message: its first line, cut short (never a whole statement)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


class RenkeiGroup(click.Group):
    """The `renkei` command, mapping every user error to one line and a non-zero exit.

    The one place where bad input becomes a message: each room's errors derive from
    `kernel.errors.UserError`; files that cannot be read or written, and values or writes the
    database refuses, are said plainly too. Nothing else is caught: a bug keeps its traceback.
    """

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError

        from kernel.errors import UserError

        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise RenkeiError(str(exc)) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise RenkeiError(f"{where}{exc.strerror or exc}") from None
        except UnicodeError as exc:
            raise RenkeiError(f"cannot decode the input: {exc}") from None
        except SQLAlchemyError as exc:
            # the unit of work rolled back (kernel.db.session_scope): nothing was written
            reason = _first_line(exc.orig if isinstance(exc, DBAPIError) else exc)
            if "readonly" in reason or "read-only" in reason:
                raise RenkeiError(f"the database is read-only, nothing was written: {reason}") from None
            raise RenkeiError(f"the database refused the change, nothing was written: {reason}") from None


def _ready_db() -> str:
    """The database URL, refusing to go on if its schema is not at head."""
    from kernel.db import DatabaseNotMigrated, check_migrated

    settings = get_settings()
    try:
        check_migrated(settings.db_url)
    except DatabaseNotMigrated:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver error: unreachable server, bad URL
        raise RenkeiError(f"cannot open the database: {_first_line(exc)}") from None
    return settings.db_url


def cli_actor() -> str:
    """Who acts from the command line, for the operations log: `cli:<OS user>`."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"cli:uid-{os.getuid()}"


def record(db, action: str, target: str, **detail) -> None:
    """Record an administrative change made here in the operations log, in its transaction."""
    from access_history import service as history
    from access_history.models import OperationIn

    history.record_operation(db_session=db, operation=OperationIn(
        actor=cli_actor(), channel="cli", action=action, target=target[:1024], detail=detail))


def _ready_keys() -> None:
    """Refuse to go on unless the home, keys, secrets and operator token are sound."""
    from renkei.provisioning import HubNotReady, check_hub_ready

    try:
        check_hub_ready()
    except HubNotReady as exc:
        raise RenkeiError(str(exc)) from None


@click.group(cls=RenkeiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="renkei")
def main() -> None:
    """Renkei (連携): identity federation and consent hub for government data exchange.

    Settings come from the environment: RENKEI_HOME (keys and the default SQLite database,
    default ./.renkei), RENKEI_DATABASE_URL (e.g. postgresql://user@host/db), RENKEI_BASE_URL
    (the public URL the IdP puts in its metadata, default http://127.0.0.1:8000).
    """
    reset_settings()  # each invocation reads the environment afresh


KEY_TYPE_CHOICES = ("rsa-2048", "ec-p256")  # kernel.keys.KEY_TYPES, without importing it here


@main.command()
@click.option("--create-missing-secrets", is_flag=True,
              help="Also create a hub secret missing from a home that holds others (only if it never "
                   "existed: a lost secret must be restored from backup).")
@click.option("--key-type", type=click.Choice(KEY_TYPE_CHOICES), default="rsa-2048", show_default=True,
              help="Type of new IdP and discovery signing keys (existing keys are kept; "
                   "change one with `renkei keys rotate ROLE --key-type`).")
def init(create_missing_secrets: bool, key_type: str) -> None:
    """Create or upgrade the database schema and the hub's keys (idempotent; never replaces a key)."""
    from kernel.db import DatabaseNotMigrated, upgrade
    from kernel.keys import keystore, private_directory
    from renkei.provisioning import HubNotReady, check_hub_ready, ensure_hub_keys, register_portal

    settings = get_settings()
    private_directory(settings.home)
    try:
        upgrade(settings.db_url)
    except DatabaseNotMigrated:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver or migration error, said plainly
        raise RenkeiError(f"cannot migrate the database: {_first_line(exc)}") from None
    try:
        ensure_hub_keys(create_missing_secrets=create_missing_secrets, key_type=key_type)
        check_hub_ready()
    except HubNotReady as exc:
        raise RenkeiError(str(exc)) from None
    register_portal(settings.db_url)
    click.echo(f"database ready: {settings.db_url.split('@')[-1]}")
    click.echo(f"keys ready:     {settings.keys_dir}")
    for role in ("idp", "discovery"):
        current = keystore().current_signing_key(role).key_type
        note = "" if current == key_type else f" (kept; `renkei keys rotate {role} --key-type {key_type}` changes it)"
        click.echo(f"{role} signs with {current} key v{keystore().current_signing_key(role).version}{note}")
    click.echo(f"operator API token in {settings.keys_dir / 'operator-token'} (or set RENKEI_OPERATOR_TOKEN)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=int, help="Worker processes.")
@click.option("--fd", type=int, default=None,
              help="Serve on this already bound socket (a file descriptor from a process manager) "
                   "instead of --host/--port.")
def serve(host: str, port: int, workers: int, fd: int | None) -> None:
    """Serve every room (IdP, discovery, history, portal) from one process."""
    import uvicorn

    if not get_settings().home.is_dir():  # before the database: SQLite would create the home
        _ready_keys()
    _ready_db()
    _ready_keys()
    where = {"fd": fd} if fd is not None else {"host": host, "port": port}
    uvicorn.run("renkei.app:create_app", factory=True, workers=workers, log_level="warning",
                access_log=False, **where)


# --- people -------------------------------------------------------------------------------

@main.group()
def person() -> None:
    """Manage people's login accounts."""


@person.command("add")
@click.option("--username", required=True, help="Login name.")
@click.option("--password-stdin", is_flag=True, required=True, help="Read the password from standard input.")
@click.option("--master-id", default=None, help="Master identifier (kept only as a keyed hash).")
@click.option("--display-name", default="", help="Name shown on the person's own pages.")
@click.option("--totp", is_flag=True, help="Enable a TOTP second factor and print its secret.")
def person_add(username: str, password_stdin: bool, master_id: str | None, display_name: str, totp: bool) -> None:
    """Add a person. The password is read from standard input, never from the command line."""
    from idp import accounts
    from kernel.db import session_scope
    from kernel.keys import keystore
    from pseudonym import service as pseudonyms

    url = _ready_db()
    password = sys.stdin.readline().rstrip("\r\n")
    secret = accounts.new_totp_secret() if totp else None
    with session_scope(url) as db:
        p = accounts.add_person(
            db_session=db, username=username, password=password,
            display_name=display_name, totp_secret=secret,
        )
        if master_id:
            pseudonyms.register_master_id(
                db_session=db, keys=keystore(), person_key=p.person_key, master_id=master_id
            )
        # the username is the account's name, chosen by the operator; never the password or seed
        record(db, "person.add", username, after={"totp": bool(secret), "master_id": bool(master_id),
                                                   "display_name": bool(display_name)})
    click.echo(f"added {username}")
    if secret:
        click.echo(f"TOTP secret: {secret}")
        click.echo(f"TOTP URI:    {accounts.totp_uri(secret, username)}")


@person.group("role")
def person_role() -> None:
    """Roles beyond a person's own pages (auditor: 監査 pages in the portal)."""


def _change_role(username: str, role: str, grant: bool) -> bool:
    from access_history import service as history
    from access_history.models import OperationIn
    from idp import accounts
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        change = accounts.add_role if grant else accounts.remove_role
        changed = change(db_session=db, username=username, role=role)
        if changed:  # who may read everyone's history is itself an administrative change
            history.record_operation(db_session=db, operation=OperationIn(
                actor=f"cli:{getpass.getuser()}", channel="cli",
                action="person.role.add" if grant else "person.role.remove", target=username.strip(),
                detail={"role": role}))
    return changed


@person_role.command("add")
@click.option("--username", required=True, help="Login name.")
@click.argument("role")
def person_role_add(username: str, role: str) -> None:
    """Grant ROLE (auditor) to a person."""
    changed = _change_role(username, role, grant=True)
    click.echo(f"{username} is {role}" + ("" if changed else " already"))


@person_role.command("remove")
@click.option("--username", required=True, help="Login name.")
@click.argument("role")
def person_role_remove(username: str, role: str) -> None:
    """Take ROLE away from a person; it applies to their very next request."""
    changed = _change_role(username, role, grant=False)
    click.echo(f"{username} is no longer {role}" if changed else f"{username} was not {role}")


@person_role.command("list")
@click.option("--role", default=None, help="Only this role.")
def person_role_list(role: str | None) -> None:
    """Every person with a role, one `username<TAB>role` a line."""
    from idp import accounts
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        for username, held in accounts.list_roles(db_session=db, role=role):
            click.echo(f"{username}\t{held}")


@person.group("passkey")
def person_passkey() -> None:
    """A person's passkeys (WebAuthn): list them, remove a lost one."""


def _passkey_owner(db, username: str):
    from idp import accounts

    found = accounts.find(db_session=db, username=username) if accounts.valid_username(username.strip()) else None
    if found is None:
        raise click.ClickException(f"no person {username.strip()!r}")
    return found


@person_passkey.command("list")
@click.option("--username", required=True, help="Login name.")
def person_passkey_list(username: str) -> None:
    """One `id<TAB>name<TAB>created<TAB>last used<TAB>AAGUID` a line, oldest first."""
    from idp import passkeys
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        for p in passkeys.list_passkeys(db_session=db, person_key=_passkey_owner(db, username).person_key):
            used = p.last_used_at.isoformat(timespec="seconds") if p.last_used_at else "-"
            click.echo(f"{p.id}\t{p.name}\t{p.created_at.isoformat(timespec='seconds')}\t{used}\t{p.aaguid}")


@person_passkey.command("remove")
@click.option("--username", required=True, help="Login name.")
@click.argument("passkey_id", type=click.IntRange(1, 2**31 - 1))
def person_passkey_remove(username: str, passkey_id: int) -> None:
    """Remove one of a person's passkeys (a lost device); it logs in no more at once."""
    from access_history import service as history
    from access_history.models import OperationIn
    from idp import passkeys
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        passkeys.remove(db_session=db, person_key=_passkey_owner(db, username).person_key, passkey_id=passkey_id)
        history.record_operation(db_session=db, operation=OperationIn(
            actor=f"cli:{getpass.getuser()}", channel="cli", action="person.passkey.remove",
            target=username.strip(), detail={"passkey": passkey_id}))
    click.echo(f"removed passkey {passkey_id} of {username.strip()}")


# --- agencies -----------------------------------------------------------------------------

@main.group()
def agency() -> None:
    """Register agency service providers from their SAML metadata or OpenID Connect client metadata."""


@agency.command("add")
@click.option("--metadata", "metadata_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The agency's SAML metadata file (md:EntityDescriptor with an SPSSODescriptor).")
@click.option("--metadata-url", default=None,
              help="Fetch the agency's SAML metadata from this URL instead (signed; see --metadata-signing-cert);"
                   " `renkei agency refresh` fetches it again.")
@click.option("--metadata-signing-cert", "signing_cert_file", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="PEM certificate that must have signed the metadata at --metadata-url (pinned).")
@click.option("--oidc-metadata", "oidc_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The agency's OpenID Connect client metadata (RFC 7591 JSON with client_id and jwks); "
                   "for an agency already registered from SAML metadata, adds OIDC to it.")
@click.option("--class", "agency_class", default="", help="Agency class, e.g. municipality.")
@click.option("--name", default=None, help="Display name (default: from the metadata).")
@click.option("--replace", is_flag=True,
              help="Update an agency that is already registered (a retired one cannot be).")
def agency_add(metadata_file: Path | None, metadata_url: str | None, signing_cert_file: Path | None,
               oidc_file: Path | None, agency_class: str, name: str | None, replace: bool) -> None:
    """Register an agency from its metadata (SAML metadata from a file or a signed URL, or OpenID
    Connect client metadata); its ACS URLs (or redirect URIs) and keys are pinned from it."""
    from federation import oidc, refresh
    from federation import service as agencies
    from kernel.db import session_scope

    if sum(x is not None for x in (metadata_file, metadata_url, oidc_file)) != 1:
        raise RenkeiError("give exactly one of --metadata FILE, --metadata-url URL (SAML) or "
                          "--oidc-metadata FILE (OpenID Connect)")
    if metadata_url is not None and (signing_cert_file is None or replace):
        raise RenkeiError("--metadata-url needs --metadata-signing-cert FILE (and cannot be used with --replace;"
                          " use `renkei agency refresh`)")
    url = _ready_db()
    source = str(metadata_file or metadata_url or oidc_file)
    readable = metadata_file or signing_cert_file or oidc_file
    try:
        data = readable.read_bytes()
    except OSError as exc:
        raise RenkeiError(f"cannot read {readable}: {exc.strerror}") from None
    try:
        with session_scope(url) as db:
            if metadata_url is not None:
                a = refresh.add_from_url(db_session=db, url=metadata_url,
                                         signing_cert_pem=refresh.load_signing_cert(data),
                                         agency_class=agency_class, name=name)
            elif oidc_file is not None:
                a = oidc.register_oidc(db_session=db, metadata=data, agency_class=agency_class, name=name,
                                       replace=replace)
            else:
                a = agencies.register(db_session=db, metadata=data, agency_class=agency_class, name=name,
                                      replace=replace)
            entity_id = a.entity_id
            record(db, "agency.replace" if replace else "agency.add", entity_id,
                   after={"class": a.agency_class, "name": a.name, "protocol": "oidc" if oidc_file else "saml",
                          **({"url": metadata_url} if metadata_url else {})})
    except oidc.ClientMetadataError as exc:
        raise RenkeiError(f"{source}: {exc}") from None
    except agencies.MetadataError as exc:
        raise RenkeiError(f"{source}: {exc}") from None
    click.echo(f"registered {entity_id}")


@agency.command("refresh")
@click.argument("entity_id", required=False)
def agency_refresh(entity_id: str | None) -> None:
    """Fetch again the metadata of one agency (or of every agency registered with
    --metadata-url), accepting it only when signed by the pinned certificate, not expired and
    naming the same entityID; a refused document changes nothing."""
    from federation import refresh
    from federation import service as agencies
    from kernel.db import session_scope

    url = _ready_db()
    with session_scope(url) as db:
        targets = [entity_id] if entity_id else refresh.refreshable(db_session=db)
    if not targets:
        click.echo("no agency was registered from a metadata URL", err=True)
    failed = 0
    for target in targets:
        try:
            with session_scope(url) as db:
                refresh.refresh(db_session=db, entity_id=target)
                record(db, "agency.refresh", target)
        except agencies.MetadataError as exc:
            failed += 1
            click.echo(f"{target}: refused, nothing changed: {exc}", err=True)
            continue
        click.echo(f"refreshed {target}")
    if failed:
        raise RenkeiError(f"{failed} of {len(targets)} agencies could not be refreshed")


@agency.command("set")
@click.argument("entity_id")
@click.option("--allow-unsolicited/--no-allow-unsolicited", default=None,
              help="Allow IdP-initiated (unsolicited) SSO to this agency's registered ACS"
                   " (GET /idp/sso/unsolicited?sp=ENTITY_ID); off by default.")
def agency_set(entity_id: str, allow_unsolicited: bool | None) -> None:
    """Change an agency's settings in the registry."""
    from federation import service as agencies
    from kernel.db import session_scope

    if allow_unsolicited is None:
        raise RenkeiError("nothing to set: give --allow-unsolicited or --no-allow-unsolicited")
    try:
        with session_scope(_ready_db()) as db:
            agencies.set_allow_unsolicited(db_session=db, entity_id=entity_id, allow=allow_unsolicited)
            record(db, "agency.set", entity_id, after={"allow_unsolicited": allow_unsolicited})
    except agencies.MetadataError as exc:
        raise RenkeiError(str(exc)) from None
    click.echo(f"{entity_id}: unsolicited SSO {'allowed' if allow_unsolicited else 'refused'}")


@agency.command("list")
def agency_list() -> None:
    """List registered agencies: entity ID, class, name; retired ones are marked so."""
    from federation import service as agencies
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        rows = [
            (a.entity_id, a.agency_class or "-", a.name,
             f"\tretired {a.retired_at:%Y-%m-%d %H:%M:%S}" if a.retired_at else "")
            for a in agencies.list_all(db_session=db)
        ]
    for entity_id, cls, name, retired in rows:
        click.echo(f"{entity_id}\t{cls}\t{name}{retired}")
    if not rows:
        click.echo("no agencies registered", err=True)


@agency.command("remove")
@click.argument("entity_id")
def agency_remove(entity_id: str) -> None:
    """Retire an agency: no new SSO, tokens or lookups for it; its offerings and whitelist
    entries become inactive; its keys, pseudonyms and history are kept. Its entity ID cannot
    be registered again."""
    from federation import service as agencies
    from kernel.db import session_scope
    from renkei.retirement import retire_agency

    try:
        with session_scope(_ready_db()) as db:
            done = retire_agency(db_session=db, entity_id=entity_id)
            record(db, "agency.retire", entity_id,
                   after={"offerings": done.offerings, "whitelist_entries": done.whitelist_entries})
    except agencies.MetadataError as exc:
        raise RenkeiError(str(exc)) from None
    click.echo(f"retired {entity_id}: {done.offerings} offerings and {done.whitelist_entries} "
               "whitelist entries made inactive; its pseudonyms, links and history are kept")


# --- local links and pseudonyms ---------------------------------------------------------------

@main.group()
def link() -> None:
    """Link agencies' local record IDs to people."""


@link.command("import")
@click.option("--agency", "agency_id", required=True, help="Entity ID of the agency whose IDs these are.")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--encoding", default=None, help="The file's encoding (default: by its BOM, else UTF-8, else CP932).")
def link_import(agency_id: str, csv_file: Path, encoding: str | None) -> None:
    """Import CSV rows `local_id,master_id`; all or nothing, errors name the line."""
    from federation import service as agencies
    from kernel.db import session_scope
    from kernel.keys import keystore
    from kernel.validate import decode_text
    from pseudonym import service as pseudonyms

    url = _ready_db()
    text = decode_text(csv_file.read_bytes(), source=csv_file.name, encoding=encoding)
    total = sum(1 for line in text.splitlines() if line.strip())
    try:
        with session_scope(url) as db:
            if agencies.lookup(db_session=db, entity_id=agency_id) is None:
                raise RenkeiError(f"no agency {agency_id} is registered")
            with click.progressbar(length=total, label="linking", file=sys.stderr) as bar:
                written = pseudonyms.import_local_links(
                    db_session=db, keys=keystore(), agency=agency_id, csv_text=text,
                    source=csv_file.name, progress=bar.update,
                )
            record(db, "links.import", agency_id, after={"linked": written})
    except pseudonyms.PseudonymError as exc:
        raise RenkeiError(f"{exc} (nothing was imported)") from None
    click.echo(f"linked {written} local IDs for {agency_id}")


@main.group()
def pseudonym() -> None:
    """Manage pairwise pseudonyms."""


@pseudonym.command("rotate")
@click.argument("agency_id")
def pseudonym_rotate(agency_id: str) -> None:
    """Re-key one agency's pseudonyms; the old-to-new map is kept for that agency alone."""
    from federation import service as agencies
    from kernel.db import session_scope
    from kernel.keys import keystore
    from pseudonym import service as pseudonyms

    settings = get_settings()
    with session_scope(_ready_db()) as db:
        if agencies.lookup(db_session=db, entity_id=agency_id) is None:
            raise RenkeiError(f"no agency {agency_id} is registered")
        live = pseudonyms.count_live(db_session=db, agency=agency_id)
        with click.progressbar(length=live, label="re-keying", file=sys.stderr) as bar:
            count = pseudonyms.rotate(
                db_session=db, keys=keystore(), agency=agency_id, scope=settings.scope, progress=bar.update
            )
        record(db, "pseudonym.rotate", agency_id, after={"rotated": count})
    click.echo(f"rotated {count} pseudonyms of {agency_id}")


@main.group("service-type")
def service_type() -> None:
    """Information location: the kinds of service agencies offer (情報所在管理)."""


@service_type.command("add")
@click.option("--urn", required=True, help="Service type URN, e.g. urn:renkei:service:resident-record.")
@click.option("--name", default="", help="Display name.")
@click.option("--info-type", "info_types", multiple=True, required=True,
              help="Information type (特定個人情報) code it discloses; repeat for several.")
def service_type_add(urn: str, name: str, info_types: tuple[str, ...]) -> None:
    """Register a service type and the information types it discloses."""
    from discovery import service as location
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        location.add_service_type(db_session=db, urn=urn, name=name, info_types=list(info_types))
        record(db, "service_type.add", urn, after={"name": name, "info_types": list(info_types)})
    click.echo(f"added service type {urn}")


@service_type.command("list")
def service_type_list() -> None:
    """List service types: URN, information types, name."""
    from discovery import service as location
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        for st in location.list_service_types(db_session=db):
            click.echo(f"{st.urn}\t{','.join(st.info_type_codes)}\t{st.name}")


@service_type.command("remove")
@click.argument("urn")
def service_type_remove(urn: str) -> None:
    """Remove a service type and every offering of it."""
    from discovery import service as location
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        offerings = len(location.list_offerings(db_session=db, service_type=urn, include_retired=True))
        location.remove_service_type(db_session=db, urn=urn)
        record(db, "service_type.remove", urn, before={"offerings": offerings})
    click.echo(f"removed service type {urn}")


@main.group()
def offering() -> None:
    """Information location: which provider agency offers which service, where."""


@offering.command("add")
@click.option("--provider", required=True, help="Entity ID of the providing agency.")
@click.option("--service-type", required=True, help="Service type URN.")
@click.option("--endpoint", required=True, help="URL where the provider answers with a token.")
def offering_add(provider: str, service_type: str, endpoint: str) -> None:
    """Register a provider's endpoint for a service type."""
    from discovery import service as location
    from federation import service as agencies
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        if agencies.lookup(db_session=db, entity_id=provider) is None:
            raise RenkeiError(f"no agency {provider} is registered")
        location.add_offering(db_session=db, provider=provider, service_type=service_type, endpoint=endpoint)
        record(db, "offering.add", provider, service_type=service_type, after={"endpoint": endpoint})
    click.echo(f"{provider} offers {service_type} at {endpoint}")


@offering.command("list")
@click.option("--service-type", default=None, help="Only this service type.")
@click.option("--include-retired", is_flag=True, help="Also list offerings of retired agencies (marked).")
def offering_list(service_type: str | None, include_retired: bool) -> None:
    """List offerings: service type, provider, endpoint."""
    from discovery import service as location
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        for o in location.list_offerings(db_session=db, service_type=service_type,
                                         include_retired=include_retired):
            retired = f"\tretired {o.retired_at:%Y-%m-%d}" if o.retired_at else ""
            click.echo(f"{o.service_type_urn}\t{o.provider}\t{o.endpoint}{retired}")


@offering.command("remove")
@click.option("--provider", required=True)
@click.option("--service-type", required=True)
def offering_remove(provider: str, service_type: str) -> None:
    """Withdraw a provider's offering."""
    from discovery import service as location
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        location.remove_offering(db_session=db, provider=provider, service_type=service_type)
        record(db, "offering.remove", provider, service_type=service_type)
    click.echo(f"removed {provider} / {service_type}")


@main.group()
def whitelist() -> None:
    """The legal whitelist (別表第２): which exchanges the law allows."""


@whitelist.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Drop entries the file does not list.")
@click.option("--encoding", default=None, help="The file's encoding (default: by its BOM, else UTF-8, else CP932).")
def whitelist_import(file: Path, replace: bool, encoding: str | None) -> None:
    """Import a .yaml or .csv whitelist; all or nothing, every problem named with its line."""
    from consent.errors import WhitelistImportError
    from consent.whitelist_io import import_whitelist_file
    from kernel.db import session_scope

    try:
        with session_scope(_ready_db()) as db:
            summary = import_whitelist_file(db_session=db, path=file, replace=replace, encoding=encoding)
            record(db, "whitelist.replace" if replace else "whitelist.import", "whitelist", file=file.name[:200],
                   after={"created": summary.created, "updated": summary.updated,
                          "unchanged": summary.unchanged, "removed": summary.removed})
    except WhitelistImportError as exc:
        raise RenkeiError(f"{exc}\n(nothing was imported)") from None
    except OSError as exc:
        raise RenkeiError(f"cannot read {file}: {exc.strerror}") from None
    click.echo(f"whitelist: {summary.created} added, {summary.updated} updated, "
               f"{summary.unchanged} unchanged, {summary.removed} removed")


@whitelist.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def whitelist_export(file: Path) -> None:
    """Export the whitelist as .yaml or .csv (by the file's suffix)."""
    from consent.whitelist_io import export_whitelist_file
    from kernel.db import session_scope

    if file.suffix.lower() not in (".yaml", ".yml", ".csv"):
        raise RenkeiError("name a .yaml, .yml or .csv file")
    with session_scope(_ready_db()) as db:
        count = export_whitelist_file(db_session=db, path=file)
    click.echo(f"exported {count} entries to {file}")


@main.group()
def policy() -> None:
    """A person's disclosure policy (利用許諾ポリシー) and its signed consent receipts."""


def _person_key(db, username: str) -> str:
    from idp import accounts

    person = accounts.find(db_session=db, username=username)
    if person is None:
        raise RenkeiError(f"no person {username!r}")
    return person.person_key


@policy.command("show")
@click.option("--username", required=True)
def policy_show(username: str) -> None:
    """The person's current rules (newest version); `-` means any."""
    from consent import service as consent
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        current = consent.get_current_policy(db_session=db, person_key=_person_key(db, username))
        if current is None:
            click.echo("no rules: every exchange that needs consent is refused")
            return
        click.echo(f"version {current.version} of {current.created_at:%Y-%m-%d %H:%M:%S} UTC")
        for r in current.rules:
            valid = f" valid {r.valid_from or '…'} to {r.valid_until or '…'}" if r.valid_from or r.valid_until else ""
            click.echo(f"  rule {r.id}: {r.effect:5} requester={r.requester or '-'} provider={r.provider or '-'} "
                       f"task={r.task_code or '-'} info={r.info_type_code or '-'}{valid}")


@policy.command("add")
@click.option("--username", required=True)
@click.option("--effect", type=click.Choice(["allow", "deny"]), required=True)
@click.option("--requester", default=None, help="Entity ID or class:NAME (default: any).")
@click.option("--provider", default=None, help="Entity ID or class:NAME (default: any).")
@click.option("--task", default=None, help="Task (事務) code (default: any).")
@click.option("--info-type", default=None, help="Information type code (default: any).")
@click.option("--valid-from", type=click.DateTime(), default=None, help="UTC start of validity.")
@click.option("--valid-until", type=click.DateTime(), default=None, help="UTC end of validity (exclusive).")
def policy_add(username: str, effect: str, requester, provider, task, info_type, valid_from, valid_until) -> None:
    """Add a rule; a new policy version and a signed consent receipt are issued. It applies to the
    very next query."""
    from consent import service as consent
    from consent.models import PolicyRuleIn
    from consent.receipts import COLLECTED_BY_OPERATOR_CLI
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        version = consent.add_rule(
            db_session=db, person_key=_person_key(db, username), principal_id=username,
            collection_method=COLLECTED_BY_OPERATOR_CLI,
            rule=PolicyRuleIn(effect=effect, requester=requester, provider=provider, task_code=task,
                              info_type_code=info_type, valid_from=valid_from, valid_until=valid_until),
        )
        receipt = version.receipt.id
    click.echo(f"policy version {version.version}; consent receipt {receipt}")


@policy.command("remove")
@click.option("--username", required=True)
@click.option("--rule", "rule_id", type=int, required=True, help="Rule number from `renkei policy show`.")
def policy_remove(username: str, rule_id: int) -> None:
    """Revoke one rule (a new version and receipt); applies to the very next query."""
    from consent import service as consent
    from consent.receipts import COLLECTED_BY_OPERATOR_CLI
    from kernel.db import session_scope

    with session_scope(_ready_db()) as db:
        version = consent.remove_rule(db_session=db, person_key=_person_key(db, username), rule_id=rule_id,
                                      principal_id=username, collection_method=COLLECTED_BY_OPERATOR_CLI)
        receipt = version.receipt.id
    click.echo(f"policy version {version.version}; consent receipt {receipt}")


@policy.command("receipt")
@click.argument("receipt_id")
def policy_receipt(receipt_id: str) -> None:
    """Print a consent receipt's verified claims (JSON) and its compact JWS."""
    import json

    from consent import service as consent
    from kernel.db import session_scope
    from kernel.keys import keystore

    with session_scope(_ready_db()) as db:
        try:
            claims = consent.verify_stored_receipt(db_session=db, receipt_id=receipt_id, keys=keystore())
        except LookupError as exc:
            raise RenkeiError(str(exc)) from None
        jws = consent.get_receipt(db_session=db, receipt_id=receipt_id).jws
    click.echo(json.dumps(claims, ensure_ascii=False, indent=2))
    click.echo(jws)


@main.group()
def keys() -> None:
    """Manage the hub's signing keys."""


@keys.command("rotate")
@click.argument("role", type=click.Choice(["idp", "discovery", "oidc-es256"]))
@click.option("--key-type", type=click.Choice(KEY_TYPE_CHOICES), default=None,
              help="Type of the new key (default: the type of the current one; oidc-es256 is always ec-p256).")
def keys_rotate(role: str, key_type: str | None) -> None:
    """Add a new signing key version: running servers sign with it from their next message, and
    metadata (and the OIDC JWKS) publishes it beside the previous one (docs/operations.md).
    `idp` also signs RS256 ID tokens; `oidc-es256` is the OP's ES256 key (docs/oidc.md)."""
    from idp.oidc import keys as oidc_keys
    from kernel.keys import EC_P256, KeyProblem, keystore

    settings = get_settings()
    if not keystore().signing_versions(role):
        raise RenkeiError(f"no {role} key in {settings.keys_dir} to rotate; run `renkei init` first")
    try:
        previous = keystore().current_signing_key(role)
    except KeyProblem as exc:
        raise RenkeiError(str(exc)) from None
    if role == oidc_keys.EC_ROLE:
        if key_type not in (None, EC_P256):
            raise RenkeiError(f"{role} is an ECDSA P-256 key; it cannot become {key_type}")
        key_type = EC_P256
    key = keystore().create_signing_key(role, key_type=key_type or previous.key_type)
    from kernel.db import session_scope

    # the key is a file, not a row: recorded just after it exists (a failure here is said)
    with session_scope(_ready_db()) as db:
        record(db, "keys.rotate", role, after={"version": key.version, "key_type": key.key_type})
    click.echo(f"{role} now signs with {key.key_type} key v{key.version}; {settings.idp_entity_id} lists it "
               "and the one before")


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Demo federation file (default: config/demo.yaml).")
@click.option("--no-serve", is_flag=True, help="Set up the demo federation and exit without serving.")
@click.option("--run-scenarios", is_flag=True,
              help="Run the demo lookups without a browser, print each decision, exit 0 if all "
                   "decided as config/demo.yaml expects.")
def demo(config_file: Path | None, no_serve: bool, run_scenarios: bool) -> None:
    """Run the demo federation: the hub and the demo agencies on localhost, with demo people.

    State (SQLite database, keys, generated passwords) lives in RENKEI_HOME (default ./.renkei).
    """
    try:
        from renkei import demo as demo_mod
    except ImportError as exc:  # the demo agencies' SAML toolkit is an extra, not the hub's
        raise RenkeiError(f"renkei demo needs the demo extra ({exc.name} is missing): "
                          "pip install -e '.[demo]'") from None

    os.environ.setdefault("RENKEI_BASE_URL", "http://127.0.0.1:8000")
    reset_settings()
    demo_mod.run(config_file=config_file, serve=not no_serve, run_scenarios=run_scenarios)


# --- operators ------------------------------------------------------------------------------

@main.group()
def operator() -> None:
    """Named operator credentials for the operator API (docs/operations.md)."""


@operator.command("add")
@click.argument("name")
def operator_add(name: str) -> None:
    """Create an operator and print their token, once: only its hash is kept."""
    from kernel.db import session_scope
    from renkei import operators

    with session_scope(_ready_db()) as db:
        new = operators.add(db_session=db, name=name, actor=cli_actor())
    click.echo(f"added operator {new.name}; their token (shown only now, hand it over privately):")
    click.echo(new.token)


@operator.command("list")
def operator_list() -> None:
    """List operators: name, created, by whom, revoked."""
    from kernel.db import session_scope
    from renkei import operators

    with session_scope(_ready_db()) as db:
        rows = [(o.name, f"{o.created_at:%Y-%m-%d %H:%M:%S}", o.created_by,
                 f"revoked {o.revoked_at:%Y-%m-%d %H:%M:%S}" if o.revoked_at else "active")
                for o in operators.list_all(db_session=db)]
    for row in rows:
        click.echo("\t".join(row))
    if not rows:
        click.echo("no named operators (only the bootstrap token, if enabled)", err=True)


@operator.command("revoke")
@click.argument("name")
def operator_revoke(name: str) -> None:
    """Revoke an operator's token at once (the name stays in the log and is never reused)."""
    from kernel.db import session_scope
    from renkei import operators

    with session_scope(_ready_db()) as db:
        operators.revoke(db_session=db, name=name, actor=cli_actor())
    click.echo(f"revoked operator {name}")


main.add_command(audit)
main.add_command(__import__("renkei.history_cli", fromlist=["history"]).history)
main.add_command(process_group)
main.add_command(conformance)
main.add_command(metering)

if __name__ == "__main__":
    main()
