"""Network parameters: everything that makes one gridchain network different from another."""

from __future__ import annotations

from dataclasses import dataclass


# A block may be at most this far ahead of the receiving node's clock (DESIGN: 2 minutes).
MAX_FUTURE_MS = 2 * 60 * 1000
# A block's time must be after the median of this many previous blocks, as in Bitcoin.
MEDIAN_TIME_WINDOW = 11


@dataclass(frozen=True, slots=True)
class NetworkParams:
    """What every node of one network agrees on before it starts."""

    name: str
    bits: int  # fixed difficulty: required leading zero bits of each block hash
    # Permissioned networks list the Ed25519 keys allowed to mine; None accepts any key.
    members: frozenset[bytes] | None = None
    max_future_ms: int = MAX_FUTURE_MS
    median_window: int = MEDIAN_TIME_WINDOW
