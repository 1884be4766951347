"""The transparency log's pure parts against published vectors and an independent reference:
RFC 6962's test tree (the Certificate Transparency vectors), RFC 9162 proofs, and the C2SP
signed note of Go's golang.org/x/mod/sumdb/note documentation."""
from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from access_history import tlog

pytestmark = pytest.mark.nodb

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
H = [tlog.leaf_hash(x) for x in LEAVES]


def hx(*values: str) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def reference_mth(leaf_hashes: list[bytes]) -> bytes:
    """A second, differently shaped MTH: a bottom-up stack (the shape Go's tlog uses), so the
    recursive `root_of` is checked against something other than itself."""
    if not leaf_hashes:
        return hashlib.sha256(b"").digest()
    stack: list[tuple[int, bytes]] = []
    for h in leaf_hashes:
        level, node = 0, h
        while stack and stack[-1][0] == level:
            node = tlog.node_hash(stack.pop()[1], node)
            level += 1
        stack.append((level, node))
    node = stack.pop()[1]
    while stack:
        node = tlog.node_hash(stack.pop()[1], node)
    return node


def subtree_of(hashes: list[bytes]):
    return lambda lo, hi: tlog.root_of(hashes[lo:hi])


def test_roots_match_rfc6962_vectors():
    for size, want in enumerate(ROOTS):
        assert tlog.root_of(H[:size]) == want
        assert reference_mth(H[:size]) == want


def test_published_inclusion_and_consistency_proofs():
    sub = subtree_of(H)
    assert tlog.inclusion_proof(0, 8, sub) == hx(
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")
    assert tlog.inclusion_proof(5, 8, sub) == hx(
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")
    assert tlog.consistency_proof(2, 5, sub) == hx(
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")
    assert tlog.consistency_proof(1, 8, sub) == hx(
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")


def test_every_proof_of_every_shape_verifies_and_tampering_fails():
    hashes = [tlog.leaf_hash(i.to_bytes(2, "big")) for i in range(37)]
    for n in range(1, len(hashes) + 1):
        sub, root = subtree_of(hashes[:n]), reference_mth(hashes[:n])
        for i in range(n):
            proof = tlog.inclusion_proof(i, n, sub)
            tlog.verify_inclusion(hashes[i], i, n, proof, root)
            with pytest.raises(tlog.ProofInvalid):
                tlog.verify_inclusion(hashes[i], (i + 1) % n if n > 1 else 1, n, proof, root)
        for m in range(1, n + 1):
            proof = tlog.consistency_proof(m, n, sub)
            tlog.verify_consistency(m, n, proof, reference_mth(hashes[:m]), root)
            if m < n:
                with pytest.raises(tlog.ProofInvalid):
                    tlog.verify_consistency(m, n, proof, reference_mth(hashes[1:m + 1]), root)


def test_a_range_and_its_proof_give_the_root():
    hashes = [tlog.leaf_hash(bytes([i])) for i in range(23)]
    for size in (1, 2, 7, 8, 9, 23):
        sub, root = subtree_of(hashes[:size]), reference_mth(hashes[:size])
        for start in range(size):
            for end in range(start + 1, size + 1):
                proof = tlog.range_proof(start, end, size, sub)
                assert tlog.root_from_range(start, hashes[start:end], size, proof) == root
    proof = tlog.range_proof(3, 9, 23, subtree_of(hashes))
    forged = list(hashes[3:9])
    forged[2] = tlog.leaf_hash(b"forged")
    assert tlog.root_from_range(3, forged, 23, proof) != reference_mth(hashes)
    with pytest.raises(tlog.ProofInvalid):
        tlog.root_from_range(3, hashes[3:9], 23, proof[:-1])


GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def test_signed_notes_match_go_sumdb_note():
    seed = base64.b64decode(GO_SIGNER.split("+", 4)[4])[1:]
    key = Ed25519PrivateKey.from_private_bytes(seed)
    assert tlog.verifier_key("PeterNeumann", key.public_key()) == GO_VKEY
    assert tlog.sign_note(GO_TEXT, "PeterNeumann", key) == GO_NOTE
    verifier = tlog.parse_verifier_key(GO_VKEY)
    assert tlog.open_note(GO_NOTE, verifier) == GO_TEXT
    with pytest.raises(tlog.ProofInvalid):
        tlog.open_note(GO_NOTE.replace("cryptography", "cryptographY"), verifier)
    with pytest.raises(tlog.ProofInvalid):
        tlog.parse_verifier_key(GO_VKEY.replace("c74f20a3", "c74f20a4"))


def test_checkpoint_round_trip_and_origin():
    key = Ed25519PrivateKey.generate()
    body = tlog.Checkpoint("renkei.example/access", 8, ROOTS[8]).body()
    note = tlog.sign_note(body, "renkei.example", key)
    verifier = tlog.parse_verifier_key(tlog.verifier_key("renkei.example", key.public_key()))
    assert tlog.open_checkpoint(note, verifier, "renkei.example/access") == tlog.Checkpoint(
        "renkei.example/access", 8, ROOTS[8])
    with pytest.raises(tlog.ProofInvalid):
        tlog.open_checkpoint(note, verifier, "renkei.example/operations")
    with pytest.raises(tlog.ProofInvalid):
        tlog.open_checkpoint(note.replace("\n8\n", "\n9\n"), verifier)
