"""Finality on the wire: votes and evidence flooded to every peer, certificates on sync and greeting.

Gossip (gossip.py) hands the finality messages a peer delivers to ``FinalityGossip``, which
knows nothing of storage or rules: it talks to the node through a ``FinalityView`` (the
node's voter, gridchain.node.voter) that checks and counts what arrives, and it floods on
what the view took: a vote as soon as it is checked, before the view counts and stores it
(a store write is a disk sync; only a member's own vote must be durable before it travels).
Each vote and each piece of evidence is looked at once: a bounded seen-set of their exact
bytes (not of a hash a forger could pick) drops the copies every other peer relays, before
any signature is checked.

What a peer's message costs it is gridchain.net.penalties' FINALITY table: a vote that fails
a check anyone can make with the member list (a forged signature, a non-member voter, bad
heights) bans the member that sent it, since every member's node checks a vote before
passing it on; a vote for a block we do not hold yet costs nothing (the ledger pools it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from gridchain.consensus.finality import Certificate, Evidence, FinalityError, Vote
from gridchain.net.messages import CertificatesMessage, EvidenceMessage, VoteMessage, encode_message
from gridchain.net.peer import KnownSet, Peer
from gridchain.net.penalties import FINALITY, cost_of
from gridchain.net.protocol import ProtocolViolation
from gridchain.wire.frames import encode_frame

# Votes remembered as seen: 16 members' votes over 512 checkpoints (~1.4 MB of vote bytes).
# One older than that coming round again is checked once more and found a duplicate.
SEEN_VOTES = 8192
SEEN_EVIDENCE = 1024  # one per caught member is all that is ever new
# Vote statuses (gridchain.consensus.finality) worth passing on: counted, or for a block some
# peers may hold before we do. Duplicates, stale and caught votes stop here.
RELAYED = frozenset({"counted", "unknown-checkpoint"})
# A vote for a block this many heights past our tip says the sender is ahead of us: ask it
# for the blocks (a vote a block or two ahead is only a vote that beat its block here).
AHEAD_FOR_SYNC = 2


class FinalityView(Protocol):
    """What finality gossip needs from the node (gridchain.node.voter.Voter)."""

    # What counting the vote would say (counted, duplicate, unknown-checkpoint, ...), nothing
    # counted yet; FinalityError if invalid.
    def check_vote(self, vote: Vote) -> str: ...
    # Count and store the vote; its status.
    async def receive_vote(self, vote: Vote, peer: str) -> str: ...
    # True when the evidence is new to us (to be passed on); FinalityError if it proves nothing.
    def receive_evidence(self, evidence: Evidence, peer: str) -> bool: ...
    # Check and count certificates a peer sent; FinalityError for the first one that fails.
    async def receive_certificates(self, certificates: Sequence[Certificate], peer: str) -> None: ...
    # The finality certificate to send beside a sync answer ending at this block (None: none).
    def sync_certificate(self, last_hash: bytes) -> Certificate | None: ...
    # What a peer gets as its link becomes ready: our newest own vote(s) and certificates.
    def greeting(self) -> tuple[list[Vote], list[Certificate]]: ...


class FinalityGossip:
    """The finality half of the peer set: seen-sets, flooding and what a bad message costs."""

    def __init__(self, view: FinalityView, peers: Callable[[], Iterable[Peer]],
                 behind: Callable[[Peer, int], None] | None = None) -> None:
        self.view = view
        self.peers = peers  # the ready peers, at the moment of asking
        self.behind = behind  # called with (peer, target height) for a vote past our tip: sync from it
        self.seen_votes = KnownSet(SEEN_VOTES)
        self.seen_evidence = KnownSet(SEEN_EVIDENCE)
        self.sent_bytes = 0  # vote, evidence and certificate frames queued, over all peers

    # --- incoming ------------------------------------------------------------------------
    async def on_vote(self, peer: Peer, message: VoteMessage) -> None:
        vote = message.vote
        raw = vote.encode()
        if raw in self.seen_votes:
            return
        self.seen_votes.add(raw)
        try:
            status = self.view.check_vote(vote)
        except FinalityError as exc:
            self._judge(exc)
            return
        # Passed on once checked, before it is counted: counting writes it to the store (a
        # sync), and only our own votes must be durable before they travel.
        if status in RELAYED:
            self._flood(VoteMessage(vote), source=peer)
        if status == "unknown-checkpoint" and self.behind is not None:
            self.behind(peer, vote.target.height)
        try:
            await self.view.receive_vote(vote, peer.listen_address)
        except FinalityError as exc:  # checked just now: only a bug gets here
            self._judge(exc)

    async def on_evidence(self, peer: Peer, message: EvidenceMessage) -> None:
        raw = message.evidence.encode()
        if raw in self.seen_evidence:
            return
        self.seen_evidence.add(raw)
        try:
            new = self.view.receive_evidence(message.evidence, peer.listen_address)
        except FinalityError as exc:
            self._judge(exc)
            return
        if new:
            self._flood(EvidenceMessage(message.evidence), source=peer)

    async def on_certificates(self, peer: Peer, message: CertificatesMessage) -> None:
        await self.receive_certificates(peer, message.certificates)

    async def receive_certificates(self, peer: Peer, certificates: Sequence[Certificate]) -> None:
        """Hand certificates (a greeting's, or one beside a sync answer) to the view."""
        if not certificates:
            return
        try:
            await self.view.receive_certificates(certificates, peer.listen_address)
        except FinalityError as exc:
            self._judge(exc)

    @staticmethod
    def _judge(exc: FinalityError) -> None:
        """Raise (to close the link at its cost) unless the fault costs the sender nothing."""
        if cost_of(exc.reason, FINALITY).closes:
            raise ProtocolViolation(exc.reason, exc.detail, kind=FINALITY)

    # --- outgoing ------------------------------------------------------------------------
    def greet(self, peer: Peer) -> None:
        """Send a newly ready peer our newest certificates, then our newest own vote(s)."""
        votes, certificates = self.view.greeting()
        if certificates:
            self._send(peer, encode_frame(encode_message(CertificatesMessage(tuple(certificates)))))
        for vote in votes:
            self._send(peer, encode_frame(encode_message(VoteMessage(vote))))

    def broadcast_vote(self, vote: Vote) -> int:
        """Send a vote (our own, or one the node counted) to every ready peer; returns how many."""
        self.seen_votes.add(vote.encode())
        return self._flood(VoteMessage(vote))

    def broadcast_evidence(self, evidence: Evidence) -> int:
        self.seen_evidence.add(evidence.encode())
        return self._flood(EvidenceMessage(evidence))

    def _flood(self, message: object, source: Peer | None = None) -> int:
        frame = encode_frame(encode_message(message))
        sent = 0
        for peer in list(self.peers()):
            if peer is not source:
                self._send(peer, frame)
                sent += 1
        return sent

    def _send(self, peer: Peer, frame: bytes) -> None:
        self.sent_bytes += len(frame)
        peer.send_frame(frame)
