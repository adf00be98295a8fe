"""gridchain-relay's programs: the gateway built from device URLs, and the simulated relay.

``run_gateway`` is the CLI's entry point: one relay per ``(relay_id, source URL)``
(gridchain/relay/sources/urls.py; ``sim`` is the built-in simulator), one gateway key
(``--key-file``, default ``<data-dir>/relay.key``, made 0600 on first start), each relay's
journal in the data dir (gridchain/relay/channels.py ``relay_dir``), all served on one port
(gridchain/relay/gateway.py). ``run_relay`` is the single simulated relay, as before.

``RelayServer`` is a gateway with exactly one simulated relay, its journal (if any) at the
top of ``data_dir``: what tests and benchmarks start in-process. ``tick()`` advances it to
the clock's now synchronously, so a test can hold the feed still (``pause``) and release one
batch at a time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from gridchain.consensus.provenance import Reading
from gridchain.identity.keys import RELAY_KEY_FILE, RelayKey, SigningKey
from gridchain.relay.channels import SIMULATOR_FLAGS, DeviceChannel, SimChannel, relay_dir
from gridchain.relay.gateway import (
    CLOSE_TIMEOUT_S, DEFAULT_PORT, IDLE_TIMEOUT_S, MAX_CLIENTS, MAX_REQUEST_BYTES, WRITE_TIMEOUT_S, Gateway,
)
from gridchain.relay.journal import Journal
from gridchain.relay.signed_feed import SignedFeed
from gridchain.relay.simulator import RelaySimulator

__all__ = ["CLOSE_TIMEOUT_S", "DEFAULT_PORT", "IDLE_TIMEOUT_S", "MAX_CLIENTS", "MAX_REQUEST_BYTES", "MIN_INTERVAL_S",
           "SIMULATOR_FLAGS", "WRITE_TIMEOUT_S", "DeviceConfig", "RelayServer", "run_gateway", "run_relay"]

MIN_INTERVAL_S = 0.1  # finer ticks or polls would only burn CPU; timestamps stay whole milliseconds

log = structlog.get_logger()


class RelayServer(Gateway):
    """One simulator served on ``host:port`` (port 0 picks a free port; see ``port``)."""

    def __init__(self, simulator: RelaySimulator, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 interval_s: float | None = None, capture_dir: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.time, *, key: SigningKey | None = None,
                 data_dir: str | os.PathLike | None = None, key_created: bool = False,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_clients: int = MAX_CLIENTS) -> None:
        # No key given: a throwaway one (tests); a real relay loads its key file (run_relay).
        key_created = key_created or key is None
        key = key if key is not None else RelayKey.generate()
        interval = simulator.interval_ms / 1000.0 if interval_s is None else interval_s
        if interval < MIN_INTERVAL_S:
            raise ValueError(f"interval_s must be at least {MIN_INTERVAL_S}, got {interval}")
        feed = SignedFeed(simulator.relay_id, simulator.substation, key, simulator.capacity,
                          Journal(data_dir) if data_dir is not None else None)
        self.simulator = simulator
        self.channel = SimChannel(simulator, feed, interval, capture_dir)
        self.interval_s = interval
        super().__init__([self.channel], key, host, port, clock, key_created=key_created,
                         idle_timeout_s=idle_timeout_s, max_request_bytes=max_request_bytes, max_clients=max_clients)

    @property
    def feed(self) -> SignedFeed:
        return self.channel.feed

    def tick(self) -> list[Reading]:
        """Advance the simulator to the clock's now and sign its readings in."""
        return self.channel.tick(self._now_ms())


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One relay of a gateway: its id, and the device URL it reads (``sim``: the simulator)."""

    relay_id: str
    url: str = "sim"


async def run_gateway(host: str, port: int, devices: Sequence[DeviceConfig], substation: str, stop: asyncio.Event, *,
                      interval_s: float, poll_interval_s: float | None = None, seed: int | None = None,
                      capture_dir: str | os.PathLike | None = None, fault_probability: float | None = None,
                      data_dir: str | os.PathLike | None = None, key_file: str | os.PathLike | None = None,
                      clock: Callable[[], float] = time.time) -> None:
    """Run a gateway until ``stop`` is set, then close it cleanly (the CLI's entry point).

    ``interval_s`` is the simulator's reading interval, ``poll_interval_s`` (default: the
    same) how often each device is polled. Raises SourceError (bad-source-url, bad-map,
    unknown-map) before anything listens, OSError if the port cannot be bound or the data
    dir or key file is unusable (KeyFileError), RelayStateError for another relay's data
    dir, ValueError for a bad interval or relay list.
    """
    from gridchain.relay.sources.urls import open_source, parse_source_url

    poll_s = interval_s if poll_interval_s is None else poll_interval_s
    for name, value in (("interval_s", interval_s), ("poll_interval_s", poll_s)):
        if value < MIN_INTERVAL_S:
            raise ValueError(f"{name} must be at least {MIN_INTERVAL_S}, got {value}")
    specs = [(d, parse_source_url(d.url)) for d in devices]  # every URL checked before anything opens
    # Maps are loaded here too (a bad one fails now), before a key or a data dir is made.
    sources = {d.relay_id: open_source(spec) for d, spec in specs if spec.kind != "sim"}
    key, created = None, False
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    if key_file is not None or data_dir is not None:
        key, created = RelayKey.open_path(Path(key_file) if key_file is not None else Path(data_dir) / RELAY_KEY_FILE)
    else:
        key, created = RelayKey.generate(), True
    single = len(specs) == 1
    channels = []
    try:
        for number, (device, spec) in enumerate(specs):
            journal = Journal(relay_dir(data_dir, device.relay_id, single)) if data_dir is not None else None
            captures = None if capture_dir is None else (
                Path(capture_dir) if single else Path(capture_dir) / device.relay_id.replace("/", "_"))
            simulator = RelaySimulator(device.relay_id, substation, round(interval_s * 1000),
                                       None if seed is None else seed + number, start_ms=int(clock() * 1000),
                                       fault_probability=fault_probability)
            feed = SignedFeed(device.relay_id, substation, key, simulator.capacity, journal)
            if spec.kind == "sim":
                channels.append(SimChannel(simulator, feed, min(interval_s, poll_s), captures))
            else:
                channels.append(DeviceChannel(device.relay_id, substation, sources[device.relay_id], feed, poll_s,
                                              captures))
        gateway = Gateway(channels, key, host, port, clock, key_created=created)
    except BaseException:
        for source in sources.values():
            await source.close()
        raise
    await gateway.start()
    try:
        await stop.wait()
    finally:
        await gateway.close()


async def run_relay(host: str, port: int, interval_s: float, relay_id: str, substation: str,
                    seed: int | None, capture_dir: str | os.PathLike | None, stop: asyncio.Event, *,
                    fault_probability: float | None = None, data_dir: str | os.PathLike | None = None,
                    key_file: str | os.PathLike | None = None, clock: Callable[[], float] = time.time) -> None:
    """Run the single simulated relay until ``stop`` is set (a gateway of one ``sim`` relay)."""
    await run_gateway(host, port, [DeviceConfig(relay_id)], substation, stop, interval_s=interval_s, seed=seed,
                      capture_dir=capture_dir, fault_probability=fault_probability, data_dir=data_dir,
                      key_file=key_file, clock=clock)
