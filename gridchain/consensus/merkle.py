"""A block's payload tree: which leaves it has, its root, and the inclusion path of one reading.

Leaves (RFC 6962 leaf hashes, SHA-256(0x00 || data)): leaf 0 is the capture's metadata, leaf
i+1 is reading i's 108-byte signed row. The reading leaves are the very leaves of the relay's
seal trees (provenance.reading_leaf), so one hash serves both. The metadata leaf is the
canonical msgpack (shortest form of every int, str and bin; use_bin_type) of

    [relay_id, substation, relay_key, miner_name, [[first_seq, count, sig], ...],
     nil | [resume_seq, boot_ms, sig]]

The tree itself (hashing, shape, inclusion paths) is tree.py's.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from gridchain.consensus.block import Capture, gap_fields, seal_fields
from gridchain.consensus.tree import inclusion_proof, leaf_hash, merkle_root


def metadata_leaf(capture: Capture, miner_name: str) -> bytes:
    """Canonical bytes of everything in the payload that is not a reading."""
    return msgpack.packb([capture.relay_id, capture.substation, capture.relay_key, miner_name,
                          seal_fields(capture.seals), gap_fields(capture.gap)], use_bin_type=True)


def payload_leaves(capture: Capture, miner_name: str) -> list[bytes]:
    return [metadata_leaf(capture, miner_name)] + [r.to_bytes() for r in capture.readings]


def reading_leaves(capture: Capture) -> list[bytes]:
    """The leaf hashes of the capture's readings: shared by the payload tree and the seal trees."""
    return [leaf_hash(r.to_bytes()) for r in capture.readings]


def payload_root(capture: Capture, miner_name: str, leaves: Sequence[bytes] | None = None) -> bytes:
    """The root the header commits to; ``leaves`` are ``reading_leaves(capture)`` if already at hand."""
    if leaves is None:
        leaves = reading_leaves(capture)
    return merkle_root([leaf_hash(metadata_leaf(capture, miner_name)), *leaves])


def reading_proof(capture: Capture, miner_name: str, reading_index: int) -> list[bytes]:
    """Proof that reading ``reading_index`` of this payload is under its payload root."""
    hashes = [leaf_hash(leaf) for leaf in payload_leaves(capture, miner_name)]
    return inclusion_proof(hashes, reading_index + 1)
