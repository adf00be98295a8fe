"""Where a relay's IEC 61850 data model keeps each reading value, and decoding it. Pure.

The gateway reads the measurement unit MMXU1 and the breaker XCBR1 of one logical device
(the MMS domain named in `iec61850://HOST:PORT/LD`), plus LPHD1.PhyNam for the device's
identity. Each value comes with its own quality (IEC 61850-7-3: validity good, invalid,
questionable; a value in test mode is at best questionable) and its own timestamp; the
sample takes the newest timestamp of its good values. A timestamp whose TimeQuality says
the clock failed or is unsynchronised is not the device's word on time: the sample then
uses the gateway's clock and says so (flag bit 31).

IEC 61850 publishes SI units (V, A, Hz, W, VAr); the reading is in kV, A, Hz, MW, MVAr,
hence the factors below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from open61850.data import BitStringData, FloatData, IntData, TimestampData, UIntData, VisibleStringData
from open61850.mms.errors import DataAccessError
from open61850.quality import Quality as MmsQuality

from gridchain.relay.sources.base import READING_VALUES, DeviceSample, Quality, SourceError

CLOCK_FAILURE, CLOCK_NOT_SYNCHRONIZED = 0x40, 0x20  # TimeQuality bits (IEC 61850-8-1)
# Data access errors that mean "this model has no such object": the URL's LD or the
# relay's data model is not the one the gateway expects.
MODEL_ERRORS = frozenset({4, 5, 10})  # object-undefined, invalid-address, object-non-existent


@dataclass(frozen=True, slots=True)
class Measurement:
    """One reading value: its data object path in MMXU1 (under FC MX) and unit factor."""

    name: str
    path: str      # data object under MMXU1$MX, e.g. "PPV$phsAB" (a CMV) or "Hz" (an MV)
    factor: float  # SI -> reading unit
    low: float     # the range a feeder relay can really report, in reading units;
    high: float    # outside it the value is refused (value-out-of-range), never signed


MEASUREMENTS = (
    Measurement("vab", "PPV$phsAB", 1e-3, 0.0, 800.0), Measurement("vbc", "PPV$phsBC", 1e-3, 0.0, 800.0),
    Measurement("vca", "PPV$phsCA", 1e-3, 0.0, 800.0),
    Measurement("ia", "A$phsA", 1.0, 0.0, 10_000.0), Measurement("ib", "A$phsB", 1.0, 0.0, 10_000.0),
    Measurement("ic", "A$phsC", 1.0, 0.0, 10_000.0),
    Measurement("frequency", "Hz", 1.0, 40.0, 65.0), Measurement("power_factor", "TotPF", 1.0, -1.0, 1.0),
    Measurement("active_power", "TotW", 1e-6, -5000.0, 5000.0),
    Measurement("reactive_power", "TotVAr", 1e-6, -5000.0, 5000.0),
)
assert tuple(m.name for m in MEASUREMENTS) == READING_VALUES
_CMV = {"PPV", "A"}  # complex measured values carry cVal.mag.f, the others mag.f


def magnitude_item(m: Measurement) -> str:
    return f"MMXU1$MX${m.path}${'cVal$mag$f' if m.path.split('$')[0] in _CMV else 'mag$f'}"


def identity_items() -> list[str]:
    return [f"LPHD1$DC$PhyNam${attr}" for attr in ("vendor", "model", "serNum")]


def measurement_items() -> list[str]:
    """Every MMS variable one poll reads (item names within the LD's domain), in order."""
    items = []
    for m in MEASUREMENTS:
        items += [magnitude_item(m), f"MMXU1$MX${m.path}$q", f"MMXU1$MX${m.path}$t"]
    return items + ["XCBR1$ST$OpCnt$stVal", "XCBR1$ST$OpCnt$q", "XCBR1$ST$OpCnt$t"]


def decode_identity(results: Sequence[object], where: str) -> str:
    parts = [_expect(r, (VisibleStringData,), f"{where} LPHD1.PhyNam").value for r in results]
    return "/".join(str(p) for p in parts)


def decode_measurements(results: Sequence[object], identity: str, where: str) -> DeviceSample:
    """A sample from the results of `measurement_items()` (values, DataAccessErrors)."""
    values, quality, stamps = [], [], []
    for index, m in enumerate(MEASUREMENTS):
        mag, q, t = results[3 * index: 3 * index + 3]
        value = round(float(_expect(mag, (FloatData,), f"{where} MMXU1.{m.path}").value) * m.factor, 9)
        validity = _quality(q, f"{where} MMXU1.{m.path}.q")
        if math.isnan(value):
            value, validity = 0.0, Quality.INVALID
        elif validity is not Quality.INVALID and not m.low <= value <= m.high:
            raise SourceError("value-out-of-range", f"{where}: MMXU1.{m.path} = {value:g} outside "
                                                    f"[{m.low:g}, {m.high:g}] ({m.name})")
        values.append(value)
        quality.append(validity)
        stamp = _expect(t, (TimestampData,), f"{where} MMXU1.{m.path}.t")
        if validity is Quality.GOOD and not stamp.quality & (CLOCK_FAILURE | CLOCK_NOT_SYNCHRONIZED):
            stamps.append(_ms(stamp.value))
    count, count_q, _count_t = results[-3:]
    openings = _expect(count, (IntData, UIntData), f"{where} XCBR1.OpCnt").value
    if _quality(count_q, f"{where} XCBR1.OpCnt.q") is not Quality.GOOD:
        raise SourceError("device-exception", f"{where}: XCBR1.OpCnt is not good; the openings "
                                              f"counter cannot be vouched for")
    if openings < 0:
        raise SourceError("value-out-of-range", f"{where}: XCBR1.OpCnt = {openings}")
    return DeviceSample(tuple(values), tuple(quality), int(openings), max(stamps) if stamps else None, identity)


def _quality(result: object, where: str) -> Quality:
    q = MmsQuality.from_bitstring(_expect(result, (BitStringData,), where))
    if q.validity == "good" and not q.test:
        return Quality.GOOD
    if q.validity in ("good", "questionable"):
        return Quality.QUESTIONABLE
    return Quality.INVALID  # invalid, or the reserved code no relay should send


def _expect(result: object, kinds: tuple[type, ...], where: str):
    if isinstance(result, DataAccessError):
        reason = "wrong-model" if result.code in MODEL_ERRORS else "device-exception"
        raise SourceError(reason, f"{where}: {result}")
    if not isinstance(result, kinds):
        raise SourceError("wrong-model", f"{where}: got {result!r}, expected {' or '.join(k.__name__ for k in kinds)}")
    return result


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ms(value: datetime) -> int:
    """Milliseconds since the epoch, in integers (a float product would be off by one)."""
    delta = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + (delta.microseconds + 500) // 1000
