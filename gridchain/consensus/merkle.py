"""Merkle payload root with RFC 6962 domain separation, and inclusion proofs of one reading.

Leaves of a block's payload: leaf 0 is the capture's metadata (relay id, substation,
openings counter, miner name); leaf i+1 is reading i's 88 canonical bytes. The tree itself
(hashing, shape, inclusion paths) is tree.py's.
"""

from __future__ import annotations

import struct

from gridchain.consensus.block import Capture
from gridchain.consensus.tree import inclusion_proof, leaf_hash, merkle_root


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


def reading_proof(capture: Capture, miner_name: str, reading_index: int) -> list[bytes]:
    """Proof that reading ``reading_index`` of this payload is under its payload root."""
    hashes = [leaf_hash(leaf) for leaf in payload_leaves(capture, miner_name)]
    return inclusion_proof(hashes, reading_index + 1)
