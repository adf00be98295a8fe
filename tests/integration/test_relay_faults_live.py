"""Relay faults against a live node: an outage, garbage, NaN, stale readings and a relay clock
that jumps back. The node must stay up, log each outage once and its end once, put nothing of
a bad answer on the chain, and afterwards catch up from the relay's buffer with no gap: the
chain's readings of the relay are one strictly increasing run at the relay's interval.

The relay here is a real simulator behind a small server the test controls (it can stop
listening, spoil answers, or move the relay's clock). The node's relay client is built with
a short backoff cap so a "long" outage takes a second of test time.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time

import pytest
from structlog.testing import capture_logs

from gridchain.node import node as node_module
from gridchain.consensus.block import MAX_READINGS_PER_BLOCK
from gridchain.relay.client import RelayClient
from gridchain.relay.server import RelayServer
from gridchain.relay.simulator import RelaySimulator
from gridchain.wire.streams import ConnectionClosed, read_frame
from gridchain.wire.frames import FrameError, encode_frame

from .harness import chain_readings, free_port, node_config, start_node, wait_until

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
        self.mode = "good"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def clock(self) -> float:
        return time.time() + self.clock_offset_s

    @property
    def newest_ms(self) -> int:
        self.real.tick()
        return self.real.simulator.snapshot().newest_ms

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
            since = request["since_ms"]
            rows = [list(row) for row in answer["readings"]] or [[since + INTERVAL_MS] + [1.0] * 10]
            if self.mode == "nan":
                rows[-1][4] = math.nan
            else:  # stamped as if the relay's clock had gone back: nothing newer than asked for
                shift = rows[-1][0] - since
                rows = [[row[0] - shift, *row[1:]] for row in rows]
            answer = {**answer, "readings": rows}
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


def readings_ms(running) -> list[int]:
    return [ts for relay_id, ts in chain_readings(running) if relay_id == RELAY_ID]


def assert_contiguous(stamps: list[int], up_to_ms: int) -> None:
    """The chain holds every reading of the relay from its first to ``up_to_ms``, once, in order."""
    assert stamps, "the chain holds readings"
    steps = {b - a for a, b in zip(stamps, stamps[1:])}
    assert steps == {INTERVAL_MS}, f"gaps or repeats: steps {sorted(steps)[:5]}"
    assert stamps[-1] >= up_to_ms


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
            await wait_until(lambda: watch.client.failures >= 8, 10, what="a long outage")  # ~2 s of retries
            assert relay_events(logs, "relay.unreachable") and not relay_events(logs, "relay.restored")
            relay.clock_offset_s = 0.0
            newest = relay.newest_ms
            backlog = (newest - readings_ms(running)[-1]) // INTERVAL_MS
            height = running.height
            await relay.start()
            await wait_until(lambda: relay_events(logs, "relay.restored"), 5, what="relay.restored")
            await wait_until(lambda: readings_ms(running)[-1] >= newest, 30, what="catching up")
            assert not running.task.done(), "the node stayed up"
            stamps = readings_ms(running)
            blocks_taken = running.height - height
        finally:
            await running.shutdown()
            await relay.stop()
    assert len(relay_events(logs, "relay.unreachable")) == 1, "one event per outage, not per try"
    assert len(relay_events(logs, "relay.restored")) == 1
    assert relay_events(logs, "relay.restored")[0]["after"] == "unreachable"
    assert_contiguous(stamps, newest)
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
            newest = relay.newest_ms
            await wait_until(lambda: relay_events(logs, "relay.restored"), 5, what="relay.restored")
            await wait_until(lambda: readings_ms(running)[-1] >= newest, 10, what="catching up")
            assert not running.task.done()
            stamps = readings_ms(running)
        finally:
            await running.shutdown()
    assert {e["reason"] for e in relay_events(logs, "relay.bad_data")} == {reason}
    assert len(relay_events(logs, "relay.restored")) == 1
    assert_contiguous(stamps, newest)


async def test_a_relay_sending_bad_data_is_not_reported_unreachable(tmp_path, relay):
    relay.mode = "garbage"
    with capture_logs() as logs:
        running = await start_node(node_config(tmp_path / "n", free_port(), relays=[relay.port], interval_s=0.1))
        try:
            await wait_until(lambda: len(relay_events(logs, "relay.bad_data")) >= 3, 10, what="bad answers")
        finally:
            await running.shutdown()
    assert not relay_events(logs, "relay.unreachable"), "the relay answered every time it was asked"


async def test_relay_clock_jumping_back_stalls_readings_but_breaks_nothing(tmp_path, relay):
    with capture_logs() as logs:
        running = await start_node(node_config(tmp_path / "n", free_port(), relays=[relay.port], interval_s=0.2))
        try:
            await wait_until(lambda: running.height >= 2, 10, what="a few blocks")
            newest_before = relay.newest_ms
            relay.clock_offset_s = -1.5  # the relay's clock goes back 1.5 s and stays that way
            await wait_until(lambda: relay.newest_ms > newest_before + 5 * INTERVAL_MS, 10,
                             what="the relay's clock to pass its old newest reading")
            newest = relay.newest_ms
            await wait_until(lambda: readings_ms(running)[-1] >= newest, 10, what="catching up")
            assert not running.task.done()
            stamps = readings_ms(running)
        finally:
            await running.shutdown()
    assert not relay_events(logs, "relay.bad_data") and not relay_events(logs, "relay.unreachable")
    assert relay_events(logs, "capture.duplicate"), "while the relay's clock was behind there was nothing new"
    assert_contiguous(stamps, newest)
