"""The OP's signing keys: RS256 with the IdP's key (the `idp` role, the same keys its SAML
metadata publishes, while that role is RSA) and ES256 with an ECDSA P-256 key of its own role,
`oidc-es256`, in the hub's key store beside the others (`oidc-es256-v<N>.key.pem` /
`.cert.pem`). Like every key, it is created only by `renkei init` and `renkei demo`
(`ensure_es256_key`) and rotated by `renkei keys rotate oidc-es256`.

The JWKS publishes the two newest versions of each role, so keys rotate without downtime. When
the `idp` role itself is ECDSA (`renkei init --key-type ec-p256`), its keys are published and
used as ES256 keys too, and the OP has no RS256 key.
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey, RSAKey

from kernel.keys import EC_P256, KeyProblem, KeyStore

RSA_ROLE = "idp"
EC_ROLE = "oidc-es256"
PUBLISHED = 2  # versions of each role in the JWKS


@dataclass(frozen=True)
class OpKey:
    """One signing key of the OP: its algorithm, `kid` (RFC 7638 thumbprint) and private key."""

    alg: str
    kid: str
    private_key: object


def create_es256_key(keys: KeyStore) -> int:
    """A new version of the OP's ES256 key (init, demo and rotation only); returns the version."""
    return keys.create_signing_key(EC_ROLE, key_type=EC_P256).version


def ensure_es256_key(keys: KeyStore) -> None:
    """Create the ES256 key if there is none (init and demo only; never replaces one)."""
    keys.ensure_signing_key(EC_ROLE, key_type=EC_P256)


def problems(keys: KeyStore) -> list[str]:
    """What is wrong with the ES256 key (empty: ready), loading every version."""
    found = keys.problems(roles=(EC_ROLE,), secret_names=())
    for version in keys.signing_versions(EC_ROLE):
        try:
            key = keys.load_signing_key(EC_ROLE, version)
        except KeyProblem:
            continue  # named above
        if key.key_type != EC_P256:
            found.append(f"{keys.directory / f'{EC_ROLE}-v{version}.key.pem'} is not an ECDSA P-256 key; "
                         "restore it from backup")
    return found


def _alg(public_key) -> str:
    return "ES256" if isinstance(public_key, ec.EllipticCurvePublicKey) else "RS256"


def _kid(public_key) -> str:
    jwk = ECKey.import_key(public_key) if _alg(public_key) == "ES256" else RSAKey.import_key(public_key)
    return jwk.thumbprint()


def signing_key(keys: KeyStore, alg: str) -> OpKey:
    """The newest key for `alg` (RS256 or ES256)."""
    if alg not in ("RS256", "ES256"):
        raise KeyProblem(f"the OP signs with RS256 or ES256, not {alg}")
    idp_key = keys.current_signing_key(RSA_ROLE)
    if alg == "RS256":
        if _alg(idp_key.public_key) != "RS256":
            raise KeyProblem("the idp key is ECDSA P-256: the OP signs ES256 only (register clients with "
                             "id_token_signed_response_alg ES256)")
        return OpKey("RS256", _kid(idp_key.public_key), idp_key.private_key)
    key = keys.current_signing_key(EC_ROLE)
    return OpKey("ES256", _kid(key.public_key), key.private_key)


def jwks(keys: KeyStore) -> dict:
    """The OP's public JWK Set: the two newest idp and the two newest ES256 keys, newest first."""
    out = []
    for role in (RSA_ROLE, EC_ROLE):
        for cert in keys.published_certificates(role, keep=PUBLISHED):
            public = cert.public_key()
            alg = _alg(public)
            jwk = (ECKey if alg == "ES256" else RSAKey).import_key(public).as_dict(private=False)
            jwk.update({"kid": _kid(public), "alg": alg, "use": "sig"})
            out.append(jwk)
    return {"keys": out}
