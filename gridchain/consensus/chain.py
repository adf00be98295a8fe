"""The block tree: every valid block we know, cumulative work, fork choice and reorgs.

Pure bookkeeping over headers, no I/O: the node stores payloads elsewhere and hands the
chain whole blocks (``add``, which runs every rule) or, when rebuilding from its own store,
headers with the few payload facts the rules need (``add_trusted``).

Fork choice: the branch with the most cumulative work wins; on a tie the tip we saw first
stays. The main chain is kept as an array by height, so ``main_at``/``is_main`` are O(1);
a reorg of any depth moves only the entries that change sides, without recursion.

Last sequence number per relay, per branch: each entry records only its own block's relay,
last seq, newest reading time and relay key, plus a persistent map from relay to the newest
entry of that relay on its branch (what the sequence and relay-key rules look up). The map is a 16-way trie of tuples indexed by a dense
per-chain relay number, so a block shares all but one small tuple with its parent (~70
bytes for a handful of relays, one more per 16x as many) and a lookup is one tuple index
per level. A whole entry, header included, costs ~650 bytes: 100,000 blocks fit in ~65 MB.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gridchain.consensus import pow
from gridchain.consensus.block import Block, Capture, Header, short_hash
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation, check_block, check_context, check_encoded_size

# A block locator lists the newest 10 blocks one by one, then doubles the step back to
# genesis; 64 hashes reach back 2**54 blocks, far past any real chain.
LOCATOR_DENSE = 10
MAX_LOCATOR_HASHES = 64

_TRIE_BITS = 4  # 16-way nodes: a network of up to 16 relays needs a single tuple per block
_TRIE_MASK = (1 << _TRIE_BITS) - 1


class ChainEntry:
    """One block in the tree: its header, place, cumulative work and relay bookkeeping.

    ``relay_id``/``last_seq``/``newest_ms``/``relay_key`` describe this block's own capture
    (genesis: "", None, None, the network hash); ``seq`` is the arrival number. Use
    ``Chain.newest_of`` for the newest block of any relay on its branch.
    """

    __slots__ = ("hash", "height", "parent", "header", "work", "seq", "relay_id", "last_seq", "newest_ms",
                 "relay_key", "_relays", "_relays_depth")

    def __init__(self, block_hash: bytes, header: Header, parent: ChainEntry | None, work: int, seq: int,
                 relay_id: str, last_seq: int | None, newest_ms: int | None, relay_key: bytes,
                 relays: tuple, relays_depth: int) -> None:
        self.hash = block_hash
        self.height = header.height
        self.parent = parent
        self.header = header
        self.work = work
        self.seq = seq
        self.relay_id = relay_id
        self.last_seq = last_seq
        self.newest_ms = newest_ms
        self.relay_key = relay_key
        self._relays = relays
        self._relays_depth = relays_depth

    @property
    def time_ms(self) -> int:
        return self.header.time_ms

    def __repr__(self) -> str:
        return f"ChainEntry(height={self.height}, hash={short_hash(self.hash)}, work={self.work})"


@dataclass(frozen=True, slots=True)
class AddResult:
    """What adding one block did to the chain.

    status: "extended" (new tip on the old tip), "reorg" (the tip moved to another branch),
    "side" (stored off the main chain, tip unchanged) or "duplicate" (already known).
    ``disconnected``: entries that left the main chain, tip first (the order to undo them).
    ``connected``: entries that joined it, oldest first (for "extended", the new tip alone).
    """

    entry: ChainEntry
    status: str
    disconnected: tuple[ChainEntry, ...] = ()
    connected: tuple[ChainEntry, ...] = ()


def locator_heights(height: int) -> list[int]:
    """Heights a locator names from ``height`` down: 10 one by one, then doubling, then 0."""
    heights: list[int] = []
    step = 1
    while height > 0 and len(heights) < MAX_LOCATOR_HASHES - 1:
        heights.append(height)
        if len(heights) >= LOCATOR_DENSE:
            step *= 2
        height -= step
    heights.append(0)
    return heights


def median_time_ms(entry: ChainEntry, window: int) -> int:
    """Median time of the last ``window`` blocks ending at ``entry`` (fewer near genesis)."""
    times = []
    node: ChainEntry | None = entry
    while node is not None and len(times) < window:
        times.append(node.header.time_ms)
        node = node.parent
    times.sort()
    return times[len(times) // 2]


class Chain:
    """The block tree rooted at genesis, with the main chain by height and its tip."""

    def __init__(self, genesis: Block, params: NetworkParams) -> None:
        self.params = params
        self._seq = itertools.count()
        self._relay_numbers: dict[str, int] = {}  # dense numbers index the relay trie
        self._relay_names: list[str] = []
        self._keys: dict[bytes, bytes] = {}  # one bytes object per miner key, shared by headers
        root = ChainEntry(genesis.hash, genesis.header, None, 0, next(self._seq), genesis.capture.relay_id,
                          None, None, genesis.capture.relay_key, (), 0)
        self.genesis = root
        self._entries: dict[bytes, ChainEntry] = {root.hash: root}
        self._main: list[ChainEntry] = [root]

    # --- looking things up ----------------------------------------------------------------
    @property
    def tip(self) -> ChainEntry:
        return self._main[-1]

    @property
    def height(self) -> int:
        return len(self._main) - 1

    @property
    def genesis_hash(self) -> bytes:
        return self.genesis.hash

    def get(self, block_hash: bytes) -> ChainEntry | None:
        return self._entries.get(block_hash)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def main_at(self, height: int) -> ChainEntry | None:
        return self._main[height] if 0 <= height < len(self._main) else None

    def is_main(self, entry: ChainEntry) -> bool:
        return entry.height < len(self._main) and self._main[entry.height] is entry

    def fork_point(self, entry: ChainEntry) -> ChainEntry:
        """The newest main-chain ancestor of ``entry`` (itself if it is on the main chain)."""
        while not self.is_main(entry):
            entry = entry.parent  # genesis is always main, so this ends
        return entry

    def ancestor(self, entry: ChainEntry, height: int) -> ChainEntry:
        """The block at ``height`` on ``entry``'s branch (0 <= height <= entry.height)."""
        if not 0 <= height <= entry.height:
            raise ValueError(f"height {height} outside 0..{entry.height}")
        while entry.height > height and not self.is_main(entry):
            entry = entry.parent
        return entry if entry.height == height else self._main[height]

    def median_time_ms(self, entry: ChainEntry) -> int:
        return median_time_ms(entry, self.params.median_window)

    def newest_of(self, relay_id: str, entry: ChainEntry | None = None) -> ChainEntry | None:
        """The newest block carrying ``relay_id``'s readings on ``entry``'s branch (default: tip)."""
        number = self._relay_numbers.get(relay_id)
        if number is None:
            return None
        entry = self.tip if entry is None else entry
        return _trie_get(entry._relays, entry._relays_depth, number)

    def last_seq(self, relay_id: str, entry: ChainEntry | None = None) -> int | None:
        """The last sequence number of ``relay_id`` on ``entry``'s branch (None: none yet)."""
        newest = self.newest_of(relay_id, entry)
        return None if newest is None else newest.last_seq

    def relay_key(self, relay_id: str, entry: ChainEntry | None = None) -> bytes | None:
        """The relay key ``relay_id``'s readings carry on ``entry``'s branch (None: none yet)."""
        newest = self.newest_of(relay_id, entry)
        return None if newest is None else newest.relay_key

    def newest_reading_ms(self, relay_id: str, entry: ChainEntry | None = None) -> int | None:
        newest = self.newest_of(relay_id, entry)
        return None if newest is None else newest.newest_ms

    # --- sync helpers -----------------------------------------------------------------------
    def locator(self, entry: ChainEntry | None = None) -> list[bytes]:
        """Hashes back from ``entry`` (default tip): 10 one by one, then doubling, then genesis."""
        entry = self.tip if entry is None else entry
        hashes = []
        for height in locator_heights(entry.height):  # descending: each walk resumes where the last stopped
            entry = self.ancestor(entry, height)
            hashes.append(entry.hash)
        return hashes

    def find_fork(self, locator: list[bytes]) -> ChainEntry:
        """The first locator hash that is on our main chain; genesis if none is."""
        for block_hash in locator:
            entry = self._entries.get(block_hash)
            if entry is not None and self.is_main(entry):
                return entry
        return self.genesis

    def main_hashes_after(self, entry: ChainEntry, limit: int) -> list[bytes]:
        """Up to ``limit`` main-chain hashes after ``entry`` (after its fork point if it is not main)."""
        start = self.fork_point(entry).height + 1
        return [e.hash for e in self._main[start:start + max(0, limit)]]

    # --- adding blocks ----------------------------------------------------------------------
    def add(self, block: Block, now_ms: int, encoded_size: int | None = None,
            prechecked: bool = False) -> AddResult:
        """Validate ``block`` against every rule and link it; raises RuleViolation.

        The context-free rules run before the parent lookup, so a block whose parent is
        unknown ("unknown-parent", worth keeping as an orphan) has already proven its work
        and signature. ``prechecked`` says the caller has already seen
        ``check_block(block, self.params, now_ms)`` pass for this very block object (the
        ledger checks a sync batch in threads ahead of linking), so it is not run twice.
        """
        known = self._entries.get(block.hash)
        if known is not None:
            return AddResult(known, "duplicate")
        if encoded_size is not None:
            check_encoded_size(encoded_size)
        if not prechecked:
            check_block(block, self.params, now_ms)
        parent = self._entries.get(block.header.prev_hash)
        if parent is None:
            raise RuleViolation("unknown-parent", f"parent {short_hash(block.header.prev_hash)} of "
                                f"block {short_hash(block.hash)} at height {block.height} is unknown")
        capture = block.capture
        newest = self.newest_of(capture.relay_id, parent)
        check_context(block, parent.height, self.median_time_ms(parent),
                      None if newest is None else newest.last_seq,
                      None if newest is None else newest.relay_key)
        return self._link(parent, block.hash, block.header, capture.relay_id, capture.last_seq,
                          capture.newest_ms, capture.relay_key)

    def add_trusted(self, header: Header, relay_id: str, last_seq: int | None, newest_ms: int | None,
                    relay_key: bytes) -> AddResult:
        """Link a header from our own store: only the parent and height are checked.

        Adding the store's blocks in first-seen order reproduces the tip they had.
        """
        block_hash = header.hash()
        known = self._entries.get(block_hash)
        if known is not None:
            return AddResult(known, "duplicate")
        parent = self._entries.get(header.prev_hash)
        if parent is None:
            raise RuleViolation("unknown-parent", f"parent {short_hash(header.prev_hash)} is unknown")
        if header.height != parent.height + 1:
            raise RuleViolation("bad-height", f"height {header.height} on a parent at {parent.height}")
        return self._link(parent, block_hash, header, relay_id, last_seq, newest_ms, relay_key)

    def _link(self, parent: ChainEntry, block_hash: bytes, header: Header, relay_id: str,
              last_seq: int | None, newest_ms: int | None, relay_key: bytes) -> AddResult:
        header = self._compact(header, parent)
        relays, depth = parent._relays, parent._relays_depth
        relay_key = self._keys.setdefault(relay_key, relay_key)  # one bytes object per key
        if last_seq is not None:
            number = self._relay_number(relay_id)
            relay_id = self._relay_names[number]  # one string object per relay, shared by its entries
        entry = ChainEntry(block_hash, header, parent, parent.work + pow.work(header.bits), next(self._seq),
                           relay_id, last_seq, newest_ms, relay_key, relays, depth)
        if last_seq is not None:
            entry._relays, entry._relays_depth = _trie_set(relays, depth, number, entry)
        self._entries[block_hash] = entry
        tip = self._main[-1]
        if entry.work <= tip.work:  # a tie keeps the tip we saw first
            return AddResult(entry, "side")
        if parent is tip:
            self._main.append(entry)
            return AddResult(entry, "extended", (), (entry,))
        return self._reorg(entry)

    def undo(self, result: AddResult) -> None:
        """Take back an ``add`` whose block could not be stored; several adds go newest first."""
        if result.status == "duplicate":
            return
        entry = result.entry
        if self._entries.get(entry.hash) is not entry or entry.parent is None:
            raise ValueError(f"{entry!r} is not in this chain")
        if result.status in ("extended", "reorg") and self.tip is not entry:
            raise ValueError(f"{entry!r} is no longer the tip: undo newer adds first")
        if result.status == "extended":
            self._main.pop()
        elif result.status == "reorg":
            del self._main[result.connected[0].height:]
            self._main.extend(reversed(result.disconnected))
        del self._entries[entry.hash]

    def _reorg(self, entry: ChainEntry) -> AddResult:
        connected = []
        fork = entry
        while not self.is_main(fork):
            connected.append(fork)
            fork = fork.parent
        connected.reverse()
        disconnected = self._main[fork.height + 1:]
        disconnected.reverse()
        del self._main[fork.height + 1:]
        self._main.extend(connected)
        return AddResult(entry, "reorg", tuple(disconnected), tuple(connected))

    def _compact(self, header: Header, parent: ChainEntry) -> Header:
        # Share the parent's hash and one copy of each miner key instead of keeping the
        # decoder's fresh bytes objects: ~130 bytes less per entry on a long chain.
        key = self._keys.setdefault(header.miner_key, header.miner_key)
        if header.prev_hash is parent.hash and header.miner_key is key:
            return header
        return Header(header.version, header.height, parent.hash, header.payload_root,
                      header.time_ms, header.bits, key, header.nonce)

    def _relay_number(self, relay_id: str) -> int:
        number = self._relay_numbers.get(relay_id)
        if number is None:
            number = self._relay_numbers[relay_id] = len(self._relay_names)
            self._relay_names.append(relay_id)
        return number


# --- persistent relay trie ----------------------------------------------------------------
# A trie of tuples keyed by relay number: ``depth`` inner levels above the leaf level, each
# node a tuple of up to 16 slots (None where empty). Setting a slot copies one node per
# level and shares everything else with the parent entry's trie.

def _trie_get(node: tuple, depth: int, number: int) -> ChainEntry | None:
    if number >> (_TRIE_BITS * (depth + 1)):
        return None
    for shift in range(_TRIE_BITS * depth, -1, -_TRIE_BITS):
        slot = (number >> shift) & _TRIE_MASK
        if slot >= len(node) or node[slot] is None:
            return None
        node = node[slot]
    return node


def _trie_set(root: tuple, depth: int, number: int, value: ChainEntry) -> tuple[tuple, int]:
    while number >> (_TRIE_BITS * (depth + 1)):
        root = (root,)  # grow a level: the old trie becomes child 0
        depth += 1
    path = []
    node = root
    for shift in range(_TRIE_BITS * depth, 0, -_TRIE_BITS):
        slot = (number >> shift) & _TRIE_MASK
        path.append((node, slot))
        node = node[slot] if slot < len(node) and node[slot] is not None else ()
    new = _with_slot(node, number & _TRIE_MASK, value)
    for parent, parent_slot in reversed(path):
        new = _with_slot(parent, parent_slot, new)
    return new, depth


def _with_slot(node: tuple, slot: int, value: object) -> tuple:
    if slot < len(node):
        return node[:slot] + (value,) + node[slot + 1:]
    return node + (None,) * (slot - len(node)) + (value,)


# --- orphans ------------------------------------------------------------------------------
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

    def missing_parents(self) -> list[bytes]:
        """Parents we lack that no orphan supplies: what to ask peers for, oldest first."""
        return [parent for parent in self._children if parent not in self._blocks]

    def _remove(self, block_hash: bytes) -> Block:
        block, size = self._blocks.pop(block_hash)
        self.nbytes -= size
        siblings = self._children[block.prev_hash]
        siblings.remove(block_hash)
        if not siblings:
            del self._children[block.prev_hash]
        return block


# --- readings a reorg displaced -------------------------------------------------------------
def displaced_readings(disconnected_blocks: list[Block], last_seq_of: Callable[[str], int | None]) -> list[Capture]:
    """The sealed runs of blocks that left the main chain and that the new branch lacks.

    ``last_seq_of(relay_id)`` is the relay's last seq on the new branch; a seal wholly at or
    below it is on the new branch already and is left out. Seals stay whole, with the very
    readings and signatures the rules checked when their block was accepted, so what
    comes back is verified. One Capture per relay and per gap notice (a segment starts at
    each notice the new branch lacks), relays in the order they first appear, oldest first.
    """
    segments: list[Capture] = []
    current: dict[str, int] = {}  # relay -> index of its open segment
    for block in sorted(disconnected_blocks, key=lambda b: b.height):
        capture = block.capture
        kept = last_seq_of(capture.relay_id) or 0
        runs = [(seal, rows) for seal, rows in capture.runs() if seal.last_seq > kept]
        if not runs:
            continue
        gap = capture.gap if capture.gap is not None and capture.gap.resume_seq > kept else None
        index = current.get(capture.relay_id)
        if index is None or gap is not None:
            segments.append(Capture(capture.relay_id, capture.substation, capture.relay_key, gap=gap))
            index = current[capture.relay_id] = len(segments) - 1
        old = segments[index]
        segments[index] = Capture(old.relay_id, capture.substation, capture.relay_key,
                                  old.readings + tuple(r for _, rows in runs for r in rows),
                                  old.seals + tuple(seal for seal, _ in runs), old.gap)
    return segments
