"""Versioned key material in RENKEI_HOME/keys: signing keys per role, and HMAC secrets.

Only `renkei init` and `renkei demo` create files (the `create_*`/`ensure_*` methods); serving
code asks for `current_signing_key(role)`, `published_certificates(role)` or `secret(name,
version)`, which never create anything. Files never enter git. Metadata publishes the two newest
versions of a role's certificate, so keys rotate without downtime.

The `KeyStore` owns all caching: a loaded version is immutable once written, so it is cached
forever; which versions exist is re-read when the directory changes (one `stat` per call), so
`renkei keys rotate` takes effect on the very next signature, without a restart.

A role's key is RSA-2048 (the default) or ECDSA P-256 (`KEY_TYPES`), chosen when a version is
created; each version says how it signs (`SigningKey.xml_algorithm`, `SigningKey.jws_algorithm`),
so a rotation may change the type and signers follow it on the next message.
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kernel.xml import ECDSA_SHA256, RSA_SHA256

SECRET_BYTES = 32
# file timestamps tick coarsely (a few ms); a directory changed this recently is re-listed on
# every call, so two changes within one tick are never missed
_SETTLE_NS = 2_000_000_000

RSA_2048 = "rsa-2048"
EC_P256 = "ec-p256"
KEY_TYPES = (RSA_2048, EC_P256)
DEFAULT_KEY_TYPE = RSA_2048
MIN_RSA_BITS = 2048

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyProblem(RuntimeError):
    """A key or secret is missing, unreadable or inconsistent; the message names file and fix."""


@dataclass(frozen=True)
class SigningKey:
    """One version of a role's key pair with its self-signed certificate."""

    role: str
    version: int
    private_key: PrivateKey
    certificate: x509.Certificate

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def key_type(self) -> str:
        return EC_P256 if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else RSA_2048

    @property
    def xml_algorithm(self) -> str:
        """The XML-DSig SignatureMethod this key signs with (RFC 6931 §2.3.2 / §2.3.6)."""
        return ECDSA_SHA256 if self.key_type == EC_P256 else RSA_SHA256

    @property
    def jws_algorithm(self) -> str:
        """The JWS `alg` this key signs with (RFC 7518 §3.3 / §3.4)."""
        return "ES256" if self.key_type == EC_P256 else "RS256"

    @property
    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def generate_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """A new private key of one of `KEY_TYPES`."""
    if key_type == RSA_2048:
        return generate_rsa_key()
    if key_type == EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key type {key_type!r} is not one of {', '.join(KEY_TYPES)}")


def _supported_key(key: object) -> bool:
    """RSA of at least 2048 bits, or ECDSA on P-256: what signers and verifiers here accept."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.key_size >= MIN_RSA_BITS
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def self_signed_certificate(key: PrivateKey, common_name: str, days: int = 3650) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    private_directory(path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)  # atomic: a crash never leaves half a key


def private_directory(path: Path) -> None:
    """Create `path` (and its missing parents) readable by the owner alone."""
    path = Path(path)
    if path.is_dir():
        return
    private_directory(path.parent)
    path.mkdir(mode=0o700, exist_ok=True)


def _parse_name(name: str) -> tuple[str, str, int] | None:
    """("key"|"cert"|"secret", role or secret name, version) of a key file name, else None."""
    for kind, suffix in (("key", ".key.pem"), ("cert", ".cert.pem"), ("secret", ".secret")):
        if name.endswith(suffix):
            stem, _, version = name[: -len(suffix)].rpartition("-v")
            if stem and version.isdigit():
                return kind, stem, int(version)
    return None


class KeyStore:
    """Key files under one directory: `<role>-v<N>.key.pem` / `.cert.pem`, `<name>-v<N>.secret`."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self._path = str(self.directory)
        self._lock = threading.Lock()
        self._listing: dict[tuple[str, str], list[int]] = {}
        self._listed_mtime: int | None = None
        self._signing: dict[tuple[str, int], SigningKey] = {}
        self._certificates: dict[tuple[str, int], x509.Certificate] = {}
        self._secrets: dict[tuple[str, int], bytes] = {}

    # -- which versions exist --------------------------------------------------------
    def _files(self) -> dict[tuple[str, str], list[int]]:
        """(kind, name) -> versions on disk; one `stat` per call, a re-list only on change."""
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._listed_mtime or time.time_ns() - mtime < _SETTLE_NS:
            listing: dict[tuple[str, str], list[int]] = {}
            for entry in os.scandir(self._path):
                parsed = _parse_name(entry.name)
                if parsed:
                    listing.setdefault(parsed[:2], []).append(parsed[2])
            for versions in listing.values():
                versions.sort()
            self._listing, self._listed_mtime = listing, mtime
        return self._listing

    def signing_versions(self, role: str) -> list[int]:
        """The versions of `role` with both key and certificate, oldest first (a rotation being
        written in another process shows up once its key file is in place)."""
        files = self._files()
        return sorted(set(files.get(("key", role), ())) & set(files.get(("cert", role), ())))

    def _any_signing_versions(self, role: str) -> list[int]:
        """Every version of `role` with a key or a certificate file: a half is a lost file."""
        files = self._files()
        return sorted(set(files.get(("key", role), ())) | set(files.get(("cert", role), ())))

    def secret_versions(self, name: str) -> list[int]:
        return list(self._files().get(("secret", name), ()))

    # -- signing keys --------------------------------------------------------------
    def _key_path(self, role: str, version: int) -> Path:
        return self.directory / f"{role}-v{version}.key.pem"

    def _cert_path(self, role: str, version: int) -> Path:
        return self.directory / f"{role}-v{version}.cert.pem"

    def create_signing_key(
        self, role: str, common_name: str | None = None, *, key_type: str = DEFAULT_KEY_TYPE
    ) -> SigningKey:
        """A new version of `role`'s key pair (init, demo and `renkei keys rotate` only)."""
        key = generate_key(key_type)  # before the lock: an unknown type writes nothing
        with self._lock:
            version = (self._any_signing_versions(role) or [0])[-1] + 1
            cert = self_signed_certificate(key, common_name or f"Renkei {role} v{version}")
            # the certificate first: a reader that sees the key always finds its certificate
            _write_private(self._cert_path(role, version), cert.public_bytes(serialization.Encoding.PEM), 0o644)
            _write_private(
                self._key_path(role, version),
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        return SigningKey(role, version, key, cert)

    def load_certificate(self, role: str, version: int) -> x509.Certificate:
        """One version's certificate (cached: a written version never changes)."""
        cached = self._certificates.get((role, version))
        if cached is None:
            path = self._cert_path(role, version)
            try:
                cached = x509.load_pem_x509_certificate(path.read_bytes())
            except FileNotFoundError:
                raise KeyProblem(f"{path} is missing; restore it from backup") from None
            except ValueError:
                raise KeyProblem(f"{path} is not a PEM certificate; restore it from backup") from None
            self._certificates[(role, version)] = cached
        return cached

    def load_signing_key(self, role: str, version: int) -> SigningKey:
        """One version's key pair (cached: a written version never changes)."""
        cached = self._signing.get((role, version))
        if cached is None:
            path = self._key_path(role, version)
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except FileNotFoundError:
                raise KeyProblem(f"{path} is missing; restore it from backup") from None
            except (ValueError, TypeError):
                raise KeyProblem(f"{path} is not an unencrypted PEM private key; restore it from backup") from None
            if not _supported_key(key):
                raise KeyProblem(
                    f"{path} is neither an RSA key of {MIN_RSA_BITS} bits or more nor an ECDSA P-256 key; "
                    "restore it from backup"
                )
            cert = self.load_certificate(role, version)
            if not _same_public_key(cert.public_key(), key.public_key()):
                raise KeyProblem(f"{path} does not match {self._cert_path(role, version)}; restore both from backup")
            cached = self._signing.setdefault((role, version), SigningKey(role, version, key, cert))
        return cached

    def current_signing_key(self, role: str) -> SigningKey:
        """The newest version of `role`'s key; never creates one."""
        versions = self.signing_versions(role)
        if not versions:
            raise KeyProblem(f"no {role} signing key in {self.directory}; run `renkei init`")
        return self.load_signing_key(role, versions[-1])

    def ensure_signing_key(self, role: str, *, key_type: str = DEFAULT_KEY_TYPE) -> SigningKey:
        """The newest version of a role's key, created (of `key_type`) if the role has none
        (init and demo only); an existing key is never replaced, whatever its type."""
        versions = self._any_signing_versions(role)
        if not versions:
            return self.create_signing_key(role, key_type=key_type)
        return self.load_signing_key(role, versions[-1])  # a lost half is named, never replaced

    def published_certificates(self, role: str, keep: int = 2) -> list[x509.Certificate]:
        """The certificates of the published versions, newest first, without loading any private
        key (that costs tens of milliseconds: metadata and verifiers only need certificates)."""
        return [self.load_certificate(role, v) for v in reversed(self.signing_versions(role)[-keep:])]

    # -- HMAC secrets ----------------------------------------------------------------
    def create_secret(self, name: str) -> int:
        """A new version of secret `name` (init, demo and pseudonym rotation only)."""
        with self._lock:
            version = (self.secret_versions(name) or [0])[-1] + 1
            _write_private(self.directory / f"{name}-v{version}.secret", secrets.token_bytes(SECRET_BYTES))
        return version

    def secret(self, name: str, version: int) -> bytes:
        """One version of secret `name` (cached: a written version never changes)."""
        cached = self._secrets.get((name, version))
        if cached is None:
            path = self.directory / f"{name}-v{version}.secret"
            try:
                value = path.read_bytes()
            except FileNotFoundError:
                raise KeyProblem(f"{path} is missing; restore it from backup") from None
            if len(value) != SECRET_BYTES:
                raise KeyProblem(f"{path} holds {len(value)} bytes, not {SECRET_BYTES}; restore it from backup")
            cached = self._secrets.setdefault((name, version), value)
        return cached

    load_secret = secret

    def current_secret_version(self, name: str) -> int:
        """The newest version of secret `name`; never creates one."""
        versions = self.secret_versions(name)
        if not versions:
            raise KeyProblem(f"{self.directory / (name + '-v1.secret')} is missing; run `renkei init`")
        return versions[-1]

    def current_secret(self, name: str) -> tuple[int, bytes]:
        """(version, value) of the newest version of secret `name`; never creates one."""
        version = self.current_secret_version(name)
        return version, self.secret(name, version)

    def ensure_secret(self, name: str) -> int:
        """The newest version of secret `name`, created if there is none (init and demo only)."""
        versions = self.secret_versions(name)
        return versions[-1] if versions else self.create_secret(name)

    # -- start-up check --------------------------------------------------------------
    def problems(self, *, roles: tuple[str, ...], secret_names: tuple[str, ...]) -> list[str]:
        """Everything wrong with the given roles' keys and secrets (empty: ready to serve).

        Loads every version: a key or secret that cannot be read at start-up would otherwise
        fail a request later.
        """
        found: list[str] = []
        for role in roles:
            versions = self._any_signing_versions(role)
            if not versions:
                found.append(f"{self._key_path(role, 1)} is missing; run `renkei init`")
            for version in versions:
                try:
                    self.load_signing_key(role, version)
                except KeyProblem as exc:
                    found.append(str(exc))
        for name in secret_names:
            versions = self.secret_versions(name)
            if not versions:
                found.append(f"{self.directory / (name + '-v1.secret')} is missing; run `renkei init`")
            for version in versions:
                try:
                    self.secret(name, version)
                except KeyProblem as exc:
                    found.append(str(exc))
        return found


def _same_public_key(a: object, b: object) -> bool:
    return type(a) is type(b) and a.public_numbers() == b.public_numbers()  # type: ignore[attr-defined]


_STORES: dict[str, KeyStore] = {}
_STORES_LOCK = threading.Lock()


def current_signing_key(role: str) -> SigningKey:
    """The newest signing key of `role` in the settings' key store."""
    return keystore().current_signing_key(role)


def keystore(directory: str | Path | None = None) -> KeyStore:
    """The one key store of `directory`, or of the current settings' RENKEI_HOME."""
    from kernel.settings import get_settings

    path = str(directory or get_settings().keys_dir)
    store = _STORES.get(path)
    if store is None:
        with _STORES_LOCK:
            store = _STORES.setdefault(path, KeyStore(Path(path)))
    return store
