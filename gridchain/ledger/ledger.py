"""The chain and its store together: what a node adds blocks to and reads them from.

Memory and disk never disagree. A block is validated and linked into the in-memory
``Chain``, then written with its readings and the new tip in one store transaction, all
before ``add_block`` returns, so the node announces only durable blocks; if the write
fails, the block is unlinked again and the StoreError propagates.

On the event loop the node uses the ``*_sliced`` forms (``add_block_sliced``,
``add_blocks_sliced``, ``add_vote_sliced``, ``add_certificate_sliced``): the same work, done a
slice of at most 20 ms at a time (gridchain.ledger.steps), so a deep reorg or a long sync batch
never holds the loop; any other write first finishes a sliced one that is under way.

Opening rebuilds the chain from the store's block index (headers and a few payload facts,
no payload decoding) and then re-checks the newest main-chain blocks in full. Damage found
either way raises ``LedgerDamaged`` naming the block and the reason: a node must stop
rather than serve a chain it cannot vouch for. The full audit of a store (every block,
every reading row, the main table; for `gridchain verify`) is gridchain.ledger.audit.

Finality (a network with members; consensus/finality.py), the API the node uses:

- ``add_vote(vote, now_ms)`` and ``add_certificate(cert, now_ms)`` verify (FinalityError
  with the reason to penalise the sender by), count, store and apply; each returns a
  ``FinalityChange``: the FinalityUpdate (``status``: ``counted`` means new, so gossip
  it on; ``unknown-checkpoint``: pooled until its block arrives, then applied by
  ``add_block``/``add_blocks``, whose results carry that ``finality`` change; newly
  ``justified``/``finalized`` checkpoints with their certificates; new ``evidence``, to
  gossip and log as ``member.equivocation``; ``conflicts``: safety broken, alert), plus
  ``reorg`` (a LedgerUpdate when justification moved the main chain: announce the tip,
  hand ``displaced`` to capture, as for a block) and ``pruned`` (side blocks dropped).
  A finality certificate (to the next checkpoint) is adopted (``adopt_finality``): what a
  sync brings with its newest block. ``add_evidence`` takes a peer's proof.
- Each step writes its votes, certificates, evidence, main-chain change and pruning in ONE
  transaction; side branches that conflict with the newly finalized block leave the store
  and the tree in the transaction that finalizes it. If that write fails, the chain is left
  as it was and the rows wait to go with the next write (a StoreError is raised by
  add_vote/add_certificate, not by add_block, whose block is stored).
- Voting (VoterGuard, consensus/finality_guard.py): ``guard = VoterGuard(params, key,
  ledger.own_votes(key))`` on start; then ``guard.next_vote(tip.hash, tip.height,
  ledger.justified, ledger.ancestor_at)``, sign, ``guard.record(vote)``,
  ``ledger.record_own_vote(vote)`` (durable, synced, before it returns), then
  ``ledger.add_vote(vote, now_ms)`` and send.
- Reading: ``finalized``, ``justified`` (highest justified on the main chain),
  ``certificate_for(height | hash)`` (finality certificate of a finalized block),
  ``justification_for``, ``proof_certificate(height)`` (the lowest finalized checkpoint
  at or above a block: what a proof bundle ends in), ``headers_between(low, high)``
  (main-chain headers from the index), ``evidence()``, ``finality_state`` (caught
  members, ``safety_at_risk``/``safety_broken``) and ``pending`` (the pool).
"""

from __future__ import annotations

import os
import sqlite3
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gridchain.consensus.block import Block, Capture, Header
from gridchain.consensus.chain import AddResult, Chain, ChainEntry, OrphanPool, displaced_readings
from gridchain.consensus.finality import (
    COUNTED, UNKNOWN, Certificate, Checkpoint, Evidence, FinalityError, FinalityState, FinalityUpdate, Vote,
)
from gridchain.consensus.genesis import make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.ledger import finality_store
from gridchain.ledger.batch_checks import BatchChecks
from gridchain.ledger.damage import LedgerDamaged
from gridchain.ledger.finality_keeper import PendingPool, merge_updates
from gridchain.ledger.finality_store import FINALIZES, JUSTIFIES, FinalityWrite
from gridchain.ledger.reopen import check_readings_rows, index_facts, rebuild_chain, recheck_newest
from gridchain.ledger.steps import Steps, exhaust
from gridchain.ledger.store import DB_FILE, Gap, MainChange, Store, StoreError, store_error

# Main-chain blocks re-checked in full on every open: enough to catch a torn or edited
# recent write, cheap enough (~10 ms) to run on every start. `gridchain verify` checks all.
RECHECK_BLOCKS = 100
# A sync batch's context-free checks run in threads ahead of linking: the Ed25519 verify,
# most of a block's cost, releases the GIL, so the checks overlap on every core there is.
CHECK_THREADS = min(4, os.cpu_count() or 1)
MIN_THREADED_BATCH = 16  # shorter runs (a sync's tail) are checked inline: little to gain from threads
# Headers one ``headers_between`` hands out: 12.8 MB, a few days of blocks at one a second.
MAX_HEADERS_BETWEEN = 100_000

__all__ = [  # the opening checks live in reopen.py; imported here as before
    "BatchResult", "FinalityChange", "Ledger", "LedgerDamaged", "LedgerUpdate", "check_readings_rows", "index_facts",
]


@dataclass(frozen=True, slots=True)
class LedgerUpdate:
    """One block accepted: what it did to the chain and the sealed readings a reorg pushed out
    (``displaced``: whole seals the new main chain lacks, as they were checked on arrival).
    ``finality``: what the votes waiting for this block did once it arrived (or None)."""

    result: AddResult
    displaced: list[Capture]
    finality: FinalityChange | None = None


@dataclass(frozen=True, slots=True)
class FinalityChange(FinalityUpdate):
    """A FinalityUpdate once the ledger applied it: ``reorg`` is the main-chain move that
    justification caused (None if the tip stayed), ``pruned`` the hashes of the side blocks
    removed because they conflict with the finalized block."""

    reorg: LedgerUpdate | None = None
    pruned: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``add_blocks`` did: the updates of the blocks it took, and the first it refused."""

    updates: list[LedgerUpdate]
    rejected: Block | None = None
    error: RuleViolation | None = None
    finality: FinalityChange | None = None  # what votes waiting for the run's blocks did


class Ledger:
    """A node's chain (in memory) over its store (on disk), kept in step."""

    def __init__(self, store: Store, chain: Chain, params: NetworkParams,
                 check_threads: int = CHECK_THREADS) -> None:
        self.store = store
        self.chain = chain
        self.params = params
        self.orphans = OrphanPool()
        self.check_threads = check_threads  # below 2, every check runs inline
        self._check_pool: ThreadPoolExecutor | None = None  # made on the first long run
        self.pending = PendingPool()  # votes and certificates waiting for their block
        self._unsaved = FinalityWrite()  # finality rows a failed write left for the next one
        self._chain_due = False  # a failed write left fork choice and pruning to redo
        self._stepping: Steps | None = None  # blocks being added a slice at a time (add_block_sliced)
        self._unstored: dict[bytes, Block] = {}  # blocks it linked and has not committed yet
        # Other members' votes are kept for ``flush_votes`` (one commit for a burst of them, as
        # every member's vote for a block arrives at once) instead of a commit each.
        self.defer_votes = False
        self._votes_due = False

    @classmethod
    def open(cls, data_dir: Path, params: NetworkParams, now_ms: int | None = None,
             recheck: int = RECHECK_BLOCKS, check_threads: int = CHECK_THREADS) -> Ledger:
        """Open the ledger in ``data_dir``: rebuild the chain, re-check its newest blocks.

        ``now_ms`` is not needed for the checks: a stored block passed the clock rule when
        it arrived, and a clock set back since must not make a good store look damaged.
        """
        genesis = make_genesis(params)
        store = Store.open(Path(data_dir) / DB_FILE, params.name, genesis)
        try:
            chain = rebuild_chain(store, genesis, params)
            recheck_newest(store, chain, params, recheck)
        except sqlite3.Error as exc:
            store.close()
            raise store_error(exc, "re-checking the stored chain") from None
        except BaseException:
            store.close()
            raise
        return cls(store, chain, params, check_threads)

    def close(self) -> None:
        self.finish_sliced()
        try:
            self.flush_votes()
        except StoreError:
            pass  # the votes come again from peers; closing must not fail on them
        if self._check_pool is not None:
            self._check_pool.shutdown(cancel_futures=True)
        self.store.close()

    # --- reading -------------------------------------------------------------------------------
    @property
    def tip(self) -> ChainEntry:
        return self.chain.tip

    @property
    def height(self) -> int:
        return self.chain.height

    def get_block(self, block_hash: bytes) -> Block | None:
        """A block of the tree: stored, or linked by a sliced add that has not committed it yet."""
        block = self.store.get_block(block_hash)
        return self._unstored.get(block_hash) if block is None else block

    def get_raw(self, block_hash: bytes) -> bytes | None:
        """A block's bytes (``Block.encode()``), for sending on without decoding."""
        raw = self.store.get_raw(block_hash)
        if raw is None and block_hash in self._unstored:
            return self._unstored[block_hash].encode()
        return raw

    def newest_reading_ms(self, relay_id: str) -> int | None:
        return self.chain.newest_reading_ms(relay_id)

    def last_seq(self, relay_id: str) -> int | None:
        """The relay's last sequence number on the main chain (None: none of its readings yet)."""
        return self.chain.last_seq(relay_id)

    def gaps(self) -> list[Gap]:
        """The holes in each relay's sequence on the main chain, each one the relay signed."""
        return self.store.gaps()

    # --- adding --------------------------------------------------------------------------------
    def add_block(self, block: Block, now_ms: int, encoded_size: int | None = None) -> LedgerUpdate:
        """Validate, link and durably store ``block``; raises RuleViolation or StoreError."""
        self.finish_sliced()
        return exhaust(self._add_block_steps(block, now_ms, encoded_size))

    async def add_block_sliced(self, block: Block, now_ms: int, encoded_size: int | None = None
                               ) -> list[LedgerUpdate]:
        """``add_block_with_orphans`` for the event loop: the work of a reorg it causes (the
        blocks of both branches decoded, the main table and its readings rewritten in one
        transaction) is done a slice at a time (gridchain.ledger.steps), the loop served
        between slices, so a reorg of any depth never holds it for long. Meanwhile the chain
        shows the new tip, and the store (on this connection) the rows written so far; any
        other write (``finish_sliced``) first does the rest at once. Let only one run at a time."""
        self.finish_sliced()
        try:
            updates = [await self._run_sliced(self._add_block_steps(block, now_ms, encoded_size))]
        except RuleViolation as exc:
            self._pool_if_orphan(block, exc)
            raise
        return updates + self._connect_orphans([block.hash], now_ms)

    async def _run_sliced(self, steps):
        """Run a generator of ledger steps a slice at a time (the one sliced job at a time:
        any other write finishes it first, ``finish_sliced``)."""
        job = self._stepping = Steps(steps)
        try:
            return await job.run_sliced()
        finally:
            if self._stepping is job:
                self._stepping = None

    def finish_sliced(self) -> None:
        """Finish at once a block ``add_block_sliced`` is still adding: called before any other
        write, which must not interleave with its transaction."""
        job, self._stepping = self._stepping, None
        if job is not None:
            job.finish()

    def _add_block_steps(self, block: Block, now_ms: int, encoded_size: int | None = None):
        """``add_block`` as a generator of steps (each block a reorg decodes, each step of the
        commit), returning its LedgerUpdate."""
        result = self.chain.add(block, now_ms, encoded_size)
        if result.status == "duplicate":
            return LedgerUpdate(result, [])
        pending = self._unstored = {block.hash: block}  # linked, not yet committed: readers find it here
        try:
            yield from self._decode_reorg(result, pending)
            change = self._main_change(result, pending)
            displaced = self._displaced(result, pending)
            yield from self.store.commit_steps([block], [change] if change else [])
        except BaseException:
            self.chain.undo(result)
            raise
        finally:
            self._unstored = {}
        return LedgerUpdate(result, displaced, self._retry_pending([block.hash], now_ms))

    def add_block_with_orphans(self, block: Block, now_ms: int, encoded_size: int | None = None
                               ) -> list[LedgerUpdate]:
        """``add_block``, then every pooled orphan that now connects (children first-come).

        A block whose parent is unknown is pooled as an orphan before its RuleViolation is raised.
        """
        try:
            updates = [self.add_block(block, now_ms, encoded_size)]
        except RuleViolation as exc:
            self._pool_if_orphan(block, exc)
            raise
        return updates + self._connect_orphans([block.hash], now_ms)

    def start_checks(self, blocks: Sequence[Block], now_ms: int) -> BatchChecks | None:
        """Start the context-free checks of a run in threads now, for ``add_blocks`` to take
        later (None: a short run, checked inline). A sync starts the next batch's checks
        while it stores the one before, so the threads never wait for the store."""
        return self._batch_checks(blocks, now_ms)

    def add_blocks(self, blocks: Sequence[Block], now_ms: int, raws: Sequence[bytes] | None = None,
                   checks: BatchChecks | None = None) -> BatchResult:
        """Add a run of blocks (a sync answer) in ONE store transaction.

        ``raws``: the blocks' wire bytes as received, in order (each the ``encode()`` of its
        block, as the peer message decoder gives them): stored as they are, not encoded again.
        ``checks``: what ``start_checks`` started for this very run (else they start here).

        Stops at the first block that breaks a rule: the blocks before it are kept and
        committed, that block is returned as ``rejected`` with its ``error``. An
        "unknown-parent" one is pooled as an orphan before the pool is drained: its parent
        may be an orphan this very run connects. Raises StoreError if the commit
        fails, with none of the run kept.

        A long run's context-free checks run ahead in threads (see ``BatchChecks``); each
        block is still linked in order, and one that did not pass them is checked again
        inline, so the reason and the kept prefix are what checking one by one gives.
        """
        self.finish_sliced()
        return self._after_run(exhaust(self._add_blocks_steps(blocks, now_ms, raws, checks)), now_ms)

    async def add_blocks_sliced(self, blocks: Sequence[Block], now_ms: int, raws: Sequence[bytes] | None = None,
                                checks: BatchChecks | None = None) -> BatchResult:
        """``add_blocks`` for the event loop, a slice at a time as ``add_block_sliced`` does: a
        sync batch (hundreds of blocks linked, a reorg of any depth it causes, one commit)
        never holds the loop for long, and the loop runs while the threads check signatures."""
        self.finish_sliced()
        return self._after_run(await self._run_sliced(self._add_blocks_steps(blocks, now_ms, raws, checks)), now_ms)

    def _add_blocks_steps(self, blocks: Sequence[Block], now_ms: int, raws: Sequence[bytes] | None,
                          checks: BatchChecks | None):
        """The linking and the commit of ``add_blocks`` as a generator of steps (gridchain.ledger.steps):
        a step per block linked and per block a reorg decodes, waits for the check threads
        yielded as futures, then the commit's steps. Returns the run for ``_after_run``."""
        results: list[AddResult] = []
        updates: list[LedgerUpdate] = []
        added: list[Block] = []  # the run's blocks new to the tree, in order: what the commit stores
        pending: dict[bytes, Block] = {}  # those and the stored blocks a reorg decoded, by hash
        changes: list[MainChange] = []
        rejected, error = None, None
        if raws is not None and len(raws) != len(blocks):
            raise ValueError(f"{len(raws)} wire forms for {len(blocks)} blocks")
        if checks is not None and checks.count != len(blocks):
            checks.cancel()
            checks = None
        if checks is None:
            checks = self._batch_checks(blocks, now_ms)
        self._unstored = pending  # linked, not yet committed: readers find them here meanwhile
        try:
            for index, block in enumerate(blocks):
                if checks is not None and (waiting := checks.pending(index)) is not None:
                    yield waiting
                prechecked = checks is not None and checks.passed(index)
                try:
                    result = self.chain.add(block, now_ms, prechecked=prechecked)
                except RuleViolation as exc:
                    rejected, error = block, exc
                    break
                results.append(result)
                if result.status != "duplicate":
                    added.append(block)
                    pending[block.hash] = block
                    yield from self._decode_reorg(result, pending)
                    change = self._main_change(result, pending)
                    if change is not None:
                        changes.append(change)
                updates.append(LedgerUpdate(result, self._displaced(result, pending)))
                yield
            if added:
                wire = None if raws is None else {block.hash: raw for block, raw in zip(blocks, raws)}
                yield from self.store.commit_steps(added, changes, raws=wire)
        except BaseException:
            for result in reversed(results):
                self.chain.undo(result)
            raise
        finally:
            self._unstored = {}
            if checks is not None:
                checks.cancel()  # after a refused block, the checks of the rest are not needed
        return updates, rejected, error, [block.hash for block in added]

    def _after_run(self, run: tuple, now_ms: int) -> BatchResult:
        """What follows a committed run: its refused orphan pooled, waiting votes applied, orphans
        that now connect added (each a write of its own, so not inside the run's steps)."""
        updates, rejected, error, added = run
        if error is not None:
            self._pool_if_orphan(rejected, error)
        finality = self._retry_pending(added, now_ms)
        updates += self._connect_orphans(added, now_ms)
        return BatchResult(updates, rejected, error, finality)

    def _pool_if_orphan(self, block: Block, error: RuleViolation) -> None:
        if error.reason == "unknown-parent":
            self.orphans.add(block, len(block.encode()))

    def _batch_checks(self, blocks: Sequence[Block], now_ms: int) -> BatchChecks | None:
        if len(blocks) < MIN_THREADED_BATCH or self.check_threads < 2:
            return None
        if self._check_pool is None:
            self._check_pool = ThreadPoolExecutor(self.check_threads, thread_name_prefix="gridchain-check")
        return BatchChecks(self._check_pool, blocks, self.chain.params, now_ms)

    def _connect_orphans(self, parents: Iterable[bytes], now_ms: int) -> list[LedgerUpdate]:
        updates: list[LedgerUpdate] = []
        queue = deque(parents)
        while queue:
            children = self.orphans.pop_children(queue.popleft())
            for index, child in enumerate(children):
                try:
                    updates.append(self.add_block(child, now_ms))
                except RuleViolation:
                    continue  # an orphan that breaks a rule is simply dropped
                except StoreError:
                    # Keep them for later; the error recurs (and is reported) on the next write.
                    for waiting in children[index:]:
                        self.orphans.add(waiting, len(waiting.encode()))
                    return updates
                queue.append(child.hash)
        return updates

    def _decode_reorg(self, result: AddResult, pending: dict[bytes, Block]):
        """Read into ``pending`` every block of both branches a reorg (``result``) moves, a step
        each, so a sliced run serves the loop between them; nothing for any other result."""
        if result.status != "reorg":
            return
        for entry in (*result.connected, *result.disconnected):
            if entry.hash not in pending:
                pending[entry.hash] = self._block(entry, pending)
                yield

    def _block(self, entry: ChainEntry, pending: dict[bytes, Block]) -> Block:
        block = pending.get(entry.hash) or self.store.get_block(entry.hash)
        if block is None:
            raise StoreError("corrupt", f"block {entry.hash.hex()} at height {entry.height} is missing")
        return block

    def _main_change(self, result: AddResult, pending: dict[bytes, Block]) -> MainChange | None:
        if result.status not in ("extended", "reorg"):
            return None
        connected = tuple(self._block(entry, pending) for entry in result.connected)
        return MainChange(result.connected[0].height - 1, connected, result.entry.hash)

    def _displaced(self, result: AddResult, pending: dict[bytes, Block]) -> list[Capture]:
        if result.status != "reorg":
            return []
        tip = result.entry
        return displaced_readings([self._block(e, pending) for e in result.disconnected],
                                  lambda relay_id: self.chain.last_seq(relay_id, tip),
                                  lambda relay_id: self.chain.open_gaps(relay_id, tip))

    # --- finality ------------------------------------------------------------------------------
    @property
    def finality_state(self) -> FinalityState | None:
        """The finality state (None on an open network, which has no members to vote)."""
        return self.chain.finality

    @property
    def finalized(self) -> Checkpoint:
        """The newest finalized checkpoint (genesis before any, and with finality off)."""
        state = self.chain.finality
        return Checkpoint(0, self.chain.genesis_hash) if state is None else state.finalized

    @property
    def justified(self) -> Checkpoint:
        """The highest justified checkpoint on the main chain: the source of the next vote."""
        return self.chain.justified_of(self.chain.tip)

    def ancestor_at(self, block_hash: bytes, height: int) -> bytes | None:
        """The block tree's AncestorAt (Chain.ancestor_at), for VoterGuard.next_vote."""
        return self.chain.ancestor_at(block_hash, height)

    def add_vote(self, vote: Vote, now_ms: int) -> FinalityChange:
        """Verify, count, store and apply a member's vote (module docstring); raises
        FinalityError for an invalid vote and StoreError if its step cannot be written."""
        self.finish_sliced()
        return exhaust(self._vote_steps(vote, now_ms))

    async def add_vote_sliced(self, vote: Vote, now_ms: int) -> FinalityChange:
        """``add_vote`` for the event loop: a reorg the vote causes (justification moved the
        main chain) is written a slice at a time, as a block's is (``add_block_sliced``)."""
        self.finish_sliced()
        return await self._run_sliced(self._vote_steps(vote, now_ms))

    def _vote_steps(self, vote: Vote, now_ms: int):
        state = self._state()
        before = state.finalized
        update = state.add_vote(vote, self.chain.ancestor_at)
        if update.status == UNKNOWN:
            self.pending.add(vote, now_ms)
        return (yield from self._settle_steps([update], [vote] if update.status == COUNTED else [], before))

    def add_certificate(self, cert: Certificate, now_ms: int) -> FinalityChange:
        """Verify and apply a certificate from a peer: a finality certificate (to the next
        checkpoint) is adopted, any other counted vote by vote. As ``add_vote``."""
        self.finish_sliced()
        return exhaust(self._certificate_steps(cert, now_ms))

    async def add_certificate_sliced(self, cert: Certificate, now_ms: int) -> FinalityChange:
        """``add_certificate`` for the event loop, as ``add_vote_sliced``."""
        self.finish_sliced()
        return await self._run_sliced(self._certificate_steps(cert, now_ms))

    def _certificate_steps(self, cert: Certificate, now_ms: int):
        state = self._state()
        before = state.finalized
        update = self._apply_certificate(state, cert)
        if update.status == UNKNOWN:
            self.pending.add(cert, now_ms)
        return (yield from self._settle_steps([update], list(cert.votes()) if update.status == COUNTED else [],
                                              before, moved=True))

    def add_evidence(self, evidence: Evidence, now_ms: int) -> FinalityChange:
        """Check a peer's evidence (FinalityError ``bad-evidence`` etc. if it is no proof),
        catch its member and store it; ``evidence`` in the result is empty if the member was
        caught already. Its votes are not counted (their member is caught)."""
        self.finish_sliced()
        state = self._state()
        update = state.add_evidence(evidence)
        return self._settle([update], [], state.finalized)

    def record_own_vote(self, vote: Vote) -> None:
        """Store this member's newest vote durably (synced) before returning: call it after
        ``VoterGuard.record`` and before sending the vote; StoreError means do not send."""
        self.finish_sliced()
        self.store.record_own_vote(vote)

    def own_votes(self, voter: bytes | None = None) -> list[Vote]:
        """This node's newest own vote per key (``voter``'s only, if given): VoterGuard's past."""
        return self.store.own_votes(voter)

    def certificate_for(self, block: int | bytes) -> Certificate | None:
        """The finality certificate of a finalized block, by main-chain height or by hash."""
        return self._stored_certificate(FINALIZES, block)

    def justification_for(self, block: int | bytes) -> Certificate | None:
        """The certificate that justified a block above the finalized one, if any is kept."""
        return self._stored_certificate(JUSTIFIES, block)

    def proof_certificate(self, height: int) -> Certificate | None:
        """The finality certificate of the lowest finalized main-chain block at or above
        ``height``: with the headers up to it, what makes a block at ``height`` provably final."""
        try:
            data = finality_store.first_certificate_from(self.store.db, FINALIZES, height)
        except sqlite3.Error as exc:
            raise store_error(exc, "reading a certificate") from None
        cert = None if data is None else Certificate.decode(data)
        if cert is None or not self._on_main(cert.source):
            return None
        return cert

    def evidence(self) -> list[Evidence]:
        """Every stored proof of equivocation, one per caught member."""
        try:
            rows = finality_store.evidence_rows(self.store.db)
        except sqlite3.Error as exc:
            raise store_error(exc, "reading evidence") from None
        return [Evidence.decode(data) for _, _, data in rows]

    def headers_between(self, low: int, high: int) -> list[Header]:
        """Main-chain headers from height ``low`` to ``high`` inclusive, from the block index
        the chain holds (no block is decoded); ValueError outside the chain or past
        MAX_HEADERS_BETWEEN of them."""
        if not 0 <= low <= high <= self.chain.height:
            raise ValueError(f"heights {low}..{high} are not within the main chain 0..{self.chain.height}")
        if high - low + 1 > MAX_HEADERS_BETWEEN:
            raise ValueError(f"{high - low + 1} headers asked for, at most {MAX_HEADERS_BETWEEN} at a time")
        return [self.chain.main_at(height).header for height in range(low, high + 1)]

    def _state(self) -> FinalityState:
        state = self.chain.finality
        if state is None:
            raise FinalityError("finality-off", "an open network has no members, so no finality")
        return state

    def _apply_certificate(self, state: FinalityState, cert: Certificate) -> FinalityUpdate:
        if cert.target.height != cert.source.height + self.params.checkpoint_interval:
            return state.add_certificate(cert, self.chain.ancestor_at)
        return state.adopt_finality(cert, self.chain.ancestor_at)

    def _retry_pending(self, block_hashes: list[bytes], now_ms: int) -> FinalityChange | None:
        """Feed what waited for these blocks (just stored) to the finality state. A write
        that fails leaves its rows for the next one: the blocks themselves are stored."""
        if self.chain.finality is None or not len(self.pending):
            return None
        self.pending.expire(now_ms)
        items = [item for block_hash in block_hashes for item in self.pending.pop(block_hash)]
        if not items:
            return None
        before = self.chain.finality.finalized
        updates, counted = [], []
        items.sort(key=lambda item: isinstance(item, Vote))  # certificates first: adopted before their votes count
        state = self.chain.finality
        for item in items:
            try:
                if isinstance(item, Vote):
                    update = state.add_vote(item, self.chain.ancestor_at, verified=True)
                    votes = [item]
                else:
                    update = self._apply_certificate(state, item)
                    votes = list(item.votes())
            except FinalityError:
                continue  # checked when it came; only a rival finalized since can refuse it now
            updates.append(update)
            if update.status == COUNTED:
                counted += votes
        try:
            return self._settle(updates, counted, before, moved=True)
        except StoreError:
            return None

    def _settle(self, updates: list[FinalityUpdate], counted: list[Vote], before: Checkpoint,
                moved: bool = False) -> FinalityChange:
        """Store what the updates made and bring the chain in line: fork choice again, and
        pruning if finality advanced, all in one transaction (module docstring)."""
        return exhaust(self._settle_steps(updates, counted, before, moved))

    def _settle_steps(self, updates: list[FinalityUpdate], counted: list[Vote], before: Checkpoint,
                      moved: bool = False):
        """``_settle`` as a generator of steps: a step per block a reorg decodes, then the commit's."""
        state = self.chain.finality
        update = merge_updates(updates)
        rows = self._unsaved
        final = state.finalized
        rows.votes += [vote for vote in counted if vote.target.height >= final.height]
        rows.certificates += [(JUSTIFIES, j.certificate) for j in update.justified]
        rows.certificates += [(FINALIZES, f.certificate) for f in update.finalized]
        rows.evidence += [(e.kind, e) for e in update.evidence]
        if final.height > before.height:
            state.prune(final.height)
            self.pending.drop_below(final.height)
            rows.finalized_height = final.height
        result = None
        if moved or update.justified or update.finalized or self._chain_due:
            result = self.chain.reconsider()
        doomed = self.chain.conflicting() if result is not None or rows.finalized_height is not None else []
        rows.pruned = [entry.hash for entry in doomed]
        reorg = None
        if result is None and self.defer_votes and _votes_only(rows) and not self._chain_due:
            self._votes_due = True  # kept in _unsaved: flush_votes (or the next write) stores them
        elif rows or result is not None:
            try:
                blocks: dict[bytes, Block] = {}
                if result is not None:
                    yield from self._decode_reorg(result, blocks)
                change = None if result is None else self._main_change(result, blocks)
                reorg = None if result is None else LedgerUpdate(result, self._displaced(result, blocks))
                if change is None and _votes_only(rows):
                    self.store.commit_votes(rows)
                else:
                    yield from self.store.commit_steps((), [change] if change else [], rows)
            except BaseException:
                if result is not None:
                    self.chain.undo_reconsider(result)
                self._chain_due = True
                raise
            self._unsaved = FinalityWrite()
            self._chain_due = False
            self.chain.remove(doomed)
            self._drop_orphans_of(rows.pruned)
        return FinalityChange(update.status, update.justified, update.finalized, update.evidence, update.conflicts,
                              reorg, tuple(rows.pruned))

    def flush_votes(self) -> None:
        """Store the other members' votes counted since the last write, in one unsynced commit
        (``defer_votes``); StoreError leaves them for the next write."""
        if not self._votes_due:
            return
        self.finish_sliced()
        self._votes_due = False
        rows = self._unsaved
        if rows and _votes_only(rows):
            self.store.commit_votes(rows)
            self._unsaved = FinalityWrite()

    def _drop_orphans_of(self, pruned: Iterable[bytes]) -> None:
        """Orphans waiting for a pruned block wait for ever: drop them and their own children."""
        queue = deque(pruned)
        while queue:
            queue.extend(child.hash for child in self.orphans.pop_children(queue.popleft()))

    def _stored_certificate(self, role: str, block: int | bytes) -> Certificate | None:
        if isinstance(block, int):
            entry = self.chain.main_at(block)
            if entry is None:
                return None
            block = entry.hash
        try:
            data = finality_store.certificate_of(self.store.db, role, block)
        except sqlite3.Error as exc:
            raise store_error(exc, "reading a certificate") from None
        return None if data is None else Certificate.decode(data)

    def _on_main(self, checkpoint: Checkpoint) -> bool:
        entry = self.chain.main_at(checkpoint.height)
        return entry is not None and entry.hash == checkpoint.hash


def _votes_only(rows: FinalityWrite) -> bool:
    """Rows holding nothing but votes (no certificate, evidence, pruning or finality step)."""
    return bool(rows.votes) and not (rows.certificates or rows.evidence or rows.pruned
                                     or rows.finalized_height is not None)
