"""The simulated relay as a Modbus TCP server (pymodbus), laid out by a register map.

The server holds exactly the map's registers in the map's table (holding or input); any
other address answers exception 02, as a real relay does, so a client with the wrong map
gets a wrong-map error. Each read is answered from the device's newest snapshot, encoded
with the same map the client decodes with. Faults act per request: EXCEPTION answers
exception 04 (server device failure), STALL holds the request without answering,
DISCONNECT drops the connection on the first read after the identity block (the middle
of a poll).
"""

from __future__ import annotations

import asyncio

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridchain.relay.devices.device import Fault, SimulatedDevice
from gridchain.relay.sources.register_map import RegisterMap

STALL_LIMIT_S = 60.0  # a stalled request is let go after this (or at stop), never held forever


class ModbusDeviceServer:
    """Serves `device` at Modbus unit `unit` on host:port (port 0 picks a free one)."""

    def __init__(self, device: SimulatedDevice, regmap: RegisterMap, *, host: str = "127.0.0.1",
                 port: int = 0, unit: int = 1) -> None:
        self.device, self.map, self.host, self.port, self.unit = device, regmap, host, port, unit
        self._server: ModbusTcpServer | None = None
        self._released = asyncio.Event()

    async def start(self) -> None:
        table = [SimData(start, count=count, values=0, datatype=DataType.REGISTERS)
                 for start, count in self.map.spans()]
        other = [SimData(0, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        holding, inputs = (table, other) if self.map.table == "holding" else (other, table)
        sim = SimDevice(self.unit, simdata=(bits, list(bits), holding, inputs), action=self._action)
        self._released.clear()
        self._server = ModbusTcpServer([sim], address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        transport = self._server.transport
        self.port = transport.sockets[0].getsockname()[1] if hasattr(transport, "sockets") else self.port

    async def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def drop_connections(self) -> None:
        """Close every client connection (what a relay reboot looks like from outside)."""
        if self._server is None:
            return
        for connection in list(self._server.active_connections.values()):
            if connection.transport is not None:
                connection.transport.abort()

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list | None) -> ExcCodes | None:
        fault = self.device.fault
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # a relay's measurements are read-only
        if fault is Fault.EXCEPTION:
            return ExcCodes.DEVICE_FAILURE
        if fault is Fault.STALL:
            try:
                await asyncio.wait_for(self._released.wait(), STALL_LIMIT_S)
            except TimeoutError:
                pass
            return ExcCodes.DEVICE_BUSY
        if fault is Fault.DISCONNECT and address != self.map.identity_address:
            self.drop_connections()
            return ExcCodes.DEVICE_FAILURE
        snap = self.device.snapshot
        encoded = self.map.encode(snap.values, snap.quality, snap.openings, snap.timestamp_ms, snap.identity)
        for register, value in encoded.items():
            offset = register - start_address
            if 0 <= offset < len(registers):
                registers[offset] = value
        return None
