"""The ledger's finality state on open, the pool of votes waiting for their block, and the
checks of stored certificates that opening and the audit share.

On open (``load_finality``), a FinalityState is rebuilt from what the store kept, in this
order: the newest finality certificate is adopted (``adopt_finality``: the checkpoint it
finalizes is final again), the justification certificates above it and the stored votes
above it are counted again, then the stored evidence is replayed so its members stay
caught (``add_evidence``, whatever became of its votes' blocks; after the certificates: a
member caught later still signed them while honest), and the state is pruned to the
finalized height. Before any of it, the newest
RECHECK_CERTIFICATES finality certificates and every justification certificate kept are
checked in full (signatures, quorum, the blocks they name in the tree: an older finality
certificate's target may have been pruned, see ``certificate_damage``); a stored vote or
evidence that does not verify is damage too. The ledger checks, once fork choice ran, that
the finalized blocks are on the main chain. `gridchain verify` checks every certificate.

The pending pool keeps votes and certificates whose target block we do not hold yet (a
vote can outrun its block through gossip): FinalityState answers ``unknown-checkpoint``,
the ledger pools them and feeds them again when the block arrives.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable

from gridchain.consensus.chain import Chain
from gridchain.consensus.finality import (
    COUNTED, Certificate, Checkpoint, Evidence, FinalityError, FinalityState, FinalityUpdate, Vote, check_evidence,
    verify_certificate, verify_finality, verify_vote,
)
from gridchain.consensus.params import NetworkParams
from gridchain.ledger import finality_store
from gridchain.ledger.damage import LedgerDamaged
from gridchain.ledger.finality_store import FINALIZES, JUSTIFIES

# Finality certificates re-checked in full on every open: a quorum of Ed25519 verifies each
# (3 at 4 members, ~0.2 ms; 11 at 16), so 32 stay under ~10 ms. `gridchain verify` checks all.
RECHECK_CERTIFICATES = 32
# Votes and certificates waiting for their block. A vote is 176 bytes; 4,096 of them cover
# four members for a thousand blocks we lack, a sync's worth; bytes bound the certificates.
MAX_PENDING = 4096
MAX_PENDING_BYTES = 4 * 1024 * 1024
# A block that has not come within ten minutes of its votes is not coming by gossip; the
# certificates of a sync bring finality for it then.
PENDING_MAX_AGE_MS = 10 * 60 * 1000

Pending = Vote | Certificate


class PendingPool:
    """Votes and certificates for blocks we lack, by target hash; bounded by count, bytes
    and age, the oldest dropped first. A resend of one already held is not held twice."""

    def __init__(self, max_items: int = MAX_PENDING, max_bytes: int = MAX_PENDING_BYTES,
                 max_age_ms: int = PENDING_MAX_AGE_MS) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self._items: OrderedDict[bytes, tuple[Pending, int]] = OrderedDict()  # encoding -> (item, at_ms)
        self._by_target: dict[bytes, list[bytes]] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Pending, now_ms: int) -> bool:
        """Hold ``item`` until its target block arrives; False if held already or too big."""
        key = item.encode()
        if key in self._items or len(key) > self.max_bytes:
            return False
        self.expire(now_ms)
        while self._items and (len(self._items) >= self.max_items or self.nbytes + len(key) > self.max_bytes):
            self._remove(next(iter(self._items)))
        self._items[key] = (item, now_ms)
        self._by_target.setdefault(item.target.hash, []).append(key)
        self.nbytes += len(key)
        return True

    def pop(self, block_hash: bytes) -> list[Pending]:
        """Remove and return what waits for ``block_hash``, oldest first."""
        return [self._remove(key)[0] for key in list(self._by_target.get(block_hash, ()))]

    def waiting_for(self) -> list[bytes]:
        """The target hashes that votes wait for: blocks worth asking peers for."""
        return list(self._by_target)

    def expire(self, now_ms: int) -> None:
        while self._items:
            key, (_, at_ms) = next(iter(self._items.items()))
            if now_ms - at_ms <= self.max_age_ms:
                return
            self._remove(key)

    def drop_below(self, height: int) -> None:
        """Forget what targets a height below ``height`` (finality passed it: stale)."""
        for key in [k for k, (item, _) in self._items.items() if item.target.height < height]:
            self._remove(key)

    def _remove(self, key: bytes) -> tuple[Pending, int]:
        item, at_ms = self._items.pop(key)
        self.nbytes -= len(key)
        waiting = self._by_target[item.target.hash]
        waiting.remove(key)
        if not waiting:
            del self._by_target[item.target.hash]
        return item, at_ms


def merge_updates(updates: Iterable[FinalityUpdate]) -> FinalityUpdate:
    """Several updates as one: ``counted`` if any vote counted, else the first status."""
    updates = list(updates)
    if not updates:
        return FinalityUpdate("duplicate")
    statuses = [u.status for u in updates]
    return FinalityUpdate(COUNTED if COUNTED in statuses else statuses[0],
                          tuple(j for u in updates for j in u.justified),
                          tuple(f for u in updates for f in u.finalized),
                          tuple(e for u in updates for e in u.evidence),
                          tuple(c for u in updates for c in u.conflicts))


# --- stored certificates ---------------------------------------------------------------------
def certificate_damage(params: NetworkParams, chain: Chain, role: str, height: int, block_hash: bytes,
                       data: bytes, finalized_height: int = 0) -> str | None:
    """Why a stored certificate row is not what it must be, or None: it decodes, is a quorum
    of valid member votes (a finality one links to the next checkpoint), names the block its
    row names, and both its blocks are in the tree with the source below the target.

    One exception: the target of a finality certificate older than the newest one
    (``finalized_height``: the store's newest finalized height) may be gone. That target was
    only justified; a later checkpoint finalized on another branch from the same source (a
    link that skips it breaks no slashing condition) prunes it, while the certificate stays
    the proof that its source is final. Its source must still be in the tree then (and on
    the main chain, which the callers check once fork choice ran)."""
    what = "finality" if role == FINALIZES else "justification"
    try:
        cert = Certificate.decode(data)
        (verify_finality if role == FINALIZES else verify_certificate)(params, cert)
    except FinalityError as exc:
        return f"stored {what} certificate is not valid ({exc.reason}: {exc.detail})"
    named = cert.source if role == FINALIZES else cert.target
    if named != Checkpoint(height, block_hash):
        return f"stored {what} certificate is for block {named.hash.hex()[:16]} at {named.height}, not its row's"
    if role == FINALIZES and cert.target.height <= finalized_height and cert.target.hash not in chain:
        if chain.ancestor_at(cert.source.hash, cert.source.height) != cert.source.hash:
            return f"stored {what} certificate is for a block that is not in the stored tree"
        return None  # its target pruned with its side branch (docstring)
    if chain.ancestor_at(cert.target.hash, cert.source.height) != cert.source.hash:
        return f"stored {what} certificate links blocks that are not one branch of the stored tree"
    return None


def vote_damage(params: NetworkParams, vote: Vote) -> str | None:
    try:
        verify_vote(params, vote)
    except FinalityError as exc:
        return f"stored vote {vote!r} is not valid ({exc.reason})"
    return None


def evidence_damage(params: NetworkParams, voter: bytes, data: bytes) -> tuple[Evidence | None, str | None]:
    """The stored evidence row decoded and checked: (evidence, None), or (None, why not)."""
    try:
        evidence = Evidence.decode(data)
        check_evidence(params, evidence)
    except FinalityError as exc:
        return None, f"stored evidence against {voter.hex()[:16]} is not proof ({exc.reason}: {exc.detail})"
    if evidence.voter != voter:
        return None, f"stored evidence is filed under {voter.hex()[:16]} but accuses {evidence.voter.hex()[:16]}"
    return evidence, None


def load_finality(db: sqlite3.Connection, chain: Chain, params: NetworkParams,
                  recheck: int | None = None) -> FinalityState:
    """The finality state the store's database describes (module docstring); raises LedgerDamaged."""
    state = FinalityState(params, chain.genesis_hash)
    recheck = RECHECK_CERTIFICATES if recheck is None else recheck
    newest = finality_store.certificate_rows(db, FINALIZES, newest_first=True, limit=max(1, recheck))
    top = newest[0][0] if newest else 0
    for height, block_hash, data in newest:
        _raise_if(certificate_damage(params, chain, FINALIZES, height, block_hash, data, top), block_hash, height)
    if newest:
        cert = Certificate.decode(newest[0][2])
        height, block_hash = cert.source.height, cert.source.hash
        update = state.adopt_finality(cert, chain.ancestor_at)
        if state.finalized != cert.source:
            raise LedgerDamaged(block_hash.hex(), height, f"stored finality certificate does not finalize its "
                                f"block again ({update.status})")
    floor = state.finalized.height
    for height, block_hash, data in finality_store.certificate_rows(db, JUSTIFIES, min_height=floor):
        _raise_if(certificate_damage(params, chain, JUSTIFIES, height, block_hash, data), block_hash, height)
        state.add_certificate(Certificate.decode(data), chain.ancestor_at)
    for vote in finality_store.votes(db, floor):
        _raise_if(vote_damage(params, vote), vote.target.hash, vote.target.height)
        state.add_vote(vote, chain.ancestor_at, verified=True)
    for voter, _, data in finality_store.evidence_rows(db):
        evidence, reason = evidence_damage(params, voter, data)
        _raise_if(reason, evidence.first.target.hash if evidence else b"", -1)
        state.add_evidence(evidence, verified=True)  # caught, whatever became of the votes' blocks
    state.prune(state.finalized.height)
    return state


def check_finalized_on_main(db: sqlite3.Connection, chain: Chain, recheck: int | None = None) -> None:
    """Once fork choice ran: the newest finalized blocks are on the main chain, the finalized one too."""
    recheck = RECHECK_CERTIFICATES if recheck is None else recheck
    for height, block_hash, _ in finality_store.certificate_rows(db, FINALIZES, newest_first=True,
                                                                 limit=max(1, recheck)):
        entry = chain.main_at(height)
        if entry is None or entry.hash != block_hash:
            raise LedgerDamaged(block_hash.hex(), height, "a finalized block is not on the stored main chain")


def _raise_if(reason: str | None, block_hash: bytes, height: int) -> None:
    if reason is not None:
        raise LedgerDamaged(block_hash.hex(), height, reason)

