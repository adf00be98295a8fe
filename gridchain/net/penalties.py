"""What a peer's fault costs it, decided in one place. Pure.

As aiorpcX gives each error class a cost, every reason a peer connection can end and every
rule a block from a peer can break maps here to one of three costs: keep the peer (it could
not help it, e.g. its clock is a little ahead of ours), drop the connection and remember
nothing, or drop it and ban the peer's key and listen address for the node's ban time.

A fault is looked up by its reason *and* its kind, because one name can mean different
things: ``bad-version`` in a hello is a newer peer (drop), ``bad-version`` in a block is a
broken one (ban); and a reason a peer sent us in a ``reject`` names our fault, not its own.
The raise sites (gridchain.net.protocol, gossip, peer) only say what happened.

A ban is only ever held against a key the peer proved it holds (the handshake's identity
proof, gridchain.net.handshake). Until then a hello is a claim anybody can make, so a
fault of an unproven peer costs at most a drop: nothing is remembered against the claimed
key, and a third party claiming a member's key cannot get that member banned.
"""

from __future__ import annotations

import enum

from gridchain.wire.fields import BAD_BLOCK, BAD_FIELD, BAD_SHAPE, TOO_MANY, UNKNOWN_TYPE
from gridchain.wire.frames import BAD_MSGPACK, EMPTY_FRAME, FRAME_TOO_LARGE


class Cost(enum.Enum):
    """What a fault costs the peer that caused it."""

    KEEP = "keep"  # refuse what it sent, keep the connection
    DROP = "drop"  # close the connection, remember nothing
    BAN = "ban"  # close the connection and ban the peer

    @property
    def closes(self) -> bool:
        return self is not Cost.KEEP


# The kinds of fault (ProtocolViolation.kind).
LINK = "link"  # the connection itself: framing, messages, handshake, timeouts, queues
BLOCK = "block"  # a block the peer sent broke a consensus rule (reasons of gridchain.consensus.rules)
REJECTED = "rejected"  # the peer refused us with a `reject`; its code is the reason
FINALITY = "finality"  # a vote, evidence or certificate the peer sent failed its check (finality_votes.py)

# Breaches of the protocol: only a broken or hostile peer sends these.
_BANNED_LINK_REASONS = (
    EMPTY_FRAME, FRAME_TOO_LARGE, BAD_MSGPACK,  # the framing rules
    BAD_SHAPE, UNKNOWN_TYPE, BAD_FIELD, TOO_MANY, BAD_BLOCK,  # the message rules
    "no-hello",  # the first message was not hello (never banned in effect: no key to ban yet)
    "unexpected-message",  # a message with no meaning on a ready peer link
    "empty-sync",  # claims more work, answers sync requests with nothing we lack
    "sync-timeout",  # claims more work, never answers the sync request
    "get-blocks-flood",  # keeps asking for blocks it had from us already (net.answer_budget)
)
# Ends of a connection that say nothing bad about the peer, or nothing worth remembering.
_DROPPED_LINK_REASONS = (
    "bad-version", "wrong-network", "self", "banned", "duplicate-peer",  # the handshake
    "bad-handshake-proof", "echo", "not-a-member",  # the identity proof and who may be a peer
    "handshake-timeout", "idle-timeout",  # silent, or on a link too slow to finish a frame
    "send-queue-full", "slow-peer",  # cannot keep up with what it asked for
    "closed", "peer-closed", "connection-lost", "shutdown", "internal-error",
)
LINK_COSTS: dict[str, Cost] = {**{r: Cost.DROP for r in _DROPPED_LINK_REASONS},
                               **{r: Cost.BAN for r in _BANNED_LINK_REASONS}}
# Block rules an honest peer can break: clock skew ("time-too-new"), simply being ahead of
# us ("unknown-parent": the block is held as an orphan and its sender asked for the rest),
# and "conflicts-finalized". The last is refused whatever its work, which is all safety
# needs, but costs its sender nothing: an honest member restarted on a side branch it mined
# before a crash (its store's tip), or one that mined on its side of a split, sends such
# blocks until it has synced and heard of the finality the others reached. Banning it for
# that (seen: a member killed and restarted was banned by every peer, and could not catch
# up for the whole ban) would trade liveness for nothing. Every other rule bans the sender.
BLOCK_COSTS: dict[str, Cost] = {"time-too-new": Cost.KEEP, "unknown-parent": Cost.KEEP,
                                "conflicts-finalized": Cost.KEEP}
# A vote, evidence or certificate that fails a check anyone can make with the member list
# alone is forged or broken: a member's node checks each before it passes one on, so the
# peer that sent it is banned. What depends on our own view of the chain costs nothing: a
# vote for a block we do not hold yet (the ledger pools it), a link or certificate that
# conflicts with what we finalized (safety is broken, the peer need not be the culprit),
# and a network without members.
FINALITY_COSTS: dict[str, Cost] = {
    **{r: Cost.BAN for r in ("bad-vote", "not-a-member", "bad-vote-signature", "bad-evidence", "bad-certificate",
                             "short-certificate", "duplicate-signer", "mixed-links", "not-finalizing")},
    **{r: Cost.KEEP for r in ("unknown-checkpoint", "conflicts-finalized", "finality-off", "stale", "bad-link")},
}


def cost_of(reason: str, kind: str = LINK, proven: bool = True) -> Cost:
    """The cost of a fault. An unlisted link reason only drops: nothing is banned by accident.

    ``proven`` False (the peer has not proven its key yet) turns a ban into a drop.
    """
    if kind == BLOCK:
        cost = BLOCK_COSTS.get(reason, Cost.BAN)
    elif kind == FINALITY:
        cost = FINALITY_COSTS.get(reason, Cost.DROP)
    elif kind == REJECTED:
        cost = Cost.DROP  # whatever it holds against us, a refusal is no offence of the sender's
    else:
        cost = LINK_COSTS.get(reason, Cost.DROP)
    return Cost.DROP if cost is Cost.BAN and not proven else cost
