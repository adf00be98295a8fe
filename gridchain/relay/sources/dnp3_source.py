"""A relay read over DNP3 TCP (dnp3py's master) through a point map.

One poll is one integrity poll (READ class 1, 2, 3 and 0) on a link kept open between
polls; the analog inputs and counters it returns are decoded with the point map. DNP3's
static objects carry no time, so samples are stamped by the gateway clock; the point
flags give each value's quality.

Failures: no TCP connection or link reset -> device-unreachable; no response -> device-
timeout; link lost during a poll -> device-disconnected; a response whose internal
indications report an error (IIN1.6 device trouble, IIN2.0-2.2 function, object or
parameter not supported) -> device-exception; a mapped point missing from the answer ->
wrong-map. After a failure the link is closed and the next poll opens it again.
"""

from __future__ import annotations

import asyncio

from dnp3.core.flags import IIN
from dnp3.master import (
    DefaultSOEHandler, LinkError, Master, MasterConfig, MasterRunnerError, MasterTcpRunner, ResponseTimeoutError,
)
from dnp3.transport_io.channel import ChannelError

from gridchain.relay.sources.base import DEFAULT_POLL_TIMEOUT_S, DeviceSample, SourceError
from gridchain.relay.sources.guard import SampleGuard
from gridchain.relay.sources.point_map import PointMap

DEFAULT_MASTER_ADDRESS = 1
# Internal indications that mean the outstation could not answer the poll properly.
ERROR_IIN = IIN.DEVICE_TROUBLE | IIN.NO_FUNC_CODE_SUPPORT | IIN.OBJECT_UNKNOWN | IIN.PARAMETER_ERROR \
    | IIN.CONFIG_CORRUPT


class _Points(DefaultSOEHandler):
    """Collects the values of one integrity poll (cleared before each)."""

    def clear(self) -> None:
        self._analog_inputs.clear()
        self._counters.clear()


class Dnp3Source:
    """`dnp3://HOST:PORT?outstation=N&master=M&map=NAME`: one outstation."""

    def __init__(self, host: str, port: int, outstation: int, points: PointMap, *,
                 master: int = DEFAULT_MASTER_ADDRESS, timeout_s: float = DEFAULT_POLL_TIMEOUT_S,
                 expected_identity: str | None = None) -> None:
        self.host, self.port, self.outstation, self.master, self.map = host, port, outstation, master, points
        self.timeout_s = timeout_s
        self.description = f"dnp3://{host}:{port}?outstation={outstation}"
        self.guard = SampleGuard(expected_identity)
        self._points = _Points()
        self._runner: MasterTcpRunner | None = None

    async def poll(self, now_ms: int) -> DeviceSample:
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await self._integrity_poll()
        except TimeoutError:
            await self.close()
            raise SourceError("device-timeout", f"{self.description}: no answer in {self.timeout_s:g} s") from None
        except SourceError:
            await self.close()
            raise
        trouble = IIN(0)
        for info in infos:
            trouble |= info.iin & ERROR_IIN
        if trouble:
            raise SourceError("device-exception", f"{self.description}: outstation reports {trouble!r}")
        analogs = {i: (v.value, v.quality) for i, v in self._points.analog_inputs.items()}
        counters = {i: (v.value, v.quality) for i, v in self._points.counters.items()}
        sample = self.map.decode(analogs, counters, self.outstation, self.description)
        return self.guard.check(sample)

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                await runner.close()
            except (MasterRunnerError, ChannelError, OSError):
                pass  # closing a link that already broke

    async def _integrity_poll(self):
        runner = await self._opened()
        self._points.clear()
        try:
            return await runner.integrity_poll()
        except ResponseTimeoutError as exc:
            raise SourceError("device-timeout", f"{self.description}: {exc}") from exc
        except (LinkError, ChannelError, OSError) as exc:
            raise SourceError("device-disconnected", f"{self.description}: {exc}") from exc
        except MasterRunnerError as exc:
            raise SourceError("device-exception", f"{self.description}: {exc}") from exc

    async def _opened(self) -> MasterTcpRunner:
        if self._runner is not None and self._runner.is_open:
            return self._runner
        await self.close()
        config = MasterConfig(address=self.master, outstation_address=self.outstation)
        runner = MasterTcpRunner(master=Master(handler=self._points, config=config), host=self.host,
                                 port=self.port, response_timeout=self.timeout_s)
        try:
            await runner.open()
        except (MasterRunnerError, ChannelError, OSError) as exc:
            raise SourceError("device-unreachable", f"{self.description}: {exc}") from exc
        self._runner = runner
        return runner
