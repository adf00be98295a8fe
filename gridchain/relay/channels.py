"""One relay behind the gateway: where its readings come from, and how they get signed.

A gateway serves one *channel* per relay id. Each channel owns that relay's SignedFeed
(sequence, journal, buffer, gap notices; gridchain/relay/signed_feed.py) and fills it:

- ``SimChannel``: the built-in simulator. Every tick it made since the last step becomes a
  reading (device clock, all values good), exactly as the stand-alone simulated relay did.
- ``DeviceChannel``: a real device read through a Source (gridchain/relay/sources/). One
  poll gives one DeviceSample, which becomes one signed row: the ten values, their quality
  flags, bit 31 when the device gave no timestamp (the gateway's clock stamps it), and the
  openings from the device's own counter. A poll that fails (any SourceError reason) signs
  nothing; ``device.failed`` is logged once when a failure starts (and again only if its
  reason changes), ``device.restored`` once when a good sample comes back; a source that
  raises anything else is ``source-failed``, logged the same way. A benign
  ``no-new-sample`` (the device has not measured since) signs nothing and is no failure.
  While failing, retries follow gridchain/wire/reconnect.py's doubling delay, from the poll
  interval up to ``RETRY_MAX_S``; other channels are unaffected (each runs its own task).

``relay_dir`` says where a relay's journal lives in the gateway's data dir.
"""

from __future__ import annotations

import abc
import hashlib
import math
import os
import re
from pathlib import Path

import structlog

from gridchain.consensus.provenance import Reading
from gridchain.relay.capture_files import CaptureFileWriter
from gridchain.relay.journal import STATE_FILE, RelayState
from gridchain.relay.signed_feed import SignedFeed
from gridchain.relay.simulator import RelaySimulator
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG, DeviceSample, Source, SourceError
from gridchain.relay.sources.guard import NoNewSample
from gridchain.wire.reconnect import Reconnect

SIMULATOR_FLAGS = 0  # the simulator's readings: device clock, every value of good quality
# A failing device is retried at the poll interval at first, doubling up to this: a relay
# back from a reboot is read again within seconds, a dead one costs a connect attempt now
# and then, not one per poll.
RETRY_MAX_S = 10.0
SOURCE_FAILED = "source-failed"  # a source raised something other than a SourceError (a library bug)
MAX_U64, MAX_I64 = 2**64 - 1, 2**63 - 1  # the row's openings (u64) and timestamp (i64)
RELAYS_DIR = "relays"  # <data-dir>/relays/<relay dir>/ holds each relay's journal and state

log = structlog.get_logger()


def relay_dir_name(relay_id: str) -> str:
    """A file-system-safe, collision-free directory name for a relay id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", relay_id).strip("._")[:48] or "relay"
    return f"{safe}-{hashlib.sha256(relay_id.encode()).hexdigest()[:8]}"


def relay_dir(data_dir: str | os.PathLike, relay_id: str, single: bool) -> Path:
    """Where ``relay_id`` keeps its journal: ``<data-dir>/relays/<name>/``, except that a
    relay already journaled at the top of the data dir (a gateway that served one relay, as
    every relay did before gateways) stays there, and so does a gateway's only relay."""
    root = Path(data_dir)
    own = root / RELAYS_DIR / relay_dir_name(relay_id)
    if own.exists():
        return own
    state = root / STATE_FILE
    try:
        top = RelayState.decode(state.read_bytes()).relay_id if state.exists() else None
    except (OSError, ValueError):
        top = None
    if top == relay_id or single:
        return root  # a single relay's data dir of another relay is refused at boot (relay-id-changed)
    return own


class DeviceHealth:
    """When a device's failures and recovery are logged (pure; time is an argument)."""

    def __init__(self) -> None:
        self.reason: str | None = None  # the current failure, None while healthy
        self.since_ms = 0
        self.failed_polls = 0

    def failed(self, reason: str, now_ms: int) -> bool:
        """Note a failed poll; True when it is a new failure (or a different one) to log."""
        self.failed_polls += 1
        if self.reason == reason:
            return False
        if self.reason is None:
            self.since_ms, self.failed_polls = now_ms, 1
        self.reason = reason
        return True

    def succeeded(self, now_ms: int) -> tuple[str, int, int] | None:
        """Note a good poll; (last reason, ms down, failed polls) when it ends a failure."""
        if self.reason is None:
            return None
        ended = (self.reason, now_ms - self.since_ms, self.failed_polls)
        self.reason, self.failed_polls = None, 0
        return ended


class Channel(abc.ABC):
    """What the gateway needs of a relay: its feed, a step, and when to step next."""

    relay_id: str
    substation: str
    feed: SignedFeed
    interval_ms: int
    description: str

    def boot(self, now_ms: int, key_created: bool) -> None:
        self.feed.boot(now_ms, key_created)

    @abc.abstractmethod
    async def step(self, now_ms: int) -> list[Reading]:
        """Poll or simulate once; the readings signed by this step, oldest first."""

    @abc.abstractmethod
    def delay_s(self, now_s: float) -> float:
        """Seconds from ``now_s`` until the next step is due."""

    async def close(self) -> None:
        self._close_feed()

    def _close_feed(self) -> None:
        if self.feed.boot_plan is not None:  # a feed never booted has no state to record
            self.feed.close()

    def _record(self, items: list[tuple], captures: CaptureFileWriter | None, lost_log) -> list[Reading]:
        try:
            readings = self.feed.record(items)
        except OSError as exc:  # never serve a reading the journal does not hold
            lost_log.error("relay.journal_write_failed", error=str(exc), lost=len(items))
            return []
        if readings and captures is not None:
            try:
                captures.write(readings)
            except OSError as exc:  # a full disk must not stop the feed the nodes depend on
                lost_log.error("relay.capture_write_failed", error=str(exc))
        return readings


class SimChannel(Channel):
    """The built-in simulator as one relay: every tick it makes is a reading."""

    def __init__(self, simulator: RelaySimulator, feed: SignedFeed, interval_s: float | None = None,
                 capture_dir: str | os.PathLike | None = None) -> None:
        self.simulator, self.feed = simulator, feed
        self.relay_id, self.substation = simulator.relay_id, simulator.substation
        self.interval_ms = simulator.interval_ms
        self.interval_s = simulator.interval_ms / 1000.0 if interval_s is None else interval_s
        self.description = "sim"
        self.captures = (CaptureFileWriter(capture_dir, simulator.relay_id, simulator.substation)
                         if capture_dir is not None else None)
        self._log = log.bind(relay_id=simulator.relay_id)

    def boot(self, now_ms: int, key_created: bool) -> None:
        if self.feed.boot_plan is not None:
            return
        self.feed.boot(now_ms, key_created)
        newest = self.feed.buffer.newest()
        if newest is not None:  # a restart: the counter goes on, missed ticks are skipped
            self.simulator.resume(newest.openings, newest.timestamp_ms)

    def tick(self, now_ms: int) -> list[Reading]:
        """Advance the simulator to ``now_ms`` and sign its readings in (synchronous)."""
        sim = self.simulator
        openings, was_closed = sim.openings, sim.breaker_closed
        made = sim.advance(now_ms)
        if sim.openings > openings:
            self._log.warning("relay.fault", openings=sim.openings, faults=sim.openings - openings)
        elif not was_closed and sim.breaker_closed:
            self._log.info("relay.reclosed", openings=sim.openings)
        if not made:
            return []
        return self._record([(m.timestamp_ms, m.openings, SIMULATOR_FLAGS, m.values()) for m in made],
                            self.captures, self._log)

    async def step(self, now_ms: int) -> list[Reading]:
        return self.tick(now_ms)

    def delay_s(self, now_s: float) -> float:
        return min(self.interval_s, max(0.0, self.simulator.next_tick_ms / 1000.0 - now_s))


class DeviceChannel(Channel):
    """A real device (Modbus, IEC 61850, DNP3 or ``sim`` source) polled every interval."""

    def __init__(self, relay_id: str, substation: str, source: Source, feed: SignedFeed, poll_interval_s: float,
                 capture_dir: str | os.PathLike | None = None) -> None:
        self.relay_id, self.substation, self.source, self.feed = relay_id, substation, source, feed
        self.poll_interval_s = poll_interval_s
        self.interval_ms = max(1, round(poll_interval_s * 1000))
        self.description = source.description
        self.health = DeviceHealth()
        self.retry = Reconnect(first_delay=poll_interval_s, max_delay=max(poll_interval_s, RETRY_MAX_S))
        self.captures = CaptureFileWriter(capture_dir, relay_id, substation) if capture_dir is not None else None
        self.polls = self.samples = 0
        self._last_device_ms: int | None = None  # the newest signed device timestamp
        self._due_s: float | None = None
        self._log = log.bind(relay_id=relay_id, device=source.description)

    def boot(self, now_ms: int, key_created: bool) -> None:
        if self.feed.boot_plan is not None:
            return
        self.feed.boot(now_ms, key_created)
        newest = self.feed.buffer.newest()
        if newest is not None and not newest.flags & GATEWAY_CLOCK_FLAG:
            self._last_device_ms = newest.timestamp_ms  # never sign a sample from before a restart twice

    async def step(self, now_ms: int) -> list[Reading]:
        """One poll: a signed reading, or nothing (a failure is logged, never raised)."""
        self.polls += 1
        try:
            sample = await self.source.poll(now_ms)
            self._check_sample(sample)
        except NoNewSample:
            return []
        except SourceError as exc:
            if self.health.failed(exc.reason, now_ms):
                self._log.warning("device.failed", reason=exc.reason, detail=exc.detail[:300])
            return []
        except Exception as exc:  # a protocol library's own bug: still one event, never a signed row
            if self.health.failed(SOURCE_FAILED, now_ms):
                self._log.exception("device.failed", reason=SOURCE_FAILED, detail=repr(exc)[:300])
            return []
        readings = self._record([(sample.timestamp_or(now_ms), sample.openings, sample.flags, sample.values)],
                                self.captures, self._log)
        if not readings:
            return []
        self.samples += 1
        if sample.timestamp_ms is not None:
            self._last_device_ms = sample.timestamp_ms
        ended = self.health.succeeded(now_ms)
        if ended is not None:
            self.retry.reset()
            reason, down_ms, failed = ended
            self._log.info("device.restored", after=reason, down_ms=down_ms, failed_polls=failed,
                           seq=readings[0].seq)
        return readings

    def _check_sample(self, sample: DeviceSample) -> None:
        # What the row format cannot carry, or a node would refuse (one such row in the
        # buffer would spoil every answer holding it), is never signed.
        if not all(map(math.isfinite, sample.values)):
            raise SourceError("value-out-of-range", f"a value is not finite: {sample.values}")
        if sample.openings > MAX_U64 or (sample.timestamp_ms is not None and not 0 <= sample.timestamp_ms <= MAX_I64):
            raise SourceError("value-out-of-range", f"openings {sample.openings} or timestamp {sample.timestamp_ms} "
                                                    f"outside the row's range")
        # The source's guard sees only this run; the journal remembers the previous one.
        last, stamp = self._last_device_ms, sample.timestamp_ms
        if last is None or stamp is None or stamp > last:
            return
        if stamp == last:
            raise NoNewSample(f"device repeats its sample of {stamp}")
        raise SourceError("stale-timestamp", f"device timestamp {stamp} is before the last signed one, {last}")

    def delay_s(self, now_s: float) -> float:
        if self.health.reason is not None:
            self._due_s = None
            return self.retry.next_wait()
        # A steady cadence: the next poll one interval after the previous one was due, not
        # after it finished; a gateway that fell behind skips ahead instead of bursting.
        due = (self._due_s if self._due_s is not None else now_s) + self.poll_interval_s
        if due < now_s:
            due = now_s
        self._due_s = due
        return due - now_s

    async def close(self) -> None:
        try:
            await self.source.close()
        finally:
            self._close_feed()
