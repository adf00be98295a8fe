"""Network parameters: everything that makes one gridchain network different from another.

A network is named by its network document (gridchain/identity/network_file.py): name,
difficulty, members and relays. ``network_hash`` is the SHA-256 of the document's canonical
bytes and the genesis block commits to it, so nodes with different documents have different
genesis blocks and refuse each other in the handshake. Without a document (an open
development network) the canonical document is ``{"difficulty": bits, "name": name}``.

Finality (gridchain/consensus/finality.py) adds ``checkpoint_interval`` (default 1: every
block is a checkpoint) and ``quorum`` (default: the smallest count above two thirds of the
members). The document holds ``"finality": {"checkpoint_interval": i, "quorum": q}`` only
when they differ from those defaults, so every network hash made before finality existed
stays the same and a network stating its defaults is the same network as one leaving them out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgpack

# A block may be at most this far ahead of the receiving node's clock (DESIGN: 2 minutes).
MAX_FUTURE_MS = 2 * 60 * 1000
# A block's time must be after the median of this many previous blocks, as in Bitcoin.
MEDIAN_TIME_WINDOW = 11
DEFAULT_CHECKPOINT_INTERVAL = 1  # every block a checkpoint: finality one vote round behind the tip


def default_quorum(members: int) -> int:
    """The smallest count of members that is more than two thirds of them: 3 of 4, 11 of 16."""
    return members * 2 // 3 + 1


def finality_entry(members: int | None, checkpoint_interval: int, quorum: int | None) -> dict | None:
    """The document's ``finality`` value, or None when it says only the defaults."""
    resolved = quorum if quorum is not None or members is None else default_quorum(members)
    default = None if members is None else default_quorum(members)
    if checkpoint_interval == DEFAULT_CHECKPOINT_INTERVAL and resolved == default:
        return None
    return {"checkpoint_interval": checkpoint_interval, "quorum": resolved}


@dataclass(frozen=True, slots=True)
class RelayInfo:
    """A relay named in the network document: its Ed25519 public key and its substation."""

    key: bytes
    substation: str


def network_document_bytes(name: str, bits: int, members: Mapping[bytes, str] | None = None,
                           relays: Mapping[str, RelayInfo] | None = None, finality: dict | None = None) -> bytes:
    """Canonical msgpack of a network document: map keys sorted, members by key, relays by id.

    The same bytes as ``NetworkDocument.canonical_bytes`` (addresses are not identity).
    """
    document: dict[str, object] = {"difficulty": bits}
    if finality is not None:
        document["finality"] = finality
    if members is not None:
        document["members"] = sorted([key, members[key]] for key in members)
    document["name"] = name
    if relays is not None:
        document["relays"] = sorted([relay_id, info.substation, info.key] for relay_id, info in relays.items())
    return msgpack.packb(document, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class NetworkParams:
    """What every node of one network agrees on before it starts.

    ``members`` None and ``relays`` None make an open development network: any key may
    mine, any relay id may appear (its key pinned per branch by its first block).
    ``network_hash`` None is derived from the other fields (network_document_bytes).
    """

    name: str
    bits: int  # fixed difficulty: required leading zero bits of each block hash
    # Permissioned networks list the Ed25519 keys allowed to mine; None accepts any key.
    members: frozenset[bytes] | None = None
    max_future_ms: int = MAX_FUTURE_MS
    median_window: int = MEDIAN_TIME_WINDOW
    network_hash: bytes | None = None
    member_names: Mapping[bytes, str] = field(default_factory=dict)
    relays: Mapping[str, RelayInfo] | None = None
    # Finality: checkpoints at multiples of this height; votes needed for a supermajority link
    # (None with members: default_quorum; an open network has no members, so no finality).
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    quorum: int | None = None

    def __post_init__(self) -> None:
        finality = finality_entry(None if self.members is None else len(self.members),
                                  self.checkpoint_interval, self.quorum)
        if self.quorum is None and self.members is not None:
            object.__setattr__(self, "quorum", default_quorum(len(self.members)))
        if self.network_hash is None:
            names = None if self.members is None else {k: self.member_names.get(k, "") for k in self.members}
            document = network_document_bytes(self.name, self.bits, names, self.relays, finality)
            object.__setattr__(self, "network_hash", hashlib.sha256(document).digest())

    def relay_key(self, relay_id: str) -> bytes | None:
        """The key the network document gives ``relay_id`` (None: open network, or not named)."""
        info = None if self.relays is None else self.relays.get(relay_id)
        return None if info is None else info.key
