"""OrphanPool: blocks whose parent we lack, waiting for it to arrive (bounded)."""

from __future__ import annotations

from collections import OrderedDict

from gridchain.consensus.block import Block

# An orphan waits for its parent to arrive by sync; a sync answer holds at most a few
# thousand blocks, and a few MiB of strays is plenty to bridge a gap in gossip.
MAX_ORPHANS = 2048
MAX_ORPHAN_BYTES = 16 * 1024 * 1024


class OrphanPool:
    """Blocks whose parent we lack, bounded by count and bytes; the oldest go first."""

    def __init__(self, max_blocks: int = MAX_ORPHANS, max_bytes: int = MAX_ORPHAN_BYTES) -> None:
        self.max_blocks = max_blocks
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[bytes, tuple[Block, int]] = OrderedDict()  # oldest first
        self._children: dict[bytes, list[bytes]] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def has(self, block_hash: bytes) -> bool:
        return block_hash in self._blocks

    __contains__ = has

    def add(self, block: Block, size: int) -> bool:
        """Keep ``block`` (``size`` encoded bytes); False if already held or bigger than the pool."""
        if block.hash in self._blocks or size > self.max_bytes:
            return False
        while self._blocks and (len(self._blocks) >= self.max_blocks or self.nbytes + size > self.max_bytes):
            self._remove(next(iter(self._blocks)))
        self._blocks[block.hash] = (block, size)
        self._children.setdefault(block.prev_hash, []).append(block.hash)
        self.nbytes += size
        return True

    def pop_children(self, parent_hash: bytes) -> list[Block]:
        """Remove and return the orphans whose parent is ``parent_hash``, oldest first."""
        hashes = self._children.get(parent_hash, ())
        return [self._remove(h) for h in list(hashes)]

    def _remove(self, block_hash: bytes) -> Block:
        block, size = self._blocks.pop(block_hash)
        self.nbytes -= size
        siblings = self._children[block.prev_hash]
        siblings.remove(block_hash)
        if not siblings:
            del self._children[block.prev_hash]
        return block


