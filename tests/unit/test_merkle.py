"""Merkle root and inclusion proofs against a recursive RFC 6962 reference."""

from __future__ import annotations

import hashlib

import pytest

from gridchain.consensus.block import Capture
from gridchain.consensus.merkle import metadata_leaf, payload_leaves, payload_root, reading_leaves, reading_proof
from gridchain.consensus.provenance import reading_leaf, seal_root
from gridchain.consensus.tree import inclusion_proof, leaf_hash, merkle_root, node_hash, verify_inclusion

from tests.support.blocks import RELAY_KEY, capture


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written as the RFC states it."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])).digest()


def reference_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1 PATH(m, D[n])."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return reference_path(m, leaves[:k]) + [reference_root(leaves[k:])]
    return reference_path(m - k, leaves[k:]) + [reference_root(leaves[:k])]


def leaves_of(n: int) -> list[bytes]:
    return [f"leaf {i}".encode() for i in range(n)]


def test_leaf_and_node_are_domain_separated():
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    # An interior node's bytes offered as a leaf do not reproduce the node's hash.
    left, right = leaf_hash(b"l"), leaf_hash(b"r")
    assert leaf_hash(left + right) != node_hash(left, right)


@pytest.mark.parametrize("n", range(0, 41))
def test_root_matches_reference(n):
    leaves = leaves_of(n)
    assert merkle_root([leaf_hash(leaf) for leaf in leaves]) == reference_root(leaves)


@pytest.mark.parametrize("n", range(1, 41))
def test_every_proof_verifies_and_matches_reference(n):
    leaves = leaves_of(n)
    hashes = [leaf_hash(leaf) for leaf in leaves]
    root = reference_root(leaves)
    for index in range(n):
        proof = inclusion_proof(hashes, index)
        assert proof == reference_path(index, leaves)
        assert verify_inclusion(leaves[index], index, n, proof, root)


@pytest.mark.parametrize("n", range(1, 41))
def test_tampered_proofs_fail(n):
    leaves = leaves_of(n)
    hashes = [leaf_hash(leaf) for leaf in leaves]
    root = reference_root(leaves)
    for index in range(n):
        proof = inclusion_proof(hashes, index)
        assert not verify_inclusion(leaves[index] + b"!", index, n, proof, root)
        assert not verify_inclusion(leaves[index], index, n, proof, root[::-1])
        for j in range(len(proof)):
            flipped = proof[:j] + [bytes([proof[j][0] ^ 1]) + proof[j][1:]] + proof[j + 1:]
            assert not verify_inclusion(leaves[index], index, n, flipped, root)
        if proof:
            assert not verify_inclusion(leaves[index], index, n, proof[:-1], root)
        assert not verify_inclusion(leaves[index], index, n, proof + [root], root)
        for other in {index - 1, index + 1} & set(range(n)):
            assert not verify_inclusion(leaves[index], other, n, proof, root)
        assert not verify_inclusion(leaves[index], n, n, proof, root)
        assert not verify_inclusion(leaves[index], -1, n, proof, root)


def test_proof_index_out_of_range():
    with pytest.raises(IndexError):
        inclusion_proof([leaf_hash(b"a")], 1)
    with pytest.raises(IndexError):
        inclusion_proof([], 0)


def test_payload_root_and_reading_proofs():
    cap = capture(count=7)
    leaves = payload_leaves(cap, "alice")
    assert leaves[0] == metadata_leaf(cap, "alice") and leaves[1:] == [r.to_bytes() for r in cap.readings]
    root = payload_root(cap, "alice")
    assert root == reference_root(leaves)
    for i, reading in enumerate(cap.readings):
        proof = reading_proof(cap, "alice", i)
        assert verify_inclusion(reading.to_bytes(), i + 1, len(leaves), proof, root)
        assert not verify_inclusion(cap.readings[(i + 1) % 7].to_bytes(), i + 1, len(leaves), proof, root)


def test_empty_capture_root_covers_metadata():
    empty = Capture("relay-1", "North", RELAY_KEY.public_key)
    assert payload_root(empty, "alice") == leaf_hash(metadata_leaf(empty, "alice"))


def test_reading_leaves_are_the_seal_trees_leaves():
    """One hash per reading serves the block's payload tree and the relay's seal tree."""
    cap = capture(count=7)
    leaves = reading_leaves(cap)
    assert leaves == [reading_leaf(r) for r in cap.readings]
    assert merkle_root(leaves) == seal_root(cap.readings)
    assert payload_root(cap, "alice", leaves) == payload_root(cap, "alice")


def test_metadata_leaf_is_canonical_msgpack_of_the_rest():
    import msgpack

    cap = capture()
    seal = cap.seals[0]
    assert msgpack.unpackb(metadata_leaf(cap, "alice")) == [
        "relay-1", "North", RELAY_KEY.public_key, "alice", [[seal.first_seq, seal.count, seal.signature]], None]
