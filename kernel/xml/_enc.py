"""XML Encryption for SAML encrypted elements (SAML core §2.2.4, §6).

Implements the part of W3C XML Encryption 1.1 that SAML EncryptedID, EncryptedAssertion,
EncryptedAttribute and NewEncryptedID need, in-process with lxml and `cryptography`, and only
with algorithms that resist the published attacks (SECURITY.md, last row; Jager & Somorovsky,
CCS 2011): AES-GCM for the data (XML Encryption 1.1 §5.2.4), RSA-OAEP for the key transport
(§5.5.2), never CBC and never PKCS#1 v1.5. Every decryption failure raises one
`DecryptionFailed` with one message, so a sender learns nothing about why.

Decryption does not authenticate the sender: anyone holding our certificate can encrypt to
us. Verify the signature of the enclosing message before decrypting, then the decrypted
element's own signature where one is required (e.g. an Assertion), with `verify_signed`.
"""
from __future__ import annotations

import base64
import binascii
import copy
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree

from kernel.xml._dsig import (
    DEFAULT_MAX_BYTES,
    DIGEST_SHA256,
    DS_NS,
    SAML_NS,
    SAMLP_NS,
    XMLSecurityError,
    parse_xml,
)

__all__ = [
    "AES128_GCM",
    "AES256_GCM",
    "DIGEST_SHA1",
    "MGF1_SHA256",
    "RSA_OAEP",
    "RSA_OAEP_MGF1P",
    "TYPE_ELEMENT",
    "XENC11_NS",
    "XENC_NS",
    "DecryptionFailed",
    "decrypt_element",
    "encrypt_element",
]

XENC_NS: Final = "http://www.w3.org/2001/04/xmlenc#"
XENC11_NS: Final = "http://www.w3.org/2009/xmlenc11#"

# XML Encryption 1.1 §5 algorithm identifiers.
AES256_GCM: Final = XENC11_NS + "aes256-gcm"  # §5.2.4
AES128_GCM: Final = XENC11_NS + "aes128-gcm"
RSA_OAEP: Final = XENC11_NS + "rsa-oaep"  # §5.5.2, with explicit digest and MGF
RSA_OAEP_MGF1P: Final = XENC_NS + "rsa-oaep-mgf1p"  # §5.5.2, MGF1 with SHA-1 fixed
MGF1_SHA256: Final = XENC11_NS + "mgf1sha256"
DIGEST_SHA1: Final = "http://www.w3.org/2000/09/xmldsig#sha1"
TYPE_ELEMENT: Final = XENC_NS + "Element"  # §3.5.1; SAML core §6.1 requires it if present

_FAILED: Final = "the encrypted element could not be decrypted"
_MIN_RSA_BITS: Final = 2048
_GCM_IV_BYTES: Final = 12  # XML Encryption 1.1 §5.2.4
_GCM_TAG_BYTES: Final = 16


class DecryptionFailed(XMLSecurityError):
    """The encrypted element could not be decrypted. Raised with the same message for every
    cause (malformed structure, refused algorithm, wrong key, bad padding, bad tag, hostile
    plaintext), so the error cannot serve as a padding or validity oracle."""


class _Refused(Exception):
    """Internal: any reason to refuse; always turned into `DecryptionFailed` at the API."""


# -- algorithm allow-lists -------------------------------------------------------------------
_DATA_KEY_BYTES: Final[dict[str, int]] = {AES256_GCM: 32, AES128_GCM: 16}


@dataclass(frozen=True)
class _KeyTransport:
    algorithm: str
    digest: str | None  # DigestMethod that must be present; None: may be absent
    digest_default: str | None  # what an absent DigestMethod means (XML Encryption §5.5.2)
    mgf: str | None  # xenc11:MGF that must be present; None: must be absent
    padding: padding.OAEP


def _oaep(hash_type: type[hashes.HashAlgorithm]) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hash_type()), algorithm=hash_type(), label=None)


# Only OAEP. The xenc11 form must name SHA-256 for both digest and MGF; the older mgf1p form
# (MGF1-SHA-1, digest SHA-1 explicit or by default) is accepted on decrypt for existing SPs.
_KEY_TRANSPORTS: Final[dict[str, _KeyTransport]] = {
    RSA_OAEP: _KeyTransport(RSA_OAEP, DIGEST_SHA256, None, MGF1_SHA256, _oaep(hashes.SHA256)),
    RSA_OAEP_MGF1P: _KeyTransport(RSA_OAEP_MGF1P, None, DIGEST_SHA1, None, _oaep(hashes.SHA1)),
}

# SAML core §2.2.4, §2.3.4, §2.7.3.2, §3.6.1: what each encrypted wrapper may contain.
_WRAPPED: Final[dict[str, frozenset[str]]] = {
    f"{{{SAML_NS}}}EncryptedID": frozenset({f"{{{SAML_NS}}}NameID", f"{{{SAML_NS}}}BaseID"}),
    f"{{{SAML_NS}}}EncryptedAssertion": frozenset({f"{{{SAML_NS}}}Assertion"}),
    f"{{{SAML_NS}}}EncryptedAttribute": frozenset({f"{{{SAML_NS}}}Attribute"}),
    f"{{{SAMLP_NS}}}NewEncryptedID": frozenset({f"{{{SAMLP_NS}}}NewID"}),
}


# -- names -----------------------------------------------------------------------------------
def _xenc(name: str) -> str:
    return f"{{{XENC_NS}}}{name}"


_ENCRYPTED_DATA: Final = _xenc("EncryptedData")
_ENCRYPTED_KEY: Final = _xenc("EncryptedKey")
_ENCRYPTION_METHOD: Final = _xenc("EncryptionMethod")
_CIPHER_DATA: Final = _xenc("CipherData")
_CIPHER_VALUE: Final = _xenc("CipherValue")
_ENCRYPTION_PROPERTIES: Final = _xenc("EncryptionProperties")
_REFERENCE_LIST: Final = _xenc("ReferenceList")
_CARRIED_KEY_NAME: Final = _xenc("CarriedKeyName")
_MGF: Final = f"{{{XENC11_NS}}}MGF"
_KEY_INFO: Final = f"{{{DS_NS}}}KeyInfo"
_KEY_NAME: Final = f"{{{DS_NS}}}KeyName"
_RETRIEVAL_METHOD: Final = f"{{{DS_NS}}}RetrievalMethod"
_DIGEST_METHOD: Final = f"{{{DS_NS}}}DigestMethod"
_X509_DATA: Final = f"{{{DS_NS}}}X509Data"
_X509_CERTIFICATE: Final = f"{{{DS_NS}}}X509Certificate"

# EncryptionMethod, optional KeyInfo, CipherData: the fixed head of EncryptedType (§3.1).
_STRUCTURE_SHAPES: Final = (
    [_ENCRYPTION_METHOD, _CIPHER_DATA],
    [_ENCRYPTION_METHOD, _KEY_INFO, _CIPHER_DATA],
)
_NSMAP: Final = {"xenc": XENC_NS, "ds": DS_NS, "xenc11": XENC11_NS}
_PREFERRED_PREFIXES: Final = {SAML_NS: "saml", SAMLP_NS: "samlp"}

_local = threading.local()  # lxml trees are per thread


# -- encryption ------------------------------------------------------------------------------
def encrypt_element(
    element: etree._Element,
    recipient_cert: x509.Certificate,
    *,
    wrapper_tag: str = f"{{{SAML_NS}}}EncryptedID",
) -> etree._Element:
    """Encrypt ``element`` to the holder of ``recipient_cert``; return the new wrapper.

    The element is serialized with every namespace in scope declared on it, so the plaintext
    parses alone, and encrypted with a fresh AES-256-GCM key and a random 12-byte IV (the IV
    is prepended to ciphertext and tag, XML Encryption 1.1 §5.2.4). The key is wrapped with
    RSA-OAEP, SHA-256 digest and MGF1-SHA-256, into one xenc:EncryptedKey inside the
    EncryptedData's KeyInfo; that EncryptedKey names the recipient certificate, for
    information only. ``element`` itself is left unchanged.
    """
    if not isinstance(element, etree._Element) or not isinstance(element.tag, str):
        raise TypeError("element must be an lxml element")
    allowed = _WRAPPED.get(wrapper_tag)
    if allowed is not None and element.tag not in allowed:
        raise ValueError(f"{etree.QName(wrapper_tag).localname} cannot carry {element.tag}")
    public_key = _recipient_key(recipient_cert)

    plaintext = etree.tostring(element, encoding="UTF-8", xml_declaration=False, with_tail=False)
    data_key = AESGCM.generate_key(bit_length=256)
    iv = os.urandom(_GCM_IV_BYTES)
    encrypted_data = iv + AESGCM(data_key).encrypt(iv, plaintext, None)
    encrypted_key = public_key.encrypt(data_key, _KEY_TRANSPORTS[RSA_OAEP].padding)

    wrapper = etree.Element(wrapper_tag, nsmap=_wrapper_nsmap(wrapper_tag))
    body = _encrypted_data_template()
    # Template paths: EncryptedData/KeyInfo/EncryptedKey/{KeyInfo,CipherData/CipherValue}.
    key = body[1][0]
    key[1][0][0].text = _certificate_b64(recipient_cert)
    key[2][0].text = base64.b64encode(encrypted_key).decode("ascii")
    body[2][0].text = base64.b64encode(encrypted_data).decode("ascii")
    wrapper.append(body)
    return wrapper


def _recipient_key(recipient_cert: x509.Certificate) -> rsa.RSAPublicKey:
    if not isinstance(recipient_cert, x509.Certificate):
        raise TypeError("recipient_cert must be an x509.Certificate")
    public_key = recipient_cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise TypeError("RSA-OAEP key transport needs an RSA recipient certificate")
    if public_key.key_size < _MIN_RSA_BITS:
        raise ValueError(f"the recipient RSA key must have at least {_MIN_RSA_BITS} bits")
    return public_key


def _wrapper_nsmap(wrapper_tag: str) -> dict[str | None, str]:
    namespace = etree.QName(wrapper_tag).namespace
    nsmap: dict[str | None, str] = {}
    if namespace:
        nsmap[_PREFERRED_PREFIXES.get(namespace)] = namespace
    nsmap.update(_NSMAP)
    return nsmap


@lru_cache(maxsize=32)
def _certificate_b64(certificate: x509.Certificate) -> str:
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _encrypted_data_template() -> etree._Element:
    """A fresh copy of the xenc:EncryptedData skeleton (copying is cheaper than building)."""
    template = getattr(_local, "encrypted_data", None)
    if template is None:
        template = etree.Element(_ENCRYPTED_DATA, nsmap=_NSMAP, Type=TYPE_ELEMENT)
        etree.SubElement(template, _ENCRYPTION_METHOD, Algorithm=AES256_GCM)
        key = etree.SubElement(etree.SubElement(template, _KEY_INFO), _ENCRYPTED_KEY)
        method = etree.SubElement(key, _ENCRYPTION_METHOD, Algorithm=RSA_OAEP)
        etree.SubElement(method, _DIGEST_METHOD, Algorithm=DIGEST_SHA256)
        etree.SubElement(method, _MGF, Algorithm=MGF1_SHA256)
        certificate_info = etree.SubElement(etree.SubElement(key, _KEY_INFO), _X509_DATA)
        etree.SubElement(certificate_info, _X509_CERTIFICATE)
        etree.SubElement(etree.SubElement(key, _CIPHER_DATA), _CIPHER_VALUE)
        etree.SubElement(etree.SubElement(template, _CIPHER_DATA), _CIPHER_VALUE)
        _local.encrypted_data = template
    return copy.deepcopy(template)


# -- decryption ------------------------------------------------------------------------------
def decrypt_element(
    wrapper: etree._Element, private_keys: Sequence[rsa.RSAPrivateKey]
) -> etree._Element:
    """Decrypt a SAML encrypted element (EncryptedID, EncryptedAssertion, ...); return the
    element it carries, parsed on its own with the hardened `parse_xml`.

    The wrapper must hold exactly one xenc:EncryptedData and, in all, exactly one
    xenc:EncryptedKey: inside the EncryptedData's ds:KeyInfo, or beside it as a child of the
    wrapper (SAML core §6.2). Only AES-GCM data and RSA-OAEP key transport are accepted; KeyInfo
    naming a key is ignored and each of ``private_keys`` is tried. For the SAML wrappers the
    decrypted element must be of the kind the wrapper may carry (SAML core §2.2.4, §2.3.4,
    §2.7.3.2, §3.6.1). Any failure raises `DecryptionFailed` with one fixed message.
    """
    keys = _check_private_keys(private_keys)
    if not isinstance(wrapper, etree._Element) or not isinstance(wrapper.tag, str):
        raise TypeError("wrapper must be an lxml element")
    try:
        element = _decrypt(wrapper, keys)
    except (_Refused, XMLSecurityError, ValueError, InvalidTag):
        raise DecryptionFailed(_FAILED) from None
    return element


def _check_private_keys(private_keys: object) -> list[rsa.RSAPrivateKey]:
    # A lone key passed where a list belongs would otherwise fail obscurely.
    if isinstance(private_keys, (str, bytes)) or not isinstance(private_keys, Sequence):
        raise TypeError("private_keys must be a sequence of RSA private keys")
    keys = list(private_keys)
    if not keys or not all(isinstance(key, rsa.RSAPrivateKey) for key in keys):
        raise TypeError("private_keys must be a non-empty sequence of RSA private keys")
    return keys


def _decrypt(wrapper: etree._Element, keys: list[rsa.RSAPrivateKey]) -> etree._Element:
    encrypted_data, encrypted_key = _wrapper_parts(wrapper)
    data_algorithm, data_value = _encrypted_data_parts(encrypted_data)
    transport, key_value = _encrypted_key_parts(encrypted_key)
    data_key_bytes = _DATA_KEY_BYTES[data_algorithm]
    if len(data_value) <= _GCM_IV_BYTES + _GCM_TAG_BYTES:
        raise _Refused
    iv, sealed = data_value[:_GCM_IV_BYTES], data_value[_GCM_IV_BYTES:]

    plaintext = None
    for key in keys:
        data_key = _unwrap(key, key_value, transport, data_key_bytes)
        try:
            plaintext = AESGCM(data_key).decrypt(iv, sealed, None)
            break
        except InvalidTag:
            continue
    if plaintext is None:
        raise _Refused
    element = parse_xml(plaintext, max_bytes=DEFAULT_MAX_BYTES)
    allowed = _WRAPPED.get(wrapper.tag)
    if allowed is not None and element.tag not in allowed:
        raise _Refused
    return element


def _unwrap(
    key: rsa.RSAPrivateKey, value: bytes, transport: _KeyTransport, length: int
) -> bytes:
    """RSA-OAEP decrypt the data key; on any failure continue with a random key, so that a
    bad key transport and a bad data ciphertext fail the same way, at the GCM tag check."""
    try:
        data_key = key.decrypt(value, transport.padding)
    except ValueError:
        data_key = b""
    if len(data_key) != length:
        data_key = os.urandom(length)
    return data_key


def _wrapper_parts(wrapper: etree._Element) -> tuple[etree._Element, etree._Element]:
    """SAML core §2.2.4 EncryptedElementType: one EncryptedData, then EncryptedKey*."""
    children = _children(wrapper)
    if not children or children[0].tag != _ENCRYPTED_DATA:
        raise _Refused
    siblings = children[1:]
    if any(child.tag != _ENCRYPTED_KEY for child in siblings):
        raise _Refused
    encrypted_data = children[0]
    key_info = [child for child in _children(encrypted_data) if child.tag == _KEY_INFO]
    inner = [child for info in key_info for child in _children(info)]
    if any(child.tag not in (_ENCRYPTED_KEY, _RETRIEVAL_METHOD, _KEY_NAME) for child in inner):
        raise _Refused
    keys = [child for child in inner if child.tag == _ENCRYPTED_KEY] + siblings
    if len(keys) != 1:  # several recipients' keys are not supported: refuse, do not guess
        raise _Refused
    return encrypted_data, keys[0]


def _encrypted_data_parts(encrypted_data: etree._Element) -> tuple[str, bytes]:
    """XML Encryption §3.4-§3.5: EncryptionMethod, KeyInfo?, CipherData, properties?."""
    if encrypted_data.get("Type") not in (None, TYPE_ELEMENT):
        raise _Refused
    children = _children(encrypted_data)
    tags = [child.tag for child in children]
    if tags and tags[-1] == _ENCRYPTION_PROPERTIES:
        tags.pop()
    if tags not in _STRUCTURE_SHAPES:
        raise _Refused
    method = children[0]
    algorithm = method.get("Algorithm") or ""
    if algorithm not in _DATA_KEY_BYTES or _children(method):  # GCM takes no parameters
        raise _Refused
    return algorithm, _cipher_value(children[len(tags) - 1])


def _encrypted_key_parts(encrypted_key: etree._Element) -> tuple[_KeyTransport, bytes]:
    """XML Encryption §3.5.1: EncryptionMethod, KeyInfo?, CipherData, ReferenceList?,
    CarriedKeyName?. The KeyInfo only names the recipient and is ignored."""
    children = _children(encrypted_key)
    tags = [child.tag for child in children]
    for optional in (_CARRIED_KEY_NAME, _REFERENCE_LIST):
        if tags and tags[-1] == optional:
            tags.pop()
    if tags not in _STRUCTURE_SHAPES:
        raise _Refused
    transport = _key_transport(children[0])
    return transport, _cipher_value(children[len(tags) - 1])


def _key_transport(method: etree._Element) -> _KeyTransport:
    """XML Encryption 1.1 §5.5.2 RSA-OAEP, with its DigestMethod and MGF parameters."""
    transport = _KEY_TRANSPORTS.get(method.get("Algorithm") or "")
    if transport is None:
        raise _Refused
    digests: list[str] = []
    mgfs: list[str] = []
    for parameter in _children(method):  # KeySize and OAEPparams (a label) are refused too
        if parameter.tag == _DIGEST_METHOD:
            digests.append(parameter.get("Algorithm") or "")
        elif parameter.tag == _MGF:
            mgfs.append(parameter.get("Algorithm") or "")
        else:
            raise _Refused
        if _children(parameter):
            raise _Refused
    if transport.digest is not None:
        digest_ok = digests == [transport.digest]
    else:
        digest_ok = digests in ([], [transport.digest_default])
    mgf_ok = mgfs == ([] if transport.mgf is None else [transport.mgf])
    if not (digest_ok and mgf_ok):
        raise _Refused
    return transport


def _cipher_value(cipher_data: etree._Element) -> bytes:
    """CipherData holding one CipherValue (CipherReference, a URI to fetch, is refused)."""
    children = _children(cipher_data)
    if len(children) != 1 or children[0].tag != _CIPHER_VALUE:
        raise _Refused
    value = children[0]
    if len(value):  # any child node, element or comment (cf. xml-crypto CVE-2025-29775)
        raise _Refused
    try:
        return base64.b64decode("".join((value.text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise _Refused from None


def _children(parent: etree._Element) -> list[etree._Element]:
    """Element children of a structure node, where the schema allows no text."""
    if parent.text and parent.text.strip():
        raise _Refused
    children = []
    for child in parent:
        if child.tail and child.tail.strip():
            raise _Refused
        if isinstance(child.tag, str):  # comments carry no meaning in structure nodes
            children.append(child)
        elif not isinstance(child, etree._Comment):  # processing instructions, entities
            raise _Refused
    return children
