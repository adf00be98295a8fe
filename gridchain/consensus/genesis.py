"""The genesis block: built by every node from its network parameters without talking.

Genesis is not mined and carries no signature: nobody makes it, every node derives it, and
its hash names the network in every peer handshake. Its capture commits to the network
document: relay_id "", substation "gridchain network <name>", relay_key = network_hash
(SHA-256 of the canonical network document), no readings, seals or gap; so a different
name, difficulty, member or relay list gives a different genesis. The proof-of-work and
signature rules apply from height 1 on.
"""

from __future__ import annotations

from gridchain.consensus.block import BLOCK_VERSION_GENESIS, SIGNATURE_SIZE, ZERO_HASH, Block, Capture, Header
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.params import NetworkParams

GENESIS_TIME_MS = 1_632_812_478_000  # 2021-09-28 07:01:18 UTC, the prototype's first capture
GENESIS_MINER_NAME = "genesis"


def make_genesis(params: NetworkParams | str, bits: int | None = None) -> Block:
    """The genesis of ``params`` (or, as a shorthand, of the open network ``(name, bits)``)."""
    if isinstance(params, str):
        if bits is None:
            raise TypeError("make_genesis(name, bits) needs the difficulty")
        params = NetworkParams(params, bits)
    capture = Capture(relay_id="", substation=f"gridchain network {params.name}", relay_key=params.network_hash)
    header = Header(
        version=BLOCK_VERSION_GENESIS, height=0, prev_hash=ZERO_HASH,
        payload_root=payload_root(capture, GENESIS_MINER_NAME), time_ms=GENESIS_TIME_MS,
        bits=params.bits, miner_key=bytes(32), nonce=0,
    )
    return Block(header, bytes(SIGNATURE_SIZE), capture, GENESIS_MINER_NAME)
