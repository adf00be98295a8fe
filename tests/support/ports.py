"""Free TCP ports on 127.0.0.1 for nodes, relays and proxies started by tests and benchmarks."""

from __future__ import annotations

import collections
import contextlib
import random
import socket
from pathlib import Path

EPHEMERAL_LOW = 32768  # Linux's default start of the ephemeral port range
# A node's operator API listens on its peer port + this unless told otherwise (docs/security.md):
# every port handed out here has that one free too, so a node started on it can take both.
API_PORT_OFFSET = 1000
LISTEN_PORT_SPAN = 12000  # listen ports are picked from this many ports below that range
# Ports handed out lately are not handed out again: two picks in one test must differ though
# neither is bound yet. A few thousand covers any one test; older ones are free to reuse.
RECENT_PORTS = 4000
_handed: collections.deque[int] = collections.deque(maxlen=RECENT_PORTS)


def free_port() -> int:
    """A free port with its operator port (+1000) free too, below the kernel's ephemeral range
    (see ``listen_port``): a port the kernel picks itself is an ephemeral one, which any
    outgoing connection may take as its source port before the node binds it (or its +1000)."""
    return listen_port()


def api_port(port: int) -> int:
    """The operator API port of a node whose peer port is ``port`` (the documented default)."""
    return port + API_PORT_OFFSET


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listen_port() -> int:
    """A free port below the kernel's ephemeral range, for a node that will be restarted.

    A port from ``free_port`` is an ephemeral one: while its node is down, the kernel may
    hand it to any outgoing connection (a redial, a proxy's upstream, a status poll) as its
    source port, and the restart then fails with "address already in use".
    """
    low = EPHEMERAL_LOW
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(max(1024, low - LISTEN_PORT_SPAN - API_PORT_OFFSET), low - API_PORT_OFFSET)
        if port in _handed or port + API_PORT_OFFSET in _handed:
            continue  # free now, but handed out already: its node may not have bound it yet
        if port_is_free(port) and port_is_free(port + API_PORT_OFFSET):
            _handed.extend((port, port + API_PORT_OFFSET))
            return port
