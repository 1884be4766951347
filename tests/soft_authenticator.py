"""A software WebAuthn authenticator and client for the protocol tests: it answers the hub's
options as a browser with a platform passkey would (WebAuthn L3 §6.1 authenticator data, "none"
attestation, ES256 over authenticatorData ‖ SHA-256(clientDataJSON)), written from the spec
with `cryptography` and `cbor2`, sharing no code with the hub or py_webauthn. Each knob makes
one way of answering wrongly: another origin or RP ID, no user verification, a counter that
goes back."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, AT = 0x01, 0x04, 0x40  # authenticator data flags (WebAuthn L3 §6.1)
AAGUID = bytes.fromhex("0d8f2c2e6a1b4c3d9e8f7a6b5c4d3e2f")


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Credential:
    credential_id: bytes
    key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0


@dataclass
class SoftAuthenticator:
    credentials: list[Credential] = field(default_factory=list)

    def create(self, options: dict, origin: str, *, rp_id: str | None = None, user_verified: bool = True) -> dict:
        """navigator.credentials.create(): a new resident ES256 credential for the options' RP."""
        rp_id = rp_id or options["rp"]["id"]
        assert any(p["alg"] == -7 for p in options["pubKeyCredParams"])
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.public_key().public_numbers()
        cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})
        credential = Credential(os.urandom(32), key, rp_id, unb64u(options["user"]["id"]))
        self.credentials.append(credential)
        flags = UP | AT | (UV if user_verified else 0)
        auth_data = (hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + struct.pack(">I", 0)
                     + AAGUID + struct.pack(">H", len(credential.credential_id)) + credential.credential_id + cose)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {"id": b64u(credential.credential_id), "rawId": b64u(credential.credential_id), "type": "public-key",
                "response": {"clientDataJSON": b64u(client_data), "attestationObject": b64u(attestation),
                             "transports": ["internal", "hybrid"]},
                "clientExtensionResults": {}, "authenticatorAttachment": "platform"}

    def get(self, options: dict, origin: str, *, rp_id: str | None = None, user_verified: bool = True,
            credential: Credential | None = None, sign_count: int | None = None) -> dict:
        """navigator.credentials.get(): an assertion by an allowed credential, or by any
        resident one of the RP when the options allow all (a discoverable login)."""
        rp_id = rp_id or options["rpId"]
        if credential is None:
            allowed = {unb64u(c["id"]) for c in options.get("allowCredentials") or []}
            credential = next(c for c in self.credentials
                              if c.rp_id == options["rpId"] and (not allowed or c.credential_id in allowed))
        credential.sign_count = credential.sign_count + 1 if sign_count is None else sign_count
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        flags = UP | (UV if user_verified else 0)
        auth_data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + struct.pack(">I", credential.sign_count)
        signature = credential.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {"id": b64u(credential.credential_id), "rawId": b64u(credential.credential_id), "type": "public-key",
                "response": {"clientDataJSON": b64u(client_data), "authenticatorData": b64u(auth_data),
                             "signature": b64u(signature), "userHandle": b64u(credential.user_handle)},
                "clientExtensionResults": {}, "authenticatorAttachment": "platform"}

    @staticmethod
    def _client_data(kind: str, challenge: str, origin: str) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False},
                          separators=(",", ":")).encode()
