"""The OP's signing keys: RS256 with the IdP's RSA keys (the `idp` role, the same keys its SAML
metadata publishes) and ES256 with an ECDSA P-256 key of its own role, `oidc-es256`, kept in
the hub's key store directory beside the others (`oidc-es256-v<N>.key.pem` / `.cert.pem`).

`kernel.keys` holds RSA keys only today; until it holds EC keys too, this module reads and
creates the EC role's files itself, with the same layout, versioning and file modes. Like every
key, the EC key is created only by `renkei init` and `renkei demo` (`ensure_es256_key`).

The JWKS publishes the two newest versions of each role, so keys rotate without downtime.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey, RSAKey

from kernel.keys import KeyProblem, KeyStore, private_directory, self_signed_certificate

RSA_ROLE = "idp"
EC_ROLE = "oidc-es256"
PUBLISHED = 2  # versions of each role in the JWKS

_lock = threading.Lock()
_ec_cache: dict[tuple[str, int], ec.EllipticCurvePrivateKey] = {}


@dataclass(frozen=True)
class OpKey:
    """One signing key of the OP: its algorithm, `kid` (RFC 7638 thumbprint) and private key."""

    alg: str
    kid: str
    private_key: object


def _write(path: Path, data: bytes, mode: int) -> None:
    private_directory(path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def create_es256_key(keys: KeyStore) -> int:
    """A new version of the OP's ES256 key (init, demo and rotation only); returns the version."""
    with _lock:
        versions = keys.signing_versions(EC_ROLE)
        version = (versions or [0])[-1] + 1
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self_signed_certificate(key, f"Renkei {EC_ROLE} v{version}")
        _write(keys.directory / f"{EC_ROLE}-v{version}.cert.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(keys.directory / f"{EC_ROLE}-v{version}.key.pem",
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()), 0o600)
    return version


def ensure_es256_key(keys: KeyStore) -> None:
    """Create the ES256 key if there is none (init and demo only; never replaces one)."""
    if not keys.signing_versions(EC_ROLE):
        create_es256_key(keys)


def _ec_private(keys: KeyStore, version: int) -> ec.EllipticCurvePrivateKey:
    cached = _ec_cache.get((str(keys.directory), version))
    if cached is None:
        path = keys.directory / f"{EC_ROLE}-v{version}.key.pem"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise KeyProblem(f"{path} is missing; restore it from backup") from None
        except (ValueError, TypeError):
            raise KeyProblem(f"{path} is not an unencrypted PEM private key; restore it from backup") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KeyProblem(f"{path} is not an ECDSA P-256 key; restore it from backup")
        cert = keys.load_certificate(EC_ROLE, version)
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise KeyProblem(f"{path} does not match its certificate; restore both from backup")
        cached = _ec_cache.setdefault((str(keys.directory), version), key)
    return cached


def problems(keys: KeyStore) -> list[str]:
    """What is wrong with the ES256 key (empty: ready), loading every version."""
    versions = keys.signing_versions(EC_ROLE)
    if not versions:
        return [f"{keys.directory / (EC_ROLE + '-v1.key.pem')} is missing; run `renkei init`"]
    found = []
    for version in versions:
        try:
            _ec_private(keys, version)
        except KeyProblem as exc:
            found.append(str(exc))
    return found


def _kid(public_key) -> str:
    jwk = RSAKey.import_key(public_key) if not isinstance(public_key, ec.EllipticCurvePublicKey) \
        else ECKey.import_key(public_key)
    return jwk.thumbprint()


def signing_key(keys: KeyStore, alg: str) -> OpKey:
    """The newest key for `alg` (RS256 or ES256)."""
    if alg == "RS256":
        key = keys.current_signing_key(RSA_ROLE)
        return OpKey("RS256", _kid(key.public_key), key.private_key)
    if alg == "ES256":
        versions = keys.signing_versions(EC_ROLE)
        if not versions:
            raise KeyProblem(f"no {EC_ROLE} key in {keys.directory}; run `renkei init`")
        private = _ec_private(keys, versions[-1])
        return OpKey("ES256", _kid(private.public_key()), private)
    raise KeyProblem(f"the OP signs with RS256 or ES256, not {alg}")


def _published(keys: KeyStore, role: str) -> list[x509.Certificate]:
    return [keys.load_certificate(role, v) for v in reversed(keys.signing_versions(role)[-PUBLISHED:])]


def jwks(keys: KeyStore) -> dict:
    """The OP's public JWK Set: the two newest RSA and the two newest EC keys, newest first."""
    out = []
    for alg, role in (("RS256", RSA_ROLE), ("ES256", EC_ROLE)):
        for cert in _published(keys, role):
            public = cert.public_key()
            jwk = (ECKey if alg == "ES256" else RSAKey).import_key(public).as_dict(private=False)
            jwk.update({"kid": _kid(public), "alg": alg, "use": "sig"})
            out.append(jwk)
    return {"keys": out}
