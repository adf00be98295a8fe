"""The genesis block: built by every node from (network name, difficulty) without talking.

Genesis is not mined and carries no signature: nobody makes it, every node derives it, and
its hash names the network in every peer handshake. So the proof-of-work and signature
rules apply from height 1 on.
"""

from __future__ import annotations

from gridchain.consensus.block import BLOCK_VERSION_GENESIS, SIGNATURE_SIZE, ZERO_HASH, Block, Capture, Header
from gridchain.consensus.merkle import payload_root

GENESIS_TIME_MS = 1_632_812_478_000  # 2021-09-28 07:01:18 UTC, the prototype's first capture
GENESIS_MINER_NAME = "genesis"


def make_genesis(network: str, bits: int) -> Block:
    capture = Capture(relay_id="", substation=f"gridchain network {network}", openings=0, readings=())
    header = Header(
        version=BLOCK_VERSION_GENESIS, height=0, prev_hash=ZERO_HASH,
        payload_root=payload_root(capture, GENESIS_MINER_NAME), time_ms=GENESIS_TIME_MS,
        bits=bits, miner_key=bytes(32), nonce=0,
    )
    return Block(header, bytes(SIGNATURE_SIZE), capture, GENESIS_MINER_NAME)
