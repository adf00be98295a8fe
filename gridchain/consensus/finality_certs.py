"""Certificates: the votes of a quorum of distinct members for one link, checkable offline.

Part of the finality gadget described in gridchain/consensus/finality.py.

A certificate names the link once and carries one (voter key, signature) pair per signer,
in ascending key order (one canonical form per set of signers). Wire form, big-endian::

    source hash (32) | source height (u64) | target hash (32) | target height (u64)
    | u16 count | count x (voter key (32) | signature (64))

``verify_certificate`` needs only the network's parameters (member keys, names, quorum and
network hash): a regulator with the network file checks one without running a node.

A certificate for ``S -> T`` with ``height(T) = height(S) + interval`` is a *finality
certificate* for S: ``verify_finality`` checks that too. Why one certificate is enough
offline, and what it does not prove, is in finality.py ("Offline proof").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from gridchain.consensus.finality_votes import (
    KEY_SIZE, SIGNATURE_SIZE, Checkpoint, Evidence, FinalityError, Vote, check_link, conflict_kind, verify_vote,
)
from gridchain.consensus.params import NetworkParams

_HEAD = struct.Struct(">32sQ32sQH")
_SIGNER = struct.Struct(">32s64s")
# The network file allows at most 1,000 members; a certificate never needs more signers, and
# the cap bounds what a decoder reads from a peer before it checks anything.
MAX_SIGNERS = 1000


@dataclass(frozen=True, slots=True)
class Certificate:
    """Signatures of distinct members for the link ``source -> target``, ascending by key."""

    source: Checkpoint
    target: Checkpoint
    signatures: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def from_votes(cls, votes: Iterable[Vote]) -> Certificate:
        """Gather votes for one link; refuses ``mixed-links`` and a member twice (``duplicate-signer``)."""
        votes = list(votes)
        if not votes:
            raise FinalityError("short-certificate", "a certificate needs at least one vote")
        link = votes[0].link
        if any(vote.link != link for vote in votes):
            raise FinalityError("mixed-links", "the votes are not all for the same source and target")
        by_voter: dict[bytes, bytes] = {}
        for vote in votes:
            if vote.voter in by_voter:
                raise FinalityError("duplicate-signer", f"member {vote.voter.hex()[:16]} signs twice")
            by_voter[vote.voter] = vote.signature
        return cls(link[0], link[1], tuple(sorted(by_voter.items())))

    @property
    def link(self) -> tuple[Checkpoint, Checkpoint]:
        return self.source, self.target

    @property
    def signers(self) -> tuple[bytes, ...]:
        return tuple(key for key, _ in self.signatures)

    def votes(self) -> tuple[Vote, ...]:
        return tuple(Vote(key, self.source, self.target, signature) for key, signature in self.signatures)

    def encode(self) -> bytes:
        head = _HEAD.pack(self.source.hash, self.source.height, self.target.hash, self.target.height,
                          len(self.signatures))
        return head + b"".join(_SIGNER.pack(key, signature) for key, signature in self.signatures)

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        if len(data) < _HEAD.size:
            raise FinalityError("bad-certificate", f"{len(data)} bytes is shorter than a certificate's head")
        source_hash, source_height, target_hash, target_height, count = _HEAD.unpack_from(data)
        if count > MAX_SIGNERS:
            raise FinalityError("bad-certificate", f"{count} signers, more than the {MAX_SIGNERS} allowed")
        if len(data) != _HEAD.size + count * _SIGNER.size:
            raise FinalityError("bad-certificate", f"{len(data)} bytes do not hold {count} signatures")
        signatures = tuple(_SIGNER.unpack_from(data, _HEAD.size + i * _SIGNER.size) for i in range(count))
        return cls(Checkpoint(source_height, source_hash), Checkpoint(target_height, target_hash), signatures)


def verify_certificate(params: NetworkParams, cert: Certificate) -> tuple[str, ...]:
    """The names of the certificate's signers, in key order; a named FinalityError if it is not
    a quorum of distinct members' valid votes for its link.

    Reasons: ``bad-vote`` (the link is not between checkpoints, or the target is not above
    the source), ``duplicate-signer``, ``bad-certificate`` (signers not in ascending order:
    not the canonical form), ``short-certificate`` (fewer than the quorum), ``not-a-member``,
    ``bad-vote-signature`` (a forged signature, or one made for another link or network).
    """
    if params.members is None or params.quorum is None:
        raise FinalityError("finality-off", "an open network has no members to certify anything")
    check_link(params, cert.source, cert.target)
    keys = cert.signers
    if len(set(keys)) != len(keys):
        repeated = next(key for key in keys if keys.count(key) > 1)
        raise FinalityError("duplicate-signer", f"member {repeated.hex()[:16]} signs twice")
    if list(keys) != sorted(keys):
        raise FinalityError("bad-certificate", "signers are not in ascending key order")
    if len(keys) < params.quorum:
        raise FinalityError("short-certificate", f"{len(keys)} of {len(params.members)} members signed, the "
                            f"quorum is {params.quorum}")
    for key, signature in cert.signatures:
        if len(key) != KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            raise FinalityError("bad-certificate", "a signer's key or signature has the wrong size")
    for vote in cert.votes():
        verify_vote(params, vote)
    return tuple(params.member_names.get(key) or key.hex()[:16] for key in keys)


def verify_finality(params: NetworkParams, cert: Certificate) -> tuple[str, ...]:
    """``verify_certificate``, and the link is from a checkpoint to the next one on its branch:
    the certificate finalizes ``cert.source`` (``not-finalizing`` otherwise)."""
    if cert.target.height != cert.source.height + params.checkpoint_interval:
        raise FinalityError("not-finalizing", f"link {cert.source.height} -> {cert.target.height} skips "
                            f"checkpoints: it justifies its target but finalizes nothing")
    return verify_certificate(params, cert)


def certificate_evidence(first: Certificate, second: Certificate) -> list[Evidence]:
    """Evidence against every member that signed both certificates in breach of a slashing
    condition: what two conflicting finality certificates hold against their common signers.

    The votes are not verified here: ``check_evidence`` each one before acting on it.
    """
    theirs = dict(second.signatures)
    found = []
    for key, signature in first.signatures:
        if key in theirs:
            a = Vote(key, first.source, first.target, signature)
            b = Vote(key, second.source, second.target, theirs[key])
            if conflict_kind(a, b) is not None:
                found.append(Evidence.of(a, b))
    return found
