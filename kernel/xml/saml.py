"""SAML 2.0 and Liberty ID-WSF 2.0 vocabulary: names only, shared by every room that speaks them."""
from kernel.xml._dsig import DS_NS, SAML_NS, SAMLP_NS  # noqa: F401 - part of the vocabulary

MD_NS = "urn:oasis:names:tc:SAML:2.0:metadata"
XS_NS = "http://www.w3.org/2001/XMLSchema"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
ATTRNAME_URI = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
PAIRWISE_ID = "urn:oasis:names:tc:SAML:attribute:pairwise-id"  # Subject Identifier Attributes §3.3
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"

# Status codes, SAML core §3.2.2.2
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
REQUESTER = "urn:oasis:names:tc:SAML:2.0:status:Requester"
RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
VERSION_MISMATCH = "urn:oasis:names:tc:SAML:2.0:status:VersionMismatch"
NO_AUTHN_CONTEXT = "urn:oasis:names:tc:SAML:2.0:status:NoAuthnContext"
NO_PASSIVE = "urn:oasis:names:tc:SAML:2.0:status:NoPassive"
INVALID_NAMEID_POLICY = "urn:oasis:names:tc:SAML:2.0:status:InvalidNameIDPolicy"
REQUEST_DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
UNSUPPORTED_BINDING = "urn:oasis:names:tc:SAML:2.0:status:UnsupportedBinding"
AUTHN_FAILED = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed"

# Authentication context classes (SAML authn-context §3.4) and how strong each is here.
AC_UNSPECIFIED = "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified"
AC_PASSWORD = "urn:oasis:names:tc:SAML:2.0:ac:classes:Password"
AC_PPT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
AC_TIMESYNC = "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken"
AC_REFEDS_MFA = "https://refeds.org/profile/mfa"

# Liberty ID-WSF 2.0 (Discovery Service §4.4, Security Mechanisms §6)
DISCOVERY_EPR = "urn:liberty:disco:2006-08:DiscoveryEPR"
DISCO_NS = "urn:liberty:disco:2006-08"
WSA_NS = "http://www.w3.org/2005/08/addressing"
SEC_NS = "urn:liberty:security:2006-08"
SBF_NS = "urn:liberty:sb"
TOKEN_USAGE = "urn:liberty:security:tokenusage:2006-08:SecurityToken"
TLS_BEARER = "urn:liberty:security:2005-02:TLS:Bearer"

