"""OneLogin's python3-saml as an in-test SP: its own settings, its own request building and
response checking (strict mode), fed with what the browser carried over real HTTP."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser

from tests.saml_sp import TestSP

TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"


def request_data(url: str, *, post: dict | None = None) -> dict:
    """python3-saml's view of one HTTP request to `url`."""
    parts = urlsplit(url)
    return {"https": "on" if parts.scheme == "https" else "off", "http_host": parts.netloc, "script_name": parts.path,
            "get_data": dict(parse_qsl(parts.query, keep_blank_values=True)), "post_data": post or {},
            "query_string": parts.query}


def toolkit(hub_url: str, sp: TestSP, *, name_id_format: str = PERSISTENT, url: str | None = None,
            post: dict | None = None, security: dict | None = None) -> OneLogin_Saml2_Auth:
    idp = OneLogin_Saml2_IdPMetadataParser.parse(httpx.get(f"{hub_url}/idp/metadata").text)["idp"]
    cert = sp.cert.public_bytes(serialization.Encoding.PEM).decode()
    settings = {
        "strict": True,
        "sp": {"entityId": sp.entity_id,
               "assertionConsumerService": {"url": sp.acs_url, "binding": C.BINDING_HTTP_POST},
               "singleLogoutService": {"url": sp.slo_url, "binding": C.BINDING_HTTP_REDIRECT},
               "NameIDFormat": name_id_format, "x509cert": cert, "privateKey": sp.key_pem.decode()},
        "idp": idp,
        "security": {"authnRequestsSigned": True, "wantAssertionsSigned": True, "wantNameId": True,
                     "wantAttributeStatement": True, "signatureAlgorithm": C.RSA_SHA256,
                     "digestAlgorithm": C.SHA256, "rejectDeprecatedAlgorithm": True, **(security or {})},
    }
    return OneLogin_Saml2_Auth(request_data(url or sp.acs_url, post=post), settings)
