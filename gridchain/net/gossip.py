"""The peer set: dialling, bans, block push gossip, tip announcements and sync.

Gossip knows nothing of storage or validation. It talks to the node through a ChainView
(what our chain looks like, and a way to hand it blocks), and every message a peer delivers
arrives at one ``on_<type>`` method here. The node's listener hands it the inbound
connections whose first frame is a peer's (``accept``); it dials the configured peers itself.
Dialling is gridchain.net.dialer; the handshake and keepalive are the sans-IO gridchain.net.protocol, sync progress is
gridchain.net.sync, finality votes, evidence and certificates are gridchain.net.finality_gossip
(attached on a network with members), and what each fault costs a peer is gridchain.net.penalties.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from gridchain.config import DEFAULT_BAN_SECONDS, DEFAULT_REDIAL_MAX_S, Address
from gridchain.consensus.block import Block, short_hash
from gridchain.identity.tls import TlsIdentity, TlsLink
from gridchain.net import sync as sync_rules
from gridchain.net.answer_budget import REPEAT_BURST_BYTES, REPEAT_RATE_BYTES_S, AnswerBudget
from gridchain.net.dialer import Dialer, linked_peer
from gridchain.net.handshake import NONCE_SIZE
from gridchain.net.messages import (
    MAX_BLOCKS_PER_MESSAGE, PROTOCOL_VERSION, BlockMessage, Blocks, GetBlocks, Hello, Reject, Tip, blocks_frame,
    decode_message, encode_message,
)
from gridchain.net.finality_gossip import AHEAD_FOR_SYNC, FinalityGossip, FinalityView
from gridchain.net.peer import Peer
from gridchain.net.penalties import BLOCK, cost_of
from gridchain.net.protocol import ProtocolViolation
from gridchain.wire.frames import encode_frame
from gridchain.wire.streams import FrameReader

log = structlog.get_logger()

AGENT = "gridchain/0.1.0"
# Tip announcements go out on every change and at least this often (the chain-length gossip).
TIP_INTERVAL_S = 10.0
# Tip announcements beyond this rate per peer are not processed at once (a flood is cheap to ignore).
TIP_RATE_PER_S = 20.0
TIP_BURST = 40
# Announcements past the rate are collapsed to the newest and it is taken once the bucket
# refills: a link that was stuck (TCP holds what was written before the peer noticed) brings
# its tips in one burst, and the newest is the one that matters. More than this many past
# the rate is beyond what an honest sender ever queues (it collapses its own queue and drops
# a dead link within seconds): a flood, logged and dropped unread.
TIP_HELD_MAX = TIP_BURST
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
    def height_of(self, block_hash: bytes) -> int: ...  # of a block in the tree
    # Start a sync batch's checks in threads now: a handle (with cancel()) for receive_blocks, or None.
    def check_ahead(self, blocks: list[Block]) -> object | None: ...
    # ``raws``: the blocks' wire bytes, stored as they are; ``checks``: check_ahead's for these blocks.
    async def receive_blocks(self, blocks: list[Block], peer: str, via_sync: bool,
                             raws: list[bytes] | None = None, checks: object | None = None) -> ReceiveResult: ...


@dataclass(slots=True)
class _TipBucket:
    tokens: float = TIP_BURST
    at: float = field(default_factory=time.monotonic)
    warned: bool = False  # the first dropped announcement is logged, the rest are not
    held: Tip | None = None  # the newest announcement past the rate, taken when a token is back
    excess: int = 0  # announcements past the rate since the bucket was last full
    flooding: bool = False  # past TIP_HELD_MAX: nothing is held until the bucket is full again

    def take(self, now: float) -> bool:
        self.tokens = min(TIP_BURST, self.tokens + (now - self.at) * TIP_RATE_PER_S)
        self.at = now
        if self.tokens >= TIP_BURST:
            self.excess, self.flooding = 0, False
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def hold(self, message: Tip) -> bool:
        """Keep ``message`` (past the rate) as the newest to take later; False once it is a flood."""
        self.excess += 1
        if self.flooding or self.excess > TIP_HELD_MAX:
            self.flooding, self.held = True, None
            return False
        self.held = message
        return True


class Gossip:
    """Every peer connection of one node, and the rules for what travels over them."""

    def __init__(self, *, chain: ChainView, node_key: bytes, sign: Callable[[bytes], bytes], name: str,
                 port: int = 0, peers: tuple[Address, ...] = (), members: frozenset[bytes] | None = None,
                 ban_seconds: float = DEFAULT_BAN_SECONDS, redial_max_s: float = DEFAULT_REDIAL_MAX_S,
                 decode: Callable[[object], object] = decode_message, tls: TlsIdentity | None = None) -> None:
        self.chain = chain
        self.tls = tls if tls is not None and tls.peer_tls else None  # None: plaintext links (an open network)
        self.node_key = node_key
        self.sign = sign  # signs with node_key's private key: our handshake proofs
        self.members = members  # the keys that may be peers (None: an open network, any key)
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
        self._aside: tuple[Peer, Blocks, object | None] | None = None  # a sync answer being checked, stored next
        self._tip_buckets: dict[int, _TipBucket] = {}
        self._answer_budgets: dict[int, AnswerBudget] = {}  # get_blocks answers, per link
        self._peer_changed = asyncio.Event()
        self.alone_since: float | None = time.monotonic()  # no ready peer since then (None: some)
        self._sync_held: dict[str, float] = {}  # peer listen address -> no sync from it before then
        self.dialer = Dialer(self, tls=self.tls, port=port, redial_max_s=redial_max_s)
        self.finality: FinalityGossip | None = None  # votes and certificates (attach_finality)
        self.log = log.bind(node=name)

    @property
    def sync_peer(self) -> Peer | None:
        return self.sync.peer

    def attach_finality(self, view: FinalityView) -> FinalityGossip:
        """Carry finality votes, evidence and certificates for ``view`` (a network with members)."""
        self.finality = FinalityGossip(view, lambda: self.peers.values(), behind=self._vote_ahead)
        return self.finality

    # --- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Dial configured peers, announce the tip, watch sync; until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for address in self.configured:
                tasks.create_task(self.dialer.dial_forever(address))
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

    async def accept(self, frames: FrameReader, writer: asyncio.StreamWriter, address: str,
                     link: TlsLink | None = None) -> None:
        """Run an inbound peer connection (``link``: what its TLS handshake established, if TLS)."""
        await self.run_peer(self._peer(frames, writer, inbound=True, address=address, link=link))

    def _peer(self, frames: FrameReader, writer: asyncio.StreamWriter, *, inbound: bool, address: str,
              link: TlsLink | None = None) -> Peer:
        return Peer(frames, writer, handler=self, hello=self.make_hello(), inbound=inbound, address=address,
                    sign=self.sign, members=self.members, decode=self.decode, link=link)

    def outbound_peer(self, frames: FrameReader, writer: asyncio.StreamWriter, address: str,
                      link: TlsLink | None) -> Peer:
        """A connection the dialler opened to ``address``, for ``run_peer``."""
        return self._peer(frames, writer, inbound=False, address=address, link=link)

    async def run_peer(self, peer: Peer) -> None:
        self.connections.add(peer)
        try:
            await peer.run()
        finally:
            self.connections.discard(peer)

    def linked_to(self, address: str) -> bool:
        return linked_peer(address, self.peers.values()) is not None

    async def peers_changed(self, timeout: float) -> None:
        """Wait until a peer comes or goes, or ``timeout`` seconds."""
        self._peer_changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._peer_changed.wait()
        except TimeoutError:
            pass

    # --- handshake (called by Peer) ---------------------------------------------------------
    def make_hello(self) -> Hello:
        """Our hello for one new connection, with a nonce of its own (never reused)."""
        height, tip, work = self.chain.tip_info()
        return Hello(version=PROTOCOL_VERSION, network=self.chain.network, genesis=self.chain.genesis_hash,
                     node_key=self.node_key, listen_port=self.port, height=height, tip=tip, work=work,
                     agent=AGENT, name=self.name, nonce=os.urandom(NONCE_SIZE))

    def admit(self, peer: Peer, hello: Hello) -> None:
        """The node-wide part of checking a hello, once its key is proven (the protocol checked
        network, self and membership)."""
        if self.is_banned(hello.node_key.hex()):
            raise ProtocolViolation("banned", "node is banned")
        existing = self.peers.get(hello.node_key)
        if existing is not None and existing.link_state(time.monotonic()) == "stale":
            # Our link to it is not answering: the peer, which is dialling us again, found it
            # dead first. The new link replaces it, whoever dialled either.
            existing.close("ping-timeout", "replaced by a new link from the same peer")
            existing.writer.transport.abort()
            self.peers.pop(hello.node_key, None)
            existing = None
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
        self.alone_since = None
        self._peer_changed.set()
        if not peer.inbound and self.dialer.restored(peer.address):
            self.log.info("peer.restored", peer=peer.address)
        self.log.info("peer.connected", peer=peer.listen_address, node_key=peer.node_key.hex()[:16],
                      name=peer.hello.name if peer.hello else "", inbound=peer.inbound, height=peer.height)
        if self.finality is not None:
            self.finality.greet(peer)
        self._maybe_sync(peer)

    async def on_peer_closed(self, peer: Peer, reason: str, ban: bool) -> None:
        # One event per connection that ends for a reason: banned, disconnected or refused.
        # A peer that never proved its key has no identity worth a ban entry (its hello is a
        # claim anybody can make, its address an ephemeral port), so it is only refused.
        ready = peer.hello is not None and self.peers.get(peer.node_key) is peer
        if ready:
            del self.peers[peer.node_key]
            self._peer_changed.set()
            if not self.peers:
                self.alone_since = time.monotonic()
        if ban and peer.hello is not None:
            self.ban(peer, reason)
        elif ready:
            self.log.info("peer.disconnected", peer=peer.listen_address, reason=reason, detail=peer.close_detail)
        elif reason not in QUIET_CLOSE_REASONS:
            # The claimed key is logged as such: it names who the peer said it was, not who it is.
            self.log.info("peer.refused", peer=peer.listen_address, reason=reason, detail=peer.close_detail,
                          claimed_key=peer.claimed_key.hex()[:16], proven=peer.protocol.proven)
        self._tip_buckets.pop(id(peer), None)
        self._answer_budgets.pop(id(peer), None)
        if self._aside is not None and self._aside[0] is peer:
            self._drop_aside()
        if self.sync.peer_gone(peer):
            self._sync_from_best()

    # --- messages --------------------------------------------------------------------------
    async def on_reject(self, peer: Peer, message: Reject) -> None:
        self.log.info("peer.rejected_us", peer=peer.listen_address, code=message.code, detail=message.detail)

    async def on_tip(self, peer: Peer, message: Tip) -> None:
        bucket = self._tip_buckets.setdefault(id(peer), _TipBucket())
        if bucket.take(time.monotonic()):
            bucket.held = None  # this one is newer than any held
            self._take_tip(peer, message)
            return
        first = bucket.held is None
        if bucket.hold(message):
            if first:  # one timer per held announcement; a newer one just takes its place
                asyncio.get_running_loop().call_later(1 / TIP_RATE_PER_S, self._take_held_tip, peer, bucket)
            return
        if not bucket.warned:
            bucket.warned = True
            self.log.warning("peer.rate_limited", peer=peer.listen_address, reason="tip-flood",
                             rate_per_s=TIP_RATE_PER_S, burst=TIP_BURST, held_max=TIP_HELD_MAX)

    def _take_held_tip(self, peer: Peer, bucket: _TipBucket) -> None:
        """The newest announcement a burst brought past the rate, once the bucket has a token."""
        if bucket.held is None or self._tip_buckets.get(id(peer)) is not bucket:
            return  # taken by a newer one, dropped as a flood, or the peer is gone
        if not bucket.take(time.monotonic()):
            asyncio.get_running_loop().call_later(1 / TIP_RATE_PER_S, self._take_held_tip, peer, bucket)
            return
        message, bucket.held = bucket.held, None
        self._take_tip(peer, message)

    def _take_tip(self, peer: Peer, message: Tip) -> None:
        peer.height, peer.tip, peer.work = message.height, message.tip, message.work
        held = self._sync_held.get(peer.listen_address)
        if held is not None and held > time.monotonic():
            return  # its blocks were refused (too new for our clock): its tips start no failing sync
        self._maybe_sync(peer)

    def hold_sync(self, address: str, seconds: float) -> None:
        """Start no sync from the peer at ``address`` on its tips for ``seconds`` (its blocks
        were refused in a way that retrying soon cannot change, e.g. too new for our clock)."""
        if len(self._sync_held) >= MAX_BANS:
            self._sync_held.clear()
        self._sync_held[address] = time.monotonic() + seconds

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
        await self._pay_for_answer(peer, stored)
        for block_hash, _ in stored:
            peer.known.add(block_hash)
        # One finality certificate a batch: the receiver checks it, not one per block.
        cert = None if self.finality is None or not stored else self.finality.view.sync_certificate(stored[-1][0])
        peer.send_frame(blocks_frame([raw for _, raw in stored], more,
                                     certificate=None if cert is None else cert.encode()))

    async def _pay_for_answer(self, peer: Peer, stored: list[tuple[bytes, bytes]]) -> None:
        """Charge the blocks the peer had from us on this link already (gridchain.net.answer_budget):
        hold the answer back while the link's budget refills, or drop and ban a flood."""
        if not stored:
            return
        budget = self._answer_budgets.get(id(peer))
        if budget is None:
            budget = self._answer_budgets[id(peer)] = AnswerBudget(time.monotonic())
        wait = budget.charge(self.chain.height_of(stored[0][0]), [len(raw) for _, raw in stored], time.monotonic())
        if wait is None:
            raise ProtocolViolation("get-blocks-flood", f"asked for {budget.repeat_bytes} bytes of blocks it had "
                                                        f"from us already")
        if wait:
            if budget.throttled == 1:
                self.log.warning("peer.rate_limited", peer=peer.listen_address, reason="get-blocks-flood",
                                 rate_bytes_s=REPEAT_RATE_BYTES_S, burst_bytes=REPEAT_BURST_BYTES,
                                 wait_s=round(wait, 3))
            await asyncio.sleep(wait)

    async def on_blocks(self, peer: Peer, message: Blocks) -> None:
        if not self.sync.answer_arrived(peer, message, time.monotonic()):
            return  # a late answer to a request we gave up on
        # Ask for the next batch now, before this one is checked and stored: the peer
        # prepares it meanwhile, instead of the check threads waiting out a round trip.
        ahead = self.sync.ask_ahead(peer, message, self.chain.locator(), time.monotonic())
        if ahead is not None:
            peer.send(ahead)
        for block in message.blocks:
            peer.known.add(block.hash)
        # With more on the way, this answer's checks start in the threads now and it waits
        # its turn, while the answer before it (kept aside, checked meanwhile) is stored.
        aside, self._aside = self._aside, None
        if ahead is not None:
            self._aside = (peer, message, self.chain.check_ahead(list(message.blocks)))
        if aside is not None:
            if aside[0] is peer:
                await self._store_answer(*aside)
            else:
                _cancel(aside[2])  # kept from another peer's round: nothing to store it for
            if not self.sync.waiting(peer, message):
                self._drop_aside()  # the round ended, or the answer before broke a rule
                return
        if ahead is None:
            await self._store_answer(peer, message, None)

    def _drop_aside(self) -> None:
        aside, self._aside = self._aside, None
        if aside is not None:
            _cancel(aside[2])

    async def _store_answer(self, peer: Peer, message: Blocks, checks: object | None) -> None:
        """Hand one sync answer's blocks to the chain, then ask for more or end the round."""
        # An orphan we hold is sent on with the rest: the run links in order, so dropping it
        # would leave every block after it parentless, and it, with no sender, stranded.
        picked = [i for i, b in enumerate(message.blocks) if not self.chain.is_linked(b.hash)]
        blocks = [message.blocks[i] for i in picked]
        raws = [message.raw[i] for i in picked] if len(message.raw) == len(message.blocks) else None
        if len(blocks) != len(message.blocks):
            _cancel(checks)  # started for the whole answer; the ledger checks the rest itself
            checks = None
        brought, orphaned = 0, False  # blocks that joined our tree; the answer only fed the orphan pool
        if blocks:
            result = await self.chain.receive_blocks(blocks, peer.listen_address, via_sync=True, raws=raws,
                                                     checks=checks)
            brought = len(result.accepted)
            orphaned = not brought and result.missing_parent
            if result.invalid is not None:
                self.sync.cancel_ahead(message)  # what follows a refused block cannot link: not wanted
            self._judge(result)
            if not result.accepted and not result.missing_parent:
                # Valid, yet none taken: our store refused them (disk full or read-only).
                # Asking again at once would spin; the peer's next tip or block resumes.
                self.sync.end()
                return
            self.announce_tip()
        if message.certificate is not None and self.finality is not None:
            # After the blocks: its checkpoint must be in the tree to be adopted.
            await self.finality.receive_certificates(peer, (message.certificate,))
        height, _, work = self.chain.tip_info()
        # An answer that only adds orphans is empty: a peer claiming great work could otherwise
        # hold our one sync round for ever with the same parentless block (gridchain.net.sync).
        request = self.sync.answer_handled(peer.node_key, message, brought, peer.work, work,
                                           self.chain.locator(), time.monotonic(), orphaned=orphaned)
        if request is not None:
            peer.send(request)
        elif self.sync.peer is None:
            self.log.info("sync.done", peer=peer.listen_address, height=height)
            self._sync_from_best()

    async def on_vote(self, peer: Peer, message) -> None:
        if self.finality is not None:
            await self.finality.on_vote(peer, message)

    async def on_evidence(self, peer: Peer, message) -> None:
        if self.finality is not None:
            await self.finality.on_evidence(peer, message)

    async def on_certificates(self, peer: Peer, message) -> None:
        if self.finality is not None:
            await self.finality.on_certificates(peer, message)

    def _vote_ahead(self, peer: Peer, height: int) -> None:
        """A peer voted for a block we lack well past our tip: it is ahead, ask it for blocks."""
        if height > self.chain.tip_info()[0] + AHEAD_FOR_SYNC:
            self._request_sync(peer)

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
            peer.send_tip(frame)  # replaces an older tip still queued for a slow link

    async def _announce_periodically(self) -> None:
        while True:
            await asyncio.sleep(TIP_INTERVAL_S)
            self.announce_tip()


def _cancel(checks: object | None) -> None:
    """Stop checks that check_ahead started, for blocks that will not be stored after all."""
    if checks is not None:
        checks.cancel()
