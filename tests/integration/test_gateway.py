"""The gateway end to end on loopback: simulated devices served over Modbus TCP, IEC 61850 MMS
and DNP3 (the real protocol libraries on both sides), read by gridchain-relay's gateway,
signed, served on its feed and read back by the relay client; and device -> gateway -> four
nodes -> ``gridchain readings``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

import pytest
from structlog.testing import capture_logs

from gridchain.consensus.provenance import Reading
from gridchain.identity.keys import RelayKey
from gridchain.relay.channels import DeviceChannel, SimChannel
from gridchain.relay.client import RelayClient, RelayError
from gridchain.relay.devices.device import DeviceSnapshot, Fault, SimulatedDevice
from gridchain.relay.gateway import Gateway
from gridchain.relay.signed_feed import SignedFeed
from gridchain.relay.simulator import RelaySimulator
from gridchain.relay.sources import Quality, open_source, parse_source_url
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG, READING_VALUES
from tests.support.cluster import Cluster
from tests.support.ports import api_port
from tests.support.wait import wait_until

START_MS = 1_700_000_000_000
SUBSTATION = "Test Substation"
POLL_S = 0.2  # the gateway's poll interval in these tests
DEVICE_STEP_S = 0.1  # how often the background refresher lets each simulated device measure
WAIT_S = 10.0
# What a protocol's encoding can carry (the register or point map's scale, float32 of SI values).
RESOLUTION = {"modbus-sel751": 0.051, "modbus-float32": 0.001, "iec61850": 0.001, "dnp3": 0.0011}
PROTOCOLS = tuple(RESOLUTION)
DEVICE_CLOCK = {"modbus-sel751": False, "modbus-float32": True, "iec61850": True, "dnp3": False}
# Quality each protocol carries per value (sel751 has only a "not available" raw value).
CARRIES_QUALITY = {"modbus-sel751": False, "modbus-float32": True, "iec61850": True, "dnp3": True}


class ServedDevice:
    """One simulated device behind one protocol server, and every snapshot it published."""

    def __init__(self, protocol: str, seed: int, identity: str) -> None:
        self.protocol = protocol
        self.device = SimulatedDevice.create(seed=seed, start_ms=START_MS, identity=identity)
        self.now = START_MS
        self.published: list[DeviceSnapshot] = []
        self.server = None
        self.url = ""
        self.tick()

    def tick(self) -> DeviceSnapshot:
        self.now += 1000
        snap = self.device.refresh(self.now)
        self.published.append(snap)
        return snap

    async def start(self) -> ServedDevice:
        kind, _, map_name = self.protocol.partition("-")
        if kind == "modbus":
            from gridchain.relay.devices.modbus_server import ModbusDeviceServer
            from gridchain.relay.sources.register_map import load_register_map
            self.server = ModbusDeviceServer(self.device, load_register_map(map_name))
            await self.server.start()
            self.url = f"modbus://127.0.0.1:{self.server.port}?unit=1&map={map_name}&timeout=0.5"
        elif kind == "iec61850":
            from gridchain.relay.devices.mms_server import MmsDeviceServer
            self.server = MmsDeviceServer(self.device)
            await self.server.start()
            self.url = f"iec61850://127.0.0.1:{self.server.port}/{self.server.domain}?timeout=0.5"
        else:
            from gridchain.relay.devices.dnp3_server import Dnp3DeviceServer
            from gridchain.relay.sources.point_map import load_point_map
            self.server = Dnp3DeviceServer(self.device, load_point_map(), outstation=10)
            await self.server.start()
            self.url = f"dnp3://127.0.0.1:{self.server.port}?outstation=10&timeout=0.5"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    def matches(self, reading: Reading, snap: DeviceSnapshot) -> bool:
        resolution = RESOLUTION[self.protocol]
        # An invalid value's number is the device's "not available", whatever it was measuring.
        values = [(getattr(reading, name), reading.quality(name)) for name in READING_VALUES]
        return (all(abs(a - b) <= resolution for (a, q), b in zip(values, snap.values) if q != Quality.INVALID)
                and reading.openings == snap.openings
                and (not DEVICE_CLOCK[self.protocol] or reading.timestamp_ms == snap.timestamp_ms))

    def assert_served(self, reading: Reading) -> None:
        """The reading is one of the snapshots this device published, flags as the protocol says."""
        assert any(self.matches(reading, snap) for snap in reversed(self.published)), (reading, self.published[-3:])
        assert bool(reading.flags & GATEWAY_CLOCK_FLAG) == (not DEVICE_CLOCK[self.protocol])


def device_channel(relay_id: str, served: ServedDevice, key) -> DeviceChannel:
    feed = SignedFeed(relay_id, SUBSTATION, key, 8640)
    return DeviceChannel(relay_id, SUBSTATION, open_source(parse_source_url(served.url)), feed, POLL_S)


async def refresh_forever(*devices: ServedDevice) -> None:
    while True:
        await asyncio.sleep(DEVICE_STEP_S)
        for served in devices:
            served.tick()


@contextlib.asynccontextmanager
async def running(*tasks_of):
    tasks = [asyncio.create_task(t) for t in tasks_of]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(params=PROTOCOLS)
async def served(request):
    served = await ServedDevice(request.param, seed=7, identity="GRIDSIM-751 SN0001").start()
    yield served
    await served.stop()


# --- device -> gateway -> relay client ---------------------------------------------------------
async def test_signed_rows_equal_what_the_device_served(served):
    key = RelayKey.generate()
    channel = device_channel("Relay 1", served, key)
    gateway = Gateway([channel], key, "127.0.0.1", 0, key_created=True)
    await gateway.start()
    gateway.pause()  # the test takes each poll itself: one device measurement, one poll, one row
    client = RelayClient("127.0.0.1", gateway.port, relay_id="Relay 1", expected_key=key.public_key)
    try:
        after = (await client.read(0)).last_seq
        assert after == 1  # the poll at start
        if CARRIES_QUALITY[served.protocol]:
            served.device.quality["ia"] = Quality.QUESTIONABLE
            served.device.quality["frequency"] = Quality.INVALID
        for _ in range(3):
            snap = served.tick()
            await channel.step(int(time.time() * 1000))
            batch = await client.read(after)
            assert len(batch.readings) == 1 and batch.first_seq == after + 1
            reading = batch.readings[0]
            assert served.matches(reading, snap), (reading, snap)
            served.assert_served(reading)
            if CARRIES_QUALITY[served.protocol]:
                assert reading.quality("ia") == Quality.QUESTIONABLE and reading.quality("frequency") == Quality.INVALID
                assert reading.quality("vab") == Quality.GOOD
            else:
                assert reading.flags & ~GATEWAY_CLOCK_FLAG == 0
            after = batch.last_seq
        info = await client.info()
        assert (info.relay_id, info.substation, info.relay_key) == ("Relay 1", SUBSTATION, key.public_key)
    finally:
        await client.close()
        await gateway.close()


@pytest.mark.parametrize("fault, reason", [(Fault.EXCEPTION, "device-exception"),
                                           (Fault.OUT_OF_RANGE, "value-out-of-range")])
async def test_bad_device_is_logged_once_and_recovers_while_another_keeps_going(served, fault, reason):
    other = await ServedDevice(served.protocol, seed=9, identity="GRIDSIM-751 SN0002").start()
    key = RelayKey.generate()
    bad, good = device_channel("Relay 1", served, key), device_channel("Relay 2", other, key)
    gateway = Gateway([bad, good], key, "127.0.0.1", 0, key_created=True)
    clients = [RelayClient("127.0.0.1", 0, relay_id=r, expected_key=key.public_key) for r in ("Relay 1", "Relay 2")]
    try:
        with capture_logs() as logs:
            await gateway.start()
            for client in clients:
                client.port = gateway.port
            async with running(refresh_forever(served, other)):
                await wait_until(lambda: bad.feed.next_seq > 3 and good.feed.next_seq > 3, WAIT_S, what="first rows")
                served.device.fault = fault
                await wait_until(lambda: bad.health.reason is not None, WAIT_S, what="the failure")
                signed_before = bad.feed.next_seq
                good_before = good.feed.next_seq
                # The other device keeps going while the bad one fails poll after poll.
                await wait_until(lambda: bad.health.failed_polls >= 3 and good.feed.next_seq >= good_before + 4,
                                 WAIT_S, what="more failed polls while the other device goes on")
                assert bad.feed.next_seq == signed_before  # nothing from the bad device was signed
                served.device.fault = Fault.NONE
                await wait_until(lambda: bad.feed.next_seq > signed_before + 2, WAIT_S, what="recovery")
        mine = [e for e in logs if e.get("relay_id") == "Relay 1" and e["event"].startswith("device.")]
        assert [e["event"] for e in mine] == ["device.failed", "device.restored"], mine
        assert mine[0]["reason"] == reason and mine[1]["after"] == reason and mine[1]["failed_polls"] >= 3
        assert not [e for e in logs if e.get("relay_id") == "Relay 2" and e["event"].startswith("device.")]
        for client, served_by in zip(clients, (served, other)):
            batch = await client.read(0)
            assert len(batch.readings) >= 4
            for reading in batch.readings:
                served_by.assert_served(reading)
            assert all(r.vab < 800 for r in batch.readings)
    finally:
        for client in clients:
            await client.close()
        await gateway.close()
        await other.stop()


async def test_a_gateway_of_several_relays_wants_a_relay_id(served):
    key = RelayKey.generate()
    sim = RelaySimulator("Relay 2", SUBSTATION, 1000, 3, start_ms=int(time.time() * 1000) - 5000)
    channels = [device_channel("Relay 1", served, key), SimChannel(sim, SignedFeed("Relay 2", SUBSTATION, key, 100))]
    gateway = Gateway(channels, key, "127.0.0.1", 0, key_created=True)
    await gateway.start()
    anonymous = RelayClient("127.0.0.1", gateway.port)
    stranger = RelayClient("127.0.0.1", gateway.port, relay_id="Relay 9")
    named = RelayClient("127.0.0.1", gateway.port, relay_id="Relay 2")
    try:
        with pytest.raises(RelayError) as caught:
            await anonymous.read(0)
        assert caught.value.reason == "relay-error" and "relay-id-required" in caught.value.detail
        with pytest.raises(RelayError) as caught:
            await stranger.info()
        assert "no-such-relay" in caught.value.detail
        batch = await named.read(0)
        assert batch.relay_id == "Relay 2" and batch.relay_key == key.public_key and batch.readings
    finally:
        for client in (anonymous, stranger, named):
            await client.close()
        await gateway.close()


async def test_each_relay_keeps_its_own_journal_and_sequence(served, tmp_path):
    from gridchain.relay.channels import relay_dir
    from gridchain.relay.journal import Journal

    key = RelayKey.generate()

    def channels():
        feeds = [SignedFeed(r, SUBSTATION, key, 8640, Journal(relay_dir(tmp_path, r, False))) for r in ("A", "B")]
        sim = RelaySimulator("B", SUBSTATION, 1000, 3, start_ms=int(time.time() * 1000) - 5000)
        return [DeviceChannel("A", SUBSTATION, open_source(parse_source_url(served.url)), feeds[0], POLL_S),
                SimChannel(sim, feeds[1])]

    gateway = Gateway(channels(), key, "127.0.0.1", 0, key_created=True)
    await gateway.start()
    gateway.pause()
    served.tick()
    await gateway.channels["A"].step(0)
    used = {r: c.feed.next_seq for r, c in gateway.channels.items()}
    await gateway.close()
    assert len(list((tmp_path / "relays").iterdir())) == 2
    again = Gateway(channels(), key, "127.0.0.1", 0, key_created=False)
    await again.start()
    try:
        for relay_id, channel in again.channels.items():
            assert channel.feed.boot_plan.why == "continued" and not channel.feed.boot_plan.gap
            assert channel.feed.buffer.oldest_seq == 1 and channel.feed.next_seq >= used[relay_id]
    finally:
        await again.close()


# --- device -> gateway -> four nodes -> gridchain readings -------------------------------------
class GatewayCluster(Cluster):
    """Four node processes fed by an in-process gateway reading one simulated device."""

    def __init__(self, root, served: ServedDevice) -> None:
        super().__init__(root, 4, capture_interval_s=0.5, difficulty=8)
        self.served = served

    async def start_relay(self) -> None:
        key = RelayKey.generate()
        self.relay = Gateway([device_channel("Relay 1", self.served, key)], key, "127.0.0.1", 0, key_created=True)
        await self.relay.start()


async def gridchain_readings(port: int) -> list[dict]:
    """``gridchain readings`` of the node on peer port ``port``, asked on its operator port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridchain", "readings", "--node", f"127.0.0.1:{api_port(port)}", "--format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-500:]
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_device_to_four_nodes_to_gridchain_readings(tmp_path, protocol):
    served = await ServedDevice(protocol, seed=13, identity="GRIDSIM-751 SN0013").start()
    cluster = GatewayCluster(tmp_path, served)
    try:
        async with running(refresh_forever(served)):
            await cluster.start()

            async def every_node_has_readings() -> bool:
                for node in cluster.nodes:  # one at a time: a failing export leaves no other running
                    if len(await gridchain_readings(node.port)) < 5:
                        return False
                return True
            await wait_until(every_node_has_readings, 90, interval=1.0, what="readings on all four nodes")
            exported = [await gridchain_readings(n.port) for n in cluster.nodes]
    finally:
        await cluster.abort()
        await served.stop()
    for rows in exported:
        assert [r["seq"] for r in rows] == list(range(rows[0]["seq"], rows[0]["seq"] + len(rows)))
        for row in rows:
            assert row["relay_id"] == "Relay 1"
            reading = Reading(row["seq"], row["timestamp_ms"], row["openings"], row["flags"],
                              *(row[name] for name in READING_VALUES))
            served.assert_served(reading)


class SharedGatewayCluster(Cluster):
    """Four node processes, each following both relays of one in-process gateway by relay id."""

    # One written percent-encoded, one with its space as is: both are how operators write them.
    RELAY_FLAGS = {"Relay 1": "Relay%201", "Relay 2": "Relay 2"}

    def __init__(self, root, devices: dict[str, ServedDevice]) -> None:
        super().__init__(root, 4, capture_interval_s=0.5, difficulty=8)
        self.devices = devices

    async def start_relay(self) -> None:
        key = RelayKey.generate()
        channels = [device_channel(relay_id, served, key) for relay_id, served in self.devices.items()]
        self.relay = Gateway(channels, key, "127.0.0.1", 0, key_created=True)
        await self.relay.start()

    def spawn(self, i: int):
        node = self.nodes[i]
        relays = [arg for relay_id in self.devices
                  for arg in ("--relay", f"127.0.0.1:{self.relay_port}/{self.RELAY_FLAGS[relay_id]}")]
        node.proc = self.processes.node(f"n{i}", port=node.port, peers=node.dials, capture_interval_s=0.5,
                                        data_dir=node.data_dir, extra=["--redial-max", "2", *relays])
        node.starts += 1
        return node.proc


@pytest.mark.timeout(180)
async def test_four_nodes_follow_two_relays_of_one_gateway_by_relay_id(tmp_path):
    devices = {"Relay 1": await ServedDevice("modbus-sel751", seed=21, identity="GRIDSIM-751 SN0021").start(),
               "Relay 2": await ServedDevice("iec61850", seed=22, identity="GRIDSIM-751 SN0022").start()}
    cluster = SharedGatewayCluster(tmp_path, devices)
    try:
        async with running(refresh_forever(*devices.values())):
            await cluster.start()

            async def every_node_has_both_relays() -> bool:
                for node in cluster.nodes:
                    rows = await gridchain_readings(node.port)
                    if any(sum(r["relay_id"] == relay_id for r in rows) < 4 for relay_id in devices):
                        return False
                return True
            await wait_until(every_node_has_both_relays, 90, interval=1.0, what="both relays on all four nodes")
            exported = [await gridchain_readings(n.port) for n in cluster.nodes]
            statuses = await cluster.statuses()
    finally:
        await cluster.abort()
        for served in devices.values():
            await served.stop()
    for info in statuses:  # each node polls two relays of one gateway, named by id
        assert sorted(r["relay_id"] for r in info["relays"]) == ["Relay 1", "Relay 2"], info["relays"]
    for rows in exported:
        assert {r["relay_id"] for r in rows} == set(devices)
        for relay_id, served in devices.items():
            mine = [r for r in rows if r["relay_id"] == relay_id]
            seqs = sorted(r["seq"] for r in mine)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (relay_id, seqs)  # consecutive, none twice
            for row in mine:
                served.assert_served(Reading(row["seq"], row["timestamp_ms"], row["openings"], row["flags"],
                                             *(row[name] for name in READING_VALUES)))


# --- the programs: gridchain-relay --device, gridchain-device -----------------------------------
def test_relay_settings_take_devices_and_a_poll_interval():
    from gridchain.cli.settings import load_relay_settings

    settings = load_relay_settings(["--device", "Feeder 7=modbus://10.0.0.21:502?unit=1&map=sel751",
                                    "--device", "Feeder 8=sim", "--poll-interval", "0.5"])
    assert settings.devices == (("Feeder 7", "modbus://10.0.0.21:502?unit=1&map=sel751"), ("Feeder 8", "sim"))
    assert settings.poll_interval_s == 0.5
    assert load_relay_settings([]).devices == ()
    for bad in (["--device", "no-equals-sign"], ["--device", "A=modbus://h?unit=999"], ["--device", "A=ftp://h"],
                ["--device", "A=sim", "--device", "A=sim"], ["--poll-interval", "0.01"]):
        with pytest.raises(SystemExit) as caught:
            load_relay_settings(bad)
        assert caught.value.code == 2, bad


async def test_run_gateway_keeps_a_journal_per_relay(tmp_path):
    from gridchain.relay.server import DeviceConfig, run_gateway
    from tests.support.ports import free_port

    port, stop = free_port(), asyncio.Event()
    task = asyncio.create_task(run_gateway("127.0.0.1", port, [DeviceConfig("A"), DeviceConfig("B", "sim")],
                                           SUBSTATION, stop, interval_s=0.1, seed=3, data_dir=tmp_path))
    clients = {r: RelayClient("127.0.0.1", port, relay_id=r, request_timeout=0.5, backoff_initial_s=0.01)
               for r in ("A", "B")}
    try:
        async def rows(relay_id: str):
            with contextlib.suppress(RelayError):
                await wait_until(clients[relay_id].ready, 2)
                return (await clients[relay_id].read(0)).readings
        for relay_id in clients:
            await wait_until(lambda r=relay_id: rows(r), 5, what=f"readings of {relay_id}")
        a, b = (await clients["A"].read(0)), (await clients["B"].read(0))
        assert a.relay_key == b.relay_key  # one gateway key signs both
        assert a.readings[0].seq == b.readings[0].seq and a.readings[0].vab != b.readings[0].vab  # own sequences
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        for client in clients.values():
            await client.close()
    journals = sorted(p.parent.name for p in tmp_path.rglob("relay.journal"))
    assert len(journals) == 2 and all(name.startswith(("A-", "B-")) for name in journals)


async def test_gridchain_device_and_gateway_programs(tmp_path):
    from tests.support.ports import free_port

    device_port, relay_port = free_port(), free_port()
    device = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridchain", "device", "--modbus", str(device_port), "--interval", "0.2",
        "--log-format", "json", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridchain", "relay", "--port", str(relay_port), "--data-dir", str(tmp_path / "gw"),
        "--poll-interval", "0.2", "--device", f"Feeder 1=modbus://127.0.0.1:{device_port}?unit=1&map=sel751",
        "--log-format", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    client = RelayClient("127.0.0.1", relay_port, request_timeout=0.5, backoff_initial_s=0.05)
    try:
        async def enough():
            with contextlib.suppress(RelayError):
                if client.ready():
                    return len((await client.read(0)).readings) >= 3
        await wait_until(enough, 20, interval=0.2, what="signed readings from the gateway program")
        batch = await client.read(0)
        assert batch.relay_id == "Feeder 1" and all(r.flags & GATEWAY_CLOCK_FLAG for r in batch.readings)
        assert all(100 < r.vab < 130 for r in batch.readings)
    finally:
        await client.close()
        for proc in (relay, device):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        out = (await asyncio.wait_for(relay.communicate(), 15))[0].decode()
        await asyncio.wait_for(device.wait(), 15)
    assert relay.returncode == 0 and device.returncode == 0
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert "relay.started" in events and "relay.stopped" in events and "device.failed" not in events


# --- the poll loop's rules, with a scripted source ----------------------------------------------
class ScriptedSource:
    """A source that returns or raises what the test queues (no protocol: the rules only)."""

    description = "scripted"

    def __init__(self, *script) -> None:
        self.script = list(script)

    async def poll(self, now_ms: int):
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        return None


def sample(stamp: int | None, vab: float = 115.0, quality: Quality = Quality.GOOD):
    from gridchain.relay.sources import DeviceSample
    return DeviceSample((vab, 115.1, 115.2, 300.0, 301.0, 302.0, 60.0, 0.95, 57.0, 18.0),
                        (quality,) + (Quality.GOOD,) * 9, 4, stamp, "dev")


async def test_a_failure_is_logged_once_per_reason_and_its_end_once():
    from gridchain.relay.sources import NoNewSample, SourceError
    key = RelayKey.generate()
    source = ScriptedSource(sample(1000), SourceError("device-timeout", "t1"), SourceError("device-timeout", "t2"),
                            SourceError("device-disconnected", "d"), RuntimeError("library bug"),
                            RuntimeError("again"), NoNewSample("same"), sample(2000, quality=Quality.QUESTIONABLE),
                            sample(2000), sample(1500), sample(None, vab=float("nan")), sample(None))
    feed = SignedFeed("R", SUBSTATION, key, 100)
    channel = DeviceChannel("R", SUBSTATION, source, feed, POLL_S)
    channel.boot(0, True)
    with capture_logs() as logs:
        signed = [await channel.step(5000 + i) for i in range(12)]
    events = [(e["event"], e.get("reason") or e.get("after")) for e in logs if e["event"].startswith("device.")]
    assert events == [("device.failed", "device-timeout"), ("device.failed", "device-disconnected"),
                      ("device.failed", "source-failed"), ("device.restored", "source-failed"),
                      ("device.failed", "stale-timestamp"), ("device.failed", "value-out-of-range"),
                      ("device.restored", "value-out-of-range")]
    rows = [r for batch in signed for r in batch]
    assert [r.seq for r in rows] == [1, 2, 3]  # nothing from a failed, repeated or non-finite poll
    assert rows[0].timestamp_ms == 1000 and not rows[0].flags & GATEWAY_CLOCK_FLAG
    assert rows[1].quality("vab") == Quality.QUESTIONABLE and rows[1].openings == 4
    assert rows[2].timestamp_ms == 5011 and rows[2].flags == GATEWAY_CLOCK_FLAG  # gateway clock, said so
