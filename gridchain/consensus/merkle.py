"""Merkle payload root with RFC 6962 domain separation, and inclusion proofs of one reading.

Leaves of a block's payload: leaf 0 is the capture's metadata (relay id, substation,
openings counter, miner name); leaf i+1 is reading i's 88 canonical bytes. Leaf hashes are
SHA-256(0x00 || data) and interior nodes SHA-256(0x01 || left || right), so a leaf can
never be passed off as an interior node (the second-preimage attack RFC 6962 closes).
The tree shape is RFC 6962's: split at the largest power of two smaller than n.
"""

from __future__ import annotations

import hashlib
import struct

from gridchain.consensus.block import Capture

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">H", len(raw)) + raw


def metadata_leaf(capture: Capture, miner_name: str) -> bytes:
    """Canonical bytes of everything in the payload that is not a reading."""
    return (_text(capture.relay_id) + _text(capture.substation)
            + struct.pack(">Q", capture.openings) + _text(miner_name))


def payload_leaves(capture: Capture, miner_name: str) -> list[bytes]:
    return [metadata_leaf(capture, miner_name)] + [r.to_bytes() for r in capture.readings]


def payload_root(capture: Capture, miner_name: str) -> bytes:
    return merkle_root([leaf_hash(leaf) for leaf in payload_leaves(capture, miner_name)])


def merkle_root(hashes: list[bytes]) -> bytes:
    """Root over already-hashed leaves (iterative, so deep trees never hit recursion limits)."""
    if not hashes:
        return hashlib.sha256(b"").digest()  # RFC 6962's root of the empty tree
    # Pairing left to right and promoting a lone last node gives exactly RFC 6962's shape.
    level = hashes
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(hashes: list[bytes], index: int) -> list[bytes]:
    """RFC 6962 audit path for leaf ``index`` among the leaf hashes, leaf side first."""
    if not 0 <= index < len(hashes):
        raise IndexError(f"leaf {index} outside a tree of {len(hashes)}")
    path: list[bytes] = []
    lo, hi = 0, len(hashes)
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(merkle_root(hashes[lo + k:hi]))
            hi = lo + k
        else:
            path.append(merkle_root(hashes[lo:lo + k]))
            lo = lo + k
    return path[::-1]


def verify_inclusion(leaf_data: bytes, index: int, tree_size: int, proof: list[bytes], root: bytes) -> bool:
    """True when ``leaf_data`` is leaf ``index`` of a tree of ``tree_size`` with this root."""
    if not 0 <= index < tree_size:
        return False
    # RFC 9162 section 2.1.3.2 verification algorithm.
    fn, sn = index, tree_size - 1
    acc = leaf_hash(leaf_data)
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            acc = node_hash(sibling, acc)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            acc = node_hash(acc, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and acc == root


def reading_proof(capture: Capture, miner_name: str, reading_index: int) -> list[bytes]:
    """Proof that reading ``reading_index`` of this payload is under its payload root."""
    hashes = [leaf_hash(leaf) for leaf in payload_leaves(capture, miner_name)]
    return inclusion_proof(hashes, reading_index + 1)
