"""Sync progress, with no sockets: whom we sync from, what to ask next, when to give up. Pure.

A node syncs from one peer at a time: the first whose announced work beats ours. It sends
``get_blocks`` with a locator, and each ``blocks`` answer either moves it on (ask again
from the last block the peer sent) or ends the round. ``SyncState`` holds that progress and
answers with the next ``GetBlocks`` to send (or None); the caller (gridchain.net.gossip)
hands the blocks to the chain in between. Peers are opaque keys here: anything hashable.

The round is pipelined. As soon as an answer that promises more arrives, ``ask_ahead``
gives the request for the batch after it (continuing from its last block), so the peer
reads and sends that batch while we check and store this one; the caller may also keep an
answer aside (its checks running) while it stores the one before. Answers are handled in
the order they arrived (``answer_handled`` for each). At most ``PIPELINE_BATCHES`` answers
are asked for or waiting beyond the one being stored, so a sync peer has a bounded number
of its answers (each under the frame cap) on their way to us. A round that ends with a
request still out, or a batch that broke a rule (``cancel_ahead``), drops the answers
still due from that peer: they can never be taken for the answers of a later round.

A peer that stops answering is caught by ``stalled(now)``; one that keeps answering with
nothing we lack while claiming more is cut off with ``empty-sync`` (both are bans, see
gridchain.net.penalties).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence

from gridchain.net.messages import MAX_BLOCKS_PER_MESSAGE, MAX_LOCATOR, Blocks, GetBlocks
from gridchain.net.protocol import ProtocolViolation

# A sync request unanswered this long means the peer is stalling us: drop and ban it.
SYNC_TIMEOUT_S = 20.0
# Consecutive empty sync answers from a peer that claims more work than ours before we stop believing it.
MAX_EMPTY_SYNC_ANSWERS = 3
# Answers asked for or arrived beyond the one being stored: one being checked and one on its
# way keep the check threads and the peer busy; more would only hold more megabytes here.
PIPELINE_BATCHES = 2


class SyncState:
    """The node's one sync round (if any) and each peer's count of answers that brought nothing."""

    def __init__(self) -> None:
        self.peer: Hashable | None = None
        self.deadline = 0.0
        self._after: tuple[int, bytes] | None = None  # (height, hash) of the last block the sync peer sent
        self._asked = 0  # requests of this round sent to ``peer`` and not yet answered
        # Answers taken and not yet handled, oldest first: (answer, whether it ended further
        # up the peer's chain than the one before, the ``_after`` it moved on from).
        self._arrived: deque[tuple[Blocks, bool, tuple[int, bytes] | None]] = deque()
        self._stale: dict[Hashable, int] = {}  # answers still due to rounds that ended: dropped
        self._empty_answers: dict[bytes, int] = {}

    def wants(self, peer_work: int, our_work: int) -> bool:
        """Whether a peer announcing ``peer_work`` should start a round now."""
        return peer_work > our_work and self.peer is None

    def request(self, peer: Hashable, locator: Sequence[bytes], now: float) -> GetBlocks | None:
        """Start (or go on with) a round with ``peer``; None while another peer's round runs,
        or while an answer of this round is on its way or being handled (it moves the round on)."""
        if self.peer is not None and self.peer is not peer:
            return None
        if self.peer is None:
            self._reset()
        elif self._asked or self._arrived:
            return None
        self.peer = peer
        return self._next(locator, now)

    def answer_arrived(self, peer: Hashable, message: Blocks, now: float) -> bool:
        """Whether ``message`` answers our round (else it is a late answer, to be ignored)."""
        stale = self._stale.get(peer)
        if stale:
            # Answers come back in the order asked: this one was due to a round that ended.
            if stale == 1:
                del self._stale[peer]
            else:
                self._stale[peer] = stale - 1
            return False
        if peer is not self.peer:
            return False
        self._asked = max(0, self._asked - 1)
        self.deadline = now + SYNC_TIMEOUT_S
        # Blocks we already hold (a side branch) still move the sync on, as long as each
        # answer ends further up the peer's chain than the one before.
        before = self._after
        last = message.blocks[-1] if message.blocks else None
        advanced = last is not None and (before is None or last.height > before[0])
        if advanced:
            self._after = (last.height, last.hash)
        self._arrived.append((message, advanced, before))
        return True

    def ask_ahead(self, peer: Hashable, message: Blocks, locator: Sequence[bytes], now: float) -> GetBlocks | None:
        """Right after ``answer_arrived`` took ``message``, before its blocks are checked: the
        request for the batch after it, or None (nothing promised, no progress, or enough asked)."""
        if peer is not self.peer or not self._arrived or self._arrived[-1][0] is not message:
            return None
        if not (self._arrived[-1][1] and message.more):
            return None
        # The oldest answer here is about to be stored; the rest and what is asked are ahead of it.
        if self._asked + len(self._arrived) - 1 >= PIPELINE_BATCHES:
            return None
        return self._next(locator, now)

    def waiting(self, peer: Hashable, message: Blocks) -> bool:
        """Whether ``message`` from ``peer`` arrived for this round and is still to be handled."""
        return peer is self.peer and any(entry[0] is message for entry in self._arrived)

    def cancel_ahead(self, message: Blocks) -> None:
        """``message`` (being handled) broke a rule: what arrived or was asked after it is not
        wanted (its blocks would lack their parents). The answers still due are dropped on
        arrival, and the round goes on from ``message`` as if nothing had been asked ahead."""
        if self.peer is not None and self._asked:
            self._stale[self.peer] = self._stale.get(self.peer, 0) + self._asked
        self._asked = 0
        while len(self._arrived) > 1 and self._arrived[0][0] is message:
            dropped = self._arrived.pop()
            self._after = dropped[2]  # back to where the dropped answer moved on from

    def answer_handled(self, peer_key: bytes, message: Blocks, brought: int, peer_work: int,
                       our_work: int, locator: Sequence[bytes], now: float, orphaned: bool = False) -> GetBlocks | None:
        """After the answer's ``brought`` new blocks joined our tree: the next request, or
        None: done (``peer`` is None then) or an answer after this one is due or here already.
        ``orphaned``: its blocks only went to the orphan pool, which counts as empty even when
        it "advanced" (parentless blocks of ever greater heights cost a liar nothing)."""
        advanced = False
        if self._arrived and self._arrived[0][0] is message:
            advanced = self._arrived.popleft()[1]
        if brought:
            self._empty_answers.pop(peer_key, None)
        elif orphaned or not (advanced and message.more):
            # Walking up a side branch we already hold (advanced, more to come) is progress;
            # anything else that brings no new block counts, across rounds too, so a peer
            # that ends each round with a known block cannot restart us for ever.
            count = self._empty_answers.get(peer_key, 0) + 1
            self._empty_answers[peer_key] = count
            if count >= MAX_EMPTY_SYNC_ANSWERS and (message.more or peer_work > our_work):
                raise ProtocolViolation("empty-sync", "claims more blocks but sends none we lack")
        if self._asked or self._arrived:
            return None  # the answer after this one (asked ahead, or arrived) goes on from here
        if message.more or (brought and peer_work > our_work):
            return self._next(locator, now)
        self.end()
        return None

    def end(self) -> None:
        """The round is over (done, or given up: the peer's next tip or block resumes it)."""
        if self.peer is not None and self._asked:
            self._stale[self.peer] = self._stale.get(self.peer, 0) + self._asked
        self.peer = None
        self._reset()

    def stalled(self, now: float) -> Hashable | None:
        """The sync peer, once its request has gone unanswered too long (the round ends)."""
        peer = self.peer
        if peer is None or now <= self.deadline:
            return None
        self.end()
        return peer

    def peer_gone(self, peer: Hashable) -> bool:
        """Forget a closed peer's round; True if it was the sync peer."""
        self._stale.pop(peer, None)
        if self.peer is not peer:
            return False
        self.peer = None
        self._reset()
        return True

    def _reset(self) -> None:
        self._after = None
        self._asked = 0
        self._arrived.clear()

    def _next(self, locator: Sequence[bytes], now: float) -> GetBlocks:
        self.deadline = now + SYNC_TIMEOUT_S
        self._asked += 1
        locator = list(locator)
        if self._after is not None and self._after[1] != locator[0]:
            # Go on from the last block the peer sent: when it is on a side branch of ours,
            # our own locator would have the peer send the same blocks over and over.
            locator = [self._after[1], *locator]
            if len(locator) > MAX_LOCATOR:
                locator = [*locator[:MAX_LOCATOR - 1], locator[-1]]  # keep genesis last
        return GetBlocks(locator=tuple(locator), limit=MAX_BLOCKS_PER_MESSAGE)
