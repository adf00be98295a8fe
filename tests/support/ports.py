"""Free TCP ports on 127.0.0.1 for nodes, relays and proxies started by tests and benchmarks."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

EPHEMERAL_LOW = 32768  # Linux's default start of the ephemeral port range
# A node's operator API listens on its peer port + this unless told otherwise (docs/security.md):
# every port handed out here has that one free too, so a node started on it can take both.
API_PORT_OFFSET = 1000
LISTEN_PORT_SPAN = 12000  # restartable ports are picked from this many ports below that range


def free_port() -> int:
    """A port the kernel says is free now, with its operator port (+1000) free too (an ephemeral
    one: see ``listen_port``)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + API_PORT_OFFSET < 65536 and port_is_free(port + API_PORT_OFFSET):
            return port


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
        if port_is_free(port) and port_is_free(port + API_PORT_OFFSET):
            return port
