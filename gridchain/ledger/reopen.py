"""Opening a ledger: the chain rebuilt from the store's block index, its finality state
loaded (finality_keeper), fork choice run again, the newest blocks re-checked in full.

Damage found raises ``LedgerDamaged`` naming the block and the reason.
"""

from __future__ import annotations

import sqlite3

from gridchain.consensus import rules
from gridchain.consensus.block import Block, BlockDecodeError, Header
from gridchain.consensus.chain import Chain, ChainEntry
from gridchain.consensus.params import NetworkParams
from gridchain.consensus.rules import RuleViolation
from gridchain.ledger.damage import LedgerDamaged
from gridchain.ledger.finality_keeper import check_finalized_on_main, load_finality
from gridchain.ledger.store import READING_SELECT, Store, reading_rows


def rebuild_chain(store: Store, genesis: Block, params: NetworkParams) -> Chain:
    """The chain as the store's block index describes it, in the order the blocks arrived,
    with its finality state (finality_keeper.load_finality) and fork choice run again."""
    chain = Chain(genesis, params)
    if store.get_raw(genesis.hash) != genesis.encode():
        raise LedgerDamaged(genesis.hash.hex(), 0, "the genesis row is missing or altered")
    for block_hash, header_bytes, relay_id, last_seq, newest_ms, relay_key, first_seq in store.iter_index():
        if block_hash == genesis.hash:
            continue
        try:
            header = Header.from_bytes(header_bytes)
            result = chain.add_trusted(header, relay_id, last_seq, newest_ms, relay_key, first_seq)
        except (BlockDecodeError, RuleViolation) as exc:
            raise LedgerDamaged(block_hash.hex(), _height_of(header_bytes), f"index: {exc}") from None
        if result.entry.hash != block_hash or result.status == "duplicate":
            raise LedgerDamaged(block_hash.hex(), header.height, "index: header does not hash to the block's hash")
    if params.members is not None and params.quorum is not None:
        chain.finality = load_finality(store.db, chain, params)
        chain.reconsider()  # the index order knew work only; justification may prefer another branch
    stored_tip = store.tip_hash()
    if stored_tip != chain.tip.hash:
        entry = chain.get(stored_tip)
        raise LedgerDamaged(stored_tip.hex(), -1 if entry is None else entry.height,
                            f"stored tip is not the best chain's tip {chain.tip.hash.hex()} "
                            f"at height {chain.height}")
    if chain.finality is not None:
        check_finalized_on_main(store.db, chain)
    return chain


def recheck_newest(store: Store, chain: Chain, params: NetworkParams, count: int) -> None:
    """Check the newest ``count`` main-chain blocks in full; raise LedgerDamaged on the first fault."""
    for height in range(max(1, chain.height - count + 1), chain.height + 1):
        entry = chain.main_at(height)
        reason = _recheck(store, chain, entry, params)
        if reason is not None:
            raise LedgerDamaged(entry.hash.hex(), height, reason)


def _recheck(store: Store, chain: Chain, entry: ChainEntry, params: NetworkParams) -> str | None:
    """Why the stored block of main-chain ``entry`` or its rows are not what they must be, or None."""
    raw = store.get_raw(entry.hash)
    if raw is None:
        return "block row missing"
    try:
        block = Block.decode(raw)
    except BlockDecodeError as exc:
        return f"stored block does not decode ({exc})"
    if block.hash != entry.hash:
        return "stored block does not hash to its key"
    if (entry.relay_id, entry.last_seq, entry.newest_ms, entry.relay_key) != index_facts(block)[:4]:
        return "index relay/seq/newest/key columns differ from the payload"
    capture = block.capture
    parent = entry.parent
    last_seq = chain.last_seq(capture.relay_id, parent)
    gaps = chain.open_gaps(capture.relay_id, parent)
    try:
        rules.check_block(block, params, block.header.time_ms)  # the clock rule as applied on arrival
        rules.check_context(block, parent.height, chain.median_time_ms(parent), last_seq,
                            chain.relay_key(capture.relay_id, parent), gaps)
    except RuleViolation as exc:
        return str(exc)
    if entry.gaps != rules.gaps_after(gaps, last_seq, capture.first_seq, capture.last_seq):
        # The index's reading count gave the chain another first seq: its open gaps are wrong.
        return "index reading count differs from the payload (the relay's open gaps disagree)"
    if store.main_hash_at(entry.height) != entry.hash:
        return "main table does not list this block at its height"
    return check_readings_rows(store.db, entry.height, block)


def check_readings_rows(db: sqlite3.Connection, height: int, block: Block | None) -> str | None:
    """Why the readings table's rows at ``height`` are not exactly ``block``'s, or None."""
    stored = db.execute(f"SELECT {READING_SELECT} FROM readings WHERE block_height = ? "
                        f"ORDER BY relay_id, seq", (height,)).fetchall()
    expected = list(reading_rows([block])) if block is not None else []
    if stored != expected:
        return f"readings table holds {len(stored)} row(s) at this height that differ from the block's {len(expected)}"
    return None


def index_facts(block: Block) -> tuple[str, int | None, int | None, bytes, int | None]:
    """The payload facts the block index keeps beside each header: relay, last seq, newest
    time, key, first seq (``Chain.add_trusted``'s arguments after the header, in order)."""
    c = block.capture
    return c.relay_id, c.last_seq, c.newest_ms, c.relay_key, c.first_seq


def _height_of(header_bytes: bytes) -> int:
    try:
        return Header.from_bytes(header_bytes).height
    except BlockDecodeError:
        return -1
