"""Sync progress, with no sockets: whom we sync from, what to ask next, when to give up. Pure.

A node syncs from one peer at a time: the first whose announced work beats ours. It sends
``get_blocks`` with a locator, and each ``blocks`` answer either moves it on (ask again
from the last block the peer sent) or ends the round. ``SyncState`` holds that progress and
answers with the next ``GetBlocks`` to send (or None); the caller (gridchain.net.gossip)
hands the blocks to the chain in between. Peers are opaque keys here: anything hashable.

A peer that stops answering is caught by ``stalled(now)``; one that keeps answering with
nothing we lack while claiming more is cut off with ``empty-sync`` (both are bans, see
gridchain.net.penalties).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from gridchain.net.messages import MAX_BLOCKS_PER_MESSAGE, MAX_LOCATOR, Blocks, GetBlocks
from gridchain.net.protocol import ProtocolViolation

# A sync request unanswered this long means the peer is stalling us: drop and ban it.
SYNC_TIMEOUT_S = 20.0
# Consecutive empty sync answers from a peer that claims more work than ours before we stop believing it.
MAX_EMPTY_SYNC_ANSWERS = 3


class SyncState:
    """The node's one sync round (if any) and each peer's count of answers that brought nothing."""

    def __init__(self) -> None:
        self.peer: Hashable | None = None
        self.deadline = 0.0
        self._after: tuple[int, bytes] | None = None  # (height, hash) of the last block the sync peer sent
        self._advanced = False  # the answer being handled ended further up the peer's chain
        self._empty_answers: dict[bytes, int] = {}

    def wants(self, peer_work: int, our_work: int) -> bool:
        """Whether a peer announcing ``peer_work`` should start a round now."""
        return peer_work > our_work and self.peer is None

    def request(self, peer: Hashable, locator: Sequence[bytes], now: float) -> GetBlocks | None:
        """Start (or go on with) a round with ``peer``; None while another peer's round runs."""
        if self.peer is not None and self.peer is not peer:
            return None
        if self.peer is None:
            self._after = None
        self.peer = peer
        return self._next(locator, now)

    def answer_arrived(self, peer: Hashable, message: Blocks, now: float) -> bool:
        """Whether ``message`` answers our round (else it is a late answer, to be ignored)."""
        if peer is not self.peer:
            return False
        self.deadline = now + SYNC_TIMEOUT_S
        # Blocks we already hold (a side branch) still move the sync on, as long as each
        # answer ends further up the peer's chain than the one before.
        last = message.blocks[-1] if message.blocks else None
        self._advanced = last is not None and (self._after is None or last.height > self._after[0])
        if self._advanced:
            self._after = (last.height, last.hash)
        return True

    def answer_handled(self, peer_key: bytes, message: Blocks, brought: int, peer_work: int,
                       our_work: int, locator: Sequence[bytes], now: float) -> GetBlocks | None:
        """After the answer's ``brought`` new blocks went to the chain: the next request, or None (done)."""
        if brought:
            self._empty_answers.pop(peer_key, None)
        elif not (self._advanced and message.more):
            # Walking up a side branch we already hold (advanced, more to come) is progress;
            # anything else that brings no new block counts, across rounds too, so a peer
            # that ends each round with a known block cannot restart us for ever.
            count = self._empty_answers.get(peer_key, 0) + 1
            self._empty_answers[peer_key] = count
            if count >= MAX_EMPTY_SYNC_ANSWERS and (message.more or peer_work > our_work):
                raise ProtocolViolation("empty-sync", "claims more blocks but sends none we lack")
        if message.more or (brought and peer_work > our_work):
            return self._next(locator, now)
        self.end()
        return None

    def end(self) -> None:
        """The round is over (done, or given up: the peer's next tip or block resumes it)."""
        self.peer = None
        self._after = None

    def stalled(self, now: float) -> Hashable | None:
        """The sync peer, once its request has gone unanswered too long (the round ends)."""
        peer = self.peer
        if peer is None or now <= self.deadline:
            return None
        self.peer = None
        return peer

    def peer_gone(self, peer: Hashable) -> bool:
        """Forget a closed peer's round; True if it was the sync peer."""
        if self.peer is not peer:
            return False
        self.peer = None
        return True

    def _next(self, locator: Sequence[bytes], now: float) -> GetBlocks:
        self.deadline = now + SYNC_TIMEOUT_S
        locator = list(locator)
        if self._after is not None and self._after[1] != locator[0]:
            # Go on from the last block the peer sent: when it is on a side branch of ours,
            # our own locator would have the peer send the same blocks over and over.
            locator = [self._after[1], *locator]
            if len(locator) > MAX_LOCATOR:
                locator = [*locator[:MAX_LOCATOR - 1], locator[-1]]  # keep genesis last
        return GetBlocks(locator=tuple(locator), limit=MAX_BLOCKS_PER_MESSAGE)
