"""The relay's signed feed: numbers each reading, keeps it durable, signs answers on demand.

``SignedFeed`` is the part of a relay (or of a gateway in front of real devices) that turns a
measurement into a signed reading: it gives each one the next sequence number, writes its
row to the journal (fsync'd) before it can be served, buffers it, and answers
``read(after_seq, limit)`` with the rows and one seal over exactly those rows. Seals are
cached (several nodes ask for the same newest rows every capture interval) and cost only
interior hashes and one signature, as every row's leaf hash is kept beside it.

Gap notices: a boot that lost readings signs one (``boot``), kept in the journal so a clean
restart still hands it out; a reader so far behind that the rows it needs were dropped from
the buffer gets a notice signed on demand at the oldest row still held. An answer carries
the notice whose resume_seq is its first row when it skips ahead of ``after_seq``, and the
boot notice whenever ``after_seq`` is below the boot's resume point.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import structlog

from gridchain.consensus.provenance import GapNotice, Reading, Seal, seal_leaves, sign_gap
from gridchain.consensus.tree import leaf_hash
from gridchain.identity.keys import SigningKey
from gridchain.relay.buffer import RowBuffer
from gridchain.relay.feed import MAX_READINGS_PER_READ, InfoResponse, ReadingsResponse
from gridchain.relay.journal import RESERVE_AHEAD, BootPlan, Journal, RelayState, RelayStateError, plan_boot

SEAL_CACHE_SIZE = 64  # distinct (first_seq, count) answers kept signed: many nodes, a few ranges each
TRIM_CACHE_SIZE = 4  # notices for readers behind the buffer: one per oldest seq, rarely more than one

log = structlog.get_logger()


class SignedFeed:
    """One relay's numbered, durable, signed readings (``journal`` None: memory only)."""

    def __init__(self, relay_id: str, substation: str, key: SigningKey, capacity: int,
                 journal: Journal | None = None) -> None:
        self.relay_id, self.substation, self.key = relay_id, substation, key
        self.public_key = key.public_key
        self.buffer = RowBuffer(capacity)
        self.journal = journal
        self.next_seq = 1
        self.gap: GapNotice | None = None  # the boot gap notice, if this relay ever lost readings
        self.boot_plan: BootPlan | None = None
        self.seals_signed = 0
        self._reserved = 0
        self._seals: OrderedDict[tuple[int, int], Seal] = OrderedDict()
        self._trims: OrderedDict[int, GapNotice] = OrderedDict()

    # --- boot and shutdown -------------------------------------------------------------------
    def boot(self, now_ms: int, key_created: bool) -> BootPlan:
        """Restore the buffer from the journal and decide where the sequence resumes."""
        if self.journal is None:
            self.boot_plan = BootPlan(1, False, "fresh")
            return self.boot_plan
        state, state_damaged, contents = self.journal.open()
        if state is not None and state.relay_id != self.relay_id:
            raise RelayStateError("relay-id-changed", f"{self.journal.directory} holds the sequence of relay "
                                  f"{state.relay_id!r}, not {self.relay_id!r}; give this relay its own --data-dir")
        plan = plan_boot(state, state_damaged, contents, key_created, now_ms)
        self.gap = contents.gap
        for seq, row in contents.rows:
            self.buffer.append(seq, row, leaf_hash(row))
        self.next_seq = plan.next_seq
        if plan.gap:
            self.gap = sign_gap(self.key, self.relay_id, plan.next_seq, now_ms)
            self.journal.append(gap=self.gap)
            log.warning("relay.gap_signed", relay_id=self.relay_id, resume_seq=plan.next_seq, why=plan.why,
                        last_seq=contents.last_seq, boot_ms=now_ms)
        self._reserve(self.next_seq + RESERVE_AHEAD, state)
        self.boot_plan = plan
        log.info("relay.sequence_resumed", relay_id=self.relay_id, next_seq=self.next_seq, why=plan.why,
                 buffered=len(self.buffer), gap=plan.gap)
        return plan

    def close(self) -> None:
        """Record an orderly stop: the next boot continues the sequence with no gap."""
        if self.journal is not None:
            self.journal.close()
            self.journal.write_state(RelayState(self.relay_id, self.next_seq, self._reserved, True))

    # --- recording ---------------------------------------------------------------------------
    def record(self, items: Sequence[tuple[int, int, int, Sequence[float]]]) -> list[Reading]:
        """Number and keep (timestamp_ms, openings, flags, values) measurements, oldest first.

        Durable before this returns (journal fsync'd), so a reading is never served and then
        forgotten; only then is it in the buffer for ``read``.
        """
        if not items:
            return []
        readings = [Reading(self.next_seq + i, ts, openings, flags, *values)
                    for i, (ts, openings, flags, values) in enumerate(items)]
        rows = [r.to_bytes() for r in readings]
        if self.journal is not None:
            if self.next_seq + len(rows) > self._reserved:
                self._reserve(self.next_seq + len(rows) + RESERVE_AHEAD)
            self.journal.append(rows)
        for reading, row in zip(readings, rows):
            self.buffer.append(reading.seq, row, leaf_hash(row))
        self.next_seq += len(rows)
        if self.journal is not None and self.journal.records > 2 * self.buffer.capacity:
            self.journal.rewrite(self.buffer.rows_from(), self.gap)
        return readings

    # --- answers -----------------------------------------------------------------------------
    def read(self, after_seq: int, limit: int, now_ms: int) -> ReadingsResponse:
        """The signed answer to ``read(after_seq, limit)``: rows, their seal, the gap if due."""
        part = self.buffer.read(after_seq, min(limit, MAX_READINGS_PER_READ))
        seals: tuple[Seal, ...] = ()
        rows = b""
        if part is not None:
            rows, seals = part.rows, (self._seal(part.first_seq, part.leaves),)
        gap = self._notice_for(after_seq, part.first_seq if part else None, now_ms)
        return ReadingsResponse(self.relay_id, self.substation, self.public_key, now_ms,
                                self.buffer.newest_seq, rows, seals, gap)

    def info(self, now_ms: int, interval_ms: int) -> InfoResponse:
        newest = self.buffer.newest()
        return InfoResponse(self.relay_id, self.substation, self.public_key, now_ms, interval_ms,
                            len(self.buffer), self.buffer.oldest_seq, self.buffer.newest_seq,
                            newest.timestamp_ms if newest else None, newest.openings if newest else 0, self.gap)

    def _seal(self, first_seq: int, leaves: tuple[bytes, ...]) -> Seal:
        key = (first_seq, len(leaves))
        seal = self._seals.get(key)
        if seal is None:
            seal = seal_leaves(self.key, self.relay_id, first_seq, leaves)
            self.seals_signed += 1
            self._seals[key] = seal
            if len(self._seals) > SEAL_CACHE_SIZE:
                self._seals.popitem(last=False)
        else:
            self._seals.move_to_end(key)
        return seal

    def _notice_for(self, after_seq: int, first_seq: int | None, now_ms: int) -> GapNotice | None:
        boot = self.gap
        if first_seq is not None and first_seq > after_seq + 1:
            if boot is not None and boot.resume_seq == first_seq:
                return boot
            return self._trim_notice(first_seq, now_ms)
        if boot is not None and after_seq < boot.resume_seq - 1:
            return boot
        return None

    def _trim_notice(self, resume_seq: int, now_ms: int) -> GapNotice:
        # The rows before resume_seq were dropped from the buffer (a reader away longer than
        # it holds): the relay's signed word that they are lost, so the reader is not stuck.
        notice = self._trims.get(resume_seq)
        if notice is None:
            notice = sign_gap(self.key, self.relay_id, resume_seq, now_ms)
            self._trims[resume_seq] = notice
            if len(self._trims) > TRIM_CACHE_SIZE:
                self._trims.popitem(last=False)
        return notice

    def _reserve(self, reserved: int, state: RelayState | None = None) -> None:
        if self.journal is None:
            return
        self._reserved = max(reserved, state.reserved_seq if state else 0)
        self.journal.write_state(RelayState(self.relay_id, self.next_seq, self._reserved, False))
