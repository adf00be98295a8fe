"""Building a block to mine: the header template on a parent, then sealing it once mined.

The template's time is the local clock, raised just past the median time of the parent's
recent blocks when the clock lags behind them, so a node with a slow clock still builds
blocks the rules accept (time-too-old never fires on our own template).
"""

from __future__ import annotations

from collections.abc import Callable

from gridchain.consensus.block import BLOCK_VERSION, Block, Capture, Header
from gridchain.consensus.chain import ChainEntry, median_time_ms
from gridchain.consensus.merkle import payload_root
from gridchain.consensus.params import NetworkParams


def block_template(parent: ChainEntry, capture: Capture, miner_name: str, miner_key: bytes,
                   params: NetworkParams, now_ms: int) -> Header:
    """The header of a block carrying ``capture`` on ``parent``, nonce 0, ready for pow.mine."""
    return Header(
        version=BLOCK_VERSION,
        height=parent.height + 1,
        prev_hash=parent.hash,
        payload_root=payload_root(capture, miner_name),
        time_ms=max(now_ms, median_time_ms(parent, params.median_window) + 1),
        bits=params.bits,
        miner_key=miner_key,
        nonce=0,
    )


def seal(header: Header, nonce: int, capture: Capture, miner_name: str,
         sign: Callable[[bytes], bytes]) -> Block:
    """The finished block: ``header`` with the mined ``nonce``, signed over its hash."""
    mined = header.with_nonce(nonce)
    return Block(mined, sign(mined.hash()), capture, miner_name)
