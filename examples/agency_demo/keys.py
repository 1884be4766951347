"""The SP's own signing key and self-signed certificate, created on first run.

The certificate is only a container for the public key: the hub trusts it because the agency
registered it in its SP metadata, not because of who signed it, so self-signed is the norm in
SAML federations. The files stay on the agency's machine and never enter version control.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kernel.keys import self_signed_certificate

KEY_FILE = "sp.key.pem"
CERT_FILE = "sp.cert.pem"
CERT_VALIDITY = timedelta(days=3650)


@dataclass(frozen=True)
class SpKeyPair:
    """PEM text, the form python3-saml's settings take."""

    private_key_pem: str
    certificate_pem: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode())


def load_or_create_sp_keys(key_dir: Path, *, common_name: str) -> SpKeyPair:
    """Read the key pair from `key_dir`, generating whichever part is missing."""
    key_path, cert_path = key_dir / KEY_FILE, key_dir / CERT_FILE
    if not key_path.exists():
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _publish(key_path, pem, mode=0o600, replace=False)
    key_pem = key_path.read_bytes()  # whoever won a race to create it, this is the key
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"{key_path} is not an RSA private key")

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes()) if cert_path.exists() else None
    if cert is None or cert.public_key() != key.public_key():
        # Missing, or left over from an older key: issue one for the key we have.
        cert = self_signed_certificate(key, common_name[:64] or "agency", days=CERT_VALIDITY.days)
        _publish(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, replace=True)

    return SpKeyPair(
        private_key_pem=key_pem.decode(),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def _publish(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """Write to a temporary file, then move it into place in one step.

    Never leaves a half-written file. With replace=False the first process to finish wins and
    later ones keep its file, so two apps starting at once agree on one key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file already exists
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
