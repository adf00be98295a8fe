"""The block tree: every valid block we know, cumulative work, fork choice and reorgs.

Pure bookkeeping over headers, no I/O: the node stores payloads elsewhere and hands the
chain whole blocks (``add``, which runs every rule) or, when rebuilding from its own store,
headers with the few payload facts the rules need (``add_trusted``).

Fork choice: the branch with the most cumulative work wins; on a tie the tip we saw first
stays. The main chain is kept as an array by height, so ``main_at``/``is_main`` are O(1);
a reorg of any depth moves only the entries that change sides, without recursion.

With finality (a network with members; ``Chain.finality``, a FinalityState the ledger
attaches; consensus/finality.py) the key is (height of the highest justified checkpoint on
the branch, work): the branch holding the highest justified checkpoint wins, then the most
work, then the tip seen first. A block that is not on the finalized block's branch is
refused ``conflicts-finalized`` whatever its work, and no reorg disconnects the finalized
block. An extension of the tip always wins (its branch holds all the tip's checkpoints and
more work), so ``add`` of one costs a single O(1) finality check more (is the finalized
block on its branch) and ``add_trusted`` nothing more; only a block off the tip asks the
finality state for justified checkpoints. When justification changes, ``reconsider``
moves the tip if another branch now wins; after a finalization ``conflicting`` names the
side entries to prune (bounded storage) and ``remove`` drops them. The side entries (not
on the main chain) are kept in a dict, so both look only at them.

Sequence state per relay, per branch: each entry records its own block's relay, last seq,
newest reading time and relay key, the branch's state of that relay once the block is on it
(highest seq, its reading's time, the open gap ranges: rules.gaps_after), plus a persistent
map from relay to the newest entry of that relay on its branch (what the sequence, fill and
relay-key rules look up). A block that neither opens nor fills a gap shares its parent's
gap tuple, so the state stays O(1) per block. The map is a 16-way trie of tuples indexed by a dense
per-chain relay number, so a block shares all but one small tuple with its parent (~70
bytes for a handful of relays, one more per 16x as many) and a lookup is one tuple index
per level. A whole entry, header included, costs ~675 bytes: 100,000 blocks fit in ~68 MB.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gridchain.consensus import pow
from gridchain.consensus.block import Block, Capture, Header, short_hash
from gridchain.consensus.finality import Checkpoint, FinalityState
from gridchain.consensus.orphans import MAX_ORPHAN_BYTES, MAX_ORPHANS, OrphanPool
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.relay_trie import trie_get as _trie_get, trie_set as _trie_set
from gridchain.consensus.rules import (
    GapRanges, RuleViolation, check_block, check_context, check_encoded_size, gaps_after, open_gap_of,
)

__all__ = [  # OrphanPool and the trie live in their own modules; imported here as before
    "AddResult", "CONFLICTS_FINALIZED", "Chain", "ChainEntry", "MAX_ORPHANS", "MAX_ORPHAN_BYTES", "OrphanPool",
    "displaced_readings", "locator_heights", "median_time_ms",
]

# A block locator lists the newest 10 blocks one by one, then doubles the step back to
# genesis; 64 hashes reach back 2**54 blocks, far past any real chain.
LOCATOR_DENSE = 10
MAX_LOCATOR_HASHES = 64

# Hashes of pruned blocks remembered, so that a child of one is refused as conflicting with
# the finalized block at once instead of waiting as an orphan for a parent we threw away.
MAX_PRUNED_REMEMBERED = 4096
CONFLICTS_FINALIZED = "conflicts-finalized"



class ChainEntry:
    """One block in the tree: its header, place, cumulative work and relay bookkeeping.

    ``relay_id``/``last_seq``/``newest_ms``/``relay_key`` describe this block's own capture
    (genesis: "", None, None, the network hash); ``branch_last_seq``/``branch_newest_ms``/
    ``gaps`` are that relay's highest seq, its reading's time and the open gap ranges on the
    branch up to this block (a fill's own last seq is below the branch's). ``seq`` is the
    arrival number. Use ``Chain.newest_of`` for the newest block of any relay on its branch.
    """

    __slots__ = ("hash", "height", "parent", "header", "work", "seq", "relay_id", "last_seq", "newest_ms",
                 "relay_key", "branch_last_seq", "branch_newest_ms", "gaps", "_relays", "_relays_depth")

    def __init__(self, block_hash: bytes, header: Header, parent: ChainEntry | None, work: int, seq: int,
                 relay_id: str, last_seq: int | None, newest_ms: int | None, relay_key: bytes,
                 relays: tuple, relays_depth: int, branch: tuple[int | None, int | None, GapRanges] = (None, None, ())
                 ) -> None:
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
        self.branch_last_seq, self.branch_newest_ms, self.gaps = branch
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
    ``Chain.reconsider`` returns a "reorg" too: ``entry`` is the new tip, already in the tree.
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

    def __init__(self, genesis: Block, params: NetworkParams, finality: FinalityState | None = None) -> None:
        self.params = params
        # The finality state fork choice asks (None: work alone, as on an open network).
        # Whoever feeds it votes calls ``reconsider`` after each change it reports.
        self.finality = finality
        self._seq = itertools.count()
        self._relay_numbers: dict[str, int] = {}  # dense numbers index the relay trie
        self._relay_names: list[str] = []
        self._keys: dict[bytes, bytes] = {}  # one bytes object per miner key, shared by headers
        root = ChainEntry(genesis.hash, genesis.header, None, 0, next(self._seq), genesis.capture.relay_id,
                          None, None, genesis.capture.relay_key, (), 0)
        self.genesis = root
        self._entries: dict[bytes, ChainEntry] = {root.hash: root}
        self._main: list[ChainEntry] = [root]
        self._side: dict[bytes, ChainEntry] = {}  # entries off the main chain
        self._pruned: OrderedDict[bytes, None] = OrderedDict()  # recently pruned hashes, oldest first

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
        """The highest sequence number of ``relay_id`` on ``entry``'s branch (None: none yet)."""
        newest = self.newest_of(relay_id, entry)
        return None if newest is None else newest.branch_last_seq

    def open_gaps(self, relay_id: str, entry: ChainEntry | None = None) -> GapRanges:
        """The open gap ranges of ``relay_id`` on ``entry``'s branch: relay-signed holes a
        block may still fill, (first, last) inclusive, ascending."""
        newest = self.newest_of(relay_id, entry)
        return () if newest is None else newest.gaps

    def relay_key(self, relay_id: str, entry: ChainEntry | None = None) -> bytes | None:
        """The relay key ``relay_id``'s readings carry on ``entry``'s branch (None: none yet)."""
        newest = self.newest_of(relay_id, entry)
        return None if newest is None else newest.relay_key

    def newest_reading_ms(self, relay_id: str, entry: ChainEntry | None = None) -> int | None:
        """The time of ``relay_id``'s highest-seq reading on ``entry``'s branch (None: none yet)."""
        newest = self.newest_of(relay_id, entry)
        return None if newest is None else newest.branch_newest_ms

    # --- finality ---------------------------------------------------------------------------
    def ancestor_at(self, block_hash: bytes, height: int) -> bytes | None:
        """The finality state's AncestorAt: the hash at ``height`` on the branch ending at
        ``block_hash`` (itself at its own height); None if unknown or above it. O(1) on the
        main chain; off it, a walk down to the fork point."""
        entry = self._entries.get(block_hash)
        if entry is None or not 0 <= height <= entry.height:
            return None
        return self.ancestor(entry, height).hash

    @property
    def finalized(self) -> ChainEntry:
        """The newest finalized block (genesis with finality off): no reorg disconnects it."""
        if self.finality is None:
            return self.genesis
        return self._entries.get(self.finality.finalized.hash, self.genesis)

    def justified_of(self, entry: ChainEntry | None = None) -> Checkpoint:
        """The highest justified checkpoint on ``entry``'s branch (default: the tip); genesis if none."""
        entry = self.tip if entry is None else entry
        if self.finality is None:
            return Checkpoint(0, self.genesis.hash)
        return self.finality.highest_justified(entry.hash, entry.height, self.ancestor_at)

    def side_entries(self) -> list[ChainEntry]:
        """The entries off the main chain, in the order they went there."""
        return list(self._side.values())

    def reconsider(self) -> AddResult | None:
        """Move the main chain to the branch fork choice prefers now that justification
        changed; the "reorg" AddResult, or None when the tip stays. Only side leaves on the
        finalized block's branch are candidates, so the finalized block stays main (or, if
        it was finalized on a side branch, becomes main)."""
        if self.finality is None or not self._side:
            return None
        final = self.finalized
        parents = {entry.parent.hash for entry in self._side.values()}
        tip = self.tip
        best, best_key = tip, self._key(tip)
        for entry in self._side.values():
            if entry.hash in parents:
                continue  # not a leaf: its child's branch holds everything it holds, and more work
            if entry.height < final.height or self.ancestor(entry, final.height) is not final:
                continue  # not on the finalized block's branch: never a candidate
            key = self._key(entry)
            if key > best_key or (key == best_key and best is not tip and entry.seq < best.seq):
                best, best_key = entry, key
        return None if best is tip else self._reorg(best, finality_moved=True)

    def undo_reconsider(self, result: AddResult) -> None:
        """Take back a ``reconsider`` whose main-chain change could not be stored."""
        if self.tip is not result.entry:
            raise ValueError(f"{result.entry!r} is no longer the tip")
        self._restore_main(result)
        self._side[result.entry.hash] = result.entry

    def conflicting(self) -> list[ChainEntry]:
        """Side entries whose branch does not hold the finalized block, lowest first: what
        pruning removes. Empty while the finalized block is not on the main chain (call
        ``reconsider`` first). One pass over the side entries in height order: an entry
        conflicts if it is at or below the finalized height or its parent conflicts."""
        if self.finality is None or not self._side:
            return []
        final = self.finalized
        if not self.is_main(final):
            return []
        doomed: set[bytes] = set()
        found = []
        for entry in sorted(self._side.values(), key=lambda e: e.height):
            if entry.height <= final.height or entry.parent.hash in doomed:
                doomed.add(entry.hash)
                found.append(entry)
        return found

    def remove(self, entries: list[ChainEntry]) -> None:
        """Drop side entries from the tree (``conflicting``'s list, once the store dropped
        them); their hashes are remembered for a while so a child is refused, not pooled."""
        for entry in entries:
            if self.is_main(entry):
                raise ValueError(f"{entry!r} is on the main chain")
        for entry in entries:
            self._entries.pop(entry.hash, None)
            self._side.pop(entry.hash, None)
            self._pruned[entry.hash] = None
        while len(self._pruned) > MAX_PRUNED_REMEMBERED:
            self._pruned.popitem(last=False)

    def _key(self, entry: ChainEntry) -> tuple[int, int]:
        """Fork choice's order: (highest justified height on the branch, work)."""
        return self.justified_of(entry).height, entry.work

    def _check_finalized(self, block: Block, parent: ChainEntry | None) -> None:
        """Refuse a block whose branch cannot hold the finalized block: at or below its height
        (every block there on its branch is known already), above it on another branch, or
        the child of a block pruned for conflicting with it."""
        checkpoint = self.finality.finalized
        if block.height > checkpoint.height and parent is not None:  # the fast path: a block on the main chain
            main = self._main
            on_main = parent.height < len(main) and main[parent.height] is parent
            at = main[checkpoint.height] if on_main else self.ancestor(parent, checkpoint.height)
            if at.hash == checkpoint.hash:
                return
        final = self.finalized
        if block.height <= final.height:
            where = f"at or below the finalized height {final.height}"
        elif parent is None:
            if block.header.prev_hash not in self._pruned:
                return
            where = "on a branch pruned for conflicting with the finalized block"
        elif self.ancestor(parent, final.height) is not final:
            where = f"on a branch without the finalized block {short_hash(final.hash)} at {final.height}"
        else:
            return
        raise RuleViolation(CONFLICTS_FINALIZED, f"block {short_hash(block.hash)} at height {block.height} is "
                            f"{where}: finalized blocks are never replaced")

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
        With finality, a block off the finalized block's branch raises
        ``conflicts-finalized`` (before "unknown-parent": a parentless block at or below the
        finalized height can only be on another branch).
        """
        known = self._entries.get(block.hash)
        if known is not None:
            return AddResult(known, "duplicate")
        if encoded_size is not None:
            check_encoded_size(encoded_size)
        if not prechecked:
            check_block(block, self.params, now_ms)
        parent = self._entries.get(block.header.prev_hash)
        if self.finality is not None:
            self._check_finalized(block, parent)
        if parent is None:
            raise RuleViolation("unknown-parent", f"parent {short_hash(block.header.prev_hash)} of "
                                f"block {short_hash(block.hash)} at height {block.height} is unknown")
        capture = block.capture
        newest = self.newest_of(capture.relay_id, parent)
        if newest is None:
            check_context(block, parent.height, self.median_time_ms(parent), None, None, ())
        else:
            check_context(block, parent.height, self.median_time_ms(parent), newest.branch_last_seq,
                          newest.relay_key, newest.gaps)
        return self._link(parent, block.hash, block.header, capture.relay_id, capture.first_seq, capture.last_seq,
                          capture.newest_ms, capture.relay_key, newest)

    def add_trusted(self, header: Header, relay_id: str, last_seq: int | None, newest_ms: int | None,
                    relay_key: bytes, first_seq: int | None) -> AddResult:
        """Link a header from our own store: only the parent and height are checked (not
        finality either: the store holds no block conflicting with what it finalized).

        ``first_seq``/``last_seq`` are the block's first and last reading seqs (what the
        gap ranges follow). Adding the store's blocks in first-seen order reproduces the
        tip they had.
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
        newest = None if last_seq is None else self.newest_of(relay_id, parent)
        return self._link(parent, block_hash, header, relay_id, first_seq, last_seq, newest_ms, relay_key, newest)

    def _link(self, parent: ChainEntry, block_hash: bytes, header: Header, relay_id: str, first_seq: int | None,
              last_seq: int | None, newest_ms: int | None, relay_key: bytes, newest: ChainEntry | None) -> AddResult:
        header = self._compact(header, parent)
        relays, depth = parent._relays, parent._relays_depth
        relay_key = self._keys.setdefault(relay_key, relay_key)  # one bytes object per key
        branch: tuple[int | None, int | None, GapRanges] = (None, None, ())
        if last_seq is not None:
            number = self._relay_number(relay_id)
            relay_id = self._relay_names[number]  # one string object per relay, shared by its entries
            branch = _branch_after(newest, first_seq if first_seq is not None else last_seq, last_seq, newest_ms)
        entry = ChainEntry(block_hash, header, parent, parent.work + pow.work(header.bits), next(self._seq),
                           relay_id, last_seq, newest_ms, relay_key, relays, depth, branch)
        if last_seq is not None:
            entry._relays, entry._relays_depth = _trie_set(relays, depth, number, entry)
        self._entries[block_hash] = entry
        tip = self._main[-1]
        if parent is tip:  # more work and every checkpoint the tip holds: it wins either way
            self._main.append(entry)
            return AddResult(entry, "extended", (), (entry,))
        if self.finality is None:
            wins = entry.work > tip.work  # a tie keeps the tip we saw first
        else:
            wins = self._key(entry) > self._key(tip)
        if not wins:
            self._side[block_hash] = entry
            return AddResult(entry, "side")
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
            self._restore_main(result)
        self._side.pop(entry.hash, None)
        del self._entries[entry.hash]

    def _restore_main(self, result: AddResult) -> None:
        """The main chain as it was before the reorg ``result``; its connected entries go back
        to the side (the caller drops or keeps its new entry)."""
        del self._main[result.connected[0].height:]
        self._main.extend(reversed(result.disconnected))
        for entry in result.disconnected:
            self._side.pop(entry.hash, None)
        for entry in result.connected[:-1]:
            self._side[entry.hash] = entry

    def _reorg(self, entry: ChainEntry, finality_moved: bool = False) -> AddResult:
        connected = []
        fork = entry
        while not self.is_main(fork):
            connected.append(fork)
            fork = fork.parent
        final = self.finalized
        if not finality_moved and fork.height < final.height and self.is_main(final):
            # Never disconnect the finalized block (add() refuses such blocks already; this
            # holds for add_trusted too). ``reconsider`` may move main *onto* it.
            self._side[entry.hash] = entry
            return AddResult(entry, "side")
        connected.reverse()
        disconnected = self._main[fork.height + 1:]
        disconnected.reverse()
        del self._main[fork.height + 1:]
        self._main.extend(connected)
        for moved in connected:
            self._side.pop(moved.hash, None)
        for moved in disconnected:
            self._side[moved.hash] = moved
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


def _branch_after(newest: ChainEntry | None, first_seq: int, last_seq: int,
                  newest_ms: int | None) -> tuple[int | None, int | None, GapRanges]:
    """A relay's (highest seq, its reading's time, open gaps) on a branch once a block of
    seqs ``first_seq``..``last_seq`` joins it; ``newest`` is the relay's previous block there."""
    if newest is None:
        return last_seq, newest_ms, gaps_after((), None, first_seq, last_seq)
    gaps = gaps_after(newest.gaps, newest.branch_last_seq, first_seq, last_seq)
    if last_seq > newest.branch_last_seq:
        return last_seq, newest_ms, gaps
    return newest.branch_last_seq, newest.branch_newest_ms, gaps  # a fill: the branch's newest reading stays


# --- readings a reorg displaced -------------------------------------------------------------
def displaced_readings(disconnected_blocks: list[Block], last_seq_of: Callable[[str], int | None],
                       gaps_of: Callable[[str], GapRanges] = lambda relay_id: ()) -> list[Capture]:
    """The sealed runs of blocks that left the main chain and that the new branch lacks.

    ``last_seq_of(relay_id)`` is the relay's highest seq on the new branch and
    ``gaps_of(relay_id)`` its open gap ranges there; a seal wholly at or below that seq is
    left out unless it lies inside one open range (the new branch lacks it and a block may
    fill it in: rules.check_fill), as is one the branch holds. Seals stay whole, with the very
    readings and signatures the rules checked when their block was accepted, so what
    comes back is verified. One Capture per relay and per gap notice (a segment starts at
    each notice the new branch lacks), relays in the order they first appear, oldest first.
    """
    segments: list[Capture] = []
    current: dict[str, int] = {}  # relay -> index of its open segment
    for block in sorted(disconnected_blocks, key=lambda b: b.height):
        capture = block.capture
        kept = last_seq_of(capture.relay_id) or 0
        gaps = gaps_of(capture.relay_id)
        runs = [(seal, rows) for seal, rows in capture.runs()
                if seal.last_seq > kept or open_gap_of(gaps, seal.first_seq, seal.last_seq) is not None]
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
