"""Versioned key material in RENKEI_HOME/keys: signing keys per role, and HMAC secrets.

Files are created on first use (demo and tests); they never enter git. Metadata publishes
every active version of a role's certificate so keys rotate without downtime.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


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


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)  # atomic: a crash never leaves half a key


class KeyStore:
    """Key files under one directory: `<role>-v<N>.key.pem` / `.cert.pem`, `<name>-v<N>.secret`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    # -- signing keys --------------------------------------------------------------
    def signing_versions(self, role: str) -> list[int]:
        if not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.glob(f"{role}-v*.key.pem"):
            try:
                out.append(int(p.name[len(role) + 2 : -len(".key.pem")]))
            except ValueError:
                continue
        return sorted(out)

    def create_signing_key(self, role: str, common_name: str | None = None) -> SigningKey:
        version = (self.signing_versions(role) or [0])[-1] + 1
        key = generate_rsa_key()
        cert = self_signed_certificate(key, common_name or f"Renkei {role} v{version}")
        base = self.directory / f"{role}-v{version}"
        (self.directory).mkdir(parents=True, exist_ok=True)
        (base.parent / (base.name + ".cert.pem")).write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
        )
        _write_private(
            base.parent / (base.name + ".key.pem"),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return SigningKey(role, version, key, cert)

    def load_signing_key(self, role: str, version: int) -> SigningKey:
        base = self.directory / f"{role}-v{version}"
        key = serialization.load_pem_private_key(
            (base.parent / (base.name + ".key.pem")).read_bytes(), password=None
        )
        cert = x509.load_pem_x509_certificate((base.parent / (base.name + ".cert.pem")).read_bytes())
        assert isinstance(key, rsa.RSAPrivateKey)
        return SigningKey(role, version, key, cert)

    def ensure_signing_key(self, role: str) -> SigningKey:
        """The newest version of a role's key, created if there is none."""
        versions = self.signing_versions(role)
        if not versions:
            return self.create_signing_key(role)
        return self.load_signing_key(role, versions[-1])

    def published_certificates(self, role: str, keep: int = 2) -> list[x509.Certificate]:
        """The certificates of the published versions, newest first, without loading any private
        key (that costs tens of milliseconds: metadata and verifiers only need certificates)."""
        versions = tuple(reversed(self.signing_versions(role)[-keep:]))
        return list(_certificates(str(self.directory), role, versions))

    # -- HMAC secrets ----------------------------------------------------------------
    def secret_versions(self, name: str) -> list[int]:
        if not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.glob(f"{name}-v*.secret"):
            try:
                out.append(int(p.name[len(name) + 2 : -len(".secret")]))
            except ValueError:
                continue
        return sorted(out)

    def create_secret(self, name: str) -> int:
        version = (self.secret_versions(name) or [0])[-1] + 1
        _write_private(self.directory / f"{name}-v{version}.secret", secrets.token_bytes(32))
        return version

    def load_secret(self, name: str, version: int) -> bytes:
        return (self.directory / f"{name}-v{version}.secret").read_bytes()

    def ensure_secret(self, name: str) -> int:
        versions = self.secret_versions(name)
        return versions[-1] if versions else self.create_secret(name)


@lru_cache(maxsize=64)
def _certificates(directory: str, role: str, versions: tuple[int, ...]) -> tuple[x509.Certificate, ...]:
    base = Path(directory)
    return tuple(
        x509.load_pem_x509_certificate((base / f"{role}-v{v}.cert.pem").read_bytes()) for v in versions
    )


def current_signing_key(role: str) -> SigningKey:
    """The newest signing key of `role` in the settings' key store."""
    return _current(str(keystore().directory), role)


@lru_cache(maxsize=16)
def _current(directory: str, role: str) -> SigningKey:
    return KeyStore(Path(directory)).ensure_signing_key(role)


def keystore(directory: str | None = None) -> KeyStore:
    """The key store of `directory`, or of the current settings' RENKEI_HOME."""
    from kernel.settings import get_settings

    return _keystore(str(directory or get_settings().keys_dir))


@lru_cache(maxsize=16)
def _keystore(directory: str) -> KeyStore:
    return KeyStore(Path(directory))
