"""Keeping each configured peer dialled: TCP, then TLS 1.3 pinned to the members (on a
network with a network file), a doubling backoff with a named reason for every failure, and
a brisk redial after a link that worked died under it.

The dialler owns no peer: it opens the connection and hands it to its ``DialHost`` (the
peer set, gridchain.net.gossip.Gossip), which runs the peer protocol on it; what the
connection came to (a handshake done, closed before its hello, our own bytes relayed back)
decides the next wait. ``linked_peer`` is the one test of "is this configured address
linked" that the dialler and the node's status both use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Protocol

from gridchain.config import Address
from gridchain.identity.tls import TlsError, TlsIdentity, TlsLink, peer_key, session_binding
from gridchain.net.peer import DEAD_LINK_REASONS, Peer
from gridchain.wire.reconnect import Reconnect, failure_reason
from gridchain.wire.streams import READ_CHUNK, UNPROVEN_MAX_FRAME, FrameReader

# Redial backoff for configured peers: doubling from this first delay (capped by redial_max_s).
DIAL_FIRST_DELAY_S = 0.25
DIAL_TIMEOUT_S = 5.0
# After a link died (``ping-timeout``: a cut, not a refusal) its peer is redialled at once and
# then at least this often for FAST_REDIAL_FOR_S, each try bounded by FAST_DIAL_TIMEOUT_S: a
# silent cut swallows SYNs, and the doubling backoff (with SYNs retried at 1 s, 3 s) would
# otherwise find the healed path seconds late. A SYN a second to a few peers costs nothing.
FAST_REDIAL_S = 0.5
FAST_DIAL_TIMEOUT_S = 1.5
FAST_REDIAL_FOR_S = 300.0
# While linked (or banned), how often the dialler looks again even if no peer came or went.
LINKED_RECHECK_S = 1.0
# A dial the other side accepted, then closed before its hello (a port that is no node's): its reason.
CLOSED_BEFORE_HELLO = "closed-before-hello"
CLOSED_EARLY = frozenset({"closed", "peer-closed", "connection-lost"})  # how such a connection ends
# failure_reason's names said as a dial's: a TLS handshake closed under our ClientHello, a
# listener whose certificate no member key signed.
DIAL_REASONS = {"closed": CLOSED_BEFORE_HELLO, "tls-certificate": "not-a-member"}
# Host names that reach this machine's own listener when paired with its port.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def linked_peer(address: str, peers: Iterable[Peer]) -> Peer | None:
    """The ready link to the configured peer at ``address``, if one is up: a link whose peer
    listens there (its hello's port on the socket's host), or one this node dialled to that
    address."""
    for peer in peers:
        if peer.listen_address == address or (not peer.inbound and peer.address == address):
            return peer
    return None


class DialHost(Protocol):
    """What the dialler needs of the peer set."""

    log: object

    def linked_to(self, address: str) -> bool: ...
    def is_banned(self, key: str) -> bool: ...
    async def peers_changed(self, timeout: float) -> None: ...  # a peer came or went, or timeout passed
    def outbound_peer(self, frames: FrameReader, writer: asyncio.StreamWriter, address: str,
                      link: TlsLink | None) -> Peer: ...
    async def run_peer(self, peer: Peer) -> None: ...


class Dialer:
    """The redial schedules of one node's configured peers (``dial_forever`` each, as a task)."""

    def __init__(self, host: DialHost, *, tls: TlsIdentity | None, port: int, redial_max_s: float) -> None:
        self.host = host
        self.tls = tls  # None: plaintext links (an open network)
        self.port = port  # our own listen port: dialling it on loopback is dialling ourselves
        self.redial_max_s = redial_max_s
        self._schedules: dict[str, Reconnect] = {}  # configured address -> its redial schedule

    def restored(self, address: str) -> bool:
        """A link to ``address`` is up after a run of failed dials (say so once: ``peer.restored``)."""
        backoff = self._schedules.get(address)
        return backoff is not None and backoff.succeeded()

    async def dial_forever(self, address: Address) -> None:
        backoff = Reconnect(first_delay=DIAL_FIRST_DELAY_S, max_delay=self.redial_max_s)
        target = str(address)
        self._schedules[target] = backoff
        fast_until = 0.0  # redial fast until then: the last link to this peer died (FAST_REDIAL_S)
        log = self.host.log
        while True:
            if self.host.linked_to(target) or self.host.is_banned(target):
                await self.host.peers_changed(LINKED_RECHECK_S)
                continue
            fast = time.monotonic() < fast_until
            try:
                async with asyncio.timeout(FAST_DIAL_TIMEOUT_S if fast else DIAL_TIMEOUT_S):
                    reader, writer, link = await self.open(address)
            except (OSError, TimeoutError, TlsError) as exc:
                reason = failure_reason(exc)
                await self._failed(backoff, target, DIAL_REASONS.get(reason, reason),
                                   str(exc) or type(exc).__name__, fast)
                continue
            peer = self.host.outbound_peer(FrameReader(reader, first_cap=UNPROVEN_MAX_FRAME), writer, target, link)
            await self.host.run_peer(peer)
            if peer.protocol.found_self:
                # Proven, not told: the listener signed this connection's nonces with our own
                # key. An echo or a mere `reject self` from the other end never gets here.
                if self._is_own_address(address):
                    log.info("peer.dial_stopped", peer=target, reason="self")
                    return
                # Someone at another address passed our own bytes back to us (a squatter on a
                # member's address): no reason to give the address up, only to slow down.
                if backoff.failed(time.monotonic(), "reached-self"):
                    log.warning("peer.dial_reached_self", peer=target, retry_s=round(backoff.delay, 2))
                await backoff.wait()
                continue
            if peer.hello is None and peer.close_reason in CLOSED_EARLY:
                # Accepted, then closed before the handshake was done (a port that is no node's,
                # a node turning strangers away unheard): a failed dial, logged and backed off as one.
                reason = CLOSED_BEFORE_HELLO if not peer.claimed_key else "closed-in-handshake"
                await self._failed(backoff, target, reason, peer.close_detail or peer.close_reason, fast)
                continue
            if peer.hello is not None:
                backoff.reset()  # it worked once: come back quickly
            if peer.close_reason in DEAD_LINK_REASONS:
                # The path died under a working link (a cut, a frozen host): no reason to wait
                # before the first try, and every reason to keep trying briskly for a while.
                fast_until = time.monotonic() + FAST_REDIAL_FOR_S
                continue
            await backoff.wait()

    async def open(self, address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, TlsLink | None]:
        """Dial ``address``: TCP, then (with a network file) TLS 1.3 checked against the members."""
        if self.tls is None:
            reader, writer = await asyncio.open_connection(address.host, address.port, limit=READ_CHUNK)
            return reader, writer, None
        reader, writer = await asyncio.open_connection(address.host, address.port, limit=READ_CHUNK,
                                                       ssl=self.tls.context("peer-client"),
                                                       ssl_handshake_timeout=DIAL_TIMEOUT_S)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        try:
            key = peer_key(der)
            if key not in self.tls.members:
                raise TlsError("not-a-member", f"certificate key {key.hex()[:16]} is not in the network file")
        except TlsError:
            writer.transport.abort()
            raise
        return reader, writer, TlsLink(peer_key=key, binding=session_binding(self.tls.cert_der, der))

    async def _failed(self, backoff: Reconnect, target: str, reason: str, detail: str, fast: bool) -> None:
        """Log a failed dial (the first, one with a new reason, then once a minute) and wait out the backoff."""
        wait = backoff.next_wait()
        wait = min(wait, FAST_REDIAL_S) if fast else wait
        if backoff.failed(time.monotonic(), reason):
            self.host.log.info("peer.dial_failed", peer=target, reason=reason, error=detail[:200],
                               failures=backoff.failures, retry_s=round(wait, 2))
        await asyncio.sleep(wait)

    def _is_own_address(self, address: Address) -> bool:
        """The dialled address is this node's own listener (a configuration slip, not an attack)."""
        return address.port == self.port and address.host in LOOPBACK_HOSTS
