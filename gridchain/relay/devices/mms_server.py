"""The simulated relay as an IEC 61850 MMS server (open61850), model from gridsim.cid.

The model is the relay's: LD0 (domain GRIDSIMLD0) with LPHD1, MMXU1 and XCBR1. Before a
read is answered the model is brought up to the device's newest snapshot, in SI units,
each value with its quality and timestamp, so every client read sees what the device
publishes now. Faults act per read: EXCEPTION answers every variable with data access
error 1 (hardware-fault), STALL holds the request without answering, DISCONNECT ends the
association on the first measurement read (after the identity read: mid-poll).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from importlib import resources
from io import BytesIO

from open61850.data import TimestampData
from open61850.mms.pdu import ObjectName
from open61850.server import IedModel, MmsServer

from gridchain.relay.devices.device import DeviceSnapshot, Fault, SimulatedDevice
import gridchain.relay.sources.mms_model as mms_model
from gridchain.relay.sources.base import Quality

DOMAIN = "GRIDSIMLD0"
STALL_LIMIT_S = 60.0  # a stalled request is let go after this (or at stop), never held forever
HARDWARE_FAULT = 1  # DataAccessError hardware-fault
TIME_QUALITY = 0x0A  # TimeQuality: clock synchronised, 10 bits of fraction (about 1 ms)
# Quality bit strings (13 bits, validity in the first two): good 00, invalid 01, questionable 11.
_VALIDITY = {Quality.GOOD: 0, Quality.INVALID: 1 << 11, Quality.QUESTIONABLE: 3 << 11}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def load_model() -> IedModel:
    scl = (resources.files("gridchain.relay.devices") / "gridsim.cid").read_bytes()
    return IedModel.from_scl(BytesIO(scl))  # type: ignore[arg-type]  # ElementTree takes a file object


class MmsDeviceServer:
    """Serves `device` as IED GRIDSIM on host:port (port 0 picks a free one)."""

    def __init__(self, device: SimulatedDevice, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.device, self.host, self.port = device, host, port
        self.model = load_model()
        self._published: DeviceSnapshot | None = None
        self._released = threading.Event()
        self._server: MmsServer | None = None
        self._measurements = {ObjectName(item, DOMAIN) for item in mms_model.measurement_items()}

    @property
    def domain(self) -> str:
        return DOMAIN

    async def start(self) -> None:
        self._released.clear()
        server = MmsServer(self.model, host=self.host, port=self.port, vendor="gridchain",
                           model_name="GRIDSIM-751", reports=False, controls=False, setting_groups=False)
        server.read_hooks.append(self._on_read)
        server.start()
        self._server, self.port = server, server.port

    async def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _on_read(self, connection, name: ObjectName):
        """Runs on the connection's server thread for each variable read."""
        fault = self.device.fault
        if fault is Fault.EXCEPTION:
            return HARDWARE_FAULT
        if fault is Fault.STALL:
            self._released.wait(STALL_LIMIT_S)
            return HARDWARE_FAULT
        if fault is Fault.DISCONNECT and name in self._measurements:
            connection.close()
            return HARDWARE_FAULT
        self._publish(self.device.snapshot)
        return None  # the model answers

    def _publish(self, snap: DeviceSnapshot) -> None:
        if snap is self._published:
            return
        stamp = _EPOCH + timedelta(milliseconds=snap.timestamp_ms)
        with self.model.lock, self.model.batch():
            for m, value, quality in zip(mms_model.MEASUREMENTS, snap.values, snap.quality):
                base = f"MMXU1$MX${m.path}"
                self.model.set(ObjectName(mms_model.magnitude_item(m), DOMAIN), float(value) / m.factor)
                self.model.set(ObjectName(f"{base}$q", DOMAIN), _VALIDITY[quality])
                self._set_time(f"{base}$t", stamp)
            self.model.set(ObjectName("XCBR1$ST$OpCnt$stVal", DOMAIN), snap.openings)
            self.model.set(ObjectName("XCBR1$ST$OpCnt$q", DOMAIN), 0)
            self._set_time("XCBR1$ST$OpCnt$t", stamp)
            self.model.set(ObjectName("LPHD1$DC$PhyNam$serNum", DOMAIN), snap.identity)
        self._published = snap

    def _set_time(self, item: str, stamp: datetime) -> None:
        self.model.set(ObjectName(item, DOMAIN), TimestampData(stamp, TIME_QUALITY))
