"""Server-sent events for the dashboard: a ``block`` per block joining the main chain, ``alert`` per edge.

``EventHub.publish`` never waits: each subscriber has a bounded queue, and one that falls
that far behind (a stalled tab) is told to go and dropped; its browser reconnects on its
own (EventSource does) and reloads what it missed. ``sse_bytes`` is the wire format
(https://html.spec.whatwg.org/multipage/server-sent-events.html).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

# Events queued per open page; a block a second for 4 minutes before a stalled tab is dropped.
SUBSCRIBER_QUEUE = 256
MAX_SUBSCRIBERS = 32  # open dashboards at once: an operator room, not the public
HEARTBEAT_S = 15.0  # a comment this often keeps proxies from closing an idle stream
RETRY_MS = 2000  # what a browser waits before reconnecting a dropped stream


def sse_bytes(event: str, data: object, event_id: int | None = None) -> bytes:
    """One event: ``event:`` name, ``id:`` if given, the data as one line of JSON."""
    text = json.dumps(data, separators=(",", ":"), default=_plain)
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + f"data: {text}\n\n").encode()


def _plain(value: object) -> object:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class EventHub:
    """The open event streams of one node's dashboard."""

    def __init__(self, queue_size: int = SUBSCRIBER_QUEUE, max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._queues: set[asyncio.Queue] = set()
        self._next_id = 0
        self.dropped = 0  # subscribers dropped for falling behind

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def subscribe(self) -> asyncio.Queue | None:
        """A new stream's queue, or None when MAX_SUBSCRIBERS are open."""
        if len(self._queues) >= self.max_subscribers:
            return None
        queue: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._queues.discard(queue)

    def publish(self, event: str, data: object) -> None:
        """Queue one event (encoded once) for every stream; None in a queue means "end"."""
        if not self._queues:
            return
        self._next_id += 1
        encoded = sse_bytes(event, data, self._next_id)
        for queue in list(self._queues):
            try:
                queue.put_nowait(encoded)
            except asyncio.QueueFull:
                self.dropped += 1
                self._queues.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty, asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

    def close(self) -> None:
        """End every stream (at shutdown)."""
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueEmpty, asyncio.QueueFull):
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(None)
        self._queues.clear()
