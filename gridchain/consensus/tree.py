"""RFC 6962 Merkle trees: leaf and node hashing, roots, inclusion paths and their check.

Leaf hashes are SHA-256(0x00 || data) and interior nodes SHA-256(0x01 || left || right), so a
leaf can never be passed off as an interior node (the second-preimage attack RFC 6962 closes).
The tree shape is RFC 6962's: split at the largest power of two smaller than n. Both the
block payload (merkle.py) and the relay's seals (provenance.py) are trees of this one kind.
"""

from __future__ import annotations

import hashlib

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


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
    return root_from_path(leaf_hash(leaf_data), index, tree_size, proof) == root


def root_from_path(leaf: bytes, index: int, tree_size: int, proof: list[bytes]) -> bytes | None:
    """The root that leaf hash ``leaf`` at ``index`` and its audit path imply; None if malformed."""
    if not 0 <= index < tree_size:
        return None
    # RFC 9162 section 2.1.3.2 verification algorithm.
    fn, sn = index, tree_size - 1
    acc = leaf
    for sibling in proof:
        if sn == 0:
            return None
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
    return acc if sn == 0 else None
