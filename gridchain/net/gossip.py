"""The peer set: listening, dialling, bans, block push gossip, tip announcements and sync.

Gossip knows nothing of storage or validation. It talks to the node through a ChainView
(what our chain looks like, and a way to hand it blocks), and every message a peer sends
arrives at one ``on_<type>`` method here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from gridchain.config import Address
from gridchain.consensus.block import Block, short_hash
from gridchain.wire.frames import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode_frame
from gridchain.net.messages import (
    CLIENT_REQUESTS, MAX_BLOCKS_PER_MESSAGE, MAX_LOCATOR, PROTOCOL_VERSION, BlockMessage, Blocks, GetBlocks,
    Hello, Ping, Pong, Reject, Tip, encode_message,
)
from gridchain.net.peer import HANDSHAKE_TIMEOUT_S, READ_CHUNK, Peer, ProtocolViolation

log = structlog.get_logger()

AGENT = "gridchain/0.1.0"
# Tip announcements go out on every change and at least this often (the chain-length gossip).
TIP_INTERVAL_S = 10.0
# Redial backoff for configured peers: doubling from the first delay, with jitter, capped.
DIAL_FIRST_DELAY_S = 0.25
DIAL_MAX_DELAY_S = 30.0
DIAL_TIMEOUT_S = 5.0
# Dial failures of one address are logged at most this often (the first, then once a minute).
DIAL_LOG_EVERY_S = 60.0
# A sync request unanswered this long means the peer is stalling us: drop and ban it.
SYNC_TIMEOUT_S = 20.0
# Consecutive empty sync answers from a peer that claims more work than ours before we stop believing it.
MAX_EMPTY_SYNC_ANSWERS = 3
# Tip announcements beyond this rate per peer are dropped unprocessed (a flood is cheap to ignore).
TIP_RATE_PER_S = 20.0
TIP_BURST = 40
# Bans held at once (oldest forgotten first): node keys cost nothing to make, so a peer
# coming back under ever new keys could otherwise grow the ban list without end.
MAX_BANS = 10_000
# Connections that end this way say nothing about the peer, so they are not logged.
QUIET_CLOSE_REASONS = frozenset({"closed", "peer-closed", "connection-lost", "shutdown"})
CLIENT_TYPES = frozenset(cls.TYPE for cls in CLIENT_REQUESTS)


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    """What the node made of blocks a peer sent."""

    accepted: tuple[Block, ...] = ()  # new blocks now in our tree (to gossip on)
    invalid: tuple[str, str] | None = None  # (reason, detail) of the first invalid block
    missing_parent: bool = False  # some block's parent is unknown: we are behind this peer


class ChainView(Protocol):
    """What gossip needs from the node."""

    network: str
    genesis_hash: bytes

    def tip_info(self) -> tuple[int, bytes, int]: ...  # height, tip hash, cumulative work
    def has_block(self, block_hash: bytes) -> bool: ...  # in the tree or held as an orphan
    def is_linked(self, block_hash: bytes) -> bool: ...  # in the tree
    def locator(self) -> list[bytes]: ...
    def blocks_for_locator(self, locator: list[bytes], limit: int) -> tuple[list[Block], bool]: ...
    async def receive_blocks(self, blocks: list[Block], peer: str, via_sync: bool) -> ReceiveResult: ...


ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, FrameDecoder, list[object]], Awaitable[None]]


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
    """Every connection of one node, and the rules for what travels over them."""

    def __init__(self, *, chain: ChainView, node_key: bytes, name: str, host: str, port: int,
                 peers: tuple[Address, ...] = (), max_inbound: int = 64, ban_seconds: float = 600.0,
                 client_handler: ClientHandler | None = None, max_frame: int = MAX_FRAME_BYTES,
                 redial_max_s: float = DIAL_MAX_DELAY_S) -> None:
        self.chain = chain
        self.node_key = node_key
        self.name = name
        self.host = host
        self.port = port
        self.configured = peers
        self.max_inbound = max_inbound
        self.ban_seconds = ban_seconds
        self.client_handler = client_handler
        self.max_frame = max_frame
        self.redial_max_s = redial_max_s
        self.peers: dict[bytes, Peer] = {}  # ready peers by node key
        self.connections: set[Peer] = set()  # every live connection, handshaking or ready
        self.banned: dict[str, float] = {}  # node key hex or listen address -> monotonic expiry
        self.sync_peer: Peer | None = None
        self.sync_deadline = 0.0
        self._sync_after: tuple[int, bytes] | None = None  # (height, hash) of the last block the sync peer sent
        self._empty_answers: dict[bytes, int] = {}
        self._inbound_handshaking = 0  # accepted sockets that have not sent a whole frame yet
        self._tip_buckets: dict[int, _TipBucket] = {}
        self._server: asyncio.Server | None = None
        self._peer_changed = asyncio.Event()
        self.log = log.bind(node=name)

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=READ_CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]

    async def run(self) -> None:
        """Dial configured peers, announce the tip, watch sync; until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for address in self.configured:
                tasks.create_task(self._dial_forever(address))
            tasks.create_task(self._announce_periodically())
            tasks.create_task(self._watch_sync())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in list(self.connections):
            peer.close("shutdown")
        if self._server is not None:
            try:
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            except TimeoutError:
                pass

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
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        address = f"{host}:{port}"
        # Sockets still waiting for their first frame count too: otherwise any number of
        # silent connections could each hold a socket and a task for the handshake timeout.
        inbound = sum(1 for p in self.connections if p.inbound) + self._inbound_handshaking
        if inbound >= self.max_inbound:
            self.log.info("peer.refused", peer=address, reason="too-many-inbound")
            writer.transport.abort()
            return
        decoder = FrameDecoder(self.max_frame)
        self._inbound_handshaking += 1
        try:
            first = await self._first_frames(reader, decoder)
        except (TimeoutError, FrameError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or ("handshake-timeout" if isinstance(exc, TimeoutError) else "closed")
            self.log.info("peer.refused", peer=address, reason=reason, detail=str(exc))
            writer.transport.abort()
            return
        finally:
            self._inbound_handshaking -= 1
        if not first:
            writer.transport.abort()
            return
        head = first[0]
        if isinstance(head, list) and head and head[0] in CLIENT_TYPES and self.client_handler:
            await self.client_handler(reader, writer, decoder, first)
            return
        peer = Peer(reader, writer, handler=self, inbound=True, address=address,
                    max_frame=self.max_frame, first_frames=first, decoder=decoder)
        await self._run_peer(peer)

    async def _first_frames(self, reader: asyncio.StreamReader, decoder: FrameDecoder) -> list[object]:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return []
                frames = decoder.feed(data)
                if frames:
                    return frames

    async def _run_peer(self, peer: Peer) -> None:
        self.connections.add(peer)
        try:
            await peer.run()
        finally:
            self.connections.discard(peer)

    async def _dial_forever(self, address: Address) -> None:
        delay = DIAL_FIRST_DELAY_S
        last_logged = -DIAL_LOG_EVERY_S
        failing = False
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
                now = time.monotonic()
                if now - last_logged >= DIAL_LOG_EVERY_S:
                    self.log.info("peer.dial_failed", peer=target, error=str(exc) or type(exc).__name__,
                             retry_s=round(delay, 2))
                    last_logged = now
                failing = True
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.redial_max_s)
                continue
            if failing:
                self.log.info("peer.restored", peer=target)
                failing = False
            peer = Peer(reader, writer, handler=self, inbound=False, address=target, max_frame=self.max_frame)
            await self._run_peer(peer)
            if peer.close_reason == "self":
                self.log.info("peer.dial_stopped", peer=target, reason="self")
                return
            if peer.hello is not None:
                delay = DIAL_FIRST_DELAY_S  # it worked once: come back quickly
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.redial_max_s)

    def _connected_to(self, address: str) -> bool:
        return any(p.listen_address == address or (not p.inbound and p.address == address)
                   for p in self.peers.values())

    # --- handshake (called by Peer) ---------------------------------------------------------
    def make_hello(self) -> Hello:
        height, tip, work = self.chain.tip_info()
        return Hello(version=PROTOCOL_VERSION, network=self.chain.network, genesis=self.chain.genesis_hash,
                     node_key=self.node_key, listen_port=self.port, height=height, tip=tip, work=work,
                     agent=AGENT, name=self.name)

    def check_hello(self, peer: Peer, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolViolation("bad-version", f"speaks {hello.version}, we speak {PROTOCOL_VERSION}", ban=False)
        if hello.network != self.chain.network or hello.genesis != self.chain.genesis_hash:
            raise ProtocolViolation("wrong-network", f"{hello.network} {hello.genesis.hex()[:12]}", ban=False)
        if hello.node_key == self.node_key:
            raise ProtocolViolation("self", "connected to ourselves", ban=False)
        if self.is_banned(hello.node_key.hex()):
            raise ProtocolViolation("banned", "node is banned", ban=False)
        existing = self.peers.get(hello.node_key)
        if existing is not None:
            # Both ends decide alike: keep the link dialled by the smaller key, so two nodes
            # that dial each other at once end up with exactly one connection, not zero.
            dialler = self.node_key if not peer.inbound else hello.node_key
            if dialler != min(self.node_key, hello.node_key):
                raise ProtocolViolation("duplicate-peer", "already connected", ban=False)
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
        if self.sync_peer is peer:
            self.sync_peer = None
            self._sync_from_best()

    # --- messages --------------------------------------------------------------------------
    async def on_ping(self, peer: Peer, message: Ping) -> None:
        peer.send(Pong(nonce=message.nonce))

    async def on_pong(self, peer: Peer, message: Pong) -> None:
        pass  # any frame resets the idle timer; nothing else to do

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
        self._judge(peer, result)
        for accepted in result.accepted:
            self.broadcast_block(accepted, source=peer)
        if self.chain.tip_info()[1] != tip_before:
            # After the blocks, never before: a peer told of more work before it holds the
            # block would start a sync round only to be sent the block it just received.
            self.announce_tip()
        if result.missing_parent:
            # Not an offence: a peer ahead of us sends such blocks. It is held aside and we
            # ask the peer for the blocks between; failing to deliver them is what gets it banned.
            self.log.info("block.orphaned", peer=peer.listen_address, reason="unknown-parent",
                          height=block.height, hash=short_hash(block.hash))
            self._request_sync(peer)

    async def on_get_blocks(self, peer: Peer, message: GetBlocks) -> None:
        limit = min(message.limit, MAX_BLOCKS_PER_MESSAGE)
        blocks, more = self.chain.blocks_for_locator(list(message.locator), limit)
        for block in blocks:
            peer.known.add(block.hash)
        peer.send(Blocks(blocks=tuple(blocks), more=more))

    async def on_blocks(self, peer: Peer, message: Blocks) -> None:
        if peer is not self.sync_peer:
            return  # a late answer to a request we gave up on
        self.sync_deadline = time.monotonic() + SYNC_TIMEOUT_S
        # An orphan we hold is sent on with the rest: the run links in order, so dropping it
        # would leave every block after it parentless, and it, with no sender, stranded.
        blocks = [b for b in message.blocks if not self.chain.is_linked(b.hash)]
        for block in message.blocks:
            peer.known.add(block.hash)
        # Blocks we already hold (a side branch) still move the sync on, as long as each
        # answer ends further up the peer's chain than the one before.
        last = message.blocks[-1] if message.blocks else None
        advanced = last is not None and (self._sync_after is None or last.height > self._sync_after[0])
        if advanced:
            self._sync_after = (last.height, last.hash)
        if blocks:
            result = await self.chain.receive_blocks(blocks, peer.listen_address, via_sync=True)
            self._judge(peer, result)
            if not result.accepted and not result.missing_parent:
                # Valid, yet none taken: our store refused them (disk full or read-only).
                # Asking again at once would spin; the peer's next tip or block resumes.
                self.sync_peer = None
                return
            self.announce_tip()
        if blocks:
            self._empty_answers.pop(peer.node_key, None)
        elif not (advanced and message.more):
            # Walking up a side branch we already hold (advanced, more to come) is progress;
            # anything else that brings no new block counts, across rounds too, so a peer
            # that ends each round with a known block cannot restart us for ever.
            count = self._empty_answers.get(peer.node_key, 0) + 1
            self._empty_answers[peer.node_key] = count
            if count >= MAX_EMPTY_SYNC_ANSWERS and (message.more or peer.work > self.chain.tip_info()[2]):
                raise ProtocolViolation("empty-sync", "claims more blocks but sends none we lack")
        height, _, work = self.chain.tip_info()
        if message.more or (blocks and peer.work > work):
            self._send_get_blocks(peer)
        else:
            self.sync_peer = None
            self._sync_after = None
            self.log.info("sync.done", peer=peer.listen_address, height=height)
            self._sync_from_best()

    def _judge(self, peer: Peer, result: ReceiveResult) -> None:
        if result.invalid is not None:
            reason, detail = result.invalid
            raise ProtocolViolation(reason, detail)

    # --- sync --------------------------------------------------------------------------------
    def _maybe_sync(self, peer: Peer) -> None:
        if peer.work > self.chain.tip_info()[2] and self.sync_peer is None:
            self._request_sync(peer)

    def _request_sync(self, peer: Peer) -> None:
        if self.sync_peer is not None and self.sync_peer is not peer:
            return
        if self.sync_peer is None:
            self._sync_after = None
        self.sync_peer = peer
        self._send_get_blocks(peer)

    def _send_get_blocks(self, peer: Peer) -> None:
        self.sync_deadline = time.monotonic() + SYNC_TIMEOUT_S
        locator = self.chain.locator()
        if self._sync_after is not None and self._sync_after[1] != locator[0]:
            # Go on from the last block the peer sent: when it is on a side branch of ours,
            # our own locator would have the peer send the same blocks over and over.
            locator = [self._sync_after[1], *locator]
            if len(locator) > MAX_LOCATOR:
                locator = [*locator[:MAX_LOCATOR - 1], locator[-1]]  # keep genesis last
        peer.send(GetBlocks(locator=tuple(locator), limit=MAX_BLOCKS_PER_MESSAGE))

    def _sync_from_best(self) -> None:
        work = self.chain.tip_info()[2]
        best = max(self.peers.values(), key=lambda p: p.work, default=None)
        if best is not None and best.work > work:
            self._request_sync(best)

    async def _watch_sync(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            peer = self.sync_peer
            if peer is not None and time.monotonic() > self.sync_deadline:
                self.log.warning("sync.stalled", peer=peer.listen_address, seconds=SYNC_TIMEOUT_S)
                self.sync_peer = None
                peer.close("sync-timeout", ban=True, detail=f"no blocks answer within {SYNC_TIMEOUT_S}s")

    # --- outgoing gossip ---------------------------------------------------------------------
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

    def peer_rows(self) -> list[dict]:
        return [{"address": p.listen_address, "node_key": p.node_key.hex(), "name": p.hello.name if p.hello else "",
                 "state": p.state, "inbound": p.inbound, "height": p.height, "tip": short_hash(p.tip) if p.tip else ""}
                for p in self.peers.values()]
