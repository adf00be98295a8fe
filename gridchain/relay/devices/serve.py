"""gridchain-device: the simulated relay served over the real protocols, until stopped.

One ``SimulatedDevice`` (a RelaySimulator publishing a snapshot each interval) behind any of
a Modbus TCP server (register map ``--modbus-map``, unit ``--unit``), an IEC 61850 MMS server
(logical device GRIDSIMLD0) and a DNP3 outstation (point map ``--dnp3-map``, outstation
``--outstation``), so device -> gateway -> nodes runs on one machine with the real protocol
stacks in between. Every server publishes the very same snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gridchain.relay.devices.device import SimulatedDevice

REFRESH_FLOOR_S = 0.05  # the device re-publishes at least this often apart (its own clock)

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class DeviceServeConfig:
    """What to serve and where (a port of None: that protocol is not served)."""

    host: str = "127.0.0.1"
    modbus_port: int | None = None
    iec61850_port: int | None = None
    dnp3_port: int | None = None
    interval_s: float = 1.0
    seed: int = 1
    relay_id: str = "Relay 1"
    identity: str = "GRIDSIM-751 SN0001"
    unit: int = 1
    modbus_map: str = "sel751"
    outstation: int = 10
    dnp3_map: str = "dnp3-feeder"
    fault_probability: float | None = None


class DeviceServers:
    """The simulated device and the protocol servers in front of it."""

    def __init__(self, config: DeviceServeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config, self._clock = config, clock
        now_ms = int(clock() * 1000)
        self.device = SimulatedDevice.create(config.relay_id, seed=config.seed,
                                             interval_ms=round(config.interval_s * 1000),
                                             start_ms=now_ms, identity=config.identity)
        if config.fault_probability is not None:
            self.device.simulator.fault_probability = config.fault_probability
        self.device.refresh(now_ms)
        self.servers: dict[str, object] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        config = self.config
        try:
            if config.modbus_port is not None:
                from gridchain.relay.devices.modbus_server import ModbusDeviceServer
                from gridchain.relay.sources.register_map import load_register_map
                server = ModbusDeviceServer(self.device, load_register_map(config.modbus_map), host=config.host,
                                            port=config.modbus_port, unit=config.unit)
                await self._start("modbus", server)
            if config.iec61850_port is not None:
                from gridchain.relay.devices.mms_server import MmsDeviceServer
                await self._start("iec61850", MmsDeviceServer(self.device, host=config.host,
                                                               port=config.iec61850_port))
            if config.dnp3_port is not None:
                from gridchain.relay.devices.dnp3_server import Dnp3DeviceServer
                from gridchain.relay.sources.point_map import load_point_map
                server = Dnp3DeviceServer(self.device, load_point_map(config.dnp3_map), host=config.host,
                                          port=config.dnp3_port, outstation=config.outstation)
                await self._start("dnp3", server)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._refresh_forever(), name="device-refresh")

    async def _start(self, name: str, server) -> None:
        await server.start()
        self.servers[name] = server
        log.info("device.serving", protocol=name, host=self.config.host, port=server.port,
                 identity=self.device.identity, url=self.url(name))

    def url(self, name: str) -> str:
        """The source URL a gateway reads this device's ``name`` protocol with."""
        server = self.servers[name]
        host = self.config.host if self.config.host not in ("0.0.0.0", "") else "127.0.0.1"
        if name == "modbus":
            return f"modbus://{host}:{server.port}?unit={self.config.unit}&map={self.config.modbus_map}"
        if name == "iec61850":
            return f"iec61850://{host}:{server.port}/{server.domain}"
        return f"dnp3://{host}:{server.port}?outstation={self.config.outstation}&map={self.config.dnp3_map}"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for server in reversed(list(self.servers.values())):
            with contextlib.suppress(Exception):
                await server.stop()
        self.servers.clear()

    async def _refresh_forever(self) -> None:
        sim = self.device.simulator
        while True:
            due_s = sim.next_tick_ms / 1000.0 - self._clock()
            await asyncio.sleep(max(REFRESH_FLOOR_S, due_s))
            try:
                self.device.refresh(int(self._clock() * 1000))
            except Exception:  # keep publishing; the failure is in the log
                log.exception("device.refresh_failed")


async def run_devices(config: DeviceServeConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set (the CLI's entry point); OSError if a port cannot be bound."""
    servers = DeviceServers(config)
    await servers.start()
    try:
        await stop.wait()
    finally:
        await servers.stop()
