"""The capture task: poll each relay, drop what the chain holds, mine what is new.

This is the prototype's once-a-minute method made fast: ask each relay for the readings
newer than the chain's newest reading of it, add readings a reorg displaced, and if
anything is new, build a block on the tip and mine it off the event loop. A better tip
arriving mid-mining cancels the job, and the capture is rebuilt on the new tip with only
the readings that tip lacks ("capture.duplicate" when it lacks none: the prototype's Case 3).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from gridchain.consensus.block import MAX_READINGS_PER_BLOCK, Block, Capture, Reading, short_hash
from gridchain.consensus.rules import RuleViolation
from gridchain.consensus.template import block_template, seal
from gridchain.node.miner import Miner
from gridchain.relay.client import BACKOFF, RelayClient, RelayError
from gridchain.ledger.store import StoreError

log = structlog.get_logger()

# RelayError reasons that mean "cannot reach the relay" rather than "the relay sent bad data".
# ("backoff" is neither: the client did not try, so the state of the last real try stands.)
UNREACHABLE_REASONS = frozenset({"unreachable", "timeout", "closed"})
# The first capture waits a random part of this share of the interval (see CaptureTask.run).
START_SPREAD = 0.5
# Rebuilds of one capture after better tips before giving up until the next interval.
MAX_REBUILDS = 50


def fresh_readings(readings: tuple[Reading, ...], newest_ms: int | None) -> tuple[Reading, ...]:
    """The readings strictly newer than ``newest_ms`` (None: the chain holds none of this relay)."""
    if newest_ms is None:
        return readings
    return tuple(r for r in readings if r.timestamp_ms > newest_ms)


def merge_readings(*groups: tuple[Reading, ...]) -> tuple[Reading, ...]:
    """One strictly increasing sequence from several; a timestamp seen twice is kept once."""
    by_time: dict[int, Reading] = {}
    for group in groups:
        for reading in group:
            by_time.setdefault(reading.timestamp_ms, reading)
    return tuple(by_time[t] for t in sorted(by_time))


class RelayWatch:
    """One relay the node polls: its client, its health, and outage logging once per outage."""

    def __init__(self, client: RelayClient, node: str) -> None:
        self.client = client
        self.address = client.address
        self.relay_id: str | None = None
        self.state = "starting"
        self.newest_ms: int | None = None
        self.last_error = ""
        self.log = log.bind(node=node, relay=self.address)

    async def fetch(self, newest_on_chain: Callable[[str], int | None]) -> Capture | None:
        started = time.perf_counter()
        try:
            if self.relay_id is None:
                # Learn who the relay is first, so the first read asks only for what the chain lacks.
                self.relay_id = (await self.client.info()).relay_id
            since = newest_on_chain(self.relay_id)
            capture = await self.client.read_since(since or 0, limit=MAX_READINGS_PER_BLOCK)
        except RelayError as exc:
            self._failed(exc)
            return None
        if self.state in ("unreachable", "bad-data"):
            self.log.info("relay.restored", after=self.state)
        self.state = "ok"
        self.relay_id = capture.relay_id
        if capture.readings:
            self.newest_ms = capture.readings[-1].timestamp_ms
        self.log.debug("relay.read", readings=len(capture.readings), ms=_ms(started))
        return capture

    def _failed(self, exc: RelayError) -> None:
        if exc.reason == BACKOFF:
            return  # a relay that sent bad data is not "unreachable" while we wait to retry it
        self.last_error = f"{exc.reason}: {exc}"
        if exc.reason in UNREACHABLE_REASONS:
            if self.state != "unreachable":
                self.log.warning("relay.unreachable", reason=exc.reason, error=str(exc))
            self.state = "unreachable"
        else:
            self.log.warning("relay.bad_data", reason=exc.reason, error=str(exc))
            self.state = "bad-data"

    def status(self) -> dict:
        return {"address": self.address, "relay_id": self.relay_id, "state": self.state,
                "newest_ms": self.newest_ms, "last_error": self.last_error}


class CaptureHost(Protocol):
    """What the capture task needs from the node."""

    name: str

    def newest_reading_ms(self, relay_id: str) -> int | None: ...
    def connected_peers(self) -> int: ...
    def accept_own_block(self, block: Block, mined_ms: float) -> None: ...
    def take_displaced(self) -> dict[str, Capture]: ...


class CaptureTask:
    """Every ``interval_s``: poll every relay, then mine one block per relay with new readings."""

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
        self.pending: dict[str, Capture] = {}  # readings displaced by reorgs, per relay
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

    async def capture_once(self) -> None:
        if self.min_peers and self.host.connected_peers() < self.min_peers:
            if not self._waiting_logged:
                self.log.info("capture.waiting_for_peers", have=self.host.connected_peers(), need=self.min_peers)
                self._waiting_logged = True
            return
        self._waiting_logged = False
        self._absorb_displaced()
        seen: set[str] = set()
        for watch in self.watches:
            capture = await watch.fetch(self.host.newest_reading_ms)
            if capture is None:
                continue
            seen.add(capture.relay_id)
            await self.mine_capture(self._with_pending(capture))
        for relay_id in [r for r in self.pending if r not in seen]:
            await self.mine_capture(self.pending[relay_id])

    def _absorb_displaced(self) -> None:
        for relay_id, capture in self.host.take_displaced().items():
            self.pending[relay_id] = self._with_pending(capture)

    def _with_pending(self, capture: Capture) -> Capture:
        waiting = self.pending.get(capture.relay_id)
        if waiting is None:
            return capture
        return Capture(capture.relay_id, capture.substation, max(capture.openings, waiting.openings),
                       merge_readings(waiting.readings, capture.readings))

    async def mine_capture(self, capture: Capture) -> Block | None:
        """Mine ``capture`` on the current tip, rebuilding after each better tip."""
        announced = False
        for _ in range(MAX_REBUILDS):
            newest = self.host.newest_reading_ms(capture.relay_id)
            readings = fresh_readings(capture.readings, newest)[:MAX_READINGS_PER_BLOCK]
            if not readings:
                self.pending.pop(capture.relay_id, None)
                self.log.info("capture.duplicate", relay_id=capture.relay_id, newest_ms=newest,
                              height=self.ledger.height)
                return None
            todo = Capture(capture.relay_id, capture.substation, capture.openings, readings)
            if not announced:
                self.log.info("capture.new", relay_id=todo.relay_id, readings=len(readings),
                              first_ms=readings[0].timestamp_ms, newest_ms=readings[-1].timestamp_ms)
                announced = True
            parent = self.ledger.tip
            header = block_template(parent, todo, self.host.name, self.key.public_key, self.params,
                                    int(self.clock() * 1000))
            started = time.perf_counter()
            mined = await self.miner.mine(header)
            if mined is None or self.ledger.tip is not parent:
                self.log.info("mining.restarted", reason="new-tip", height=self.ledger.height)
                continue
            block = seal(mined, mined.nonce, todo, self.host.name, self.key.sign)
            try:
                self.host.accept_own_block(block, _ms(started))
            except RuleViolation as exc:
                self.log.error("block.rejected", reason=exc.reason, detail=exc.detail,
                               hash=short_hash(block.hash), own=True)
                return None
            except StoreError as exc:
                # The readings stay with the relay (and in pending): the next round retries.
                self.log.error("store.error", reason=exc.reason, detail=str(exc), hash=short_hash(block.hash))
                return None
            self.pending.pop(capture.relay_id, None)
            return block
        self.log.warning("capture.gave_up", relay_id=capture.relay_id, rebuilds=MAX_REBUILDS)
        return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
