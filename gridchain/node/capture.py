"""The capture task: ask each relay for what follows the chain, mine it as signed, sealed runs.

Every interval the task asks each relay for the readings after the chain's last sequence
number for it (``read(after_seq)``); the relay client hands back only runs whose seals (and
gap notice) it has verified (``FeedBatch``). A block then carries whole seals only, starting
exactly where the chain's sequence for that relay stops (or where a gap notice the relay
signed says it resumes), with no hole in between: a block the rules accept. The readings
a reorg pushed off the main chain come back from the ledger as whole, verified seals and wait
in ONE buffer (``DisplacedSeals``); they are mined again where they continue the sequence,
or as a fill where they lie inside a gap the new tip left open (a branch that jumped to the
relay's gap notice from below them; rules.check_fill), fills first since nobody else may
still hold them; otherwise the task asks the relay again. Nothing else is ever mined, and
every capture's relay signatures are checked once more before any work is spent on it.

A better tip arriving mid-mining cancels the job and the capture is planned again on the new
tip ("capture.duplicate" when the new tip already holds it: the prototype's Case 3). A relay
whose clock is minutes off the node's is still mined (its times are its signed word); the
relay client warns about it (``relay.clock_skew``, from the relay's clock in each answer).

A relay that cannot be read is retried on the one reconnect schedule of every dialler
(gridchain/wire/reconnect.Reconnect, the client's ``retry``): the client waits it out, the
watch logs ``relay.unreachable`` once when an outage starts and ``relay.restored`` once
when it ends.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import structlog

from gridchain.consensus.block import MAX_READINGS_PER_BLOCK, Block, Capture, GapNotice, Reading, Seal, short_hash
from gridchain.consensus.provenance import MAX_SEALS_PER_BLOCK
from gridchain.consensus.rules import GapRanges, RuleViolation, check_relay_signatures, open_gap_of
from gridchain.consensus.template import block_template, seal
from gridchain.ledger.store import StoreError
from gridchain.node.miner import Miner
from gridchain.relay.client import BACKOFF, RelayClient, RelayError
from gridchain.relay.feed import FeedBatch

log = structlog.get_logger()

# RelayError reasons that mean "cannot reach the relay" rather than "the relay sent bad data".
# ("backoff" is neither: the client did not try, so the state of the last real try stands.)
UNREACHABLE_REASONS = frozenset({"unreachable", "timeout", "closed"})
# The first capture waits a random part of this share of the interval (see CaptureTask.run).
START_SPREAD = 0.5
# Rebuilds of one capture after better tips before giving up until the next interval.
MAX_REBUILDS = 50
# Displaced readings kept per relay: a few blocks' worth; older ones are fetched again.
MAX_DISPLACED_READINGS = 4 * MAX_READINGS_PER_BLOCK
# A node with configured peers but none ready mines only once it has been so for this long.
# Its peers just dropped (or it just started): a block now would most likely be a stale fork
# on an old tip, mined because the relay answered before the peers were redialled and synced
# (a redial, handshake and sync of a healed link take well under a second on a LAN). A node
# really on its own still records the relay's readings after this short wait (one capture
# at most, at the default interval); one with no peers configured never waits.
CUT_OFF_GRACE_S = 2.0
# A node syncing from a peer this many blocks or more ahead of it skips its captures until the
# sync ends: a block on its old tip would be a stale fork (and a vote for it wasted). A peer
# that only claims a long chain holds this up no longer than sync's own stall limits allow;
# the relay keeps every reading meanwhile, so the next capture takes them all.
SYNC_BEHIND_BLOCKS = 10

Run = tuple[Seal, tuple[Reading, ...]]


# --- pure planning ------------------------------------------------------------------------------

def plan_capture(relay_id: str, substation: str, relay_key: bytes, last_seq: int | None,
                 runs: Iterable[Run], gaps: Iterable[GapNotice] = (), open_gaps: GapRanges = ()) -> Capture | None:
    """The longest capture of whole ``runs`` that fills an open gap or continues ``last_seq``.

    A fill comes first: the lowest run lying inside one of ``open_gaps`` (the branch's open
    gap ranges), then the runs that follow it inside the same range, without a notice.
    Otherwise the capture starts at ``last_seq + 1``, or, when no run starts there, at the
    lowest gap notice beyond it that a run starts at (the notice goes into the block). It
    stops at the first hole, or before the block limits. None when nothing fits.
    """
    by_first: dict[int, Run] = {}
    for run in runs:
        by_first.setdefault(run[0].first_seq, run)  # the first copy wins: displaced runs were on a chain
    fill = _plan_fill(by_first, open_gaps)
    if fill is not None:
        return Capture(relay_id, substation, relay_key, *fill)
    expected = (last_seq or 0) + 1
    notice = None
    if expected not in by_first:
        notice = min((g for g in gaps if g.resume_seq > expected and g.resume_seq in by_first),
                     key=lambda g: g.resume_seq, default=None)
        if notice is None:
            return None
        expected = notice.resume_seq
    readings, seals = _take_runs(by_first, expected, None)
    if not seals:
        return None
    return Capture(relay_id, substation, relay_key, readings, seals, notice)


def _plan_fill(by_first: dict[int, Run], open_gaps: GapRanges
               ) -> tuple[tuple[Reading, ...], tuple[Seal, ...]] | None:
    """The readings and seals of the lowest fill ``by_first`` offers, or None."""
    for first in sorted(by_first):
        gap = open_gap_of(open_gaps, first, by_first[first][0].last_seq)
        if gap is not None:
            readings, seals = _take_runs(by_first, first, gap[1])
            if seals:
                return readings, seals
    return None


def _take_runs(by_first: dict[int, Run], expected: int, upto: int | None
               ) -> tuple[tuple[Reading, ...], tuple[Seal, ...]]:
    """Whole runs from ``expected`` on without a hole, ending at or before ``upto`` (None: no
    end), within the block limits."""
    seals: list[Seal] = []
    readings: list[Reading] = []
    while expected in by_first and len(seals) < MAX_SEALS_PER_BLOCK:
        run_seal, rows = by_first[expected]
        if len(readings) + len(rows) > MAX_READINGS_PER_BLOCK or (upto is not None and run_seal.last_seq > upto):
            break
        seals.append(run_seal)
        readings.extend(rows)
        expected = run_seal.last_seq + 1
    return tuple(readings), tuple(seals)


def batch_runs(batch: FeedBatch) -> list[Run]:
    return [(run.seal, run.readings) for run in batch.runs]


class DisplacedSeals:
    """The one buffer of readings a reorg displaced: whole seals the rules verified, per relay."""

    def __init__(self, max_readings: int = MAX_DISPLACED_READINGS) -> None:
        self.max_readings = max_readings
        self._runs: dict[str, dict[int, Run]] = {}  # relay -> first_seq -> run
        self._gaps: dict[str, list[GapNotice]] = {}
        self._labels: dict[str, tuple[str, bytes]] = {}  # relay -> (substation, relay key)

    def add(self, captures: Iterable[Capture]) -> None:
        """Take what ``LedgerUpdate.displaced`` hands back (verified by the consensus rules)."""
        for capture in captures:
            runs = self._runs.setdefault(capture.relay_id, {})
            if self._labels.get(capture.relay_id, (None, capture.relay_key))[1] != capture.relay_key:
                runs.clear()  # another key on another branch: the older runs no longer fit
                self._gaps.pop(capture.relay_id, None)
            self._labels[capture.relay_id] = (capture.substation, capture.relay_key)
            for run in capture.runs():
                runs.setdefault(run[0].first_seq, run)
            if capture.gap is not None:
                self._gaps.setdefault(capture.relay_id, []).append(capture.gap)
            self._bound(capture.relay_id)

    def relays(self) -> list[str]:
        return [relay_id for relay_id, runs in self._runs.items() if runs]

    def runs(self, relay_id: str) -> list[Run]:
        return [self._runs[relay_id][first] for first in sorted(self._runs.get(relay_id, {}))]

    def gaps(self, relay_id: str) -> list[GapNotice]:
        return list(self._gaps.get(relay_id, ()))

    def label(self, relay_id: str) -> tuple[str, bytes] | None:
        return self._labels.get(relay_id)

    def count(self, relay_id: str | None = None) -> int:
        relays = [relay_id] if relay_id is not None else list(self._runs)
        return sum(len(rows) for r in relays for _, rows in self._runs.get(r, {}).values())

    def prune(self, relay_id: str, last_seq: int | None, open_gaps: GapRanges = ()) -> None:
        """Drop the runs the chain holds now or can never take: those ending at or before
        ``last_seq`` that do not lie inside one of its ``open_gaps`` (a fill could take those)."""
        runs = self._runs.get(relay_id)
        if not runs or last_seq is None:
            return
        for first in [f for f, (s, _) in runs.items()
                      if s.last_seq <= last_seq and open_gap_of(open_gaps, s.first_seq, s.last_seq) is None]:
            del runs[first]
        self._gaps[relay_id] = [g for g in self._gaps.get(relay_id, ()) if g.resume_seq > last_seq]

    def _bound(self, relay_id: str) -> None:
        runs = self._runs[relay_id]
        while runs and sum(len(rows) for _, rows in runs.values()) > self.max_readings:
            del runs[max(runs)]  # the newest go first: the relay still holds them the longest


# --- relays ------------------------------------------------------------------------------------

class RelayWatch:
    """One relay the node polls: its client, its health, an outage's start and end logged once each."""

    def __init__(self, client: RelayClient, node: str) -> None:
        self.client = client
        self.retry = client.retry  # the client waits out this schedule; its runs of failures are logged here
        self.address = client.address
        self.relay_id: str | None = None
        self.state = "starting"
        self.last_seq: int | None = None  # the newest seq the relay handed us
        self.newest_ms: int | None = None
        self.last_error = ""
        self.log = log.bind(node=node, relay=self.address)

    async def fetch(self, last_seq_of: Callable[[str], int | None]) -> FeedBatch | None:
        """Verified readings after the chain's last seq of this relay; None on failure (logged)."""
        started = time.perf_counter()
        try:
            if self.relay_id is None:
                # Learn who the relay is first, so the first read asks only for what the chain lacks.
                self.relay_id = (await self.client.info()).relay_id
            batch = await self.client.read(last_seq_of(self.relay_id) or 0, limit=MAX_READINGS_PER_BLOCK)
        except RelayError as exc:
            self._failed(exc)
            return None
        if self.retry.succeeded() or self.state == "bad-data":
            self.log.info("relay.restored", after=self.state)
        self.state = "ok"
        self.relay_id = batch.relay_id
        if batch.runs:
            self.last_seq, self.newest_ms = batch.last_seq, batch.runs[-1].readings[-1].timestamp_ms
        self.log.debug("relay.read", readings=sum(len(r.readings) for r in batch.runs), after=batch.first_seq,
                       ms=_ms(started))
        return batch

    def _failed(self, exc: RelayError) -> None:
        if exc.reason == BACKOFF:
            return  # a relay that sent bad data is not "unreachable" while we wait to retry it
        self.last_error = f"{exc.reason}: {exc}"
        if exc.reason in UNREACHABLE_REASONS:
            if self.retry.failed(time.monotonic()):  # the first failure of this outage
                self.log.warning("relay.unreachable", reason=exc.reason, error=str(exc),
                                 retry_s=round(self.client.backoff_s, 2))
            self.state = "unreachable"
        else:
            self.log.warning("relay.bad_data", reason=exc.reason, error=str(exc))
            self.state = "bad-data"

    def status(self) -> dict:
        return {"address": self.address, "relay_id": self.relay_id, "state": self.state,
                "last_seq": self.last_seq, "newest_ms": self.newest_ms, "clock_skew_ms": self.client.clock_skew_ms,
                "last_error": self.last_error}


class CaptureHost(Protocol):
    """What the capture task needs from the node."""

    name: str

    def connected_peers(self) -> int: ...
    def cut_off_s(self) -> float | None: ...  # none of its configured peers ready for so long (None: not cut off)
    def blocks_behind(self) -> int: ...  # how far the peer it is syncing from is ahead (0: not syncing)
    def accept_own_block(self, block: Block, mined_ms: float) -> None: ...


# --- the task ----------------------------------------------------------------------------------

class CaptureTask:
    """Every ``interval_s``: poll every relay, then mine one block per relay that has more."""

    def __init__(self, host: CaptureHost, ledger, key, params, miner: Miner, watches: list[RelayWatch],
                 interval_s: float, min_peers: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.ledger = ledger
        self.key = key
        self.params = params
        self.miner = miner
        self.watches = watches
        self.interval_s = interval_s
        self.min_peers = min_peers
        self.clock = clock
        self.displaced = DisplacedSeals()
        self._waiting_logged = False
        self.log = log.bind(node=host.name)

    async def run(self) -> None:
        # Nodes started together would otherwise poll the relay in step and the first in
        # the cycle would win every capture; a random phase spreads the wins.
        next_at = time.monotonic() + random.uniform(0, self.interval_s * START_SPREAD)
        await asyncio.sleep(next_at - time.monotonic())
        while True:
            try:
                await self.capture_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad round must not end capturing for good
                self.log.exception("capture.error", error=repr(exc))
            next_at += self.interval_s
            now = time.monotonic()
            if next_at < now:  # overran: skip the missed ticks instead of bursting
                next_at = now
            await asyncio.sleep(next_at - now)

    def last_seq(self, relay_id: str) -> int | None:
        return self.ledger.chain.last_seq(relay_id)

    async def capture_once(self) -> None:
        if self.min_peers and self.host.connected_peers() < self.min_peers:
            if not self._waiting_logged:
                self.log.info("capture.waiting_for_peers", have=self.host.connected_peers(), need=self.min_peers)
                self._waiting_logged = True
            return
        self._waiting_logged = False
        cut_off = self.host.cut_off_s()
        if cut_off is not None and cut_off < CUT_OFF_GRACE_S:
            self.log.info("capture.waiting_for_peers", have=0, reason="cut-off", seconds=round(cut_off, 2),
                          grace_s=CUT_OFF_GRACE_S)
            return
        behind = self.host.blocks_behind()
        if behind >= SYNC_BEHIND_BLOCKS:
            self.log.info("capture.waiting_for_sync", blocks_behind=behind)
            return
        seen: set[str] = set()
        for watch in self.watches:
            batch = await watch.fetch(self.last_seq)
            if batch is None:
                continue
            seen.add(batch.relay_id)
            await self.mine_relay(batch.relay_id, batch, watch)
        for relay_id in [r for r in self.displaced.relays() if r not in seen]:
            await self.mine_relay(relay_id, None, None)

    def plan(self, relay_id: str, batch: FeedBatch | None) -> Capture | None:
        """What to mine for ``relay_id`` on the current tip, from displaced seals and ``batch``."""
        chain = self.ledger.chain
        last, open_gaps = chain.last_seq(relay_id), chain.open_gaps(relay_id)
        self.displaced.prune(relay_id, last, open_gaps)
        label = self.displaced.label(relay_id)
        if batch is not None:
            substation, relay_key = batch.substation, batch.relay_key
        elif label is not None:
            substation, relay_key = label
        else:
            return None
        key = chain.relay_key(relay_id) or relay_key  # the key this relay's readings carry on the branch
        runs = self.displaced.runs(relay_id) if (label is None or label[1] == key) else []
        gaps = self.displaced.gaps(relay_id) if runs else []
        if batch is not None and batch.relay_key == key:
            runs += batch_runs(batch)
            gaps += [batch.gap] if batch.gap is not None else []
        return plan_capture(relay_id, substation, key, last, runs, gaps, open_gaps)

    async def mine_relay(self, relay_id: str, batch: FeedBatch | None, watch: RelayWatch | None) -> Block | None:
        """Mine what continues ``relay_id``'s sequence on the tip, planning again after each better tip."""
        announced = refetched = False
        for _ in range(MAX_REBUILDS):
            todo = self.plan(relay_id, batch)
            if todo is None and watch is not None and not refetched and self._has_more(relay_id, batch):
                # What we hold does not continue the sequence (the tip moved, a seal is split
                # differently on it): ask the relay for exactly what follows the chain.
                refetched = True
                batch = await watch.fetch(self.last_seq) or batch
                continue
            if todo is None:
                self._nothing_to_mine(relay_id, batch)
                return None
            try:
                check_relay_signatures(todo)  # never spend work on, nor sign, what does not verify
            except RuleViolation as exc:
                self.log.error("capture.unverified", relay_id=relay_id, reason=exc.reason, detail=exc.detail)
                return None
            if not announced:
                self.log.info("capture.new", relay_id=relay_id, readings=len(todo.readings), seals=len(todo.seals),
                              first_seq=todo.first_seq, last_seq=todo.last_seq, gap=todo.gap is not None,
                              fill=todo.first_seq <= (self.last_seq(relay_id) or 0),
                              first_ms=todo.readings[0].timestamp_ms, newest_ms=todo.newest_ms)
                announced = True
            mined = await self._mine(todo)
            if mined is None:
                continue
            block, mined_ms = mined
            try:
                self.host.accept_own_block(block, mined_ms)
            except RuleViolation as exc:
                self.log.error("block.rejected", reason=exc.reason, detail=exc.detail,
                               hash=short_hash(block.hash), own=True)
                return None
            except StoreError as exc:
                # The readings stay with the relay (and displaced ones here): the next round retries.
                self.log.error("store.error", reason=exc.reason, detail=str(exc), hash=short_hash(block.hash))
                return None
            chain = self.ledger.chain
            self.displaced.prune(relay_id, chain.last_seq(relay_id), chain.open_gaps(relay_id))
            return block
        self.log.warning("capture.gave_up", relay_id=relay_id, rebuilds=MAX_REBUILDS)
        return None

    async def _mine(self, todo: Capture) -> tuple[Block, float] | None:
        """The block of ``todo`` on the tip and the ms its work took; None if a better tip came."""
        parent = self.ledger.tip
        header = block_template(parent, todo, self.host.name, self.key.public_key, self.params,
                                int(self.clock() * 1000))
        started = time.perf_counter()
        mined = await self.miner.mine(header)
        if mined is None or self.ledger.tip is not parent:
            self.log.info("mining.restarted", reason="new-tip", height=self.ledger.height)
            return None
        return seal(mined, mined.nonce, todo, self.host.name, self.key.sign), _ms(started)

    def _has_more(self, relay_id: str, batch: FeedBatch | None) -> bool:
        """Whether the relay or the displaced buffer holds readings past the chain's last seq."""
        last = self.last_seq(relay_id) or 0
        held = [batch.last_seq, batch.newest_seq] if batch is not None else []
        held += [run[0].last_seq for run in self.displaced.runs(relay_id)]
        return any(seq is not None and seq > last for seq in held)

    def _nothing_to_mine(self, relay_id: str, batch: FeedBatch | None) -> None:
        last = self.last_seq(relay_id)
        if self._has_more(relay_id, batch):
            # Readings after a hole that no signed notice covers: the rules would refuse them.
            self.log.warning("capture.sequence_gap", relay_id=relay_id, last_seq=last,
                             held_from=min(_firsts(batch, self.displaced.runs(relay_id)), default=None))
        elif (batch is not None and batch.runs) or self.displaced.count(relay_id):
            self.log.info("capture.duplicate", relay_id=relay_id, last_seq=last, height=self.ledger.height)


def _firsts(batch: FeedBatch | None, runs: Sequence[Run]) -> list[int]:
    firsts = [run[0].first_seq for run in runs]
    if batch is not None and batch.first_seq is not None:
        firsts.append(batch.first_seq)
    return firsts


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
