"""LedgerDamaged: the one error a ledger raises when its store fails a check on open."""

from __future__ import annotations

from gridchain.consensus.errors import GridchainError
from gridchain.ledger.store import DB_FILE


class LedgerDamaged(GridchainError):
    """The stored chain fails a check; str() names the block and the reason on one line."""

    def __init__(self, block_hash_hex: str, height: int, reason: str) -> None:
        super().__init__(f"stored chain is damaged at height {height}, block {block_hash_hex}: {reason} "
                         f"(the node will not serve it; run `gridchain verify` for a full report, then "
                         f"restore the data dir from a backup or move {DB_FILE} aside to resync from peers)")
        self.block_hash_hex = block_hash_hex
        self.height = height
        self.reason = reason
