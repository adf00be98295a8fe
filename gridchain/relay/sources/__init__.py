"""Device sources: a relay read over Modbus TCP, IEC 61850 MMS or DNP3, or the simulator.

`parse_source_url` / `open_source` (urls.py) turn a source URL into a `Source` whose
`poll(now_ms)` returns a `DeviceSample` or raises a named `SourceError` (base.py).
Protocol libraries are imported only by the source that needs them.
"""

from gridchain.relay.sources.base import (
    READING_VALUES, DeviceSample, Quality, Source, SourceError,
)
from gridchain.relay.sources.guard import NoNewSample
from gridchain.relay.sources.urls import SourceSpec, open_source, parse_source_url

__all__ = ["READING_VALUES", "DeviceSample", "NoNewSample", "Quality", "Source", "SourceError",
           "SourceSpec", "open_source", "parse_source_url"]
