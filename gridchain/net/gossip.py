"""The peer set: dialling, bans, block push gossip, tip announcements and sync.

Gossip knows nothing of storage or validation. It talks to the node through a ChainView
(what our chain looks like, and a way to hand it blocks), and every message a peer delivers
arrives at one ``on_<type>`` method here. The node's listener hands it the inbound
connections whose first frame is a peer's (``accept``); it dials the configured peers itself.
The handshake and keepalive are the sans-IO gridchain.net.protocol, sync progress is
gridchain.net.sync, and what each fault costs a peer is gridchain.net.penalties.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from gridchain.config import DEFAULT_BAN_SECONDS, DEFAULT_REDIAL_MAX_S, Address
from gridchain.consensus.block import Block, short_hash
from gridchain.net import sync as sync_rules
from gridchain.net.messages import (
    MAX_BLOCKS_PER_MESSAGE, PROTOCOL_VERSION, BlockMessage, Blocks, GetBlocks, Hello, Reject, Tip, blocks_frame,
    decode_message, encode_message,
)
from gridchain.net.peer import Peer
from gridchain.net.penalties import BLOCK, cost_of
from gridchain.net.protocol import ProtocolViolation
from gridchain.wire.frames import encode_frame
from gridchain.wire.reconnect import Reconnect
from gridchain.wire.streams import READ_CHUNK, FrameReader

log = structlog.get_logger()

AGENT = "gridchain/0.1.0"
# Tip announcements go out on every change and at least this often (the chain-length gossip).
TIP_INTERVAL_S = 10.0
# Redial backoff for configured peers: doubling from this first delay (capped by redial_max_s).
DIAL_FIRST_DELAY_S = 0.25
DIAL_TIMEOUT_S = 5.0
# Tip announcements beyond this rate per peer are dropped unprocessed (a flood is cheap to ignore).
TIP_RATE_PER_S = 20.0
TIP_BURST = 40
# Bans held at once (oldest forgotten first): node keys cost nothing to make, so a peer
# coming back under ever new keys could otherwise grow the ban list without end.
MAX_BANS = 10_000
# Connections that end this way say nothing about the peer, so they are not logged.
QUIET_CLOSE_REASONS = frozenset({"closed", "peer-closed", "connection-lost", "shutdown"})


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    """What the node made of blocks a peer sent."""

    accepted: tuple[Block, ...] = ()  # new blocks now in our tree (to gossip on)
    invalid: tuple[str, str] | None = None  # (reason, detail) of the first block that broke a rule
    missing_parent: bool = False  # some block's parent is unknown: we are behind this peer


class ChainView(Protocol):
    """What gossip needs from the node."""

    network: str
    genesis_hash: bytes

    def tip_info(self) -> tuple[int, bytes, int]: ...  # height, tip hash, cumulative work
    def has_block(self, block_hash: bytes) -> bool: ...  # in the tree or held as an orphan
    def is_linked(self, block_hash: bytes) -> bool: ...  # in the tree
    def locator(self) -> list[bytes]: ...
    # Main-chain blocks after the locator's fork as (hash, stored bytes), and whether more follow.
    def blocks_for_locator(self, locator: list[bytes], limit: int) -> tuple[list[tuple[bytes, bytes]], bool]: ...
    async def receive_blocks(self, blocks: list[Block], peer: str, via_sync: bool) -> ReceiveResult: ...


@dataclass(slots=True)
class _TipBucket:
    tokens: float = TIP_BURST
    at: float = field(default_factory=time.monotonic)
    warned: bool = False  # the first dropped announcement is logged, the rest are not

    def take(self, now: float) -> bool:
        self.tokens = min(TIP_BURST, self.tokens + (now - self.at) * TIP_RATE_PER_S)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Gossip:
    """Every peer connection of one node, and the rules for what travels over them."""

    def __init__(self, *, chain: ChainView, node_key: bytes, name: str, port: int = 0,
                 peers: tuple[Address, ...] = (), ban_seconds: float = DEFAULT_BAN_SECONDS,
                 redial_max_s: float = DEFAULT_REDIAL_MAX_S,
                 decode: Callable[[object], object] = decode_message) -> None:
        self.chain = chain
        self.node_key = node_key
        self.name = name
        self.port = port  # our listen port, as told in hello (0: we accept no connections)
        self.configured = peers
        self.ban_seconds = ban_seconds
        self.redial_max_s = redial_max_s
        self.decode = decode
        self.peers: dict[bytes, Peer] = {}  # ready peers by node key
        self.connections: set[Peer] = set()  # every live connection, handshaking or ready
        self.banned: dict[str, float] = {}  # node key hex or listen address -> monotonic expiry
        self.sync = sync_rules.SyncState()
        self._tip_buckets: dict[int, _TipBucket] = {}
        self._peer_changed = asyncio.Event()
        self.log = log.bind(node=name)

    @property
    def sync_peer(self) -> Peer | None:
        return self.sync.peer

    # --- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Dial configured peers, announce the tip, watch sync; until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for address in self.configured:
                tasks.create_task(self._dial_forever(address))
            tasks.create_task(self._announce_periodically())
            tasks.create_task(self._watch_sync())

    def close(self) -> None:
        for peer in list(self.connections):
            peer.close("shutdown")

    # --- bans ----------------------------------------------------------------------------
    def is_banned(self, key: str) -> bool:
        expiry = self.banned.get(key)
        if expiry is None:
            return False
        if expiry < time.monotonic():
            del self.banned[key]
            return False
        return True

    def ban(self, peer: Peer, reason: str) -> None:
        # Peers are banned by identity and listen address, not by IP: on one host or behind
        # one NAT, an IP ban would cut honest nodes off along with the offender.
        for key in list(self.banned)[:max(0, len(self.banned) + 2 - MAX_BANS)]:
            del self.banned[key]
        expiry = time.monotonic() + self.ban_seconds
        self.banned[peer.listen_address] = expiry
        if peer.node_key:
            self.banned[peer.node_key.hex()] = expiry
        self.log.warning("peer.banned", peer=peer.listen_address, node_key=peer.node_key.hex()[:16],
                         reason=reason, detail=peer.close_detail, seconds=self.ban_seconds)

    # --- connections -----------------------------------------------------------------------
    def inbound_count(self) -> int:
        return sum(1 for p in self.connections if p.inbound)

    async def accept(self, frames: FrameReader, writer: asyncio.StreamWriter, address: str) -> None:
        """Run an inbound connection whose first frame (still unread in ``frames``) is a peer's."""
        await self._run_peer(Peer(frames, writer, handler=self, hello=self.make_hello(), inbound=True,
                                  address=address, decode=self.decode))

    async def _run_peer(self, peer: Peer) -> None:
        self.connections.add(peer)
        try:
            await peer.run()
        finally:
            self.connections.discard(peer)

    async def _dial_forever(self, address: Address) -> None:
        backoff = Reconnect(first_delay=DIAL_FIRST_DELAY_S, max_delay=self.redial_max_s)
        target = str(address)
        while True:
            if self._connected_to(target) or self.is_banned(target):
                self._peer_changed.clear()
                try:
                    async with asyncio.timeout(1.0):
                        await self._peer_changed.wait()
                except TimeoutError:
                    pass
                continue
            try:
                async with asyncio.timeout(DIAL_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(address.host, address.port, limit=READ_CHUNK)
            except (OSError, TimeoutError) as exc:
                if backoff.failed(time.monotonic()):
                    self.log.info("peer.dial_failed", peer=target, error=str(exc) or type(exc).__name__,
                                  retry_s=round(backoff.delay, 2))
                await backoff.wait()
                continue
            if backoff.succeeded():
                self.log.info("peer.restored", peer=target)
            peer = Peer(FrameReader(reader), writer, handler=self, hello=self.make_hello(), inbound=False,
                        address=target, decode=self.decode)
            await self._run_peer(peer)
            if peer.close_reason == "self":
                self.log.info("peer.dial_stopped", peer=target, reason="self")
                return
            if peer.hello is not None:
                backoff.reset()  # it worked once: come back quickly
            await backoff.wait()

    def _connected_to(self, address: str) -> bool:
        return any(p.listen_address == address or (not p.inbound and p.address == address)
                   for p in self.peers.values())

    # --- handshake (called by Peer) ---------------------------------------------------------
    def make_hello(self) -> Hello:
        height, tip, work = self.chain.tip_info()
        return Hello(version=PROTOCOL_VERSION, network=self.chain.network, genesis=self.chain.genesis_hash,
                     node_key=self.node_key, listen_port=self.port, height=height, tip=tip, work=work,
                     agent=AGENT, name=self.name)

    def admit(self, peer: Peer, hello: Hello) -> None:
        """The node-wide part of checking a hello (the protocol checked network and self)."""
        if self.is_banned(hello.node_key.hex()):
            raise ProtocolViolation("banned", "node is banned")
        existing = self.peers.get(hello.node_key)
        if existing is not None:
            # Both ends decide alike: keep the link dialled by the smaller key, so two nodes
            # that dial each other at once end up with exactly one connection, not zero.
            dialler = self.node_key if not peer.inbound else hello.node_key
            if dialler != min(self.node_key, hello.node_key):
                raise ProtocolViolation("duplicate-peer", "already connected")
            existing.close("duplicate-peer")
            self.peers.pop(hello.node_key, None)

    async def on_peer_ready(self, peer: Peer) -> None:
        self.peers[peer.node_key] = peer
        self._peer_changed.set()
        self.log.info("peer.connected", peer=peer.listen_address, node_key=peer.node_key.hex()[:16],
                      name=peer.hello.name if peer.hello else "", inbound=peer.inbound, height=peer.height)
        self._maybe_sync(peer)

    async def on_peer_closed(self, peer: Peer, reason: str, ban: bool) -> None:
        # One event per connection that ends for a reason: banned, disconnected or refused.
        # A peer that never said hello has no identity worth a ban entry (its address is an
        # ephemeral port), so it is only refused.
        ready = peer.hello is not None and self.peers.get(peer.node_key) is peer
        if ready:
            del self.peers[peer.node_key]
            self._peer_changed.set()
        if ban and peer.hello is not None:
            self.ban(peer, reason)
        elif ready:
            self.log.info("peer.disconnected", peer=peer.listen_address, reason=reason, detail=peer.close_detail)
        elif reason not in QUIET_CLOSE_REASONS:
            self.log.info("peer.refused", peer=peer.listen_address, reason=reason, detail=peer.close_detail)
        self._tip_buckets.pop(id(peer), None)
        if self.sync.peer_gone(peer):
            self._sync_from_best()

    # --- messages --------------------------------------------------------------------------
    async def on_reject(self, peer: Peer, message: Reject) -> None:
        self.log.info("peer.rejected_us", peer=peer.listen_address, code=message.code, detail=message.detail)

    async def on_tip(self, peer: Peer, message: Tip) -> None:
        bucket = self._tip_buckets.setdefault(id(peer), _TipBucket())
        if not bucket.take(time.monotonic()):
            if not bucket.warned:
                bucket.warned = True
                self.log.warning("peer.rate_limited", peer=peer.listen_address, reason="tip-flood",
                                 rate_per_s=TIP_RATE_PER_S, burst=TIP_BURST)
            return
        peer.height, peer.tip, peer.work = message.height, message.tip, message.work
        self._maybe_sync(peer)

    async def on_block(self, peer: Peer, message: BlockMessage) -> None:
        block = message.block
        peer.known.add(block.hash)
        if self.chain.has_block(block.hash):
            return
        tip_before = self.chain.tip_info()[1]
        result = await self.chain.receive_blocks([block], peer.listen_address, via_sync=False)
        self._judge(result)
        self.spread(result.accepted, self.chain.tip_info()[1] != tip_before, source=peer)
        if result.missing_parent:
            # Not an offence: a peer ahead of us sends such blocks. It is held aside and we
            # ask the peer for the blocks between; failing to deliver them is what gets it banned.
            self.log.info("block.orphaned", peer=peer.listen_address, reason="unknown-parent",
                          height=block.height, hash=short_hash(block.hash))
            self._request_sync(peer)

    async def on_get_blocks(self, peer: Peer, message: GetBlocks) -> None:
        limit = min(message.limit, MAX_BLOCKS_PER_MESSAGE)
        stored, more = self.chain.blocks_for_locator(list(message.locator), limit)
        for block_hash, _ in stored:
            peer.known.add(block_hash)
        peer.send_frame(blocks_frame([raw for _, raw in stored], more))

    async def on_blocks(self, peer: Peer, message: Blocks) -> None:
        if not self.sync.answer_arrived(peer, message, time.monotonic()):
            return  # a late answer to a request we gave up on
        # An orphan we hold is sent on with the rest: the run links in order, so dropping it
        # would leave every block after it parentless, and it, with no sender, stranded.
        blocks = [b for b in message.blocks if not self.chain.is_linked(b.hash)]
        for block in message.blocks:
            peer.known.add(block.hash)
        if blocks:
            result = await self.chain.receive_blocks(blocks, peer.listen_address, via_sync=True)
            self._judge(result)
            if not result.accepted and not result.missing_parent:
                # Valid, yet none taken: our store refused them (disk full or read-only).
                # Asking again at once would spin; the peer's next tip or block resumes.
                self.sync.end()
                return
            self.announce_tip()
        height, _, work = self.chain.tip_info()
        request = self.sync.answer_handled(peer.node_key, message, len(blocks), peer.work, work,
                                           self.chain.locator(), time.monotonic())
        if request is not None:
            peer.send(request)
        else:
            self.log.info("sync.done", peer=peer.listen_address, height=height)
            self._sync_from_best()

    def _judge(self, result: ReceiveResult) -> None:
        """Raise for a block that broke a rule, unless its cost is to keep the sender."""
        if result.invalid is not None:
            reason, detail = result.invalid
            if cost_of(reason, BLOCK).closes:
                raise ProtocolViolation(reason, detail, kind=BLOCK)

    # --- sync --------------------------------------------------------------------------------
    def _maybe_sync(self, peer: Peer) -> None:
        if self.sync.wants(peer.work, self.chain.tip_info()[2]):
            self._request_sync(peer)

    def _request_sync(self, peer: Peer) -> None:
        request = self.sync.request(peer, self.chain.locator(), time.monotonic())
        if request is not None:
            peer.send(request)

    def _sync_from_best(self) -> None:
        work = self.chain.tip_info()[2]
        best = max(self.peers.values(), key=lambda p: p.work, default=None)
        if best is not None and best.work > work:
            self._request_sync(best)

    async def _watch_sync(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            peer = self.sync.stalled(time.monotonic())
            if peer is not None:
                timeout = sync_rules.SYNC_TIMEOUT_S
                self.log.warning("sync.stalled", peer=peer.listen_address, seconds=timeout)
                peer.close("sync-timeout", f"no blocks answer within {timeout}s")

    # --- outgoing gossip ---------------------------------------------------------------------
    def spread(self, blocks: tuple[Block, ...] | list[Block], tip_changed: bool, source: Peer | None = None) -> None:
        """Push new blocks on, then announce the tip if it moved.

        After the blocks, never before: a peer told of more work before it holds the block
        would start a sync round only to be sent the block it just received.
        """
        for block in blocks:
            self.broadcast_block(block, source)
        if tip_changed:
            self.announce_tip()

    def broadcast_block(self, block: Block, source: Peer | None = None) -> int:
        """Push a block to every ready peer that is not known to have it; returns how many."""
        frame = encode_frame(encode_message(BlockMessage(block=block)))
        sent = 0
        for peer in list(self.peers.values()):
            if peer is source or block.hash in peer.known:
                continue
            peer.known.add(block.hash)
            peer.send_frame(frame)
            sent += 1
        return sent

    def announce_tip(self) -> None:
        height, tip, work = self.chain.tip_info()
        frame = encode_frame(encode_message(Tip(height=height, tip=tip, work=work)))
        for peer in list(self.peers.values()):
            peer.send_frame(frame)

    async def _announce_periodically(self) -> None:
        while True:
            await asyncio.sleep(TIP_INTERVAL_S)
            self.announce_tip()
