"""Whether this node's own clock looks off, from what its peers' blocks and its relays say. Pure.

A node whose clock is minutes off cannot take part: slow, it refuses every peer's block as
``time-too-new`` (more than the rules' two minutes ahead of its clock) and mines on a branch
nobody else extends; fast, its peers refuse its blocks. Its logs would show only the symptom,
block after block. ``ClockWatch`` turns the evidence into one verdict about the node itself:

- blocks of at least MINERS_FOR_EVIDENCE different miners refused as ``time-too-new`` within
  EVIDENCE_S: one miner's clock may be fast, several "ahead" means ours is behind;
- every relay that answers has a clock more than RELAY_SKEW_MS off ours, the same way (each
  relay answer carries the relay's time; a relay's skew alone is also reported by the relay
  client, ``relay.clock_skew``).

``update(now)`` returns a change to report once: ``ClockOff`` when the evidence appears (the
estimated offset of our clock: negative when it is behind), ``ClockOk`` once it is gone.
Time (monotonic seconds) is an argument; the wall-clock offsets are measured by the caller.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

# Refusals from this many different miners make the verdict: one fast clock is its owner's.
MINERS_FOR_EVIDENCE = 2
# A refusal counts this long: a clock set right clears the verdict within it (no new refusals).
EVIDENCE_S = 60.0
# A relay this far off (either way) counts as evidence, as for the relay client's own warning.
RELAY_SKEW_MS = 60_000


@dataclass(frozen=True, slots=True)
class ClockOff:
    """Our clock looks ``offset_ms`` off (negative: behind), by what ``source`` says."""

    offset_ms: int
    source: str  # "peers" (their blocks refused as too new) or "relays" (their clocks)


@dataclass(frozen=True, slots=True)
class ClockOk:
    """The evidence is gone (the clock was set right, or the skewed peers left)."""


class ClockWatch:
    """The evidence about our own clock, and the verdict last reported."""

    def __init__(self) -> None:
        self._refused: dict[bytes, tuple[float, int]] = {}  # miner key -> (when, how far ahead, ms)
        self._relay_skews: list[int] = []
        self.off: ClockOff | None = None

    def refused(self, miner: bytes, ahead_ms: int, now: float) -> None:
        """A block by ``miner`` was refused as too new: its time is ``ahead_ms`` past our clock."""
        self._refused[miner] = (now, ahead_ms)

    def relays(self, skews_ms: list[int]) -> None:
        """Each answering relay's clock minus ours (ms), as last measured."""
        self._relay_skews = list(skews_ms)

    def estimate(self, now: float) -> ClockOff | None:
        """What the evidence says now (None: nothing says our clock is off)."""
        for miner in [m for m, (at, _) in self._refused.items() if now - at > EVIDENCE_S]:
            del self._refused[miner]
        if len(self._refused) >= MINERS_FOR_EVIDENCE:
            # The least "ahead": a miner whose own clock is fast looks further ahead still.
            return ClockOff(-min(a for _, a in self._refused.values()), "peers")
        skews = self._relay_skews
        if skews and (all(s > RELAY_SKEW_MS for s in skews) or all(s < -RELAY_SKEW_MS for s in skews)):
            return ClockOff(-round(statistics.median(skews)), "relays")
        return None

    def update(self, now: float) -> ClockOff | ClockOk | None:
        """The change to report, if the verdict changed (a new ClockOff, or ClockOk once)."""
        verdict = self.estimate(now)
        if (verdict is None) == (self.off is None):
            if verdict is not None:
                self.off = verdict  # the estimate moves on quietly; reported once
            return None
        self.off = verdict
        return verdict if verdict is not None else ClockOk()

    def status(self) -> dict:
        if self.off is None:
            return {"state": "ok"}
        return {"state": "off", "offset_ms": self.off.offset_ms, "source": self.off.source}
