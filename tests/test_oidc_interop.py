"""Interop: openid-client (npm, OpenID Certified; tests/oidc_rp/rp.mjs), an implementation
independent of ours and of Authlib, completes the code flow with PKCE and private_key_jwt against
the running hub, and checks the ID token with the hub's published JWKS."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey, RSAKey

from tests.oidc_client import RP, Person, callback
from tests.test_oidc import cli, register_rp

RP_DIR = Path(__file__).resolve().parent / "oidc_rp"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (RP_DIR / "node_modules" / "openid-client").is_dir(),
    reason="needs node and `npm ci --prefix tests/oidc_rp` (done by .ci/run)")


@pytest.fixture(scope="module")
def interop_person(hub):
    cli("person", "add", "--username", "oidc-node", "--password-stdin", stdin="node person's password\n")
    return "oidc-node", "node person's password"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_openid_client_completes_the_code_flow(hub, interop_person, tmp_path, tmp_path_factory, alg):
    key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else None
    rp = RP(f"https://node-{alg.lower()}.oidc.example.jp", f"https://node-{alg.lower()}.oidc.example.jp/cb",
            id_token_alg=alg, **({"key": key} if key else {}))
    register_rp(rp, tmp_path_factory)
    private = (ECKey if key else RSAKey).import_key(rp.key).as_dict(private=True)
    private["kid"] = "k1"
    settings = tmp_path / "rp.json"
    settings.write_text(json.dumps({"issuer": hub.base_url, "client_id": rp.client_id,
                                    "redirect_uri": rp.redirect_uri, "jwk": private, "id_token_alg": alg}))
    node = subprocess.Popen(["node", str(RP_DIR / "rp.mjs"), str(settings)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        authorization_url = node.stdout.readline().strip()
        assert authorization_url.startswith(f"{hub.base_url}/idp/oidc/authorize?"), node.stderr.read()
        person = Person(hub.base_url)
        first = person.client.get(authorization_url.removeprefix(hub.base_url))
        user, password = interop_person
        back = person.login(first, user, password)
        callback(back, rp)  # it goes to the registered redirect URI
        node.stdin.write(back.headers["location"] + "\n")
        node.stdin.flush()
        result = json.loads(node.stdout.readline())
    finally:
        node.stdin.close()
        node.wait(timeout=30)
    assert result["ok"], result
    assert result["claims"]["iss"] == hub.base_url and result["claims"]["aud"] == rp.client_id
    assert result["userinfo"]["sub"] == result["claims"]["sub"]
