"""Finality votes: checkpoints, a member's signed vote for a link, and evidence of equivocation.

Part of the finality gadget described in gridchain/consensus/finality.py (read that first).

A checkpoint is a block at a height that is a multiple of ``params.checkpoint_interval``
(genesis, height 0, is one). A vote is a member's Ed25519 signature over::

    b"gridchain/finality-vote/v1\\x00" | network_hash (32)
    | source hash (32) | source height (u64) | target hash (32) | target height (u64)

The domain tag keeps a vote signature from ever passing as a block or relay signature, and
the network hash keeps a vote of one network from counting on another. The voter is not in
the message: an Ed25519 signature verifies under one key only.

Wire form of a vote, 176 fixed-width bytes (big-endian, struct ``>32s32sQ32sQ64s``)::

    voter key | source hash | source height | target hash | target height | signature

The slashing conditions of Casper FFG (Buterin & Griffith 2017, section 3): a member must not
sign two distinct votes with the same target height (double vote), nor two votes where one's
span strictly holds the other's, s1 < s2 < t2 < t1 (surround vote). Two such votes by one
member are ``Evidence``; anyone can check it with the network's member list alone.
``VoteHistory`` finds such a pair among one member's votes as they arrive.
"""

from __future__ import annotations

import bisect
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gridchain.consensus.errors import GridchainError
from gridchain.consensus.params import NetworkParams

VOTE_DOMAIN = b"gridchain/finality-vote/v1\x00"
HASH_SIZE = 32
KEY_SIZE = 32
SIGNATURE_SIZE = 64
MAX_HEIGHT = 2**63 - 1  # heights are u64 on the wire; block heights never come near this
_VOTE = struct.Struct(">32s32sQ32sQ64s")
VOTE_SIZE = _VOTE.size  # 176
EVIDENCE_SIZE = 2 * VOTE_SIZE

# The block tree's ancestry, as the chain supplies it (finality.py): the hash of the block at
# ``height`` on the branch ending at ``block_hash``, None if unknown or above it.
AncestorAt = Callable[[bytes, int], "bytes | None"]

# Votes kept per member to catch surround votes. One a checkpoint: about an hour at a block a
# second; pruning after finalization keeps far fewer. Beyond it, the oldest are forgotten.
MAX_HISTORY_PER_MEMBER = 4096

DOUBLE_VOTE = "double-vote"
SURROUND_VOTE = "surround-vote"


class FinalityError(GridchainError):
    """A vote, certificate, evidence or note that is malformed or not what it claims.

    Reasons: ``bad-vote`` (shape: heights, sizes), ``not-a-member``, ``bad-vote-signature``,
    ``bad-evidence``, ``short-certificate``, ``duplicate-signer``, ``mixed-links``,
    ``bad-certificate``, ``not-finalizing``, ``bad-note``, ``bad-headers``,
    ``wrong-network``, ``finality-off``, ``unknown-checkpoint`` (a block the tree does not
    hold), and the voter guard's ``would-double-vote``, ``would-surround``, ``vote-not-newer``.
    """


@dataclass(frozen=True, slots=True, order=True)
class Checkpoint:
    """A block at a checkpoint height; ordered by height, then hash."""

    height: int
    hash: bytes

    def __repr__(self) -> str:
        return f"Checkpoint({self.height}, {self.hash.hex()[:12]})"


def with_block(ancestor_at: AncestorAt, block_hash: bytes, height: int, prev_hash: bytes) -> AncestorAt:
    """``ancestor_at`` that also knows one block not yet linked into the tree."""
    def extended(asked: bytes, at: int) -> bytes | None:
        if asked != block_hash:
            return ancestor_at(asked, at)
        if at == height:
            return block_hash
        return ancestor_at(prev_hash, at) if at < height else None
    return extended


def checkpoint_height(height: int, interval: int) -> int:
    """The newest checkpoint height at or below ``height``."""
    return height - height % interval


def vote_message(network_hash: bytes, source: Checkpoint, target: Checkpoint) -> bytes:
    """The bytes a member signs for the link ``source -> target`` (module docstring)."""
    return b"".join((VOTE_DOMAIN, network_hash, source.hash, source.height.to_bytes(8, "big"),
                     target.hash, target.height.to_bytes(8, "big")))


@dataclass(frozen=True, slots=True)
class Vote:
    """One member's signed vote for the link ``source -> target``."""

    voter: bytes
    source: Checkpoint
    target: Checkpoint
    signature: bytes

    @property
    def link(self) -> tuple[Checkpoint, Checkpoint]:
        return self.source, self.target

    def message(self, network_hash: bytes) -> bytes:
        return vote_message(network_hash, self.source, self.target)

    def encode(self) -> bytes:
        return _VOTE.pack(self.voter, self.source.hash, self.source.height, self.target.hash,
                          self.target.height, self.signature)

    @classmethod
    def decode(cls, data: bytes) -> Vote:
        if len(data) != VOTE_SIZE:
            raise FinalityError("bad-vote", f"a vote is {VOTE_SIZE} bytes, not {len(data)}")
        voter, source_hash, source_height, target_hash, target_height, signature = _VOTE.unpack(data)
        return cls(voter, Checkpoint(source_height, source_hash), Checkpoint(target_height, target_hash), signature)

    def __repr__(self) -> str:
        target = f"{self.target.height} {self.target.hash.hex()[:8]}"
        return f"Vote({self.voter.hex()[:8]}: {self.source.height} -> {target})"


def sign_vote(sign: Callable[[bytes], bytes], voter: bytes, params: NetworkParams, source: Checkpoint,
              target: Checkpoint) -> Vote:
    """Sign the link with ``sign`` (e.g. ``NodeKey.sign``); ``voter`` is its public key.

    A member signs only what its VoterGuard allowed, and persists the vote before sending it.
    """
    check_link(params, source, target)
    return Vote(voter, source, target, sign(vote_message(params.network_hash, source, target)))


def check_vote_shape(params: NetworkParams, vote: Vote) -> None:
    """Everything about a vote that needs no key: sizes, checkpoint heights, target above source."""
    if len(vote.voter) != KEY_SIZE or len(vote.signature) != SIGNATURE_SIZE:
        raise FinalityError("bad-vote", "voter key or signature has the wrong size")
    check_link(params, vote.source, vote.target)


def check_link(params: NetworkParams, source: Checkpoint, target: Checkpoint) -> None:
    """Both ends are checkpoints (heights multiples of the interval), the target above the source."""
    interval = params.checkpoint_interval
    for name, checkpoint in (("source", source), ("target", target)):
        if len(checkpoint.hash) != HASH_SIZE or not 0 <= checkpoint.height <= MAX_HEIGHT:
            raise FinalityError("bad-vote", f"{name} checkpoint is malformed")
        if checkpoint.height % interval:
            raise FinalityError("bad-vote", f"{name} height {checkpoint.height} is not a checkpoint "
                                f"(a multiple of {interval})")
    if target.height <= source.height:
        raise FinalityError("bad-vote", f"target height {target.height} is not above source height {source.height}")


def verify_vote(params: NetworkParams, vote: Vote) -> None:
    """Raise a named FinalityError unless ``vote`` is a well-formed vote signed by a member.

    Whether the checkpoints exist, and the source is an ancestor of the target, is the block
    tree's question (FinalityState asks it through ``ancestor_at``).
    """
    check_vote_shape(params, vote)
    if params.members is None:
        raise FinalityError("finality-off", "an open network has no members to vote")
    if vote.voter not in params.members:
        raise FinalityError("not-a-member", f"voter {vote.voter.hex()[:16]} is not a member of the network")
    try:
        _public_key(vote.voter).verify(vote.signature, vote.message(params.network_hash))
    except (InvalidSignature, ValueError):
        raise FinalityError("bad-vote-signature", f"{vote!r} is not signed by its voter") from None


@functools.lru_cache(maxsize=1024)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    # Parsing a key costs a fifth of a verify; a node checks the same few member keys all day.
    return Ed25519PublicKey.from_public_bytes(raw)


def conflict_kind(first: Vote, second: Vote) -> str | None:
    """``double-vote``, ``surround-vote`` or None: do these two votes break a slashing condition?

    Votes by different voters never conflict, nor do two votes for the same link (a resend,
    whatever its signature bytes).
    """
    if first.voter != second.voter or first.link == second.link:
        return None
    if first.target.height == second.target.height:
        return DOUBLE_VOTE
    (s1, t1), (s2, t2) = ((v.source.height, v.target.height) for v in (first, second))
    if s1 < s2 < t2 < t1 or s2 < s1 < t1 < t2:
        return SURROUND_VOTE
    return None


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two votes by one member that break a slashing condition; kept in canonical order."""

    first: Vote
    second: Vote

    @classmethod
    def of(cls, a: Vote, b: Vote) -> Evidence:
        """The canonical form: the votes ordered by their encoding, so one pair has one form."""
        return cls(a, b) if a.encode() <= b.encode() else cls(b, a)

    @property
    def voter(self) -> bytes:
        return self.first.voter

    @property
    def kind(self) -> str | None:
        return conflict_kind(self.first, self.second)

    def encode(self) -> bytes:
        return self.first.encode() + self.second.encode()

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        if len(data) != EVIDENCE_SIZE:
            raise FinalityError("bad-evidence", f"evidence is {EVIDENCE_SIZE} bytes, not {len(data)}")
        return cls(Vote.decode(data[:VOTE_SIZE]), Vote.decode(data[VOTE_SIZE:]))


def check_evidence(params: NetworkParams, evidence: Evidence) -> str:
    """The condition broken (``double-vote`` or ``surround-vote``); FinalityError if not proof.

    Both votes must be valid member votes (verify_vote's reasons) by the same member that
    conflict; anything else is ``bad-evidence``: fake evidence accuses an honest member.
    """
    first, second = evidence.first, evidence.second
    if first.voter != second.voter:
        raise FinalityError("bad-evidence", "the two votes are by different members")
    if first.link == second.link:
        raise FinalityError("bad-evidence", "the same vote twice is not a conflict")
    verify_vote(params, first)
    verify_vote(params, second)
    kind = conflict_kind(first, second)
    if kind is None:
        raise FinalityError("bad-evidence", f"{first!r} and {second!r} do not conflict")
    return kind


class VoteHistory:
    """One member's votes by target height, each new one checked against them in O(log n).

    While no two conflict, ordering by target also orders the sources (a later target with
    an earlier source would surround), so the only candidates for a conflict with a new vote
    are its neighbours: the one with the same target, the next above and the next below.
    """

    __slots__ = ("targets", "votes")

    def __init__(self) -> None:
        self.targets: list[int] = []
        self.votes: list[Vote] = []

    def conflict(self, vote: Vote) -> Vote | None:
        """A recorded vote that ``vote`` conflicts with; records ``vote`` if none does."""
        at = bisect.bisect_left(self.targets, vote.target.height)
        for index in (at, at - 1):
            if 0 <= index < len(self.votes) and conflict_kind(self.votes[index], vote) is not None:
                return self.votes[index]
        if at < len(self.votes) and self.targets[at] == vote.target.height:
            return None  # the same link again
        self.targets.insert(at, vote.target.height)
        self.votes.insert(at, vote)
        if len(self.votes) > MAX_HISTORY_PER_MEMBER:
            del self.targets[0], self.votes[0]
        return None

    def prune(self, below_height: int) -> None:
        cut = bisect.bisect_left(self.targets, below_height)
        del self.targets[:cut], self.votes[:cut]
