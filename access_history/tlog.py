"""A transparency log's pure parts: RFC 9162 Merkle hashing and proofs, and C2SP signed notes.

No database and no settings: the hub builds its logs with these functions and an auditor
checks an export with the very same ones, offline. The formats are the ones existing
verifiers speak:
- leaves and nodes are hashed as RFC 6962/9162 §2.1.1 (`SHA-256(0x00 || data)`,
  `SHA-256(0x01 || left || right)`), proofs are RFC 9162 §2.1.3 (inclusion) and §2.1.4
  (consistency), in that document's order;
- checkpoints are C2SP tlog-checkpoint bodies (origin, tree size, base64 root hash) inside a
  C2SP signed-note with an Ed25519 signature, the format Go's `golang.org/x/mod/sumdb/note`
  opens; the verifier key reads `<name>+<hex key hash>+<base64 0x01||public key>`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
ED25519_ALG = b"\x01"  # signed-note key type of Ed25519
_EM_DASH = "\u2014"
MAX_NOTE_BYTES = 16 * 1024


class ProofInvalid(ValueError):
    """A proof, root or signed note does not verify."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split(size: int) -> int:
    """k of RFC 9162 §2.1.1: the largest power of two smaller than `size` (size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) from the leaves' hashes (RFC 9162 §2.1.1)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = split(len(leaf_hashes))
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


class Frontier:
    """MTH built leaf by leaf in O(log n) memory: the roots of the perfect subtrees the leaves so
    far decompose into, largest first (exactly RFC 9162's split at the largest power of two)."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, leaf: bytes) -> None:
        width, node = 1, leaf
        while self._stack and self._stack[-1][0] == width:
            node = node_hash(self._stack.pop()[1], node)
            width *= 2
        self._stack.append((width, node))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


# A source of subtree hashes: MTH(D[lo:hi]) for any range the proofs below ask for.
Subtree = Callable[[int, int], bytes]


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1, leaf-to-root order."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []

    def walk(m: int, lo: int, hi: int) -> None:
        if hi - lo <= 1:
            return
        k = split(hi - lo)
        if m < k:
            walk(m, lo, lo + k)
            path.append(subtree(lo + k, hi))
        else:
            walk(m - k, lo + k, hi)
            path.append(subtree(lo, lo + k))

    walk(index, 0, size)
    return path


def consistency_proof(old_size: int, new_size: int, subtree: Subtree) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 (SUBPROOF with b = true)."""
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    proof: list[bytes] = []

    def sub(m: int, lo: int, hi: int, complete: bool) -> None:
        n = hi - lo
        if m == n:
            if not complete:
                proof.append(subtree(lo, hi))
            return
        k = split(n)
        if m <= k:
            sub(m, lo, lo + k, complete)
            proof.append(subtree(lo + k, hi))
        else:
            sub(m - k, lo + k, hi, False)
            proof.append(subtree(lo, lo + k))

    sub(old_size, 0, new_size, True)
    return proof


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2; raises ProofInvalid unless `leaf` (a leaf hash) is at `index`."""
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofInvalid("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise ProofInvalid(f"leaf {index} is not included in the tree of size {size}")


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes,
                       new_root: bytes) -> None:
    """RFC 9162 §2.1.4.2; raises ProofInvalid unless the new tree extends the old one."""
    if old_size == new_size:
        if proof or old_root != new_root:
            raise ProofInvalid("two different trees of the same size")
        return
    if not 0 < old_size < new_size:
        raise ProofInvalid(f"a tree of size {new_size} cannot extend one of size {old_size}")
    if not proof:
        raise ProofInvalid("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofInvalid("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise ProofInvalid(f"the tree of size {new_size} does not extend the one of size {old_size}")


# --- a contiguous range of leaves ----------------------------------------------------------
# An export holds the leaves [start, end) of a tree of `size` leaves. The range proof is the
# hashes of the subtrees left and right of the range that the RFC 9162 recursion meets, in the
# recursion's order; the verifier runs the same recursion with the range's leaves and so
# recomputes the root. One function decides the order for both sides.

def _range_walk(start: int, end: int, size: int, inside: Callable[[int, int], bytes],
                outside: Callable[[int, int], bytes]) -> bytes:
    def mth(lo: int, hi: int) -> bytes:
        if hi <= start or lo >= end:
            return outside(lo, hi)
        if start <= lo and hi <= end:
            return inside(lo, hi)
        k = split(hi - lo)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    if not 0 <= start < end <= size:
        raise ValueError(f"no range [{start}, {end}) in a tree of size {size}")
    return mth(0, size)


def range_proof(start: int, end: int, size: int, subtree: Subtree) -> list[bytes]:
    """The hashes that, with the leaves [start, end), give the root of the tree of `size`."""
    proof: list[bytes] = []

    def outside(lo: int, hi: int) -> bytes:
        proof.append(subtree(lo, hi))
        return b""

    _range_walk(start, end, size, lambda lo, hi: b"", outside)
    return proof


def root_from_range(start: int, leaf_hashes: Sequence[bytes], size: int,
                    proof: Sequence[bytes]) -> bytes:
    """The root the leaves [start, start + len) and their range proof stand for."""
    given: Iterator[bytes] = iter(proof)

    def outside(_lo: int, _hi: int) -> bytes:
        try:
            return next(given)
        except StopIteration:
            raise ProofInvalid("the range proof is too short") from None

    root = _range_walk(start, start + len(leaf_hashes), size,
                       lambda lo, hi: root_of(leaf_hashes[lo - start:hi - start]), outside)
    if next(given, None) is not None:
        raise ProofInvalid("the range proof is too long")
    return root


def root_from_range_stream(start: int, end: int, size: int, leaves: Iterator[bytes],
                           proof: Sequence[bytes]) -> bytes:
    """`root_from_range` for leaves read one by one from an iterator, in O(log n) memory: the
    recursion visits the range's inside subtrees left to right, each over the next leaves."""
    given: Iterator[bytes] = iter(proof)

    def inside(lo: int, hi: int) -> bytes:
        frontier = Frontier()
        for _ in range(hi - lo):
            try:
                frontier.add(next(leaves))
            except StopIteration:
                raise ProofInvalid("fewer leaves than the range holds") from None
        return frontier.root()

    def outside(_lo: int, _hi: int) -> bytes:
        try:
            return next(given)
        except StopIteration:
            raise ProofInvalid("the range proof is too short") from None

    root = _range_walk(start, end, size, inside, outside)
    if next(given, None) is not None:
        raise ProofInvalid("the range proof is too long")
    for _ in leaves:  # let the source check what follows the range (its end)
        pass
    return root


# --- C2SP signed notes and checkpoints ------------------------------------------------------

def _key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALG + public_key).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ValueError(f"a note key name has no spaces or '+': {name!r}")


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The note verifier key `<name>+<hex hash>+<base64(0x01 || key)>` (C2SP signed-note)."""
    _check_name(name)
    raw = _raw_public(public_key)
    return f"{name}+{_key_hash(name, raw).hex()}+{base64.b64encode(ED25519_ALG + raw).decode()}"


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key_hash: bytes
    public_key: Ed25519PublicKey


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Read a verifier key; ProofInvalid if it is malformed or its hash does not match."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3 or len(parts[1]) != 8 or parts[1] != parts[1].lower():
        raise ProofInvalid("not a signed-note verifier key")
    name, hash_hex, b64 = parts
    try:
        _check_name(name)
        blob = base64.b64decode(b64, validate=True)
        key_hash = bytes.fromhex(hash_hex)
    except (ValueError, binascii.Error):
        raise ProofInvalid("not a signed-note verifier key") from None
    if len(blob) != 33 or blob[:1] != ED25519_ALG or _key_hash(name, blob[1:]) != key_hash:
        raise ProofInvalid("the verifier key's hash does not match its name and key")
    return NoteVerifier(name, key_hash, Ed25519PublicKey.from_public_bytes(blob[1:]))


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """`text` (ending in a newline) with one Ed25519 signature line by `name`."""
    _check_name(name)
    if not text.endswith("\n"):
        raise ValueError("a note's text ends with a newline")
    raw = _raw_public(private_key.public_key())
    signature = private_key.sign(text.encode())
    blob = base64.b64encode(_key_hash(name, raw) + signature).decode()
    return f"{text}\n{_EM_DASH} {name} {blob}\n"


def note_text(note: str) -> str:
    """A signed note's text, NOT verified (to read which checkpoint a file holds)."""
    text, sep, _signatures = note.rpartition("\n\n")
    if not sep:
        raise ProofInvalid("not a signed note")
    return text + "\n"


def open_note(note: str, verifier: NoteVerifier) -> str:
    """The note's text, if one of its signature lines is `verifier`'s and verifies."""
    if len(note.encode()) > MAX_NOTE_BYTES:
        raise ProofInvalid("the note is too large")
    text, sep, signatures = note.rpartition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise ProofInvalid("not a signed note")
    text += "\n"
    for line in signatures[:-1].split("\n"):
        dash, _, rest = line.partition(" ")
        name, _, blob = rest.partition(" ")
        if dash != _EM_DASH or not name or not blob:
            raise ProofInvalid("a malformed signature line")
        if name != verifier.name:
            continue
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error:
            raise ProofInvalid("a malformed signature line") from None
        if len(raw) != 68 or raw[:4] != verifier.key_hash:
            continue
        try:
            verifier.public_key.verify(raw[4:], text.encode())
        except InvalidSignature:
            raise ProofInvalid(f"the signature of {name} does not verify") from None
        return text
    raise ProofInvalid(f"the note carries no signature by {verifier.name}")


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint body: which log, how many leaves, and their root hash."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise ProofInvalid("not a checkpoint")
        try:
            size = int(lines[1])
            root = base64.b64decode(lines[2], validate=True)
        except (ValueError, binascii.Error):
            raise ProofInvalid("not a checkpoint") from None
        if str(size) != lines[1] or size < 0 or len(root) != 32:
            raise ProofInvalid("not a checkpoint")
        return cls(lines[0], size, root)


def open_checkpoint(note: str, verifier: NoteVerifier, origin: str | None = None) -> Checkpoint:
    """A signed checkpoint's content, once its signature verified (and its origin, if given)."""
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if origin is not None and checkpoint.origin != origin:
        raise ProofInvalid(f"the checkpoint is for the log {checkpoint.origin!r}, not {origin!r}")
    return checkpoint
