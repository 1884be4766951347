"""Passkeys (WebAuthn Level 3, by Duo's py_webauthn): a person registers several, each named,
and logs in with one alone (a discoverable credential, user verification required) or after
the password as the second factor. Either way the login is phishing-resistant multi-factor:
`idp.saml.AC_PASSKEY`.

Challenges live in the database (`passkey_challenges`): short-lived, spent by the first answer
that names them, good on any app process; a page shown again reuses its waiting challenge. The origin and RP ID are checked by the library
against the settings; the sign counter here, after the signature, so only a genuine
authenticator's counter can raise the clone alarm."""
from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from webauthn import (
    base64url_to_bytes,
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import bytes_to_base64url, parse_client_data_json
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.parse_authentication_credential_json import (
    parse_authentication_credential_json,
)
from webauthn.helpers.parse_registration_credential_json import parse_registration_credential_json
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from idp import accounts
from idp.models import Passkey, PasskeyChallenge
from kernel.db import utcnow
from kernel.errors import UserError
from kernel.keys import KeyStore, keystore
from kernel.settings import Settings
from kernel.validate import identifier_problem

REGISTER, LOGIN, SECOND = "register", "login", "second"  # what a challenge is for
NAME_MAX = 64  # passkeys.name
CREDENTIAL_ID_MAX = 1023  # bytes (WebAuthn L3 §5.1: a credential ID is at most 1023 bytes)
ANSWER_MAX = 64 * 1024  # a navigator.credentials answer as JSON; real ones are a few KB
RP_NAME = "Renkei 連携"
# ES256 first (every platform authenticator), then EdDSA and RS256 (Windows Hello)
ALGORITHMS = [
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
]


class PasskeyError(UserError, ValueError):
    """A registration or removal refused, with the reason."""


class CloneSuspected(accounts.LoginFailed):
    """The authenticator's sign counter did not go up: the credential may have been copied
    (WebAuthn L3 §6.1.1). The login is refused and the operations log says so."""


@dataclass(frozen=True)
class Verified:
    person_key: str
    passkey_name: str


# --- challenges -------------------------------------------------------------------------------

def _challenge_id(challenge: bytes) -> str:
    return bytes_to_base64url(challenge)


def _new_challenge(*, db_session: Session, settings: Settings, purpose: str, person_key: str | None = None,
                   pending: str | None = None) -> bytes:
    """A challenge for this purpose, login request and person: the one already waiting while it
    has most of its life left (a page shown again, after a wrong password, costs no write),
    else a new one."""
    now = utcnow()
    lifetime = timedelta(seconds=settings.passkey_challenge_seconds)
    waiting = db_session.scalar(select(PasskeyChallenge.id).where(
        PasskeyChallenge.purpose == purpose, PasskeyChallenge.person_key.is_(None) if person_key is None
        else PasskeyChallenge.person_key == person_key,
        PasskeyChallenge.pending.is_(None) if pending is None else PasskeyChallenge.pending == pending,
        PasskeyChallenge.expires_at > now + lifetime / 2).limit(1))
    if waiting is not None:
        return base64url_to_bytes(waiting)
    if random.random() < 0.02:  # sweep the expired now and then
        db_session.execute(delete(PasskeyChallenge).where(PasskeyChallenge.expires_at <= now))
    challenge = secrets.token_bytes(32)
    db_session.add(PasskeyChallenge(id=_challenge_id(challenge), purpose=purpose, person_key=person_key,
                                    pending=pending, expires_at=now + lifetime))
    db_session.flush()
    return challenge


def _spend_challenge(*, db_session: Session, client_data_json: bytes) -> tuple[bytes, PasskeyChallenge] | None:
    """The challenge an answer names, deleted as it is read: of two answers naming one
    challenge (a replay, or two app processes at once) exactly one gets it."""
    try:
        challenge = parse_client_data_json(client_data_json).challenge
    except (WebAuthnException, ValueError, TypeError, KeyError):
        return None
    row = db_session.get(PasskeyChallenge, _challenge_id(challenge))
    if row is None:
        return None
    spent = db_session.execute(delete(PasskeyChallenge).where(PasskeyChallenge.id == row.id)
                               .execution_options(synchronize_session=False))
    if spent.rowcount != 1 or row.expires_at <= utcnow():
        return None
    return challenge, row


# --- registration -----------------------------------------------------------------------------

def user_handle(*, person_key: str, keys: KeyStore | None = None) -> bytes:
    """The WebAuthn user.id of a person: keyed from the person key, so it is stable without being
    stored before the first passkey, and tells nobody outside the hub who it is."""
    keys = keys or keystore()
    first = keys.secret_versions(accounts.TOTP_SECRET)[0]
    return hmac.new(keys.secret(accounts.TOTP_SECRET, first), b"renkei/webauthn-user/v1\0" + person_key.encode(),
                    "sha256").digest()


def registration_options(*, db_session: Session, settings: Settings, person_key: str, username: str,
                         display_name: str) -> str:
    """The options for navigator.credentials.create(), as JSON, with a fresh stored challenge.

    A discoverable credential with user verification, so it also logs in without the password;
    the person's passkeys are excluded, so one authenticator is not registered twice."""
    challenge = _new_challenge(db_session=db_session, settings=settings, purpose=REGISTER, person_key=person_key)
    options = generate_registration_options(
        rp_id=settings.webauthn_rp_id, rp_name=RP_NAME, user_name=username,
        user_id=user_handle(person_key=person_key), user_display_name=display_name or username,
        challenge=challenge, timeout=settings.passkey_challenge_seconds * 1000,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED, user_verification=UserVerificationRequirement.REQUIRED),
        exclude_credentials=_descriptors(list_passkeys(db_session=db_session, person_key=person_key)),
        supported_pub_key_algs=ALGORITHMS,
    )
    return options_to_json(options)


def register(*, db_session: Session, settings: Settings, person_key: str, name: str, answer: str) -> Passkey:
    """Check an authenticator's answer to our registration options and keep the passkey."""
    name = name.strip()
    if problem := identifier_problem(name, max_length=NAME_MAX):
        raise PasskeyError(f"the passkey's name {problem}")
    if len(answer) > ANSWER_MAX:
        raise PasskeyError("the authenticator's answer is too large")
    try:
        credential = parse_registration_credential_json(answer)
    except (WebAuthnException, ValueError, TypeError, KeyError):
        raise PasskeyError("the answer is not a WebAuthn registration") from None
    spent = _spend_challenge(db_session=db_session, client_data_json=credential.response.client_data_json)
    if spent is None or spent[1].purpose != REGISTER or spent[1].person_key != person_key:
        raise PasskeyError("the registration request is unknown, expired or already used; please try again")
    try:
        verified = verify_registration_response(
            credential=credential, expected_challenge=spent[0], expected_rp_id=settings.webauthn_rp_id,
            expected_origin=settings.webauthn_origins, require_user_verification=True,
            supported_pub_key_algs=ALGORITHMS,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
        raise PasskeyError(f"the authenticator's answer was refused: {exc}") from None
    if len(verified.credential_id) > CREDENTIAL_ID_MAX:
        raise PasskeyError("the credential ID is longer than WebAuthn allows")
    credential_id = bytes_to_base64url(verified.credential_id)
    if db_session.scalar(select(Passkey.id).where(Passkey.credential_id == credential_id)):
        raise PasskeyError("this passkey is already registered")
    if any(p.name == name for p in list_passkeys(db_session=db_session, person_key=person_key)):
        raise PasskeyError(f"you already have a passkey named {name!r}")
    passkey = Passkey(
        person_key=person_key, credential_id=credential_id,
        user_handle=bytes_to_base64url(user_handle(person_key=person_key)), name=name,
        public_key=verified.credential_public_key, sign_count=verified.sign_count,
        transports=",".join(t.value for t in (credential.response.transports or []))[:200],
        aaguid=verified.aaguid, created_at=utcnow(),
    )
    db_session.add(passkey)
    db_session.flush()
    return passkey


# --- login ------------------------------------------------------------------------------------

def login_options(*, db_session: Session, settings: Settings, pending: str, person_key: str | None = None) -> str:
    """The options for navigator.credentials.get(), as JSON, with a fresh stored challenge.

    Without a person: passwordless, any discoverable passkey, user verification required (the
    passkey is then both factors). With one (the password was right): that person's passkeys,
    as the second factor."""
    purpose = LOGIN if person_key is None else SECOND
    challenge = _new_challenge(db_session=db_session, settings=settings, purpose=purpose,
                               person_key=person_key, pending=pending)
    allowed = _descriptors(list_passkeys(db_session=db_session, person_key=person_key)) if person_key else []
    options = generate_authentication_options(
        rp_id=settings.webauthn_rp_id, challenge=challenge, timeout=settings.passkey_challenge_seconds * 1000,
        allow_credentials=allowed,
        user_verification=UserVerificationRequirement.REQUIRED if person_key is None
        else UserVerificationRequirement.PREFERRED,
    )
    return options_to_json(options)


def authenticate(*, db_session: Session, settings: Settings, pending: str, answer: str, client_address: str,
                 limits: accounts.LoginLimits) -> Verified:
    """Check an assertion against the challenge this login request was given.

    Throttled like passwords: each failure counts on the client address and, once the
    credential names an account, on the account. Raises accounts.LoginFailed (or
    LoginThrottled, CloneSuspected)."""
    accounts.refuse_if_throttled(db_session=db_session, client_address=client_address, username=None,
                                 limits=limits)
    username: str | None = None
    owner: str | None = None

    def fail(reason: str, error: type[accounts.LoginFailed] = accounts.LoginFailed):
        accounts.count_failure(db_session=db_session, client_address=client_address, username=username,
                               limits=limits)
        refused = error(reason)
        refused.person_key = owner  # whose passkey it was, once known: the operations log names them
        return refused

    if len(answer) > ANSWER_MAX:
        raise fail("the passkey answer is too large")
    try:
        credential = parse_authentication_credential_json(answer)
    except (WebAuthnException, ValueError, TypeError, KeyError):
        raise fail("the answer is not a WebAuthn assertion") from None
    # the id is looked up before the library compares it with rawId: compare it here, so a NUL
    # or an over-long id never reaches the database
    if len(credential.raw_id) > CREDENTIAL_ID_MAX or bytes_to_base64url(credential.raw_id) != credential.id:
        raise fail("the answer's credential id is malformed")
    spent = _spend_challenge(db_session=db_session, client_data_json=credential.response.client_data_json)
    if spent is None or spent[1].pending != pending or spent[1].purpose not in (LOGIN, SECOND):
        raise fail("the passkey answer is for no open login request (expired, or used before)")
    challenge, asked = spent
    passkey = db_session.scalar(select(Passkey).where(Passkey.credential_id == credential.id))
    if passkey is None:
        raise fail("this passkey is not registered here")
    owner = passkey.person_key
    username = accounts.username_of(db_session=db_session, person_key=passkey.person_key)
    if username is None:
        raise fail("this passkey's account no longer exists")
    accounts.refuse_if_throttled(db_session=db_session, client_address=client_address, username=username,
                                 limits=limits)
    if asked.purpose == SECOND and passkey.person_key != asked.person_key:
        raise fail("this passkey belongs to another account")
    handle = credential.response.user_handle
    if handle is not None and bytes_to_base64url(handle) != passkey.user_handle:
        raise fail("the authenticator names another user for this passkey")
    try:
        verified = verify_authentication_response(
            credential=credential, expected_challenge=challenge, expected_rp_id=settings.webauthn_rp_id,
            expected_origin=settings.webauthn_origins, credential_public_key=passkey.public_key,
            credential_current_sign_count=0,  # compared below, once the signature is known good
            require_user_verification=asked.purpose == LOGIN,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
        raise fail(f"the passkey answer was refused: {exc}") from None
    before, after = passkey.sign_count, verified.new_sign_count
    if (before or after) and after <= before:
        raise fail(f"the passkey's signature counter went back ({after} after {before}): it may have been "
                   "copied", CloneSuspected)
    moved = db_session.execute(
        update(Passkey).where(Passkey.id == passkey.id, Passkey.sign_count == before)
        .values(sign_count=after, last_used_at=utcnow()).execution_options(synchronize_session=False))
    if moved.rowcount != 1:  # another login with this passkey moved the counter meanwhile
        raise fail("the passkey was used twice at once", CloneSuspected)
    accounts.forget_failures(db_session=db_session, username=username)
    return Verified(person_key=passkey.person_key, passkey_name=passkey.name)


# --- a person's passkeys ----------------------------------------------------------------------

def _descriptors(passkeys: list[Passkey]) -> list[PublicKeyCredentialDescriptor]:
    known = {t.value for t in AuthenticatorTransport}
    return [PublicKeyCredentialDescriptor(
        id=base64url_to_bytes(p.credential_id),
        transports=[AuthenticatorTransport(t) for t in p.transports.split(",") if t in known] or None,
    ) for p in passkeys]


def list_passkeys(*, db_session: Session, person_key: str) -> list[Passkey]:
    """A person's passkeys, oldest first."""
    return list(db_session.scalars(select(Passkey).where(Passkey.person_key == person_key)
                                   .order_by(Passkey.created_at, Passkey.id)))


def has_passkeys(*, db_session: Session, person_key: str) -> bool:
    return db_session.scalar(select(Passkey.id).where(Passkey.person_key == person_key).limit(1)) is not None


def remove(*, db_session: Session, person_key: str, passkey_id: int) -> Passkey:
    """Remove one of the person's passkeys (another's is "not found", never removed)."""
    passkey = db_session.scalar(select(Passkey).where(Passkey.id == passkey_id, Passkey.person_key == person_key))
    if passkey is None:
        raise PasskeyError("no such passkey")
    db_session.delete(passkey)
    db_session.flush()
    return passkey


def form_token(session_token: str) -> str:
    """The CSRF token of the passkey forms, derived from the session cookie (like logout's)."""
    return hmac.new(session_token.encode(), b"renkei idp passkeys", hashlib.sha256).hexdigest()


def check_form_token(*, session_token: str, token: str) -> bool:
    return hmac.compare_digest(form_token(session_token), token)
