"""Finality: members vote on checkpoints, a quorum justifies and finalizes them (pure rules).

Design: Casper FFG, adapted to a permissioned proof-of-work chain. V. Buterin and V. Griffith,
"Casper the Friendly Finality Gadget", 2017, arXiv:1710.09437. The chain keeps its own fork
choice and block rules; this gadget only decides which checkpoints are final.

Rules (the paper's section 2, with members in place of deposits):

- A *checkpoint* is a block at a height that is a multiple of ``checkpoint_interval`` (the
  paper's "every 100 blocks"; default 1, every block). Genesis is justified and finalized.
- A *vote* (finality_votes.py) is a member's Ed25519 signature over (domain tag, network
  hash, source checkpoint, target checkpoint). It counts only when the source is an
  ancestor of the target.
- A *supermajority link* S -> T is ``quorum`` distinct members' votes for it; the quorum is
  more than two thirds of the members (3 of 4, 11 of 16), set in the network file.
- A supermajority link from a justified S justifies T. S is *finalized* when it is justified
  and a supermajority link S -> T exists with height(T) = height(S) + interval: T is the
  next checkpoint after S on that branch.
- Slashing conditions: no member signs two distinct votes with the same target height
  (double vote) or two votes with s1 < s2 < t2 < t1 (surround). Two such votes are Evidence.

Safety (the paper's Theorem 1, accountable safety): if two conflicting checkpoints are both
finalized, the members who signed both of two conflicting supermajority links broke a
slashing condition, and anyone holding the votes can prove it. Two quorums of q > 2n/3 share
at least 2q - n > n/3 members, so finalizing two branches needs more than a third of the
members provably misbehaving. Liveness (the paper's Theorem 2, plausible liveness): while a
quorum of members follows VoterGuard's rule (finality_guard.py), they can always make a new
supermajority link without breaking a condition; the fork choice below keeps them voting
on one branch.

Where this differs from the paper, and why:

- Members, not deposits: each member weighs one; the quorum is a member count (more than
  two thirds, possibly more), so the safety bound is a count of members, 2q - n.
- Heights are block heights, not checkpoint-tree heights; since checkpoints are multiples of
  the interval the two orders agree, and the conditions compare the same things.
- No slashing of deposits: a caught member's Evidence is stored, gossiped and shown, and the
  consortium acts on it. Votes of a member already caught are not counted any more (its
  revealing vote is): it could otherwise fill the link table without end. Safety only gains
  (fewer links); liveness holds while a quorum of members stays uncaught.
- A justification or finalization that conflicts with the finalized checkpoint is refused
  and reported (``FinalityUpdate.conflicts``, ``safety_broken``) rather than applied: with
  2q - n or more members misbehaving the node says so and keeps its first branch
  (``safety_at_risk`` says so as soon as that many are caught).
  A justified checkpoint above the finalized one on another branch is such a conflict too
  (the proof of Theorem 1 shows it needs a broken condition); below it, it is just stale.
- The member set is fixed by the network file (its hash is in genesis): no dynamic sets.
- Offline proof: a *finality certificate* is the single link S -> next(S) (finality_certs.py).
  It does not carry S's justification chain; it convinces because an honest member votes
  from S only once S is justified in its view, and with fewer than q faulty members a
  quorum link holds an honest signer (the justification itself is then as safe as any,
  below 2q - n faulty). Two conflicting certificates put the members that signed both in
  breach (``certificate_evidence``) whenever their links meet or nest; otherwise the nodes'
  stored justification certificates hold the evidence.

How the node uses this (the API; the networking and storage sit above it):

- The chain supplies ``ancestor_at(block_hash, height) -> bytes | None``: the hash of the
  block at ``height`` on the branch ending at ``block_hash`` (that block itself at its own
  height), None when ``block_hash`` is unknown or ``height`` is above it. ``with_block``
  extends it by one block not yet in the tree.
- ``FinalityState(params, genesis_hash)``: ``add_vote(vote, ancestor_at)`` and
  ``add_certificate(cert, ancestor_at)`` return a FinalityUpdate: ``status`` (``counted``,
  ``duplicate``; ``unknown-checkpoint``: keep the vote and feed it again when its target
  block arrives; ``bad-link``: the source is not the target's ancestor; ``stale``: below
  the pruned horizon; ``caught``: its voter is already caught; ``conflicts-finalized``
  from ``adopt_finality``), newly ``justified`` and ``finalized`` checkpoints each with its
  certificate (store them with the block), new ``evidence`` (store, gossip, log
  ``member.equivocation``), and ``conflicts`` (alert: safety is broken). Invalid votes
  raise FinalityError (finality_votes.py) with the reason to penalise the sender by.
- Fork choice: prefer the tip whose ``highest_justified(tip, height, ancestor_at)`` is
  highest, then the most work. Refuse a block for which ``conflicts_finalized`` holds
  (``conflicts-finalized``), and never reorganise below ``finalized``.
- Evidence from a peer or the store: ``add_evidence(evidence)`` checks it and catches its
  member whether or not the votes' blocks are known here (they may be pruned).
- Restart: ``FinalityState(params, genesis_hash, finalized=..., justified=...)`` from what
  the store kept, then feed the stored recent votes and evidence; ``prune(height)`` after each
  finalization bounds memory (links, vote history and old justified checkpoints below it).
- Sync: ``adopt_finality(cert, ancestor_at)`` with the newest finality certificate of a
  batch of blocks; the older ones need no check to be safe (their checkpoints are ancestors
  of the newest, which no reorg may go below), so a fresh node checks one per batch.
- Coming back: a member that missed the votes of a justification chain counts the others'
  later votes without settling them (their sources are not justified in its view); once two
  rounds' quorum links ``S -> next(S)`` were so counted, ``unsettled_finality()`` hands out
  the newest, to be adopted as a peer's finality certificate would be. Same trust as a
  sync's certificate: the same signatures, only gathered here.
- Voting: VoterGuard (finality_guard.py). Archiving: finality_note.py.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from gridchain.consensus.finality_certs import (
    Certificate, certificate_evidence, verify_certificate, verify_finality,
)
from gridchain.consensus.finality_guard import VoterGuard
from gridchain.consensus.finality_note import (
    CheckpointNote, Consistency, Fork, NoteCheck, check_consistency, make_note, parse_note, verify_note,
)
from gridchain.consensus.finality_votes import (
    AncestorAt, Checkpoint, Evidence, FinalityError, Vote, VoteHistory, check_evidence, checkpoint_height,
    conflict_kind, sign_vote, verify_vote, with_block,
)
from gridchain.consensus.params import NetworkParams

__all__ = [  # the one import point for the node: these and FinalityState below
    "AncestorAt", "Certificate", "Checkpoint", "CheckpointNote", "Consistency", "Evidence", "Finalized",
    "FinalityError", "FinalityState", "FinalityUpdate", "Fork", "Justified", "NoteCheck", "Vote", "VoterGuard",
    "certificate_evidence", "check_consistency", "check_evidence", "checkpoint_height", "conflict_kind",
    "make_note", "parse_note", "sign_vote", "verify_certificate", "verify_finality", "verify_note",
    "verify_vote", "with_block",
]

# Votes peek_vote checked and add_vote has not taken yet: gossip peeks at a vote and adds it
# at once, so a handful; the bound is for a caller that peeks without adding.
PEEKED_VOTES = 256

COUNTED, DUPLICATE, UNKNOWN, BAD_LINK, STALE, CAUGHT, CONFLICTS = (
    "counted", "duplicate", "unknown-checkpoint", "bad-link", "stale", "caught", "conflicts-finalized")


@dataclass(frozen=True, slots=True)
class Justified:
    """A checkpoint newly justified, and the supermajority link that justified it."""

    checkpoint: Checkpoint
    certificate: Certificate


@dataclass(frozen=True, slots=True)
class Finalized:
    """A checkpoint newly finalized, and its finality certificate (the link to the next one)."""

    checkpoint: Checkpoint
    certificate: Certificate


@dataclass(frozen=True, slots=True)
class FinalityUpdate:
    """What one vote or certificate changed (module docstring for each status)."""

    status: str
    justified: tuple[Justified, ...] = ()
    finalized: tuple[Finalized, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    conflicts: tuple[Checkpoint, ...] = ()


class FinalityState:
    """Justified and finalized checkpoints of one node's view, fed votes and the block tree."""

    def __init__(self, params: NetworkParams, genesis_hash: bytes, finalized: Checkpoint | None = None,
                 justified: Iterable[Checkpoint] = ()) -> None:
        if params.members is None or params.quorum is None:
            raise FinalityError("finality-off", "an open network has no members, so no finality")
        self.params = params
        self.genesis = Checkpoint(0, genesis_hash)
        self._finalized = finalized or self.genesis
        self._justified: set[Checkpoint] = {self.genesis, self._finalized, *justified}
        self._justified_sorted = sorted(self._justified)
        self._finalized_set: set[Checkpoint] = {self.genesis, self._finalized}
        self._links: dict[tuple[Checkpoint, Checkpoint], dict[bytes, bytes]] = {}
        self._targets_of: dict[Checkpoint, set[Checkpoint]] = {}
        self._justifying: dict[Checkpoint, Certificate] = {}
        self._finalizing: dict[Checkpoint, Certificate] = {}
        self._history: dict[bytes, VoteHistory] = {}
        self._evidence: dict[bytes, Evidence] = {}
        self._conflicts: set[Checkpoint] = set()
        # Quorum links S -> next(S) counted while S was not justified here (unsettled_finality).
        self._unsettled: dict[tuple[Checkpoint, Checkpoint], None] = {}
        self._peeked: dict[Vote, None] = {}  # votes peek_vote verified, not yet added
        self._floor = 0

    # --- what the node shows and decides with --------------------------------------------
    @property
    def finalized(self) -> Checkpoint:
        """The newest finalized checkpoint: no reorg may go below it."""
        return self._finalized

    @property
    def justified(self) -> tuple[Checkpoint, ...]:
        return tuple(self._justified_sorted)

    @property
    def evidence(self) -> tuple[Evidence, ...]:
        """The first evidence found against each caught member."""
        return tuple(self._evidence.values())

    @property
    def caught(self) -> frozenset[bytes]:
        return frozenset(self._evidence)

    @property
    def safety_broken(self) -> bool:
        """A conflicting justification or finalization was refused: 2q - n members or more broke a rule."""
        return bool(self._conflicts)

    @property
    def safety_at_risk(self) -> bool:
        """As many members caught as two quorums share (2q - n): enough to finalize two branches."""
        overlap = 2 * self.params.quorum - len(self.params.members)
        return self.safety_broken or len(self._evidence) >= overlap

    def certificate(self, source: Checkpoint, target: Checkpoint) -> Certificate | None:
        """The votes counted for a link, if they reach the quorum."""
        signers = self._links.get((source, target), {})
        if len(signers) < self.params.quorum:
            return None
        return Certificate(source, target, tuple(sorted(signers.items())))

    def justification_of(self, checkpoint: Checkpoint) -> Certificate | None:
        return self._justifying.get(checkpoint)

    def finality_of(self, checkpoint: Checkpoint) -> Certificate | None:
        return self._finalizing.get(checkpoint)

    def unsettled_finality(self) -> list[Certificate]:
        """A finality certificate this view holds the votes of but cannot apply, once it is
        clear the view fell behind: quorums for ``S -> next(S)`` above the finalized checkpoint
        whose source ``S`` is not justified here, for two or more sources (two rounds of the
        others finalizing without us: the votes of the justification chain were cast while
        this node was away, or more of them than a greeting carries). One round alone is the
        common race of a vote outrunning the votes that justify its source, which settles by
        the rules a moment later. Returns the newest such certificate (the older ones are its
        ancestors' and go with it) and forgets them all; empty otherwise. The node adopts it
        as it would the same certificate from a peer (``adopt_finality``)."""
        for link in [link for link in self._unsettled
                     if link[0] in self._justified or link[0].height <= self._finalized.height]:
            del self._unsettled[link]  # settled meanwhile, or passed by finality
        if len({source for source, _ in self._unsettled}) < 2:
            return []
        source, target = max(self._unsettled)
        self._unsettled.clear()
        cert = self.certificate(source, target)
        return [] if cert is None else [cert]

    def highest_justified(self, tip_hash: bytes, tip_height: int, ancestor_at: AncestorAt) -> Checkpoint:
        """The highest justified checkpoint on the branch ending at the tip: fork choice's first key."""
        stop = bisect.bisect_right(self._justified_sorted, Checkpoint(tip_height, b"\xff" * 33))
        for checkpoint in reversed(self._justified_sorted[:stop]):
            if ancestor_at(tip_hash, checkpoint.height) == checkpoint.hash:
                return checkpoint
        return self.genesis

    def conflicts_finalized(self, block_hash: bytes, height: int, ancestor_at: AncestorAt) -> bool:
        """Whether the block is on a branch without the finalized checkpoint (refuse it, whatever its work).

        FinalityError ``unknown-checkpoint`` if ``ancestor_at`` does not know the block: use
        ``with_block`` for a block not yet linked.
        """
        known = ancestor_at(block_hash, height)
        if known != block_hash:
            raise FinalityError("unknown-checkpoint", f"block {block_hash.hex()[:16]} at {height} is not known")
        return not self._related(Checkpoint(height, block_hash), self._finalized, ancestor_at)

    # --- feeding it ---------------------------------------------------------------------------
    def add_certificate(self, cert: Certificate, ancestor_at: AncestorAt) -> FinalityUpdate:
        """Check a certificate (a peer's or the store's) and count each of its votes."""
        verify_certificate(self.params, cert)
        updates = [self.add_vote(vote, ancestor_at, verified=True) for vote in cert.votes()]
        statuses = [u.status for u in updates]
        return FinalityUpdate(COUNTED if COUNTED in statuses else statuses[0],
                              tuple(j for u in updates for j in u.justified),
                              tuple(f for u in updates for f in u.finalized),
                              tuple(e for u in updates for e in u.evidence),
                              tuple(c for u in updates for c in u.conflicts))

    def adopt_finality(self, cert: Certificate, ancestor_at: AncestorAt) -> FinalityUpdate:
        """Take a finality certificate (a peer's at sync, the store's at restart) as proof that
        its source is final without the source's justification chain: the trust of an offline
        check (module docstring, "Offline proof"). Its votes then count as any others, and
        the links from the source are settled even if those votes were all counted before
        (the finality recorded for the source is then this certificate)."""
        verify_finality(self.params, cert)
        changes = _Changes()
        source = cert.source
        adopt = False
        if source not in self._justified and ancestor_at(source.hash, source.height) == source.hash:
            adopt = self._may_justify(source, ancestor_at, changes)
            if changes.conflicts:
                return FinalityUpdate(CONFLICTS, conflicts=tuple(changes.conflicts))
        counted = self.add_certificate(cert, ancestor_at)  # the source is not justified yet: no settling
        if adopt:
            self._add_justified(source)
        if source in self._justified:
            # Its link's votes may all have been counted before (while the source was not
            # justified here): they are duplicates now, so follow the links from it here.
            self._settle(source, ancestor_at, changes, adopted=cert)
        return FinalityUpdate(counted.status, counted.justified + tuple(changes.justified),
                              counted.finalized + tuple(changes.finalized), counted.evidence,
                              counted.conflicts + tuple(changes.conflicts))

    def add_evidence(self, evidence: Evidence, verified: bool = False) -> FinalityUpdate:
        """Catch the member ``evidence`` accuses, whether or not its votes' blocks are known
        here (they may be pruned, on a branch never seen, or below the pruned horizon):
        the proof is the two signatures alone. FinalityError (check_evidence's reasons) if
        it is no proof, unless ``verified``. ``counted`` with the evidence if it caught the
        member, ``duplicate`` with none if the member was caught already (the first proof
        stays). Its votes are not counted: their member is caught."""
        if not verified:
            check_evidence(self.params, evidence)
        if evidence.voter in self._evidence:
            return FinalityUpdate(DUPLICATE)
        self._evidence[evidence.voter] = evidence
        return FinalityUpdate(COUNTED, evidence=(evidence,))

    def peek_vote(self, vote: Vote, ancestor_at: AncestorAt) -> str:
        """The status ``add_vote`` would give ``vote`` now, changing nothing; raises its
        FinalityError for an invalid vote. What gossip decides to pass a vote on by, before
        the node counts and stores it."""
        signers = self._links.get(vote.link)
        if signers is not None and signers.get(vote.voter) == vote.signature:
            return DUPLICATE
        verify_vote(self.params, vote)
        self._peeked[vote] = None  # its add_vote, right after, need not check the signature again
        while len(self._peeked) > PEEKED_VOTES:
            del self._peeked[next(iter(self._peeked))]
        if vote.target.height < self._floor:
            return STALE
        if vote.voter in self._evidence:
            return CAUGHT
        if signers is not None and vote.voter in signers:
            return DUPLICATE
        return self._check_link(vote, ancestor_at) or COUNTED

    def add_vote(self, vote: Vote, ancestor_at: AncestorAt, verified: bool = False) -> FinalityUpdate:
        """Count one vote; raises FinalityError if it is not a valid member vote (verify_vote)."""
        signers = self._links.get(vote.link)
        if signers is not None and signers.get(vote.voter) == vote.signature:
            return FinalityUpdate(DUPLICATE)  # the common case of gossip: no signature check
        peeked = self._peeked.pop(vote, False) is None  # peek_vote checked it just now
        if not (verified or peeked):
            verify_vote(self.params, vote)
        if vote.target.height < self._floor:
            return FinalityUpdate(STALE)
        if vote.voter in self._evidence:
            return FinalityUpdate(CAUGHT)
        evidence = self._observe(vote)
        if signers is not None and vote.voter in signers:
            return FinalityUpdate(DUPLICATE, evidence=evidence)
        status = self._check_link(vote, ancestor_at)
        if status is not None:
            return FinalityUpdate(status, evidence=evidence)
        signers = self._links.setdefault(vote.link, {})
        signers[vote.voter] = vote.signature
        self._targets_of.setdefault(vote.source, set()).add(vote.target)
        changes = _Changes()
        if len(signers) == self.params.quorum:
            if vote.source in self._justified:
                self._settle(vote.source, ancestor_at, changes)
            elif vote.target.height == vote.source.height + self.params.checkpoint_interval and \
                    vote.source.height > self._finalized.height:
                self._unsettled[vote.link] = None  # one per finalizing link above finality; pruned with it
        return FinalityUpdate(COUNTED, tuple(changes.justified), tuple(changes.finalized), evidence,
                              tuple(changes.conflicts))

    def prune(self, below_height: int) -> None:
        """Forget votes, links and justified checkpoints below ``below_height`` (at most the
        finalized height); votes with targets below it are ``stale`` from now on."""
        floor = min(below_height, self._finalized.height)
        if floor <= self._floor:
            return
        self._floor = floor
        for link in [link for link in self._unsettled if link[1].height < floor]:
            del self._unsettled[link]
        for link in [link for link in self._links if link[1].height < floor]:
            del self._links[link]
            targets = self._targets_of.get(link[0])
            if targets is not None:
                targets.discard(link[1])
                if not targets:
                    del self._targets_of[link[0]]
        keep = {self.genesis, self._finalized}
        for checkpoint in [c for c in self._justified if c.height < floor and c not in keep]:
            self._drop_justified(checkpoint)
        for checkpoint in [c for c in self._finalized_set if c.height < floor and c not in keep]:
            self._finalized_set.discard(checkpoint)
            self._finalizing.pop(checkpoint, None)
        for history in self._history.values():
            history.prune(floor)

    # --- inside --------------------------------------------------------------------------------
    def _observe(self, vote: Vote) -> tuple[Evidence, ...]:
        history = self._history.setdefault(vote.voter, VoteHistory())
        earlier = history.conflict(vote)
        if earlier is None:
            return ()
        evidence = Evidence.of(earlier, vote)
        self._evidence[vote.voter] = evidence
        return (evidence,)

    @staticmethod
    def _check_link(vote: Vote, ancestor_at: AncestorAt) -> str | None:
        at_target = ancestor_at(vote.target.hash, vote.target.height)
        if at_target is None:
            return UNKNOWN
        if at_target != vote.target.hash or ancestor_at(vote.target.hash, vote.source.height) != vote.source.hash:
            return BAD_LINK
        return None

    def _settle(self, start: Checkpoint, ancestor_at: AncestorAt, changes: _Changes,
                adopted: Certificate | None = None) -> None:
        """Follow supermajority links out of a justified checkpoint, as far as they go.

        Every path that justifies a checkpoint (a vote, a certificate, an adoption) ends
        here, so a link whose votes were counted while its source was not yet justified is
        settled the moment the source is. Settling a settled checkpoint again changes
        nothing. ``adopted``: the certificate to report for its own link when its votes are
        among those counted (an adoption keeps the proof it was given).
        """
        work = [start]
        while work:
            source = work.pop()
            for target in sorted(self._targets_of.get(source, ())):
                signers = self._links[(source, target)]
                if len(signers) < self.params.quorum:
                    continue
                if adopted is not None and adopted.link == (source, target) and all(
                        signers.get(key) == signature for key, signature in adopted.signatures):
                    cert = adopted
                else:
                    cert = Certificate(source, target, tuple(sorted(signers.items())))
                if target.height == source.height + self.params.checkpoint_interval:
                    self._finalize(source, cert, ancestor_at, changes)
                if target not in self._justified and self._may_justify(target, ancestor_at, changes):
                    self._add_justified(target)
                    self._justifying[target] = cert
                    changes.justified.append(Justified(target, cert))
                    work.append(target)

    def _may_justify(self, target: Checkpoint, ancestor_at: AncestorAt, changes: _Changes) -> bool:
        if self._related(target, self._finalized, ancestor_at):
            return True
        if target.height >= self._finalized.height:  # a rival branch at or above finality: broken
            self._conflict(target, changes)
        return False

    def _finalize(self, checkpoint: Checkpoint, cert: Certificate, ancestor_at: AncestorAt,
                  changes: _Changes) -> None:
        if checkpoint in self._finalized_set:
            return
        if not self._related(checkpoint, self._finalized, ancestor_at):
            self._conflict(checkpoint, changes)
            return
        self._finalized_set.add(checkpoint)
        self._finalizing[checkpoint] = cert
        changes.finalized.append(Finalized(checkpoint, cert))
        if checkpoint.height > self._finalized.height:
            self._finalized = checkpoint
            start = bisect.bisect_left(self._justified_sorted, Checkpoint(checkpoint.height, b""))
            above = self._justified_sorted[start:]
            for rival in [c for c in above if not self._related(c, checkpoint, ancestor_at)]:
                self._drop_justified(rival)  # justified on another branch above finality
                self._conflict(rival, changes)

    def _conflict(self, checkpoint: Checkpoint, changes: _Changes) -> None:
        if checkpoint not in self._conflicts:  # the same rival may come up from several links
            self._conflicts.add(checkpoint)
            changes.conflicts.append(checkpoint)

    def _add_justified(self, checkpoint: Checkpoint) -> None:
        self._justified.add(checkpoint)
        bisect.insort(self._justified_sorted, checkpoint)

    def _drop_justified(self, checkpoint: Checkpoint) -> None:
        self._justified.discard(checkpoint)
        self._justified_sorted.remove(checkpoint)
        self._justifying.pop(checkpoint, None)

    @staticmethod
    def _related(a: Checkpoint, b: Checkpoint, ancestor_at: AncestorAt) -> bool:
        """One is the other's ancestor (or they are the same)."""
        low, high = (a, b) if a.height <= b.height else (b, a)
        return ancestor_at(high.hash, low.height) == low.hash


class _Changes:
    """What one settle found, gathered before it becomes a FinalityUpdate."""

    __slots__ = ("justified", "finalized", "conflicts")

    def __init__(self) -> None:
        self.justified: list[Justified] = []
        self.finalized: list[Finalized] = []
        self.conflicts: list[Checkpoint] = []
