"""VoterGuard: a member's own voting rule, which never lets it break a slashing condition.

Part of the finality gadget described in gridchain/consensus/finality.py.

The rule (Casper FFG's honest validator, section 2 and the plausible-liveness proof): vote
with target = the newest checkpoint on the main chain and source = the highest justified
checkpoint on it, and only when the target is above every target voted so far and the
source is at least every source voted so far. Then no new vote can double-vote (its target
height is new) or surround or be surrounded by an earlier one (for every earlier vote,
s' <= s and t' < t). The guard is a little stricter than the conditions themselves; an
honest member never needs the votes it refuses.

Crash safety: the guard's state is the member's own past votes, so it must outlive the
process. The caller's order for each vote is::

    source, target = guard.next_vote(...)       # None: nothing to vote for now
    vote = sign_vote(key.sign, key.public_key, params, source, target)
    guard.record(vote)                          # refuses it if it would equivocate
    store.append_vote(vote); fsync              # durable before anyone can see it
    send(vote)

A member killed anywhere in that sequence restarts with ``VoterGuard(params, key, stored)``:
a vote not yet durable was never sent, and a durable one is remembered, so it can never
sign a conflicting one (it may send the remembered one again: a resend is not a conflict).
Only the newest vote and the highest source matter, so the store may keep just the newest.
"""

from __future__ import annotations

from collections.abc import Iterable

from gridchain.consensus.finality_votes import (
    AncestorAt, Checkpoint, FinalityError, Vote, check_link, checkpoint_height, conflict_kind,
)
from gridchain.consensus.params import NetworkParams


class VoterGuard:
    """Decides a member's next vote from its persisted past votes; refuses any equivocation."""

    def __init__(self, params: NetworkParams, voter: bytes, persisted: Iterable[Vote] = ()) -> None:
        self.params = params
        self.voter = voter
        self._last: Vote | None = None  # the vote with the highest target
        self._max_source = -1
        for vote in sorted(persisted, key=lambda v: v.target.height):
            if vote.voter != voter:
                raise FinalityError("bad-vote", f"persisted vote {vote!r} is not this member's")
            if self._last is not None and vote.link == self._last.link:
                continue
            self.check(vote.source, vote.target)  # a stored history that conflicts is not ours to extend
            self._accept(vote)

    @property
    def last(self) -> Vote | None:
        """The newest vote (highest target): what the caller may resend after a restart."""
        return self._last

    def next_vote(self, tip_hash: bytes, tip_height: int, justified: Checkpoint,
                  ancestor_at: AncestorAt) -> tuple[Checkpoint, Checkpoint] | None:
        """(source, target) to sign for the main chain ending at the tip, or None to abstain.

        ``justified``: the highest justified checkpoint on that chain
        (FinalityState.highest_justified). Abstains when the newest checkpoint is not above
        the source, when it was voted for already, and when the source went below an
        earlier vote's (a view that lost justification, say after a restart).
        """
        height = checkpoint_height(tip_height, self.params.checkpoint_interval)
        if height <= justified.height:
            return None
        target_hash = ancestor_at(tip_hash, height)
        if target_hash is None or ancestor_at(tip_hash, justified.height) != justified.hash:
            return None
        target = Checkpoint(height, target_hash)
        return (justified, target) if self._refusal(justified, target) is None else None

    def check(self, source: Checkpoint, target: Checkpoint) -> None:
        """Raise FinalityError (``would-double-vote``, ``would-surround``, ``vote-not-newer``,
        ``bad-vote``) unless a vote for this link is safe after the votes recorded so far."""
        check_link(self.params, source, target)
        refusal = self._refusal(source, target)
        if refusal is not None:
            raise FinalityError(refusal, f"{source.height} -> {target.height} after {self._last!r}")

    def record(self, vote: Vote) -> None:
        """Remember a signed vote before it is persisted and sent; refuses an unsafe one."""
        if vote.voter != self.voter:
            raise FinalityError("bad-vote", f"{vote!r} is not this member's vote")
        if self._last is not None and vote.link == self._last.link:
            return  # the same vote again (a resend after a restart)
        self.check(vote.source, vote.target)
        self._accept(vote)

    def _refusal(self, source: Checkpoint, target: Checkpoint) -> str | None:
        last = self._last
        if last is None:
            return None
        if target.height > last.target.height and source.height >= self._max_source:
            return None
        probe = Vote(self.voter, source, target, b"")
        kind = conflict_kind(last, probe)
        if kind == "double-vote":
            return "would-double-vote"
        if kind == "surround-vote" or source.height < self._max_source:
            return "would-surround"
        return "vote-not-newer"

    def _accept(self, vote: Vote) -> None:
        self._last = vote
        self._max_source = max(self._max_source, vote.source.height)
