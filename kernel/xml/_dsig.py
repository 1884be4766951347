"""Hostile-XML boundary: the one place Renkei parses inbound XML and signs or verifies it.

Implements the SAML 2.0 profile of XML Signature (SAML core §5.4) in-process with lxml's
exclusive canonicalization and `cryptography`; everything below the public API is private.
"""
from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import itertools
import re
import secrets
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from urllib.parse import quote_plus, unquote_plus

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from lxml import etree

__all__ = [
    "DIGEST_SHA256",
    "DIGEST_SHA384",
    "DIGEST_SHA512",
    "DS_NS",
    "ECDSA_SHA256",
    "ECDSA_SHA384",
    "ECDSA_SHA512",
    "ENVELOPED_SIGNATURE",
    "EXC_C14N",
    "RSA_SHA256",
    "RSA_SHA384",
    "RSA_SHA512",
    "SAMLP_NS",
    "SAML_NS",
    "ForbiddenXML",
    "MalformedXML",
    "MessageTooLarge",
    "SignatureInvalid",
    "SignatureMissing",
    "UnsupportedAlgorithm",
    "XMLSecurityError",
    "c14n",
    "deflate_redirect",
    "inflate_redirect",
    "new_id",
    "parse_xml",
    "sign_enveloped",
    "sign_redirect_query",
    "verify_redirect_query",
    "verify_signed",
]

SAML_NS: Final = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP_NS: Final = "urn:oasis:names:tc:SAML:2.0:protocol"
DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"

# XMLDSig core §6 and RFC 6931 algorithm identifiers.
EXC_C14N: Final = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED_SIGNATURE: Final = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
DIGEST_SHA256: Final = "http://www.w3.org/2001/04/xmlenc#sha256"
DIGEST_SHA384: Final = "http://www.w3.org/2001/04/xmldsig-more#sha384"
DIGEST_SHA512: Final = "http://www.w3.org/2001/04/xmlenc#sha512"
RSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA384: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
RSA_SHA512: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
ECDSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
ECDSA_SHA384: Final = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"
ECDSA_SHA512: Final = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512"

DEFAULT_MAX_BYTES: Final = 262_144


# -- errors ----------------------------------------------------------------------------------
class XMLSecurityError(Exception):
    """Inbound XML refused; ``str(error)`` is a reason safe to show to the sender."""


class MessageTooLarge(XMLSecurityError):
    """The message exceeds the size limit, before or after inflating."""


class MalformedXML(XMLSecurityError):
    """Not well-formed XML, or not the base64/DEFLATE encoding the binding requires."""


class ForbiddenXML(XMLSecurityError):
    """Well-formed but hostile: DOCTYPE, entities, processing instructions, or comments and
    markup inside identity or signature fields (CVE-2017-11427, CVE-2025-29775)."""


class SignatureMissing(XMLSecurityError):
    """A signature is required (SAML core §5.4) and the message carries none."""


class SignatureInvalid(XMLSecurityError):
    """The signature does not verify against any pinned key, or is not the single enveloped
    signature over exactly the element being read (SAML core §5.4.1-§5.4.2)."""


class UnsupportedAlgorithm(SignatureInvalid):
    """An algorithm or transform outside the allow-list (SAML core §5.4.3-§5.4.4)."""


# -- algorithm allow-lists -------------------------------------------------------------------
@dataclass(frozen=True)
class _SignatureAlgorithm:
    family: str  # "rsa" (RSASSA-PKCS1-v1_5, RFC 6931 §2.3.2) or "ecdsa" (RFC 6931 §2.3.6)
    hash: type[hashes.HashAlgorithm]


_SIGNATURE_ALGORITHMS: Final[dict[str, _SignatureAlgorithm]] = {
    RSA_SHA256: _SignatureAlgorithm("rsa", hashes.SHA256),
    RSA_SHA384: _SignatureAlgorithm("rsa", hashes.SHA384),
    RSA_SHA512: _SignatureAlgorithm("rsa", hashes.SHA512),
    ECDSA_SHA256: _SignatureAlgorithm("ecdsa", hashes.SHA256),
    ECDSA_SHA384: _SignatureAlgorithm("ecdsa", hashes.SHA384),
    ECDSA_SHA512: _SignatureAlgorithm("ecdsa", hashes.SHA512),
}
_DIGESTS: Final[dict[str, Callable[..., Any]]] = {
    DIGEST_SHA256: hashlib.sha256,
    DIGEST_SHA384: hashlib.sha384,
    DIGEST_SHA512: hashlib.sha512,
}


def _signature_algorithm(uri: str | None) -> _SignatureAlgorithm:
    algorithm = _SIGNATURE_ALGORITHMS.get(uri or "")
    if algorithm is None:
        raise UnsupportedAlgorithm(
            f"signature algorithm {uri!r} is not accepted; use RSA or ECDSA with SHA-256 or longer"
        )
    return algorithm


# -- parsing ---------------------------------------------------------------------------------
def _ds(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


_SIGNATURE: Final = _ds("Signature")
_SIGNED_INFO: Final = _ds("SignedInfo")
_SIGNATURE_VALUE: Final = _ds("SignatureValue")
_KEY_INFO: Final = _ds("KeyInfo")
_REFERENCE: Final = _ds("Reference")
_TRANSFORMS: Final = _ds("Transforms")
_TRANSFORM: Final = _ds("Transform")
_DIGEST_METHOD: Final = _ds("DigestMethod")
_DIGEST_VALUE: Final = _ds("DigestValue")
_C14N_METHOD: Final = _ds("CanonicalizationMethod")
_SIGNATURE_METHOD: Final = _ds("SignatureMethod")
_INCLUSIVE_NAMESPACES: Final = f"{{{EXC_C14N}}}InclusiveNamespaces"
_ISSUER: Final = f"{{{SAML_NS}}}Issuer"

# Fields whose text is an identity or a signature input: they must be one plain text value,
# so no reader can see part of it (CVE-2017-11427..11430, CVE-2018-0489, CVE-2025-29775).
_TEXT_ONLY_FIELDS: Final = frozenset(
    {f"{{{SAML_NS}}}NameID", _ISSUER, _DIGEST_VALUE, _SIGNATURE_VALUE}
)
_IDENTITY_FIELDS: Final = (*_TEXT_ONLY_FIELDS, f"{{{SAML_NS}}}AttributeValue")
_DOCTYPE_MARKER: Final = re.compile(rb"<!doctype|<!entity", re.IGNORECASE)
_NCNAME: Final = re.compile(r"^[A-Za-z_][\w.\-]*$")

_XML_ENCODING: Final = re.compile(rb"""^<\?xml\s[^>]*?encoding\s*=\s*["']([^"']*)["']""")
_UTF8_NAMES: Final = frozenset({b"utf-8", b"utf8", b"us-ascii", b"ascii"})
_UTF8_BOM: Final = b"\xef\xbb\xbf"

_local = threading.local()  # lxml parsers and trees are per thread


class _RefuseExternal(etree.Resolver):
    """libxml2 still fetches external subsets and parameter entities with load_dtd off; the
    raw DOCTYPE check stops them first, and this resolver is the second line."""

    def resolve(self, system_url: str | None, public_id: str | None, context: object) -> None:
        raise ForbiddenXML("external entities and DTDs are not allowed")


def _parser() -> etree.XMLParser:
    # lxml parsers must not be shared between threads; one hardened parser per thread.
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            attribute_defaults=False,
            huge_tree=False,
            remove_comments=False,
            remove_pis=False,
            collect_ids=False,
            recover=False,
        )
        parser.resolvers.add(_RefuseExternal())
        _local.parser = parser
    return parser


def parse_xml(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """Parse inbound XML with DTDs, entities and network access off; return the root element.

    The size is checked before the parser sees a byte, and any DOCTYPE is refused both in
    the raw bytes and in the parsed document (ruby-saml CVE-2025-25291/25292, pysaml2
    CVE-2016-10149). Processing instructions are refused anywhere; comments are refused
    inside identity and signature fields and tolerated elsewhere, because exclusive
    canonicalization without comments (XMLDSig core §4.3.3.3) never signs them.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise MessageTooLarge(f"XML message larger than {max_bytes} bytes")
    _refuse_other_encodings(raw)
    if _DOCTYPE_MARKER.search(raw):
        raise ForbiddenXML("DOCTYPE and entity declarations are not allowed")
    return _parse_checked(raw)


def _refuse_other_encodings(raw: bytes) -> None:
    """Accept UTF-8 only, so the raw DOCTYPE check above cannot be dodged by UTF-16, UTF-7
    or EBCDIC input that the parser would decode (SAML messages are UTF-8 in practice)."""
    body = raw.removeprefix(_UTF8_BOM)
    if b"\x00" in body or not body.lstrip(b" \t\r\n").startswith(b"<"):
        raise MalformedXML("only UTF-8 encoded XML is accepted")
    declared = _XML_ENCODING.match(body)
    if declared and declared.group(1).lower() not in _UTF8_NAMES:
        raise MalformedXML("only UTF-8 encoded XML is accepted")


def _parse_checked(raw: bytes, *, check: bool = True) -> etree._Element:
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedXML(f"not well-formed XML: {exc.msg}") from None
    if root is None:
        raise MalformedXML("empty XML document")
    if check:
        _refuse_hostile_nodes(root)
    return root


def _refuse_hostile_nodes(element: etree._Element) -> None:
    """Refuse DOCTYPE, entity references, PIs and markup inside text-only fields."""
    tree = element.getroottree()
    docinfo = tree.docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise ForbiddenXML("DOCTYPE and entity declarations are not allowed")
    root = tree.getroot()
    for sibling in itertools.chain(root.itersiblings(preceding=True), root.itersiblings()):
        if isinstance(sibling, etree._ProcessingInstruction):
            raise ForbiddenXML("processing instructions are not allowed")
    for _node in root.iter(etree.PI, etree.Entity):
        raise ForbiddenXML("processing instructions and entity references are not allowed")
    for field in root.iter(*_IDENTITY_FIELDS):
        if field.tag in _TEXT_ONLY_FIELDS:
            if len(field):  # any child node at all: element, comment or PI
                _refuse_field_content(field)
        elif next(field.iter(etree.Comment), None) is not None:
            _refuse_field_content(field)


def _refuse_field_content(field: etree._Element) -> None:
    name = etree.QName(field).localname
    if next(field.iter(etree.Comment), None) is not None:
        raise ForbiddenXML(f"comments are not allowed inside {name}")
    raise ForbiddenXML(f"{name} must contain text only")


def c14n(element: etree._Element) -> bytes:
    """Exclusive XML canonicalization without comments (XMLDSig core §6.5.1, exc-c14n §3)."""
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False)


def _c14n(element: etree._Element, prefixes: list[str] | None) -> bytes:
    return etree.tostring(
        element,
        method="c14n",
        exclusive=True,
        with_comments=False,
        inclusive_ns_prefixes=prefixes or None,
    )


def new_id() -> str:
    """A fresh xs:ID value with 160 bits of randomness (SAML core §1.3.4)."""
    return "_" + secrets.token_hex(20)


# -- HTTP-Redirect binding encoding ----------------------------------------------------------
def _encoded_limit(max_bytes: int) -> int:
    # DEFLATE never expands by more than 5 bytes per 64 KiB stored block; base64 adds 4/3.
    deflated = max_bytes + 5 * (max_bytes // 65_535 + 1) + 16
    return 4 * ((deflated + 2) // 3)


def inflate_redirect(value: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Decode a SAMLRequest/SAMLResponse of the HTTP-Redirect binding (SAML bindings §3.4.4.1).

    base64, then raw DEFLATE (RFC 1951). The encoded length is bounded first; inflating
    stops at ``max_bytes + 1`` output bytes, so a deflate bomb is cut off without being
    expanded (pysaml2 CVE-2016-10127).
    """
    if len(value) > _encoded_limit(max_bytes):
        raise MessageTooLarge(f"encoded SAML message larger than allowed for {max_bytes} bytes")
    try:
        deflated = base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedXML("SAML message is not valid base64") from None
    inflater = zlib.decompressobj(wbits=-15)
    try:
        inflated = inflater.decompress(deflated, max_bytes + 1)
    except zlib.error:
        raise MalformedXML("SAML message is not raw DEFLATE data") from None
    if len(inflated) > max_bytes:
        raise MessageTooLarge(f"inflated SAML message larger than {max_bytes} bytes")
    if not inflater.eof:
        raise MalformedXML("SAML message DEFLATE data is truncated")
    if inflater.unused_data:
        raise MalformedXML("unexpected data after the DEFLATE stream")
    return inflated


def deflate_redirect(xml: bytes) -> str:
    """Raw DEFLATE then base64, not URL-encoded (SAML bindings §3.4.4.1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(compressor.compress(xml) + compressor.flush()).decode("ascii")


# -- raw signature primitives ----------------------------------------------------------------
def _sign_octets(private_key: PrivateKeyTypes, algorithm: str, data: bytes) -> bytes:
    spec = _signature_algorithm(algorithm)
    if spec.family == "rsa":
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError(f"{algorithm} needs an RSA private key")
        return private_key.sign(data, padding.PKCS1v15(), spec.hash())
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{algorithm} needs an EC private key")
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(spec.hash())))
    size = (private_key.curve.key_size + 7) // 8
    # XMLDSig ECDSA values are I2OSP(r) || I2OSP(s), not DER (XMLDSig 1.1 §6.4.3).
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _check_trusted_keys(trusted_keys: object) -> None:
    # A lone key passed where a list belongs would otherwise fail obscurely.
    if isinstance(trusted_keys, (str, bytes)) or not isinstance(trusted_keys, Sequence):
        raise TypeError("trusted_keys must be a sequence of public keys or certificates")


def _verify_octets(
    trusted_keys: Sequence[PublicKeyTypes | x509.Certificate],
    algorithm: str,
    signature: bytes,
    data: bytes,
) -> bool:
    spec = _signature_algorithm(algorithm)
    for key in trusted_keys:
        public_key = key.public_key() if isinstance(key, x509.Certificate) else key
        try:
            if spec.family == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
                public_key.verify(signature, data, padding.PKCS1v15(), spec.hash())
                return True
            if spec.family == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
                size = (public_key.curve.key_size + 7) // 8
                if len(signature) != 2 * size:
                    continue
                der = encode_dss_signature(
                    int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
                )
                public_key.verify(der, data, ec.ECDSA(spec.hash()))
                return True
        except InvalidSignature:
            continue
    return False


# -- enveloped signatures (SAML core §5.4) ---------------------------------------------------
@lru_cache(maxsize=32)
def _certificate_b64(certificate: x509.Certificate) -> str:
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")


def sign_enveloped(
    element: etree._Element,
    private_key: PrivateKeyTypes,
    *,
    certificate: x509.Certificate | None = None,
    algorithm: str = RSA_SHA256,
) -> None:
    """Sign ``element`` in place with an enveloped signature (SAML core §5.4.1-§5.4.4).

    One Reference to ``#ID``, transforms enveloped-signature then exclusive c14n, SHA-256
    digest. The ds:Signature goes right after saml:Issuer (or first), as the SAML schemas
    require. The certificate, if given, is informational only: verifiers must ignore it.
    """
    element_id = element.get("ID")
    if not element_id:
        raise ValueError("the element to sign needs an ID attribute")
    if next(element.iterchildren(_SIGNATURE), None) is not None:
        raise ValueError("the element already carries a signature")
    _signature_algorithm(algorithm)
    digest = base64.b64encode(hashlib.sha256(c14n(element)).digest()).decode("ascii")

    signature = _signature_template(with_key_info=certificate is not None)
    signed_info, signature_value = signature[0], signature[1]
    signed_info[1].set("Algorithm", algorithm)
    reference = signed_info[2]
    reference.set("URI", "#" + element_id)
    reference[2].text = digest
    if certificate is not None:
        signature[2][0][0].text = _certificate_b64(certificate)
    # Exclusive c14n of SignedInfo only sees its own ds: binding, declared on Signature, so
    # canonicalizing before insertion gives the octets a verifier computes in the document.
    value = _sign_octets(private_key, algorithm, c14n(signed_info))
    signature_value.text = base64.b64encode(value).decode("ascii")
    issuer = next(element.iterchildren(_ISSUER), None)
    element.insert(0 if issuer is None else element.index(issuer) + 1, signature)


def _signature_template(*, with_key_info: bool) -> etree._Element:
    """A fresh copy of the ds:Signature skeleton (copying is ~10x cheaper than building)."""
    templates = getattr(_local, "signature_templates", None)
    if templates is None:
        templates = _local.signature_templates = {}
    template = templates.get(with_key_info)
    if template is None:
        template = etree.Element(_SIGNATURE, nsmap={"ds": DS_NS})
        signed_info = etree.SubElement(template, _SIGNED_INFO)
        etree.SubElement(signed_info, _C14N_METHOD, Algorithm=EXC_C14N)
        etree.SubElement(signed_info, _SIGNATURE_METHOD, Algorithm="")
        reference = etree.SubElement(signed_info, _REFERENCE, URI="")
        transforms = etree.SubElement(reference, _TRANSFORMS)
        etree.SubElement(transforms, _TRANSFORM, Algorithm=ENVELOPED_SIGNATURE)
        etree.SubElement(transforms, _TRANSFORM, Algorithm=EXC_C14N)
        etree.SubElement(reference, _DIGEST_METHOD, Algorithm=DIGEST_SHA256)
        etree.SubElement(reference, _DIGEST_VALUE)
        etree.SubElement(template, _SIGNATURE_VALUE)
        if with_key_info:
            key_info = etree.SubElement(template, _KEY_INFO)
            etree.SubElement(etree.SubElement(key_info, _ds("X509Data")), _ds("X509Certificate"))
        templates[with_key_info] = template
    return copy.deepcopy(template)


def verify_signed(
    element: etree._Element,
    trusted_keys: Sequence[PublicKeyTypes | x509.Certificate],
    *,
    require_signature: bool = True,
) -> etree._Element:
    """Verify the enveloped signature of exactly ``element``; return what it covers.

    Enforces SAML core §5.4 and XMLDSig core §3.2 with the profile in SECURITY.md: one
    ds:Signature as a direct child, one SignedInfo, one Reference to ``#`` + this element's
    ID, that ID unique in the document, only enveloped-signature + exc-c14n transforms,
    allow-listed algorithms, KeyInfo ignored, only ``trusted_keys`` (pinned from metadata)
    tried. The result is a new element parsed from exactly the canonical octets whose
    digest was checked, so callers only ever read signed content.
    """
    _check_trusted_keys(trusted_keys)
    _refuse_hostile_nodes(element)
    signatures = list(element.iterchildren(_SIGNATURE))
    if not signatures:
        if require_signature:
            raise SignatureMissing(f"{etree.QName(element).localname} must be signed")
        return element
    if len(signatures) > 1:
        raise SignatureInvalid("more than one Signature on the signed element")
    signature = signatures[0]

    signed_info, signature_value = _signature_parts(signature)
    c14n_prefixes, algorithm, reference = _signed_info_parts(signed_info)
    digest_method, digest_value, digest_prefixes = _reference_parts(reference)
    _check_reference_target(element, reference.get("URI"))

    signed_octets = _c14n(signed_info, c14n_prefixes)
    if not _verify_octets(trusted_keys, algorithm, signature_value, signed_octets):
        raise SignatureInvalid("signature does not verify with any key registered for the sender")

    covered = _enveloped_c14n(element, signature, digest_prefixes)
    if not hmac.compare_digest(_DIGESTS[digest_method](covered).digest(), digest_value):
        raise SignatureInvalid("digest of the signed element does not match")
    # The octets come from a tree that passed _refuse_hostile_nodes, minus comments.
    return _parse_checked(covered, check=False)


def _children(parent: etree._Element, where: str) -> list[etree._Element]:
    """Element children of an XMLDSig structure node, where the schema allows no text."""
    if parent.text and parent.text.strip():
        raise SignatureInvalid(f"unexpected text inside {where}")
    children = []
    for child in parent:
        if child.tail and child.tail.strip():
            raise SignatureInvalid(f"unexpected text inside {where}")
        if isinstance(child.tag, str):  # comments carry no meaning here (not canonicalized)
            children.append(child)
    return children


def _base64_text(field: etree._Element, where: str) -> bytes:
    if len(field):  # any child node: element or comment (xml-crypto CVE-2025-29775)
        raise SignatureInvalid(f"{where} must be a single text value")
    try:
        return base64.b64decode("".join((field.text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid(f"{where} is not valid base64") from None


def _signature_parts(signature: etree._Element) -> tuple[etree._Element, bytes]:
    """XMLDSig core §4.1: SignedInfo, SignatureValue, optional KeyInfo; no ds:Object."""
    children = _children(signature, "Signature")
    tags = [child.tag for child in children]
    if tags.count(_SIGNED_INFO) != 1:
        raise SignatureInvalid("Signature must contain exactly one SignedInfo")
    if tags not in ([_SIGNED_INFO, _SIGNATURE_VALUE], [_SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO]):
        raise SignatureInvalid("Signature must hold SignedInfo, SignatureValue and KeyInfo only")
    value = _base64_text(children[1], "SignatureValue")
    if not value:
        raise SignatureInvalid("SignatureValue is empty")
    return children[0], value


def _signed_info_parts(
    signed_info: etree._Element,
) -> tuple[list[str] | None, str, etree._Element]:
    """XMLDSig core §4.3: CanonicalizationMethod, SignatureMethod, exactly one Reference."""
    children = _children(signed_info, "SignedInfo")
    tags = [child.tag for child in children]
    if tags[:2] != [_C14N_METHOD, _SIGNATURE_METHOD] or tags[2:] != [_REFERENCE]:
        if tags.count(_REFERENCE) > 1:
            raise SignatureInvalid("SignedInfo must contain exactly one Reference")
        raise SignatureInvalid("SignedInfo is not in XMLDSig schema order")
    prefixes = _canonicalization_prefixes(children[0])
    signature_method = children[1]
    algorithm = signature_method.get("Algorithm") or ""
    _signature_algorithm(algorithm)
    if _children(signature_method, "SignatureMethod"):  # e.g. HMACOutputLength
        raise UnsupportedAlgorithm("SignatureMethod must have no parameters")
    return prefixes, algorithm, children[2]


def _canonicalization_prefixes(method: etree._Element) -> list[str] | None:
    """Exclusive c14n only (SAML core §5.4.3), with its optional InclusiveNamespaces."""
    if method.get("Algorithm") != EXC_C14N:
        raise UnsupportedAlgorithm(
            f"canonicalization {method.get('Algorithm')!r} is not accepted; use exclusive c14n"
        )
    children = _children(method, "canonicalization method")
    if not children:
        return None
    if len(children) != 1 or children[0].tag != _INCLUSIVE_NAMESPACES:
        raise UnsupportedAlgorithm("unexpected parameters for exclusive c14n")
    prefixes = (children[0].get("PrefixList") or "").split()
    for prefix in prefixes:
        if prefix != "#default" and not _NCNAME.match(prefix):
            raise UnsupportedAlgorithm("malformed InclusiveNamespaces PrefixList")
    return prefixes


def _reference_parts(reference: etree._Element) -> tuple[str, bytes, list[str] | None]:
    """XMLDSig core §4.3.3 as profiled by SAML core §5.4.3-§5.4.4."""
    children = _children(reference, "Reference")
    if [child.tag for child in children] != [_TRANSFORMS, _DIGEST_METHOD, _DIGEST_VALUE]:
        raise SignatureInvalid("Reference must hold Transforms, DigestMethod and DigestValue")
    transforms = _children(children[0], "Transforms")
    algorithms = [t.get("Algorithm") for t in transforms]
    if any(t.tag != _TRANSFORM for t in transforms) or len(transforms) > 2:
        raise UnsupportedAlgorithm("at most two Transform elements are accepted")
    if algorithms != [ENVELOPED_SIGNATURE, EXC_C14N]:
        raise UnsupportedAlgorithm(
            "only the enveloped-signature then exclusive c14n transforms are accepted"
        )
    if _children(transforms[0], "enveloped-signature transform"):
        raise UnsupportedAlgorithm("the enveloped-signature transform takes no parameters")
    prefixes = _canonicalization_prefixes(transforms[1])

    digest_method = children[1].get("Algorithm") or ""
    if digest_method not in _DIGESTS or _children(children[1], "DigestMethod"):
        raise UnsupportedAlgorithm(
            f"digest algorithm {digest_method!r} is not accepted; use SHA-256 or longer"
        )
    digest_value = _base64_text(children[2], "DigestValue")
    if len(digest_value) != _DIGESTS[digest_method]().digest_size:
        raise SignatureInvalid("DigestValue has the wrong length")
    return digest_method, digest_value, prefixes


def _check_reference_target(element: etree._Element, uri: str | None) -> None:
    """The Reference must name this element, and its ID must be unique (SAML core §5.4.2)."""
    element_id = element.get("ID")
    if not element_id:
        raise SignatureInvalid("the signed element has no ID attribute")
    if uri != "#" + element_id:
        raise SignatureInvalid("the signature does not reference the element that carries it")
    ids = _id_values(element.getroottree())
    if len(ids) != len(set(ids)):  # the element's own ID is one of them
        raise SignatureInvalid("duplicate ID in the message")


def _id_values(tree: etree._ElementTree) -> list[str]:
    finder = getattr(_local, "id_finder", None)
    if finder is None:
        finder = _local.id_finder = etree.XPath("//@ID | //@Id | //@id | //@xml:id")
    return [str(value) for value in finder(tree)]


def _enveloped_c14n(
    element: etree._Element, signature: etree._Element, prefixes: list[str] | None
) -> bytes:
    """Apply enveloped-signature then exc-c14n (XMLDSig core §6.6.4) in document context.

    With an InclusiveNamespaces list the whole document is copied, so the in-scope
    namespaces it names stay visible; the caller's tree is never modified.
    """
    if prefixes:
        path = []
        node = element
        while (parent := node.getparent()) is not None:
            path.append(parent.index(node))
            node = parent
        target = copy.deepcopy(element.getroottree()).getroot()
        for index in reversed(path):
            target = target[index]
    else:  # plain exc-c14n renders only visibly used namespaces: the element alone suffices
        target = copy.deepcopy(element)
        target.tail = None
    enveloped = target[element.index(signature)]
    tail = enveloped.tail
    if tail:  # the transform removes the element only; the text after it stays
        previous = enveloped.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            target.text = (target.text or "") + tail
    target.remove(enveloped)
    if prefixes and "#default" in prefixes:
        _refuse_unsupported_default_prefix(target)
    return _c14n(target, prefixes)


def _refuse_unsupported_default_prefix(target: etree._Element) -> None:
    # lxml drops "#default" from the inclusive prefix list. That can only change the output
    # at an element with a default namespace in scope that it does not itself use; refuse
    # such signatures (conservatively) rather than digest them differently from the signer.
    for node in target.iter(etree.Element):
        default = node.nsmap.get(None)
        if default and etree.QName(node).namespace != default:
            raise UnsupportedAlgorithm("InclusiveNamespaces #default with a default namespace")


# -- HTTP-Redirect binding signatures (SAML bindings §3.4.4.1) -------------------------------
_MESSAGE_PARAMETERS: Final = ("SAMLRequest", "SAMLResponse")
_REDIRECT_SHAPES: Final = frozenset(
    {(message,) for message in _MESSAGE_PARAMETERS}
    | {(message, "RelayState") for message in _MESSAGE_PARAMETERS}
)


def sign_redirect_query(
    params: list[tuple[str, str]], private_key: PrivateKeyTypes, *, algorithm: str = RSA_SHA256
) -> str:
    """Sign a Redirect-binding query (SAML bindings §3.4.4.1) and return it URL-encoded.

    ``params`` is ``[(SAMLRequest|SAMLResponse, value)]`` optionally followed by
    ``("RelayState", value)``; SigAlg and Signature are appended. The signed octets are
    ``name=urlencoded(value)`` pairs joined by ``&`` in exactly that order.
    """
    names = tuple(name for name, _ in params)
    if names not in _REDIRECT_SHAPES:
        raise ValueError("params must be SAMLRequest or SAMLResponse, then optional RelayState")
    parts = [f"{name}={quote_plus(value)}" for name, value in params]
    parts.append(f"SigAlg={quote_plus(algorithm)}")
    signed = "&".join(parts)
    value = _sign_octets(private_key, algorithm, signed.encode("ascii"))
    return f"{signed}&Signature={quote_plus(base64.b64encode(value).decode('ascii'))}"


def verify_redirect_query(
    raw_query: str, trusted_keys: Sequence[PublicKeyTypes | x509.Certificate]
) -> dict[str, str]:
    """Verify a Redirect-binding signature (SAML bindings §3.4.4.1) over the raw query.

    The signed octets are rebuilt from the components exactly as received (still
    URL-encoded) in the order the binding fixes, whatever their order in the URL. Returns
    the decoded SAMLRequest or SAMLResponse, RelayState (if present) and SigAlg; other
    parameters are not covered by the signature and are not returned.
    """
    _check_trusted_keys(trusted_keys)
    raw: dict[str, str] = {}
    for component in raw_query.removeprefix("?").split("&"):
        if not component:
            continue
        name = _decode_query_part(component.partition("=")[0])
        if name in raw:
            raise SignatureInvalid(f"parameter {name} appears more than once")
        raw[name] = component
    messages = [name for name in _MESSAGE_PARAMETERS if name in raw]
    if len(messages) != 1:
        raise SignatureInvalid("exactly one of SAMLRequest or SAMLResponse is required")
    if "Signature" not in raw:
        raise SignatureMissing("the Redirect-binding message must be signed")
    if "SigAlg" not in raw:
        raise SignatureInvalid("SigAlg is missing")

    values = {name: _decode_query_part(raw[name].partition("=")[2]) for name in raw}
    algorithm = values["SigAlg"]
    _signature_algorithm(algorithm)
    signed_names = [messages[0], *(["RelayState"] if "RelayState" in raw else []), "SigAlg"]
    signed = "&".join(raw[name] for name in signed_names).encode("utf-8")
    try:
        signature = base64.b64decode(values["Signature"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("Signature is not valid base64") from None
    if not _verify_octets(trusted_keys, algorithm, signature, signed):
        raise SignatureInvalid("signature does not verify with any key registered for the sender")
    return {name: values[name] for name in signed_names}


def _decode_query_part(part: str) -> str:
    try:
        return unquote_plus(part, errors="strict")
    except UnicodeDecodeError:
        raise SignatureInvalid("query parameter is not valid UTF-8") from None
