"""A relay read over IEC 61850 MMS (open61850's client) from its MMXU1 and XCBR1.

One poll makes two confirmed Read requests on one association: LPHD1.PhyNam (identity),
then every MMXU1 value with its quality and timestamp and XCBR1.OpCnt in one request, and
decodes them with `mms_model`. open61850's client is blocking (a receive thread per
association), so each source runs its requests in its own worker thread, kept for the
source's life (a shared pool's queue and a thread start per poll cost more than the read);
its own request timeout bounds every one of them, and the asyncio deadline around the poll
bounds the whole.

Failures: no association -> device-unreachable; no answer -> device-timeout; association
lost during a poll -> device-disconnected; an object the model lacks (the LD in the URL,
MMXU1, XCBR1) -> wrong-model; any other access error, reject or undecodable PDU ->
device-exception. The association is dropped after a failure and made again next poll.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from open61850.mms.client import MmsClient
from open61850.mms.errors import MmsConnectionError, MmsError, MmsTimeout
from open61850.mms.pdu import ObjectName

import gridchain.relay.sources.mms_model as mms_model
from gridchain.relay.sources.base import DEFAULT_POLL_TIMEOUT_S, DeviceSample, SourceError
from gridchain.relay.sources.guard import SampleGuard

# The worker thread may outlive the asyncio deadline by this much before the client's own
# timeout ends it; the poll's deadline is the client's plus this margin.
THREAD_MARGIN_S = 0.5


class MmsSource:
    """`iec61850://HOST:PORT/LD`: one logical device of one IED."""

    def __init__(self, host: str, port: int, logical_device: str, *,
                 timeout_s: float = DEFAULT_POLL_TIMEOUT_S, expected_identity: str | None = None) -> None:
        self.host, self.port, self.domain, self.timeout_s = host, port, logical_device, timeout_s
        self.description = f"iec61850://{host}:{port}/{logical_device}"
        self.guard = SampleGuard(expected_identity)
        self._client: MmsClient | None = None
        self._thread: ThreadPoolExecutor | None = None  # one per source, made at the first poll
        self._identity_names = [ObjectName(i, logical_device) for i in mms_model.identity_items()]
        self._measurement_names = [ObjectName(i, logical_device) for i in mms_model.measurement_items()]

    async def poll(self, now_ms: int) -> DeviceSample:
        try:
            async with asyncio.timeout(self.timeout_s + THREAD_MARGIN_S):
                sample = await self._in_thread(self._poll_blocking)
        except TimeoutError:
            await self.close()
            raise SourceError("device-timeout", f"{self.description}: no answer in {self.timeout_s:g} s") from None
        except SourceError:
            await self.close()
            raise
        return self.guard.check(sample)

    async def close(self) -> None:
        client, self._client = self._client, None
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)  # a read still stuck in it ends when the socket closes
        if client is not None:
            # Not queued behind a stuck read in the source's thread: closing breaks that read.
            await asyncio.to_thread(client.close)

    def _in_thread(self, call):
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mms-{self.host}:{self.port}")
        return asyncio.get_running_loop().run_in_executor(self._thread, call)

    def _poll_blocking(self) -> DeviceSample:
        client = self._connected()
        identity = mms_model.decode_identity(self._read(client, self._identity_names), self.description)
        results = self._read(client, self._measurement_names)
        return mms_model.decode_measurements(results, identity, self.description)

    def _read(self, client: MmsClient, names: list[ObjectName]) -> list[object]:
        try:
            return client.read_many(names)
        except MmsTimeout as exc:
            raise SourceError("device-timeout", f"{self.description}: {exc}") from exc
        except MmsConnectionError as exc:
            raise SourceError("device-disconnected", f"{self.description}: {exc}") from exc
        except MmsError as exc:
            raise SourceError("device-exception", f"{self.description}: {exc}") from exc

    def _connected(self) -> MmsClient:
        if self._client is not None and self._client.is_connected:
            return self._client
        if self._client is not None:
            self._client.close()
            self._client = None
        try:
            self._client = MmsClient.connect(self.host, self.port, timeout=self.timeout_s)
        except MmsTimeout as exc:
            raise SourceError("device-timeout", f"{self.description}: association: {exc}") from exc
        except (MmsError, OSError) as exc:
            raise SourceError("device-unreachable", f"{self.description}: {exc}") from exc
        return self._client
