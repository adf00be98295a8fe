"""Ed25519 verification of a miner's signature over a block hash (signing lives in keys.py)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def verify_signature(miner_key: bytes, signature: bytes, block_hash: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(miner_key).verify(signature, block_hash)
    except (InvalidSignature, ValueError):
        return False
    return True
