"""The node as a finality voter, and its handling of the votes, evidence and certificates of others.

Finality itself is the pure gadget in gridchain.consensus.finality (Casper FFG on top of the
proof-of-work chain); the ledger keeps its state and certificates durably. This module is
what a running node does with it:

- **Voting** (members only). After a block on the main chain is fully validated and
  committed (``tip_moved``), the VoterGuard, restored at start from the member's own stored
  votes, names the next link to vote for. The vote is signed with the node key, remembered by
  the guard, written durably by ``Ledger.record_own_vote`` (fsync) and only then sent to
  every peer and counted. A member killed anywhere in that order restarts with every vote it may
  have sent, so it can never sign a conflicting one; its newest vote is sent again to each
  peer as the link comes up (a resend is no conflict).
- **Receiving** (gridchain.net.finality_gossip.FinalityView): votes checked
  (``check_vote``, for gossip to pass on at once) then to ``Ledger.add_vote``, certificates
  to ``Ledger.add_certificate``, evidence checked and its votes fed to the ledger. Quorums
  of votes for finalizing links whose source is not justified here, two rounds of them (a
  member back from being away, short of a justification chain), are adopted as the newest
  one's finality certificate (FinalityState.unsettled_finality).
- **Reporting**, once each: ``finality.finalized`` (height, hash, signers) when the newest
  finalized checkpoint moves, ``member.equivocation`` (an alert) with the evidence gossiped,
  and ``finality.safety_broken`` / ``finality.safety_at_risk`` (errors) when more members
  misbehaved than the gadget can survive.

``TEST_EXIT_AFTER_VOTE`` (an environment variable: a count) makes the process exit at once
after writing that many votes and before sending the last one, for the crash test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence

from gridchain.consensus.finality import (
    Certificate, Checkpoint, Evidence, FinalityError, FinalityUpdate, Vote, VoterGuard, check_evidence,
    checkpoint_height, sign_vote,
)
from gridchain.consensus.params import NetworkParams
from gridchain.ledger.store import StoreError

TEST_EXIT_AFTER_VOTE = "GRIDCHAIND_TEST_EXIT_AFTER_VOTE"
TEST_EXIT_STATUS = 75  # what the crash hook exits with: not a status the node uses otherwise
# Justification certificates in a greeting, after the finality one: one `certificates`
# message holds 64 (net.messages). Votes keep the chain a checkpoint or two long; a chain
# justifying without finalizing (a member away, forks) grows it, and a peer given only its
# lower part follows finality again within two rounds anyway (FinalityState.unsettled_finality).
GREETING_CERTIFICATES = 63
# Justified checkpoints walked down from the highest when building a greeting's chain.
GREETING_WALK = 4 * GREETING_CERTIFICATES
# Checkpoints looked down from the end of a sync batch for a finality certificate to send beside
# it; finality follows the tip by a checkpoint or two, so a few suffice.
SYNC_CERT_LOOKBACK = 16


def member_name(params: NetworkParams, key: bytes) -> str:
    return params.member_names.get(key) or key.hex()[:16]


class Voter:
    """One node's finality duties: vote if a member, take others' votes, report what changes.

    ``ledger`` has the finality API of gridchain.ledger.ledger.Ledger (add_vote, add_certificate,
    record_own_vote, own_votes, finalized, justified, certificate_for, evidence). ``key`` None:
    the node is not a member (it follows finality, it does not vote). ``broadcast_vote`` and
    ``broadcast_evidence`` send to every peer (gossip's FinalityGossip, attached after start).
    """

    def __init__(self, ledger, params: NetworkParams, key, log, now_ms: Callable[[], int], *,
                 env: dict | None = None) -> None:
        self.ledger = ledger
        self.params = params
        self.key = key if key is not None and params.members and key.public_key in params.members else None
        self.log = log
        self.now_ms = now_ms
        self.broadcast_vote: Callable[[Vote], object] = lambda vote: 0
        self.broadcast_evidence: Callable[[Evidence], object] = lambda evidence: 0
        # Justification moved the main chain (a FinalityChange's ``reorg``, with the tip before):
        # the node logs it, hands the displaced readings to capture and announces the tip.
        self.on_reorg: Callable[[object, object], None] = lambda update, tip_before: None
        self.guard = None if self.key is None else VoterGuard(params, self.key.public_key,
                                                              ledger.own_votes(self.key.public_key))
        self.caught: dict[bytes, Evidence] = {e.voter: e for e in ledger.evidence()}
        self.finalized: Checkpoint = ledger.finalized
        self.finalized_at = time.monotonic()
        self.votes_cast = 0
        self._adopting = False  # inside _adopt_unsettled: its own reports adopt nothing more
        self._flush_scheduled = False  # a store of the votes counted this turn is due (flush_votes)
        self.safety = "ok"  # "ok", "at-risk" or "broken": the worst said so far
        exit_after = (env if env is not None else os.environ).get(TEST_EXIT_AFTER_VOTE)
        self._exit_after = int(exit_after) if exit_after else None
        if self.guard is not None and self.guard.last is not None:
            last = self.guard.last
            self.log.info("finality.votes_restored", target=last.target.height, source=last.source.height,
                          target_hash=last.target.hash.hex()[:16])

    @property
    def is_member(self) -> bool:
        return self.key is not None

    # --- voting ----------------------------------------------------------------------------
    def tip_moved(self) -> Vote | None:
        """A block joined the main chain (validated, committed): vote for its checkpoint if due."""
        self.check_progress()
        if self.guard is None:
            return None
        tip = self.ledger.tip
        choice = self.guard.next_vote(tip.hash, tip.height, self.ledger.justified, self.ledger.ancestor_at)
        if choice is None:
            return None
        source, target = choice
        vote = sign_vote(self.key.sign, self.key.public_key, self.params, source, target)
        self.guard.record(vote)
        try:
            self.ledger.record_own_vote(vote)  # durable (fsync) before anyone can see it
        except StoreError as exc:
            # Never sent, so never seen: the guard remembers it and will not vote at that height again.
            self.log.error("finality.vote_not_stored", reason=exc.reason, detail=str(exc), target=target.height)
            return None
        self.votes_cast += 1
        self.log.info("finality.vote_recorded", source=source.height, target=target.height,
                      target_hash=target.hash.hex()[:16])
        if self._exit_after is not None and self.votes_cast >= self._exit_after:
            os._exit(TEST_EXIT_STATUS)  # the crash test: written, never sent
        # Durable already (own_vote): sent before it is counted, whose write is one more sync.
        self.broadcast_vote(vote)
        self._count(vote)
        return vote

    def _count(self, vote: Vote) -> None:
        tip_before = self.ledger.tip
        try:
            self._report(self.ledger.add_vote(vote, self.now_ms()), tip_before)
        except FinalityError as exc:  # our own vote: only a bug gets here
            self.log.error("finality.own_vote_refused", reason=exc.reason, detail=exc.detail)
        except StoreError as exc:  # counted again from the next write; the vote itself is stored
            self.log.error("store.error", reason=exc.reason, detail=str(exc))

    # --- what peers send (net.finality_gossip.FinalityView) -----------------------------------
    def check_vote(self, vote: Vote) -> str:
        """What counting ``vote`` would say (FinalityState.peek_vote), with nothing counted or
        written yet; FinalityError if it is invalid. "finality-off" on an open network."""
        state = self.ledger.finality_state
        if state is None:
            raise FinalityError("finality-off", "an open network has no members, so no finality")
        return state.peek_vote(vote, self.ledger.ancestor_at)

    async def receive_vote(self, vote: Vote, peer: str) -> str:
        tip_before = self.ledger.tip
        try:
            # FinalityError: the sender pays. Sliced: a reorg the vote causes never holds the loop.
            update = await self.ledger.add_vote_sliced(vote, self.now_ms())
        except StoreError as exc:
            self.log.error("store.error", reason=exc.reason, detail=str(exc), peer=peer)
            return "not-stored"
        if self.ledger.defer_votes and not self._flush_scheduled:
            # The votes for a block arrive together: one commit once this turn of the loop is done.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_votes)
        self._report(update, tip_before)
        return update.status

    def _flush_votes(self) -> None:
        self._flush_scheduled = False
        try:
            self.ledger.flush_votes()
        except StoreError as exc:  # kept for the next write; peers send them again after a crash
            self.log.error("store.error", reason=exc.reason, detail=str(exc))

    def receive_evidence(self, evidence: Evidence, peer: str) -> bool:
        kind = check_evidence(self.params, evidence)  # FinalityError: fake evidence, the sender pays
        if evidence.voter in self.caught:
            return False
        self._note_evidence(evidence, kind, peer=peer, gossip=False)  # gossip floods it on itself
        tip_before = self.ledger.tip
        try:
            self._report(self.ledger.add_evidence(evidence, self.now_ms()), tip_before, gossip=False)
        except StoreError as exc:
            self.log.error("store.error", reason=exc.reason, detail=str(exc), peer=peer)
        return True

    async def receive_certificates(self, certificates: Sequence[Certificate], peer: str) -> None:
        for cert in certificates:
            tip_before = self.ledger.tip
            try:
                update = await self.ledger.add_certificate_sliced(cert, self.now_ms())  # FinalityError: the sender pays
            except StoreError as exc:
                self.log.error("store.error", reason=exc.reason, detail=str(exc), peer=peer)
                return
            self._report(update, tip_before)
        self.check_progress()

    def blocks_added(self, changes: Sequence) -> None:
        """Blocks joined the tree; ``changes``: what the votes waiting for them did (the block
        path handles a reorg they caused itself)."""
        for change in changes:
            if change is not None:
                self._report(change, None)
        self.check_progress()

    def sync_certificate(self, last_hash: bytes) -> Certificate | None:
        """The finality certificate of the newest finalized checkpoint whose link ends at or
        below ``last_hash``: the one a syncing node can adopt once it holds the batch."""
        entry = self.ledger.chain.get(last_hash)
        if entry is None:
            return None
        finalized = self.ledger.finalized
        interval = self.params.checkpoint_interval
        if finalized.height == 0:
            return None
        # Its target (the next checkpoint) must be in the batch too, or the receiver only pools it.
        if finalized.height + interval <= entry.height:
            return self.ledger.certificate_for(finalized.hash)
        height = checkpoint_height(entry.height - interval, interval)
        for _ in range(SYNC_CERT_LOOKBACK):
            if height <= 0:
                return None
            cert = self.ledger.certificate_for(height)
            if cert is not None:
                return cert
            height -= interval
        return None

    def greeting(self) -> tuple[list[Vote], list[Certificate]]:
        """Our newest vote (sent again: after a restart it may never have left) and certificates."""
        votes = [self.guard.last] if self.guard is not None and self.guard.last is not None else []
        certificates = []
        finalized = self.ledger.finalized
        if finalized.height > 0:
            cert = self.ledger.certificate_for(finalized.hash)
            if cert is not None:
                certificates.append(cert)
        # The chain starts with the finality certificate itself (it justified the next checkpoint).
        return votes, certificates + [c for c in self._justification_chain(finalized) if c not in certificates]

    def _justification_chain(self, finalized: Checkpoint) -> list[Certificate]:
        """The links that justified our highest justified main-chain checkpoint, each from the
        one below, down to the finalized checkpoint; lowest first (a peer can use a chain only
        from its foot), at most GREETING_CERTIFICATES. With them a peer that missed those votes
        votes from the same source as we do and counts the next round's votes."""
        chain = []
        checkpoint = self.ledger.justified
        while checkpoint.height > finalized.height and len(chain) < GREETING_WALK:
            cert = self.ledger.justification_for(checkpoint.hash)
            if cert is None:
                break
            chain.append(cert)
            checkpoint = cert.source
        chain.reverse()
        return chain[:GREETING_CERTIFICATES]

    # --- reporting ---------------------------------------------------------------------------
    def check_progress(self) -> None:
        """Log a newly finalized checkpoint (whatever path it came by: votes, sync, pooled votes)."""
        finalized = self.ledger.finalized
        if finalized == self.finalized or finalized.height < self.finalized.height:
            return
        self.finalized = finalized
        self.finalized_at = time.monotonic()
        cert = self.ledger.certificate_for(finalized.hash)
        signers = [] if cert is None else [member_name(self.params, key) for key in cert.signers]
        self.log.info("finality.finalized", height=finalized.height, hash=finalized.hash.hex()[:16],
                      signers=signers, lag=self.ledger.height - finalized.height)

    def _report(self, update: FinalityUpdate | None, tip_before, gossip: bool = True) -> None:
        if update is None:
            return
        self._show(update, tip_before, gossip)
        if not self._adopting:
            self._adopting = True
            try:
                self._adopt_unsettled()
            finally:
                self._adopting = False

    def _adopt_unsettled(self) -> None:
        """Adopt a finality certificate whose votes we hold but whose source is not justified
        here (FinalityState.unsettled_finality): a member back from being away, or short of a
        justification chain, follows finality again within two of the others' rounds."""
        state = self.ledger.finality_state
        if state is None:
            return
        for cert in state.unsettled_finality():
            tip_before = self.ledger.tip
            try:
                update = self.ledger.add_certificate(cert, self.now_ms())
            except FinalityError as exc:  # votes we counted already: only a bug gets here
                self.log.error("finality.adoption_refused", reason=exc.reason, detail=exc.detail)
                continue
            except StoreError as exc:
                self.log.error("store.error", reason=exc.reason, detail=str(exc))
                return
            self._show(update, tip_before, True)

    def _show(self, update: FinalityUpdate, tip_before, gossip: bool) -> None:
        reorg = getattr(update, "reorg", None)
        if reorg is not None and tip_before is not None:
            self.on_reorg(reorg, tip_before)
        for evidence in update.evidence:
            if evidence.voter not in self.caught:
                self._note_evidence(evidence, evidence.kind or "conflict", peer=None, gossip=gossip)
        if update.conflicts:
            self._safety("broken", [c.height for c in update.conflicts])
        if update.finalized or update.justified:
            self.check_progress()

    def _note_evidence(self, evidence: Evidence, kind: str, *, peer: str | None, gossip: bool) -> None:
        self.caught[evidence.voter] = evidence
        first, second = evidence.first, evidence.second
        self.log.error("member.equivocation", alert=True, member=member_name(self.params, evidence.voter),
                       member_key=evidence.voter.hex(), kind=kind, from_peer=peer,
                       first=f"{first.source.height}->{first.target.height} {first.target.hash.hex()[:12]}",
                       second=f"{second.source.height}->{second.target.height} {second.target.hash.hex()[:12]}")
        if gossip:
            self.broadcast_evidence(evidence)
        overlap = 2 * self.params.quorum - len(self.params.members)
        if len(self.caught) >= overlap:
            self._safety("at-risk", [])

    def _safety(self, level: str, heights: list[int]) -> None:
        if self.safety == "broken" or self.safety == level:
            return
        self.safety = level
        if level == "broken":
            self.log.error("finality.safety_broken", alert=True, conflicts=heights, caught=len(self.caught),
                           detail="a checkpoint conflicting with the finalized one was justified or finalized: "
                                  "more members than the quorum allows signed conflicting votes; this node keeps "
                                  "its finalized branch and will not finalize the other")
        else:
            self.log.error("finality.safety_at_risk", alert=True, caught=len(self.caught),
                           detail=f"{len(self.caught)} members caught equivocating: enough to finalize two "
                                  "branches; finality can no longer be trusted to be safe")

    def _safety_now(self) -> str:
        state = self.ledger.finality_state
        if self.safety == "broken" or (state is not None and state.safety_broken):
            return "broken"
        if self.safety == "at-risk" or (state is not None and state.safety_at_risk):
            return "at-risk"
        return "ok"

    # --- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        finalized = self.ledger.finalized
        justified = self.ledger.justified
        tip_height = self.ledger.height
        return {
            "finalized_height": finalized.height, "finalized_hash": finalized.hash.hex(),
            "finality_lag": tip_height - finalized.height, "justified_height": justified.height,
            "quorum": self.params.quorum, "members": len(self.params.members or ()),
            "voter": self.is_member, "votes_cast": self.votes_cast,
            "last_vote": None if self.guard is None or self.guard.last is None else
            {"source": self.guard.last.source.height, "target": self.guard.last.target.height},
            "safety": self._safety_now(),
            "evidence": [{"member": member_name(self.params, e.voter), "member_key": e.voter.hex(),
                          "kind": e.kind or "conflict",
                          "votes": [[v.source.height, v.target.height, v.target.hash.hex()]
                                    for v in (e.first, e.second)]}
                         for e in self.caught.values()],
        }

