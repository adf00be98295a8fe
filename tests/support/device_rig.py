"""A simulated relay device behind a protocol server, and the gateway source polling it:
one rig per protocol the gateway reads (Modbus TCP with each register map, DNP3, IEC 61850
MMS). The device's clock is the rig's, moved a second at a time, so every poll sees exactly
the snapshot the test expects. tests/integration/test_source_contract.py holds what every
source must do; test_source_<protocol>.py what only one does."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from gridchain.relay.devices.device import SimulatedDevice
from gridchain.relay.devices.dnp3_server import Dnp3DeviceServer, serial_number
from gridchain.relay.devices.mms_server import DOMAIN, MmsDeviceServer
from gridchain.relay.devices.modbus_server import ModbusDeviceServer
from gridchain.relay.sources import SourceError, open_source, parse_source_url
from gridchain.relay.sources.base import GATEWAY_CLOCK_FLAG
from gridchain.relay.sources.point_map import load_point_map
from gridchain.relay.sources.register_map import load_register_map

START_MS = 1_700_000_000_000
WAIT_S = 10.0  # every poll in these tests ends well within this, or the test fails
TICK_MS = 1000
TIMEOUT_ARG = "timeout=0.5"  # the source's own request timeout: a stalled device fails fast
OUTSTATION = 10  # the DNP3 rig's outstation address
# What each source loses to the wire encoding of a value.
MODBUS_RESOLUTION = {"sel751": 0.051, "float32": 0.001}  # sel751: 0.01 kV, 0.1 A, 0.001 Hz/PF/MW
DNP3_RESOLUTION = 0.0011  # the point map's 0.001 scale on 32-bit integers
MMS_RESOLUTION = 0.001  # float32 of SI values, then kV / MW: well inside the simulator's 3 decimals


class DeviceRig(abc.ABC):
    """One device (seeded, so runs repeat), the server ``serve(device)`` makes for it, and
    ``source`` once ``running`` has opened it. ``device_clock``: whether the protocol carries
    the device's own time (else the gateway's clock stamps each sample); ``resolution``: the
    most a value may lose on the wire."""

    device_clock = True
    resolution = 0.0

    def __init__(self, serve: Callable[[SimulatedDevice], object], seed: int) -> None:
        self.device = SimulatedDevice.create(seed=seed, start_ms=START_MS)
        self.now = START_MS
        self.tick()
        self.server = serve(self.device)
        self.source = None

    @abc.abstractmethod
    def url(self, port: int) -> str:
        """The source URL of the server listening on ``port``."""

    def assert_served(self, got) -> None:
        """``got`` (a sample) is what the device serves now, as precisely as the protocol carries it."""
        snap = self.device.snapshot
        assert got.values == pytest.approx(snap.values, abs=self.resolution)
        assert got.openings == snap.openings
        assert got.identity == self.identity(snap.identity)
        if self.device_clock:
            assert got.timestamp_ms == snap.timestamp_ms and not got.flags & GATEWAY_CLOCK_FLAG
        else:
            assert got.timestamp_ms is None and got.flags & GATEWAY_CLOCK_FLAG

    def identity(self, device_identity: str) -> str:
        return device_identity

    def tick(self) -> None:
        """The device moves on a second: a new snapshot to serve."""
        self.now += TICK_MS
        self.device.refresh(self.now)

    async def poll(self, source=None):
        return await asyncio.wait_for((source or self.source).poll(self.now), WAIT_S)

    async def fails(self, reason: str, source=None) -> SourceError:
        """The poll's SourceError, which must carry ``reason``."""
        with pytest.raises(SourceError) as caught:
            await self.poll(source)
        assert caught.value.reason == reason, caught.value
        return caught.value

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DeviceRig]:
        """Start the server, open the source; close both however the test ends."""
        await self.server.start()
        try:
            self.source = open_source(parse_source_url(self.url(self.server.port)))
            try:
                yield self
            finally:
                await self.source.close()
        finally:
            await self.server.stop()


class ModbusRig(DeviceRig):
    def __init__(self, map_name: str) -> None:
        self.map_name = map_name
        self.map = load_register_map(map_name)
        self.resolution = MODBUS_RESOLUTION[map_name]
        self.device_clock = self.map.timestamp is not None  # a map may have no clock registers
        super().__init__(lambda device: ModbusDeviceServer(device, self.map), seed=7)

    def url(self, port: int) -> str:
        return f"modbus://127.0.0.1:{port}?unit=1&map={self.map_name}&{TIMEOUT_ARG}"


class Dnp3Rig(DeviceRig):
    device_clock = False  # static DNP3 data carries no time
    resolution = DNP3_RESOLUTION

    def __init__(self) -> None:
        self.map = load_point_map()
        super().__init__(lambda device: Dnp3DeviceServer(device, self.map, outstation=OUTSTATION), seed=5)

    def url(self, port: int) -> str:
        return f"dnp3://127.0.0.1:{port}?outstation={OUTSTATION}&master=1&{TIMEOUT_ARG}"

    def identity(self, device_identity: str) -> str:
        return f"dnp3 outstation {OUTSTATION} serial {serial_number(device_identity)}"


class MmsRig(DeviceRig):
    resolution = MMS_RESOLUTION

    def __init__(self) -> None:
        super().__init__(MmsDeviceServer, seed=11)

    def url(self, port: int) -> str:
        return f"iec61850://127.0.0.1:{port}/{DOMAIN}?{TIMEOUT_ARG}"

    def identity(self, device_identity: str) -> str:
        return f"gridchain/GRIDSIM-751/{device_identity}"


# Every source the gateway has, by the name its contract tests carry.
RIGS: dict[str, Callable[[], DeviceRig]] = {
    "modbus-sel751": lambda: ModbusRig("sel751"),
    "modbus-float32": lambda: ModbusRig("float32"),
    "dnp3": Dnp3Rig,
    "iec61850": MmsRig,
}
