"""A silent-socket flood in a process of its own: ``python -m tests.support.flood PORT COUNT [PORT COUNT...]``.

It keeps COUNT TCP connections open to each 127.0.0.1 PORT, sending nothing, and reopens each
one the other side closes, until it is terminated; every second it prints how many it has
opened per port (``opened PORT N``). A process of its own, so that the flood's work does not
share the event loop (or the GIL) of the node under test, as it would not on a real host.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def keep_open(port: int, counts: dict[int, int]) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        counts[port] += 1
        with contextlib.suppress(Exception):
            await reader.read(1)  # b"" once the node closes it
        writer.transport.abort()


async def main(targets: list[tuple[int, int]]) -> None:
    counts = {port: 0 for port, _ in targets}
    tasks = [asyncio.create_task(keep_open(port, counts)) for port, count in targets for _ in range(count)]
    try:
        while True:
            await asyncio.sleep(1.0)
            for port, opened in counts.items():
                print(f"opened {port} {opened}", flush=True)
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(list(zip(args[::2], args[1::2]))))
