"""A relay read over Modbus TCP (pymodbus' asyncio client) through a register map.

One poll reads the map's spans (identity first, then the values, counter, timestamp and
quality), one request each; with a device timestamp, its span is read first and again last
and a poll during which it moved is taken again (a torn read); then it decodes them with
the map and passes the sample through the guard. Modbus carries no quality and no time of its own: quality comes from the map's
"not available" raw values, NaN floats and an optional quality word, time from an optional
timestamp register (else the gateway's clock).

Failures map to named errors: no TCP connection -> device-unreachable; no answer within
the poll timeout -> device-timeout; connection lost during a poll -> device-disconnected;
exception 02 (illegal data address) -> wrong-map (the map asks for registers the device
does not have); any other exception response -> device-exception. After a failure the
connection is dropped and the next poll dials again, so the source recovers with the device.
"""

from __future__ import annotations

import asyncio

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gridchain.relay.sources.base import DEFAULT_POLL_TIMEOUT_S, DeviceSample, SourceError
from gridchain.relay.sources.guard import SampleGuard
from gridchain.relay.sources.register_map import RegisterMap

# A device measuring faster than it can be read would tear every poll; past this many torn
# polls in a row it is a device problem, not bad luck.
MAX_TORN_READS = 3
ILLEGAL_DATA_ADDRESS = 0x02  # Modbus exception 02: the register does not exist on the device
_EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
    5: "acknowledge", 6: "device busy", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusSource:
    """`modbus://HOST:PORT?unit=N&map=NAME`: one relay at one unit id."""

    def __init__(self, host: str, port: int, unit: int, regmap: RegisterMap, *,
                 timeout_s: float = DEFAULT_POLL_TIMEOUT_S, expected_identity: str | None = None) -> None:
        self.host, self.port, self.unit, self.map = host, port, unit, regmap
        self.timeout_s = timeout_s
        self.description = f"modbus://{host}:{port}?unit={unit} ({regmap.name})"
        self.guard = SampleGuard(expected_identity)
        self._client: AsyncModbusTcpClient | None = None
        self._lost = asyncio.Event()  # set by pymodbus' connect trace when the link drops
        self._spans = regmap.spans()  # the map is fixed: work its reads out once
        self._stamp = self._stamp_span()

    async def poll(self, now_ms: int) -> DeviceSample:
        try:
            async with asyncio.timeout(self.timeout_s):
                client = await self._connected()
                # One watch on the link for the whole poll, not one per request: it costs
                # two tasks, which for a three-request poll was a quarter of its time.
                registers = await self._unless_lost(self._read_all(client))
        except TimeoutError:
            await self._drop()
            raise SourceError("device-timeout", f"{self.description}: no answer in {self.timeout_s:g} s") from None
        except SourceError:
            await self._drop()
            raise
        values, quality, openings, stamp, identity = self.map.decode(registers)
        return self.guard.check(DeviceSample(values, quality, openings, stamp, identity))

    async def close(self) -> None:
        await self._drop()

    async def _read_all(self, client: AsyncModbusTcpClient) -> dict[int, int]:
        read = client.read_holding_registers if self.map.table == "holding" else client.read_input_registers
        stamp_span = self._stamp
        if stamp_span is None:
            return await self._read_spans(read, self._spans)
        # A poll is several requests and the device may measure between two of them: read
        # its timestamp first and again last, and take the poll only if it did not move, so
        # a row never pairs one instant's values with another instant's time.
        rest = [span for span in self._spans if span != stamp_span]
        for _ in range(MAX_TORN_READS):
            first = await self._read_spans(read, [stamp_span])
            registers = await self._read_spans(read, rest)
            last = await self._read_spans(read, [stamp_span])
            if first == last:
                registers.update(last)
                return registers
        raise SourceError("device-exception", f"{self.description}: the device timestamp moved during each of "
                                              f"{MAX_TORN_READS} polls in a row")

    def _stamp_span(self) -> tuple[int, int] | None:
        register = self.map.timestamp
        if register is None:
            return None
        return next(span for span in self._spans if span[0] <= register.address < span[0] + span[1])

    async def _read_spans(self, read, spans: list[tuple[int, int]]) -> dict[int, int]:
        registers: dict[int, int] = {}
        for start, count in spans:
            try:
                response = await read(start, count=count, device_id=self.unit)
            except (ConnectionException, ModbusIOException) as exc:
                raise SourceError("device-disconnected", f"{self.description}: {exc}") from exc
            except ModbusException as exc:
                raise SourceError("device-exception", f"{self.description}: {exc}") from exc
            if response.isError():
                raise self._exception(start, count, getattr(response, "exception_code", 0))
            if len(response.registers) != count:
                raise SourceError("device-exception", f"{self.description}: asked {count} registers at "
                                                      f"{start}, got {len(response.registers)}")
            registers.update(zip(range(start, start + count), response.registers))
        return registers

    def _exception(self, start: int, count: int, code: int) -> SourceError:
        name = _EXCEPTION_NAMES.get(code, "unknown")
        where = f"{self.description}: exception {code:02d} ({name}) reading {count} {self.map.table} " \
                f"registers at {start}"
        if code == ILLEGAL_DATA_ADDRESS:
            return SourceError("wrong-map", where)
        return SourceError("device-exception", where)

    async def _unless_lost(self, request):
        """The poll's answer, or device-disconnected as soon as the connection drops
        (pymodbus itself would wait out its whole timeout for a reply that cannot come)."""
        answer = asyncio.ensure_future(request)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait((answer, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not answer.done():
                answer.cancel()
        if not answer.done() or answer.cancelled():
            raise SourceError("device-disconnected", f"{self.description}: connection lost during the poll")
        return answer.result()

    def _on_connect(self, connected: bool) -> None:
        if not connected:
            self._lost.set()

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        await self._drop()
        # Reconnecting is ours (next poll), not the library's: reconnect_delay=0 turns it off.
        self._lost = asyncio.Event()
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=0,
                                      reconnect_delay=0, reconnect_delay_max=0,
                                      trace_connect=self._on_connect)
        if not await client.connect():
            client.close()
            raise SourceError("device-unreachable", f"{self.description}: cannot connect")
        self._client = client
        return client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
