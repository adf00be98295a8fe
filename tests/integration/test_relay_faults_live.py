"""Relay faults against a live node: an outage, garbage, NaN, replayed readings and a relay
clock that jumps back. The node must stay up, log each outage once and its end once, put
nothing of a bad answer on the chain, and afterwards catch up from the relay's buffer with no
gap: the chain's readings of the relay are one run of consecutive sequence numbers (and,
while the relay's clock is steady, one reading per relay interval).

A relay clock that jumps back is not a fault: the reading times are the relay's signed word,
so its readings are still taken, in sequence, and the node warns once (``relay.clock_skew``).

The relay here is a real simulator behind a small server the test controls (it can stop
listening, spoil answers, or move the relay's clock). The node's relay client is built with
a short backoff cap so a "long" outage takes a second of test time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import time

import pytest
from structlog.testing import capture_logs

from gridchain.node import node as node_module
from gridchain.consensus.block import MAX_READINGS_PER_BLOCK, Reading
from gridchain.consensus.provenance import pack_rows, unpack_rows
from gridchain.relay.client import RelayClient
from gridchain.relay.server import RelayServer
from gridchain.relay.simulator import RelaySimulator
from gridchain.wire.streams import ConnectionClosed, read_frame
from gridchain.wire.frames import FrameError, encode_frame

from tests.support.nodes import main_chain, node_config, start_node
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(60)

RELAY_ID = "Relay 1"
INTERVAL_MS = 100


class ScriptedRelay:
    """A relay feed server in front of a real simulator whose answers a test can spoil or stop."""

    def __init__(self, clock_offset_s: float = 0.0) -> None:
        self.clock_offset_s = clock_offset_s
        simulator = RelaySimulator(RELAY_ID, "Test Substation", INTERVAL_MS, 7,
                                   start_ms=int(self.clock() * 1000) - 2_000, fault_probability=0.0)
        self.real = RelayServer(simulator, "127.0.0.1", 0, INTERVAL_MS / 1000, clock=self.clock)
        self.real.channel.boot(int(self.clock() * 1000), True)  # served by hand: booted by hand
        self.mode = "good"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def clock(self) -> float:
        return time.time() + self.clock_offset_s

    @property
    def newest(self) -> Reading:
        self.real.tick()
        return self.real.feed.buffer.newest()

    @property
    def newest_seq(self) -> int:
        return self.newest.seq

    def set_clock_back(self, seconds: float) -> None:
        """The relay's clock (and so the device's next reading time) goes back ``seconds``."""
        self.clock_offset_s -= seconds
        self.real.simulator.next_tick_ms -= int(seconds * 1000)

    async def start(self) -> ScriptedRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """The relay goes down: no listener, every connection hung up."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await read_frame(reader, timeout=10.0)
                self.real.tick()
                writer.write(self._spoil(request, self.real.answer(request)))
                await writer.drain()
        except (ConnectionClosed, FrameError, TimeoutError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _spoil(self, request: dict, answer: dict) -> bytes:
        if self.mode == "garbage":
            return b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1"
        if answer.get("type") == "readings" and self.mode in ("nan", "stale"):
            after = request["after_seq"]
            rows = list(unpack_rows(answer["rows"])) or [dataclasses.replace(self.newest, seq=after + 1)]
            if self.mode == "nan":
                rows[-1] = dataclasses.replace(rows[-1], ia=math.nan)
            else:  # readings replayed: sequence numbers the node already holds
                shift = rows[-1].seq - after
                rows = [dataclasses.replace(row, seq=row.seq - shift) for row in rows]
            answer = {**answer, "rows": pack_rows(rows)}
        return encode_frame(answer)


@pytest.fixture
async def relay():
    server = await ScriptedRelay().start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def quick_relay_client(monkeypatch):
    monkeypatch.setattr(node_module, "RelayClient", functools.partial(
        RelayClient, backoff_max_s=0.3, connect_timeout=0.5, request_timeout=0.5))


def relay_events(logs: list[dict], event: str) -> list[dict]:
    return [e for e in logs if e["event"] == event]


def chain_rows(running) -> list[Reading]:
    """The relay's readings on the main chain, in chain order."""
    rows = []
    for block_hash in main_chain(running)[1:]:
        capture = running.ledger.get_block(block_hash).capture
        if capture.relay_id == RELAY_ID:
            rows.extend(capture.readings)
    return rows


def last_seq(running) -> int:
    return running.ledger.chain.last_seq(RELAY_ID) or 0


def assert_contiguous(rows: list[Reading], up_to_seq: int, steady_clock: bool = True) -> None:
    """The chain holds every reading of the relay from seq 1 to ``up_to_seq``, once, in order;
    with a steady relay clock, one reading per relay interval."""
    assert rows, "the chain holds readings"
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1)), "gaps or repeats in the sequence"
    assert rows[-1].seq >= up_to_seq
    if steady_clock:
        steps = {b.timestamp_ms - a.timestamp_ms for a, b in zip(rows, rows[1:])}
        assert steps == {INTERVAL_MS}, f"gaps or repeats in time: steps {sorted(steps)[:5]}"


# A long outage is told in the relay's readings rather than waited out: the relay's clock
# starts this far behind, and while the relay is down it jumps to the present, so it comes
# back holding BACKLOG_S of readings the node never saw: more than one block holds.
BACKLOG_S = 30 * 60


@pytest.mark.parametrize("backlog_s", [0, BACKLOG_S], ids=["seconds", "half-an-hour-of-readings"])
async def test_relay_down_then_caught_up_without_a_gap(tmp_path, backlog_s):
    relay = await ScriptedRelay(clock_offset_s=-backlog_s).start()
    with capture_logs() as logs:
        running = await start_node(node_config(tmp_path / "n", free_port(), relays=[relay.port], interval_s=0.2))
        try:
            await wait_until(lambda: running.height >= 3, 10, what="a few blocks")
            await relay.stop()
            watch = running.node.watches[0]
            await wait_until(lambda: watch.client.failures >= 5, 10, what="a long outage")  # ~2 s of doubling retries
            assert relay_events(logs, "relay.unreachable") and not relay_events(logs, "relay.restored")
            relay.clock_offset_s = 0.0
            newest = relay.newest_seq
            backlog = newest - last_seq(running)
            height = running.height
            await relay.start()
            await wait_until(lambda: relay_events(logs, "relay.restored"), 5, what="relay.restored")
            await wait_until(lambda: last_seq(running) >= newest, 30, what="catching up")
            assert not running.task.done(), "the node stayed up"
            rows = chain_rows(running)
            blocks_taken = running.height - height
        finally:
            await running.shutdown()
            await relay.stop()
    assert len(relay_events(logs, "relay.unreachable")) == 1, "one event per outage, not per try"
    assert len(relay_events(logs, "relay.restored")) == 1
    assert relay_events(logs, "relay.restored")[0]["after"] == "unreachable"
    assert_contiguous(rows, newest)
    if backlog_s:
        assert backlog > MAX_READINGS_PER_BLOCK and blocks_taken >= 2, "the backlog spans blocks"
    else:
        assert blocks_taken >= 1


@pytest.mark.parametrize("mode, reason", [("garbage", "bad-msgpack"), ("nan", "not-finite"), ("stale", "too-old")])
async def test_bad_relay_answers_put_nothing_on_the_chain(tmp_path, relay, mode, reason):
    with capture_logs() as logs:
        running = await start_node(node_config(tmp_path / "n", free_port(), relays=[relay.port], interval_s=0.2))
        try:
            await wait_until(lambda: running.height >= 2, 10, what="a few blocks")
            relay.mode = mode
            await wait_until(lambda: relay_events(logs, "relay.bad_data"), 5, what="relay.bad_data")
            height = running.height
            await wait_until(lambda: len(relay_events(logs, "relay.bad_data")) >= 3, 10, what="more bad answers")
            assert running.height == height, "nothing of a bad answer is mined"
            relay.mode = "good"
            newest = relay.newest_seq
            await wait_until(lambda: relay_events(logs, "relay.restored"), 5, what="relay.restored")
            await wait_until(lambda: last_seq(running) >= newest, 10, what="catching up")
            assert not running.task.done()
            rows = chain_rows(running)
        finally:
            await running.shutdown()
    assert {e["reason"] for e in relay_events(logs, "relay.bad_data")} == {reason}
    assert len(relay_events(logs, "relay.restored")) == 1
    assert_contiguous(rows, newest)


async def test_a_relay_sending_bad_data_is_not_reported_unreachable(tmp_path, relay):
    relay.mode = "garbage"
    with capture_logs() as logs:
        running = await start_node(node_config(tmp_path / "n", free_port(), relays=[relay.port], interval_s=0.1))
        try:
            await wait_until(lambda: len(relay_events(logs, "relay.bad_data")) >= 3, 10, what="bad answers")
        finally:
            await running.shutdown()
    assert not relay_events(logs, "relay.unreachable"), "the relay answered every time it was asked"


# Further back than the relay client's clock-skew warning limit (CLOCK_SKEW_WARN_MS, 60 s).
CLOCK_JUMP_S = 5 * 60


async def test_relay_clock_jumping_back_is_taken_with_one_warning(tmp_path, relay):
    """Once refused as stale; now the relay's signed word: mined in sequence, warned about once."""
    with capture_logs() as logs:
        running = await start_node(node_config(tmp_path / "n", free_port(), relays=[relay.port], interval_s=0.2))
        try:
            await wait_until(lambda: running.height >= 2, 10, what="a few blocks")
            before = relay.newest
            relay.set_clock_back(CLOCK_JUMP_S)  # the relay's clock goes back 5 minutes and stays that way
            await wait_until(lambda: relay.newest_seq > before.seq + 5, 10, what="readings stamped by the old clock")
            newest = relay.newest_seq
            await wait_until(lambda: last_seq(running) >= newest, 10, what="catching up")
            assert not running.task.done()
            rows = chain_rows(running)
        finally:
            await running.shutdown()
    assert not relay_events(logs, "relay.bad_data") and not relay_events(logs, "relay.unreachable")
    [warning] = relay_events(logs, "relay.clock_skew")
    assert warning["skew_ms"] < -60_000 and warning["log_level"] == "warning"
    assert_contiguous(rows, newest, steady_clock=False)
    after = [r for r in rows if r.seq > before.seq]
    assert after[0].timestamp_ms < before.timestamp_ms, "the readings after the jump carry the relay's own time"
