"""Versioned key material in RENKEI_HOME/keys: signing keys per role, and HMAC secrets.

Only `renkei init` and `renkei demo` create files (the `create_*`/`ensure_*` methods); serving
code asks for `current_signing_key(role)`, `published_certificates(role)` or `secret(name,
version)`, which never create anything. Files never enter git. Metadata publishes the two newest
versions of a role's certificate, so keys rotate without downtime.

The `KeyStore` owns all caching: a loaded version is immutable once written, so it is cached
forever; which versions exist is re-read when the directory changes (one `stat` per call), so
`renkei keys rotate` takes effect on the very next signature, without a restart.
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
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SECRET_BYTES = 32
# file timestamps tick coarsely (a few ms); a directory changed this recently is re-listed on
# every call, so two changes within one tick are never missed
_SETTLE_NS = 2_000_000_000


class KeyProblem(RuntimeError):
    """A key or secret is missing, unreadable or inconsistent; the message names file and fix."""


@dataclass(frozen=True)
class SigningKey:
    """One version of a role's key pair with its self-signed certificate."""

    role: str
    version: int
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    @property
    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def generate_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def self_signed_certificate(key: rsa.RSAPrivateKey, common_name: str, days: int = 3650) -> x509.Certificate:
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

    def create_signing_key(self, role: str, common_name: str | None = None) -> SigningKey:
        """A new version of `role`'s key pair (init, demo and `renkei keys rotate` only)."""
        with self._lock:
            version = (self._any_signing_versions(role) or [0])[-1] + 1
            key = generate_rsa_key()
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
            if not isinstance(key, rsa.RSAPrivateKey):
                raise KeyProblem(f"{path} is not an RSA key; restore it from backup")
            cert = self.load_certificate(role, version)
            if cert.public_key().public_numbers() != key.public_key().public_numbers():
                raise KeyProblem(f"{path} does not match {self._cert_path(role, version)}; restore both from backup")
            cached = self._signing.setdefault((role, version), SigningKey(role, version, key, cert))
        return cached

    def current_signing_key(self, role: str) -> SigningKey:
        """The newest version of `role`'s key; never creates one."""
        versions = self.signing_versions(role)
        if not versions:
            raise KeyProblem(f"no {role} signing key in {self.directory}; run `renkei init`")
        return self.load_signing_key(role, versions[-1])

    def ensure_signing_key(self, role: str) -> SigningKey:
        """The newest version of a role's key, created if the role has none (init and demo only)."""
        versions = self._any_signing_versions(role)
        if not versions:
            return self.create_signing_key(role)
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
