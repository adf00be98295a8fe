"""The simulated relay as a DNP3 outstation (dnp3py), laid out by a point map.

Analog inputs carry the values as 32-bit integers (g30v1, as dnp3py serves them) scaled
by the point map, with point flags from each value's quality; counter `openings` counts
breaker operations and the identity counter holds the device's serial number (the digits
of its identity). The database is brought up to the device's newest snapshot before each
request is answered. Faults: EXCEPTION answers reads with IIN1.6 device trouble and no
data; STALL and DISCONNECT act in a `FaultProxy` in front of the outstation, since the
outstation answers synchronously and has no hook to hold or cut a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from dnp3.application.builder import build_null_response
from dnp3.core.flags import IIN, AnalogQuality, CounterQuality
from dnp3.database import AnalogInputConfig, CounterConfig, Database, EventClass
from dnp3.outstation import Outstation, OutstationConfig, OutstationTcpRunner

from gridchain.relay.devices.device import DeviceSnapshot, Fault, SimulatedDevice
from gridchain.relay.devices.fault_proxy import FaultProxy
from gridchain.relay.sources.point_map import PointMap, quality_flags

START_TIMEOUT_S = 5.0  # the outstation binds within this or the start fails


@dataclass
class _DeviceOutstation(Outstation):
    """An outstation that refreshes its database from the device before each request."""

    owner: "Dnp3DeviceServer | None" = field(default=None, kw_only=True)

    def process_request(self, data: bytes, *, peer=None):
        owner = self.owner
        if owner is not None:
            if owner.device.fault is Fault.EXCEPTION:
                return [build_null_response(iin=self.iin | IIN.DEVICE_TROUBLE, seq=data[0] & 0x0F
                                            if data else 0)]
            owner.publish(owner.device.snapshot)
        return super().process_request(data, peer=peer)


class Dnp3DeviceServer:
    """Serves `device` as outstation `outstation` on host:port (port 0 picks a free one)."""

    def __init__(self, device: SimulatedDevice, points: PointMap, *, host: str = "127.0.0.1",
                 port: int = 0, outstation: int = 10) -> None:
        self.device, self.map, self.host, self.port, self.outstation = device, points, host, port, outstation
        self.database = Database()
        for point in points.values:
            self.database.add_analog_input(point.index, AnalogInputConfig(event_class=EventClass.NONE))
        counters = [points.openings_counter] + ([points.identity_counter] if points.identity_counter is not None else [])
        for index in counters:
            self.database.add_counter(index, CounterConfig(event_class=EventClass.NONE))
        self._published: DeviceSnapshot | None = None
        self._runner: OutstationTcpRunner | None = None
        self._task: asyncio.Task | None = None
        self._proxy: FaultProxy | None = None

    async def start(self) -> None:
        outstation = _DeviceOutstation(database=self.database, config=OutstationConfig(
            address=self.outstation, time_sync_required=False), owner=self)
        self._runner = OutstationTcpRunner(outstation=outstation, host=self.host, port=0)
        self._task = asyncio.create_task(self._runner.run(), name="dnp3-outstation")
        async with asyncio.timeout(START_TIMEOUT_S):
            while self._runner.local_address is None:
                await asyncio.sleep(0.01)
        self._proxy = FaultProxy(lambda: self.device.fault, *self._runner.local_address,
                                 host=self.host, port=self.port)
        await self._proxy.start()
        self.port = self._proxy.port

    async def stop(self) -> None:
        if self._proxy is not None:
            await self._proxy.stop()
            self._proxy = None
        if self._runner is not None:
            await self._runner.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(START_TIMEOUT_S):
                    await self._task
            self._task = None

    def drop_connections(self) -> None:
        if self._proxy is not None:
            self._proxy.drop_connections()

    def publish(self, snap: DeviceSnapshot) -> None:
        if snap is self._published:
            return
        for point, raw, quality in zip(self.map.values, self.map.encode(snap.values).values(), snap.quality):
            self.database.update_analog_input(point.index, raw, AnalogQuality(quality_flags(quality)))
        good = CounterQuality.ONLINE
        self.database.update_counter(self.map.openings_counter, snap.openings, good)
        if self.map.identity_counter is not None:
            self.database.update_counter(self.map.identity_counter, serial_number(snap.identity), good)
        self._published = snap


def serial_number(identity: str) -> int:
    """The digits of an identity ("GRIDSIM-751 SN0042" -> 7510042), as a 32-bit counter holds it."""
    digits = "".join(ch for ch in identity if ch.isdigit()) or "0"
    return int(digits) % (1 << 32)
