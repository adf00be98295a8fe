"""What a peer's `get_blocks` requests may cost us in bytes sent, decided without sockets. Pure.

A `get_blocks` of a few hundred bytes is answered with up to 3 MiB of blocks, so a peer
that asks again and again (random locators: every answer starts at genesis) has the node
send hundreds of megabytes for nothing. An honest sync asks for each stretch of our chain
once per link: every request of a round goes on from the last block we sent. So what is
charged is the bytes of blocks at heights we already sent the peer on this link, to a
token bucket per link; an honest sync is never charged at all.

A request whose repeats the bucket cannot pay for is answered late (``charge`` says how
long to wait: the peer's link is not read meanwhile, which is the throttle). A peer that
has been throttled ``MAX_THROTTLED_ANSWERS`` times without letting the bucket fill again
is flooding: ``charge`` returns None and the link is dropped and the peer banned
(``get-blocks-flood``, gridchain.net.penalties).
"""

from __future__ import annotations

from collections.abc import Sequence

# Bytes a second of blocks a peer may have again: a peer that lost what we sent (a crash,
# a reorg of ours) asks for a few batches again, not for a stream of them.
REPEAT_RATE_BYTES_S = 1024 * 1024
# Bytes of repeats a link may have at once: two or three full answers (each <= 3 MiB).
REPEAT_BURST_BYTES = 8 * 1024 * 1024
# Answers held back in a row (the bucket never full again in between) before the peer is
# taken for a flood: an honest peer is never held back at all.
MAX_THROTTLED_ANSWERS = 4


class AnswerBudget:
    """One link's bucket of repeat bytes, and the highest height sent on it."""

    def __init__(self, now: float) -> None:
        self.tokens = float(REPEAT_BURST_BYTES)
        self.at = now
        self.sent_top = -1  # the highest height of a block sent on this link
        self.throttled = 0  # answers held back since the bucket was last full
        self.repeat_bytes = 0  # repeats charged on this link, for the record

    def charge(self, first_height: int, sizes: Sequence[int], now: float) -> float | None:
        """Charge an answer of consecutive main-chain blocks from ``first_height`` (their
        stored sizes): the seconds to hold it back (0: send now), or None: a flood."""
        self.tokens = min(float(REPEAT_BURST_BYTES), self.tokens + (now - self.at) * REPEAT_RATE_BYTES_S)
        self.at = now
        if self.tokens >= REPEAT_BURST_BYTES:
            self.throttled = 0
        repeat = sum(size for index, size in enumerate(sizes) if first_height + index <= self.sent_top)
        if sizes:
            self.sent_top = max(self.sent_top, first_height + len(sizes) - 1)
        if not repeat:
            return 0.0
        self.repeat_bytes += repeat
        self.tokens -= repeat
        if self.tokens >= 0:
            return 0.0
        self.throttled += 1
        if self.throttled > MAX_THROTTLED_ANSWERS:
            return None
        return -self.tokens / REPEAT_RATE_BYTES_S
