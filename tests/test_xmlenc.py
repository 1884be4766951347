"""kernel.xml._enc against XML Encryption 1.1, SAML core §6, independent implementations and
the attacks in SECURITY.md (last row: CBC padding oracle, PKCS#1 v1.5 key transport).

Independent implementations: python-xmlsec (libxmlsec1 1.3, which knows the xenc11 RSA-OAEP
form and decrypts what we encrypt) and the xmlsec1 binary (libxmlsec1 1.2, which only knows
the older rsa-oaep-mgf1p form, so it is used as an encryptor of that form). Hostile messages
are built by this file's own small encryptor, written with `cryptography` directly, so each
refused message is a correctly encrypted one whose only fault is the rule under test.
"""
from __future__ import annotations

import base64
import copy
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree

from kernel.xml import _enc as xmlenc
from kernel.xml._dsig import DIGEST_SHA256, DS_NS, SAML_NS, XMLSecurityError
from kernel.xml._enc import (
    AES128_GCM,
    AES256_GCM,
    DIGEST_SHA1,
    MGF1_SHA256,
    RSA_OAEP,
    RSA_OAEP_MGF1P,
    XENC11_NS,
    XENC_NS,
    DecryptionFailed,
    decrypt_element,
    encrypt_element,
)
from tests import xml_attacks as attacks

pytestmark = pytest.mark.nodb  # pure XML encryption: no database; the PostgreSQL pass skips it

NS = {"saml": SAML_NS, "xenc": XENC_NS, "xenc11": XENC11_NS, "ds": DS_NS}
MESSAGE = "the encrypted element could not be decrypted"
VICTIM = "victim@city.example"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
ENCRYPTED_ID = f"{{{SAML_NS}}}EncryptedID"
ENCRYPTED_ASSERTION = f"{{{SAML_NS}}}EncryptedAssertion"
NAME_ID = f"{{{SAML_NS}}}NameID"
AES256_CBC = XENC_NS + "aes256-cbc"
AES128_CBC = XENC_NS + "aes128-cbc"
RSA_1_5 = XENC_NS + "rsa-1_5"
MGF1_SHA1 = XENC11_NS + "mgf1sha1"
TYPE_CONTENT = XENC_NS + "Content"
needs_xmlsec1 = pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="xmlsec1 missing")


# -- keys and elements -----------------------------------------------------------------------
@dataclass(frozen=True)
class Party:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="session")
def sp() -> Party:
    return Party(*attacks.make_key_and_certificate("sp.city.example"))


@pytest.fixture(scope="session")
def other_sp() -> Party:
    return Party(*attacks.make_key_and_certificate("sp.other.example"))


def name_id_xml(value: str = VICTIM) -> bytes:
    return (
        f'<saml:NameID xmlns:saml="{SAML_NS}" Format="{PERSISTENT}">{value}</saml:NameID>'
    ).encode()


def name_id_in_subject() -> etree._Element:
    """A NameID whose namespace is declared on an ancestor only, as inside an Assertion."""
    subject = etree.fromstring(
        f'<saml:Subject xmlns:saml="{SAML_NS}"><saml:NameID Format="{PERSISTENT}">{VICTIM}'
        "</saml:NameID>\n  <saml:SubjectConfirmation/></saml:Subject>".encode()
    )
    return subject[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def cipher_value(node: etree._Element) -> bytes:
    return base64.b64decode("".join(node.text.split()))


def refused(wrapper: etree._Element, keys: list[rsa.RSAPrivateKey]) -> DecryptionFailed:
    """Decrypting must fail with the one uniform error, and no cause attached."""
    with pytest.raises(DecryptionFailed) as caught:
        decrypt_element(wrapper, keys)
    error = caught.value
    assert type(error) is DecryptionFailed
    assert str(error) == MESSAGE
    assert error.__cause__ is None and error.__suppress_context__
    return error


# -- an independent encryptor, for well-formed and for hostile messages ----------------------
@dataclass(frozen=True)
class Forge:
    """What to put in a message. Defaults: what Renkei must accept (aes256-gcm, xenc11 OAEP
    with SHA-256 digest and MGF1-SHA-256, one EncryptedKey inside KeyInfo)."""

    plaintext: bytes = name_id_xml()
    data_algorithm: str = AES256_GCM
    cipher: str = "gcm"  # what really encrypts the data: "gcm" or "cbc"
    data_key_bytes: int = 32
    key_algorithm: str = RSA_OAEP
    key_padding: str = "oaep-sha256"  # "oaep-sha256", "oaep-sha1", "oaep-sha256-mgf1sha1", "pkcs1"
    digest: str | None = DIGEST_SHA256
    mgf: str | None = MGF1_SHA256
    oaep_params: bytes | None = None
    encrypted_keys: int = 1
    sibling_keys: int = 0
    data_type: str | None = xmlenc.TYPE_ELEMENT
    wrapper: str = ENCRYPTED_ID


_PADDINGS: dict[str, Callable[[], padding.AsymmetricPadding]] = {
    "oaep-sha256": lambda: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
    "oaep-sha1": lambda: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),
    "oaep-sha256-mgf1sha1": lambda: padding.OAEP(
        padding.MGF1(hashes.SHA1()), hashes.SHA256(), None
    ),
    "pkcs1": padding.PKCS1v15,
}


def forge(recipient: Party, spec: Forge = Forge()) -> etree._Element:
    key = AESGCM.generate_key(bit_length=spec.data_key_bytes * 8)
    if spec.cipher == "gcm":
        iv = bytes(range(12))
        data = iv + AESGCM(key).encrypt(iv, spec.plaintext, None)
    else:  # XML Encryption §5.2: CBC with the IV prepended and ISO 10126-like padding
        iv = bytes(range(16))
        padder = sym_padding.PKCS7(128).padder()
        padded = padder.update(spec.plaintext) + padder.finalize()
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        data = iv + encryptor.update(padded) + encryptor.finalize()
    wrapped = recipient.certificate.public_key().encrypt(key, _PADDINGS[spec.key_padding]())

    def encrypted_key() -> str:
        parameters = ""
        if spec.digest:
            parameters += f'<ds:DigestMethod Algorithm="{spec.digest}"/>'
        if spec.mgf:
            parameters += f'<xenc11:MGF Algorithm="{spec.mgf}"/>'
        if spec.oaep_params is not None:
            parameters += f"<xenc:OAEPparams>{b64(spec.oaep_params)}</xenc:OAEPparams>"
        return (
            f'<xenc:EncryptedKey><xenc:EncryptionMethod Algorithm="{spec.key_algorithm}">'
            f"{parameters}</xenc:EncryptionMethod><xenc:CipherData><xenc:CipherValue>"
            f"{b64(wrapped)}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedKey>"
        )

    type_attribute = f' Type="{spec.data_type}"' if spec.data_type else ""
    inner = "".join(encrypted_key() for _ in range(spec.encrypted_keys))
    key_info = f"<ds:KeyInfo>{inner}</ds:KeyInfo>" if inner else ""
    qname = etree.QName(spec.wrapper)
    xml = (
        f'<saml:{qname.localname} xmlns:saml="{qname.namespace}" xmlns:xenc="{XENC_NS}" '
        f'xmlns:xenc11="{XENC11_NS}" xmlns:ds="{DS_NS}">'
        f"<xenc:EncryptedData{type_attribute}>"
        f'<xenc:EncryptionMethod Algorithm="{spec.data_algorithm}"/>{key_info}'
        f"<xenc:CipherData><xenc:CipherValue>{b64(data)}</xenc:CipherValue></xenc:CipherData>"
        f"</xenc:EncryptedData>{''.join(encrypted_key() for _ in range(spec.sibling_keys))}"
        f"</saml:{qname.localname}>"
    )
    return etree.fromstring(xml.encode())


def test_forged_messages_with_the_default_spec_decrypt(sp: Party) -> None:
    """Control for every forged refusal below: the forger itself produces good messages."""
    for spec in (
        Forge(),
        Forge(encrypted_keys=0, sibling_keys=1),
        Forge(data_type=None),
        Forge(data_algorithm=AES128_GCM, data_key_bytes=16),
    ):
        assert decrypt_element(forge(sp, spec), [sp.key]).text == VICTIM


# -- python-xmlsec and xmlsec1 ---------------------------------------------------------------
def xmlsec_encrypt(
    recipient: Party,
    *,
    data: xmlsec.Transform = xmlsec.constants.TransformAes256Gcm,
    key_size: int = 256,
    key_transport: xmlsec.Transform = xmlsec.constants.TransformRsaOaep,
    key_algorithm: str | None = RSA_OAEP,
    digest: str | None = DIGEST_SHA256,
    mgf: str | None = MGF1_SHA256,
) -> etree._Element:
    """An EncryptedID built and encrypted by python-xmlsec (libxmlsec1), to ``recipient``."""
    wrapper = etree.fromstring(
        f'<saml:EncryptedID xmlns:saml="{SAML_NS}">{name_id_xml().decode()}</saml:EncryptedID>'
        .encode()
    )
    constants = xmlsec.constants
    data_template = xmlsec.template.encrypted_data_create(
        wrapper, data, type=constants.TypeEncElement, ns="xenc"
    )
    xmlsec.template.encrypted_data_ensure_cipher_value(data_template)
    key_info = xmlsec.template.encrypted_data_ensure_key_info(data_template, ns="ds")
    key_template = xmlsec.template.add_encrypted_key(key_info, key_transport)
    xmlsec.template.encrypted_data_ensure_cipher_value(key_template)
    method = key_template.find("xenc:EncryptionMethod", NS)
    if key_algorithm is not None:
        method.set("Algorithm", key_algorithm)
    if digest is not None:
        etree.SubElement(method, f"{{{DS_NS}}}DigestMethod", Algorithm=digest)
    if mgf is not None:
        etree.SubElement(method, f"{{{XENC11_NS}}}MGF", Algorithm=mgf)
    manager = xmlsec.KeysManager()
    manager.add_key(xmlsec.Key.from_memory(recipient.cert_pem, constants.KeyDataFormatCertPem))
    context = xmlsec.EncryptionContext(manager)
    context.key = xmlsec.Key.generate(constants.KeyDataAes, key_size, constants.KeyDataTypeSession)
    context.encrypt_xml(data_template, wrapper[0])
    # As sent on the wire; lxml's find() may miss nodes that libxmlsec1 created in place.
    return etree.fromstring(etree.tostring(wrapper))


def xmlsec_decrypt(wrapper: etree._Element, recipient: Party) -> etree._Element:
    """python-xmlsec's decryption of the wrapper's EncryptedData (on a copy)."""
    document = copy.deepcopy(wrapper)
    manager = xmlsec.KeysManager()
    manager.add_key(
        xmlsec.Key.from_memory(recipient.key_pem, xmlsec.constants.KeyDataFormatPem)
    )
    encrypted_data = document.find("xenc:EncryptedData", NS)
    return xmlsec.EncryptionContext(manager).decrypt(encrypted_data)


# -- round trip and format -------------------------------------------------------------------
def test_round_trip_name_id_in_encrypted_id(sp: Party) -> None:
    name_id = name_id_in_subject()
    before = etree.tostring(name_id.getparent())
    wrapper = encrypt_element(name_id, sp.certificate)
    assert etree.tostring(name_id.getparent()) == before  # the input is not modified

    assert wrapper.tag == ENCRYPTED_ID
    assert VICTIM.encode() not in etree.tostring(wrapper)
    [data] = wrapper.findall("xenc:EncryptedData", NS)
    assert data.get("Type") == XENC_NS + "Element"
    assert [child.tag for child in data] == [
        f"{{{XENC_NS}}}EncryptionMethod", f"{{{DS_NS}}}KeyInfo", f"{{{XENC_NS}}}CipherData"
    ]
    assert data.find("xenc:EncryptionMethod", NS).get("Algorithm") == AES256_GCM
    [key] = data.findall("ds:KeyInfo/xenc:EncryptedKey", NS)
    method = key.find("xenc:EncryptionMethod", NS)
    assert method.get("Algorithm") == RSA_OAEP
    assert [(child.tag, child.get("Algorithm")) for child in method] == [
        (f"{{{DS_NS}}}DigestMethod", DIGEST_SHA256),
        (f"{{{XENC11_NS}}}MGF", MGF1_SHA256),
    ]
    certificate = key.findtext("ds:KeyInfo/ds:X509Data/ds:X509Certificate", namespaces=NS)
    assert base64.b64decode(certificate) == sp.certificate.public_bytes(
        serialization.Encoding.DER
    )
    wrapped = cipher_value(key.find("xenc:CipherData/xenc:CipherValue", NS))
    assert len(wrapped) == 256  # one RSA-2048 block

    # XML Encryption 1.1 §5.2.4: IV (12) || ciphertext || tag (16); decrypt it by hand.
    sealed = cipher_value(data.find("xenc:CipherData/xenc:CipherValue", NS))
    data_key = sp.key.decrypt(
        wrapped, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    )
    assert len(data_key) == 32
    plaintext = AESGCM(data_key).decrypt(sealed[:12], sealed[12:], None)
    assert len(sealed) == 12 + len(plaintext) + 16
    assert plaintext.startswith(f'<saml:NameID xmlns:saml="{SAML_NS}"'.encode())
    assert b"SubjectConfirmation" not in plaintext  # no tail, no siblings

    result = decrypt_element(wrapper, [sp.key])
    assert result.tag == NAME_ID
    assert result.text == VICTIM
    assert result.get("Format") == PERSISTENT
    assert result.getparent() is None


def test_plaintext_keeps_every_namespace_in_scope(sp: Party) -> None:
    """QName-valued content (xsi:type="xs:string") needs declarations no element uses."""
    response = etree.fromstring(
        f'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        f'xmlns:saml="{SAML_NS}" xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<saml:Assertion ID="_a1" Version="2.0"><saml:AttributeStatement><saml:Attribute '
        f'Name="mail"><saml:AttributeValue xsi:type="xs:string">{VICTIM}</saml:AttributeValue>'
        f"</saml:Attribute></saml:AttributeStatement></saml:Assertion></samlp:Response>".encode()
    )
    wrapper = encrypt_element(response[0], sp.certificate, wrapper_tag=ENCRYPTED_ASSERTION)
    assert wrapper.tag == ENCRYPTED_ASSERTION
    assertion = decrypt_element(wrapper, [sp.key])
    assert assertion.tag == f"{{{SAML_NS}}}Assertion"
    assert assertion.nsmap["xs"] == "http://www.w3.org/2001/XMLSchema"
    value = assertion.find(".//saml:AttributeValue", NS)
    prefix = value.get("{http://www.w3.org/2001/XMLSchema-instance}type").split(":")[0]
    assert value.nsmap[prefix] == "http://www.w3.org/2001/XMLSchema"
    assert value.text == VICTIM


def test_every_encryption_uses_a_fresh_key_and_iv(sp: Party) -> None:
    first, second = (encrypt_element(name_id_in_subject(), sp.certificate) for _ in range(2))
    path = "xenc:EncryptedData/xenc:CipherData/xenc:CipherValue"
    key_path = "xenc:EncryptedData/ds:KeyInfo/xenc:EncryptedKey/xenc:CipherData/xenc:CipherValue"
    assert cipher_value(first.find(path, NS))[:12] != cipher_value(second.find(path, NS))[:12]
    assert cipher_value(first.find(key_path, NS)) != cipher_value(second.find(key_path, NS))
    assert decrypt_element(first, [sp.key]).text == decrypt_element(second, [sp.key]).text


def test_encrypted_key_beside_encrypted_data_saml_core_6_2(sp: Party) -> None:
    """SAML core §6.2: the EncryptedKey may be a sibling, referenced by RetrievalMethod."""
    wrapper = encrypt_element(name_id_in_subject(), sp.certificate)
    key_info = wrapper.find("xenc:EncryptedData/ds:KeyInfo", NS)
    key = key_info.find("xenc:EncryptedKey", NS)
    key_info.remove(key)
    key.set("Id", "_k1")
    etree.SubElement(
        key_info, f"{{{DS_NS}}}RetrievalMethod", URI="#_k1", Type=XENC_NS + "EncryptedKey"
    )
    wrapper.append(key)
    assert decrypt_element(wrapper, [sp.key]).text == VICTIM


def test_only_the_addressed_recipient_can_decrypt(sp: Party, other_sp: Party) -> None:
    wrapper = encrypt_element(name_id_in_subject(), sp.certificate)
    refused(wrapper, [other_sp.key])
    assert decrypt_element(wrapper, [other_sp.key, sp.key]).text == VICTIM  # key rollover
    to_other = encrypt_element(name_id_in_subject(), other_sp.certificate)
    refused(to_other, [sp.key])
    assert decrypt_element(to_other, [other_sp.key]).text == VICTIM


# -- interoperability ------------------------------------------------------------------------
def test_python_xmlsec_decrypts_what_we_encrypt(sp: Party) -> None:
    wrapper = encrypt_element(name_id_in_subject(), sp.certificate)
    result = xmlsec_decrypt(etree.fromstring(etree.tostring(wrapper)), sp)
    assert result.tag == NAME_ID
    assert result.text == VICTIM
    assert result.get("Format") == PERSISTENT


def test_python_xmlsec_refuses_what_we_encrypted_for_someone_else(
    sp: Party, other_sp: Party
) -> None:
    """Control for the interop test: the independent implementation can say no."""
    wrapper = encrypt_element(name_id_in_subject(), other_sp.certificate)
    with pytest.raises(xmlsec.Error):
        xmlsec_decrypt(wrapper, sp)


@pytest.mark.parametrize(
    ("data", "key_size", "key_algorithm", "digest", "mgf"),
    [
        pytest.param(
            xmlsec.constants.TransformAes256Gcm, 256, RSA_OAEP, DIGEST_SHA256, MGF1_SHA256,
            id="aes256gcm-xenc11-oaep-sha256",
        ),
        pytest.param(
            xmlsec.constants.TransformAes128Gcm, 128, RSA_OAEP, DIGEST_SHA256, MGF1_SHA256,
            id="aes128gcm-xenc11-oaep-sha256",
        ),
        pytest.param(
            xmlsec.constants.TransformAes256Gcm, 256, None, DIGEST_SHA1, None,
            id="aes256gcm-mgf1p-sha1",
        ),
        pytest.param(
            xmlsec.constants.TransformAes256Gcm, 256, None, None, None,
            id="aes256gcm-mgf1p-default-digest",
        ),
    ],
)
def test_we_decrypt_what_python_xmlsec_encrypts(
    sp: Party, data, key_size: int, key_algorithm: str | None, digest: str | None,
    mgf: str | None,
) -> None:
    wrapper = xmlsec_encrypt(
        sp, data=data, key_size=key_size, key_algorithm=key_algorithm, digest=digest, mgf=mgf
    )
    assert wrapper.find("xenc:EncryptedData", NS) is not None
    assert xmlsec_decrypt(wrapper, sp).text == VICTIM  # control: a valid message
    result = decrypt_element(wrapper, [sp.key])
    assert (result.tag, result.text, result.get("Format")) == (NAME_ID, VICTIM, PERSISTENT)


@needs_xmlsec1
def test_we_decrypt_what_xmlsec1_encrypts(sp: Party, tmp_path: Path) -> None:
    """The xmlsec1 binary (libxmlsec1 1.2) knows only the rsa-oaep-mgf1p form of OAEP."""
    (tmp_path / "cert.pem").write_bytes(sp.cert_pem)
    (tmp_path / "key.pem").write_bytes(sp.key_pem)
    (tmp_path / "data.xml").write_bytes(name_id_xml())
    (tmp_path / "template.xml").write_text(
        f'<xenc:EncryptedData xmlns:xenc="{XENC_NS}" Type="{XENC_NS}Element">'
        f'<xenc:EncryptionMethod Algorithm="{AES256_GCM}"/>'
        f'<ds:KeyInfo xmlns:ds="{DS_NS}"><xenc:EncryptedKey>'
        f'<xenc:EncryptionMethod Algorithm="{RSA_OAEP_MGF1P}">'
        f'<ds:DigestMethod Algorithm="{DIGEST_SHA1}"/></xenc:EncryptionMethod>'
        "<xenc:CipherData><xenc:CipherValue/></xenc:CipherData></xenc:EncryptedKey>"
        "</ds:KeyInfo><xenc:CipherData><xenc:CipherValue/></xenc:CipherData>"
        "</xenc:EncryptedData>"
    )
    encrypted = subprocess.run(
        ["xmlsec1", "--encrypt", "--pubkey-cert-pem", "cert.pem", "--session-key", "aes-256",
         "--xml-data", "data.xml", "--node-name", f"{SAML_NS}:NameID", "template.xml"],
        cwd=tmp_path, capture_output=True, check=True,
    ).stdout
    (tmp_path / "encrypted.xml").write_bytes(encrypted)
    decrypted = subprocess.run(  # control: xmlsec1 reads its own output back
        ["xmlsec1", "--decrypt", "--privkey-pem", "key.pem", "encrypted.xml"],
        cwd=tmp_path, capture_output=True, check=True,
    ).stdout
    assert VICTIM.encode() in decrypted

    encrypted_data = etree.fromstring(encrypted)
    assert encrypted_data.tag == f"{{{XENC_NS}}}EncryptedData"
    assert VICTIM.encode() not in encrypted
    wrapper = etree.Element(ENCRYPTED_ID, nsmap={"saml": SAML_NS})
    wrapper.append(encrypted_data)
    result = decrypt_element(wrapper, [sp.key])
    assert (result.tag, result.text) == (NAME_ID, VICTIM)


# -- refusals: one error, one message --------------------------------------------------------
def _value_path(which: str) -> str:
    if which == "data":
        return "xenc:EncryptedData/xenc:CipherData/xenc:CipherValue"
    return "xenc:EncryptedData/ds:KeyInfo/xenc:EncryptedKey/xenc:CipherData/xenc:CipherValue"


def _mutate(
    which: str, change: Callable[[bytes], bytes]
) -> Callable[[Party], etree._Element]:
    def build(sp: Party) -> etree._Element:
        wrapper = encrypt_element(name_id_in_subject(), sp.certificate)
        node = wrapper.find(_value_path(which), NS)
        before = cipher_value(node)
        after = change(before)
        assert after != before
        node.text = b64(after)
        return wrapper

    return build


def _flip(index: int) -> Callable[[bytes], bytes]:
    def flip(value: bytes) -> bytes:
        changed = bytearray(value)
        changed[index] ^= 0x01
        return bytes(changed)

    return flip


def _forged(**changes: object) -> Callable[[Party], etree._Element]:
    return lambda sp: forge(sp, Forge(**changes))


def _edit(edit: Callable[[etree._Element], None]) -> Callable[[Party], etree._Element]:
    def build(sp: Party) -> etree._Element:
        wrapper = encrypt_element(name_id_in_subject(), sp.certificate)
        edit(wrapper)
        return wrapper

    return build


def _second_key_inside(wrapper: etree._Element) -> None:
    key = wrapper.find("xenc:EncryptedData/ds:KeyInfo/xenc:EncryptedKey", NS)
    key.addnext(copy.deepcopy(key))  # both are valid keys for the same data


def _second_key_beside(wrapper: etree._Element) -> None:
    key = wrapper.find("xenc:EncryptedData/ds:KeyInfo/xenc:EncryptedKey", NS)
    wrapper.append(copy.deepcopy(key))


def _second_encrypted_data(wrapper: etree._Element) -> None:
    wrapper.append(copy.deepcopy(wrapper[0]))


def _no_encrypted_key(wrapper: etree._Element) -> None:
    key_info = wrapper.find("xenc:EncryptedData/ds:KeyInfo", NS)
    key_info.getparent().remove(key_info)


def _set_type_content(wrapper: etree._Element) -> None:
    wrapper[0].set("Type", TYPE_CONTENT)


def _cipher_reference(wrapper: etree._Element) -> None:
    cipher_data = wrapper.find("xenc:EncryptedData/xenc:CipherData", NS)
    cipher_data.remove(cipher_data[0])
    etree.SubElement(cipher_data, f"{{{XENC_NS}}}CipherReference", URI="#_data")


def _comment_in_cipher_value(wrapper: etree._Element) -> None:
    node = wrapper.find(_value_path("data"), NS)
    text = node.text
    node.text = text[:8]
    comment = etree.Comment("x")
    comment.tail = text[8:]
    node.append(comment)


def _not_base64(wrapper: etree._Element) -> None:
    node = wrapper.find(_value_path("data"), NS)
    node.text = node.text[:-4] + "!!!!"


def _unexpected_wrapper_child(wrapper: etree._Element) -> None:
    etree.SubElement(wrapper, f"{{{SAML_NS}}}NameID").text = "admin@attacker.example"


def _relabel_data(algorithm: str) -> Callable[[etree._Element], None]:
    def edit(wrapper: etree._Element) -> None:
        wrapper.find("xenc:EncryptedData/xenc:EncryptionMethod", NS).set("Algorithm", algorithm)

    return edit


def _key_size_parameter(wrapper: etree._Element) -> None:
    method = wrapper.find("xenc:EncryptedData/xenc:EncryptionMethod", NS)
    etree.SubElement(method, f"{{{XENC_NS}}}KeySize").text = "256"


# Every entry is a message that must be refused; the name says why.
REFUSALS: dict[str, Callable[[Party], etree._Element]] = {
    # tampering with what we encrypted (GCM authenticates IV, ciphertext and tag)
    "flipped-iv-bit": _mutate("data", _flip(0)),
    "flipped-ciphertext-bit": _mutate("data", _flip(12)),
    "flipped-tag-bit": _mutate("data", _flip(-1)),
    "truncated-tag": _mutate("data", lambda value: value[:-1]),
    "truncated-to-iv-and-tag": _mutate("data", lambda value: value[:28]),
    "empty-data": _mutate("data", lambda value: b""),
    "flipped-encrypted-key-bit": _mutate("key", _flip(100)),
    "truncated-encrypted-key": _mutate("key", lambda value: value[:-1]),
    # refused algorithms, each in a correctly encrypted message
    "aes256-cbc": _forged(data_algorithm=AES256_CBC, cipher="cbc"),
    "aes128-cbc": _forged(data_algorithm=AES128_CBC, cipher="cbc", data_key_bytes=16),
    "gcm-data-labelled-cbc": _edit(_relabel_data(AES256_CBC)),
    "gcm-with-key-size-parameter": _edit(_key_size_parameter),
    "pkcs1-v1.5-key-transport": _forged(
        key_algorithm=RSA_1_5, key_padding="pkcs1", digest=None, mgf=None
    ),
    "pkcs1-v1.5-key-labelled-oaep": _forged(key_padding="pkcs1"),
    "xenc11-oaep-sha1": _forged(key_padding="oaep-sha1", digest=DIGEST_SHA1, mgf=MGF1_SHA1),
    "xenc11-oaep-default-mgf1sha1": _forged(key_padding="oaep-sha256-mgf1sha1", mgf=None),
    "xenc11-oaep-no-digest-method": _forged(key_padding="oaep-sha1", digest=None, mgf=None),
    "mgf1p-with-sha256-digest": _forged(
        key_algorithm=RSA_OAEP_MGF1P, key_padding="oaep-sha256-mgf1sha1", mgf=None
    ),
    "mgf1p-with-mgf-element": _forged(
        key_algorithm=RSA_OAEP_MGF1P, key_padding="oaep-sha1", digest=DIGEST_SHA1
    ),
    "oaep-with-label": _forged(oaep_params=b"label"),
    "aes128-key-for-aes256-gcm": _forged(data_key_bytes=16),
    # structure
    "two-encrypted-keys-in-key-info": _edit(_second_key_inside),
    "encrypted-key-inside-and-beside": _edit(_second_key_beside),
    "two-encrypted-keys-beside": _forged(encrypted_keys=0, sibling_keys=2),
    "two-encrypted-data": _edit(_second_encrypted_data),
    "no-encrypted-key": _edit(_no_encrypted_key),
    "type-content": _edit(_set_type_content),
    "cipher-reference": _edit(_cipher_reference),
    "comment-inside-cipher-value": _edit(_comment_in_cipher_value),
    "cipher-value-not-base64": _edit(_not_base64),
    "cleartext-child-beside-encrypted-data": _edit(_unexpected_wrapper_child),
    # hostile or wrong plaintext, correctly encrypted
    "doctype-in-plaintext": _forged(
        plaintext=b'<!DOCTYPE x [<!ENTITY e "admin@attacker.example">]>'
        + name_id_xml("&e;")
    ),
    "comment-inside-name-id": _forged(plaintext=name_id_xml("admin@attacker.example<!---->.city")),
    "processing-instruction": _forged(plaintext=b"<?evil x?>" + name_id_xml()),
    "plaintext-not-well-formed": _forged(plaintext=name_id_xml()[:-3]),
    "plaintext-two-elements": _forged(plaintext=name_id_xml() + name_id_xml()),
    "assertion-inside-encrypted-id": _forged(
        plaintext=f'<saml:Assertion xmlns:saml="{SAML_NS}" ID="_a" Version="2.0"/>'.encode()
    ),
    "name-id-inside-encrypted-assertion": _forged(wrapper=ENCRYPTED_ASSERTION),
}


@pytest.mark.parametrize("build", REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_with_the_one_uniform_error(sp: Party, build) -> None:
    wrapper = build(sp)
    error = refused(wrapper, [sp.key])
    assert isinstance(error, XMLSecurityError)
    refused(wrapper, [sp.key, sp.key])  # trying more keys changes nothing


def test_wrong_key_is_the_same_error(sp: Party, other_sp: Party) -> None:
    refused(encrypt_element(name_id_in_subject(), sp.certificate), [other_sp.key])


def test_doctype_refusal_comes_from_the_plaintext(sp: Party) -> None:
    """Control for the DOCTYPE case: the same plaintext without its DOCTYPE decrypts."""
    assert decrypt_element(forge(sp, Forge(plaintext=name_id_xml())), [sp.key]).text == VICTIM
    refused(forge(sp, Forge(plaintext=b"<!DOCTYPE x>" + name_id_xml())), [sp.key])


def test_libxmlsec_accepts_the_cbc_and_pkcs1_messages_renkei_refuses(sp: Party) -> None:
    """The refused algorithms are real, working XML Encryption: python-xmlsec decrypts them
    (so the refusal comes from the allow-list, not from a broken message)."""
    constants = xmlsec.constants
    cbc = xmlsec_encrypt(
        sp, data=constants.TransformAes256Cbc, key_algorithm=None, digest=None, mgf=None
    )
    pkcs1 = xmlsec_encrypt(
        sp, key_transport=constants.TransformRsaPkcs1, key_algorithm=None, digest=None, mgf=None
    )
    assert cbc.find("xenc:EncryptedData/xenc:EncryptionMethod", NS).get("Algorithm") == (
        AES256_CBC
    )
    key_method = "xenc:EncryptedData/ds:KeyInfo/xenc:EncryptedKey/xenc:EncryptionMethod"
    assert pkcs1.find(key_method, NS).get("Algorithm") == RSA_1_5
    for wrapper in (cbc, pkcs1):
        assert xmlsec_decrypt(wrapper, sp).text == VICTIM
        refused(wrapper, [sp.key])
    # and the same for the independent forger's CBC and PKCS#1 v1.5 messages
    for name in ("aes256-cbc", "pkcs1-v1.5-key-transport"):
        wrapper = REFUSALS[name](sp)
        assert xmlsec_decrypt(wrapper, sp).text == VICTIM
        refused(wrapper, [sp.key])


# -- API misuse ------------------------------------------------------------------------------
def test_encrypt_refuses_weak_or_wrong_recipients_and_wrappers(sp: Party) -> None:
    _, ec_certificate = attacks.make_key_and_certificate("ec", kind="ec")
    with pytest.raises(TypeError):
        encrypt_element(name_id_in_subject(), ec_certificate)
    with pytest.raises(TypeError):
        encrypt_element(name_id_in_subject(), sp.cert_pem)  # type: ignore[arg-type]
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    small_certificate = (
        x509.CertificateBuilder()
        .subject_name(sp.certificate.subject)
        .issuer_name(sp.certificate.subject)
        .public_key(small.public_key())
        .serial_number(1)
        .not_valid_before(sp.certificate.not_valid_before_utc)
        .not_valid_after(sp.certificate.not_valid_after_utc)
        .sign(small, hashes.SHA256())
    )
    with pytest.raises(ValueError):
        encrypt_element(name_id_in_subject(), small_certificate)
    with pytest.raises(ValueError):
        encrypt_element(name_id_in_subject(), sp.certificate, wrapper_tag=ENCRYPTED_ASSERTION)


def test_decrypt_refuses_a_lone_key_or_non_rsa_keys(sp: Party) -> None:
    wrapper = encrypt_element(name_id_in_subject(), sp.certificate)
    ec_key, _ = attacks.make_key_and_certificate("ec", kind="ec")
    for keys in (sp.key, [], [ec_key], b"key"):
        with pytest.raises(TypeError):
            decrypt_element(wrapper, keys)  # type: ignore[arg-type]
