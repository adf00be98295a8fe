"""Checkpoint notes: the newest finalized checkpoint as a signed text a regulator can archive.

Part of the finality gadget described in gridchain/consensus/finality.py. ``gridchain
checkpoint`` prints one; ``verify_note`` checks one with the network's parameters alone; and
``check_consistency`` proves, from two notes and the headers between them, that the later
one extends the earlier, or shows where they fork.

The note is UTF-8 text, one field a line, in exactly this order and form (lowercase hex,
``\\n`` line ends, a final newline; anything else is refused, so a note has one spelling)::

    gridchain finalized checkpoint v1
    network substation-7
    network-hash <64 hex>
    height 1234
    hash <64 hex: the finalized block>
    header <256 hex: its 128-byte header, whose SHA-256 is the hash>
    time 2024-05-01T12:00:00.000Z        (the header's time, UTC, for people)
    next 1235 <64 hex: the next checkpoint on its branch>
    signer <64 hex key> <128 hex signature> <member name>   (one per signer, by key)

The signer lines are the finality certificate for the link ``height -> next``: a quorum of
members' votes (finality_votes.py), so the note is "signed by the certificate" and carries
no signature of its own. The header ties the checkpoint to a time and to its payload root.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gridchain.consensus.block import HEADER_SIZE, Header
from gridchain.consensus.finality_certs import Certificate, certificate_evidence, verify_finality
from gridchain.consensus.finality_votes import Checkpoint, Evidence, FinalityError
from gridchain.consensus.params import NetworkParams

NOTE_TITLE = "gridchain finalized checkpoint v1"
# A note has nine fixed lines plus one a signer; members are at most 1,000. Longer text is
# refused before it is split, so a pasted log file is not parsed line by line.
MAX_NOTE_BYTES = 1024 + 1000 * 512


@dataclass(frozen=True, slots=True)
class CheckpointNote:
    """A finalized checkpoint's header and finality certificate, with the signers' names."""

    network_name: str
    network_hash: bytes
    header: Header
    certificate: Certificate
    names: tuple[str, ...]  # one per certificate signer, in the same order

    @property
    def checkpoint(self) -> Checkpoint:
        return self.certificate.source

    def text(self) -> str:
        cert = self.certificate
        lines = [NOTE_TITLE, f"network {self.network_name}", f"network-hash {self.network_hash.hex()}",
                 f"height {cert.source.height}", f"hash {cert.source.hash.hex()}",
                 f"header {self.header.to_bytes().hex()}", f"time {_iso(self.header.time_ms)}",
                 f"next {cert.target.height} {cert.target.hash.hex()}"]
        lines += [f"signer {key.hex()} {sig.hex()} {name}" for (key, sig), name in zip(cert.signatures, self.names)]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class NoteCheck:
    """What a verified note says: the checkpoint, its block time and who certified it."""

    checkpoint: Checkpoint
    time_ms: int
    signers: tuple[str, ...]
    members: int

    def summary(self) -> str:
        return (f"final at height {self.checkpoint.height} ({self.checkpoint.hash.hex()[:16]}): certified by "
                f"{len(self.signers)} of {self.members} members ({', '.join(self.signers)})")


def make_note(params: NetworkParams, header: Header, cert: Certificate) -> CheckpointNote:
    """The note for a finalized checkpoint, from its header and finality certificate (checked)."""
    names = tuple(params.member_names.get(key) or key.hex()[:16] for key in cert.signers)
    note = CheckpointNote(params.name, params.network_hash, header, cert, names)
    verify_note(params, note)
    return note


def verify_note(params: NetworkParams, note: CheckpointNote | str) -> NoteCheck:
    """Check a note (text or parsed) against the network; raises a named FinalityError.

    ``wrong-network``; ``bad-note`` (malformed, or the header is not the checkpoint's, or a
    signer's name is not the member's); and verify_finality's reasons for the certificate.
    """
    if isinstance(note, str):
        note = parse_note(note)
    if note.network_hash != params.network_hash:
        raise FinalityError("wrong-network", f"the note is for network {note.network_hash.hex()[:16]}, not "
                            f"{params.network_hash.hex()[:16]}")
    checkpoint = note.checkpoint
    if note.header.hash() != checkpoint.hash or note.header.height != checkpoint.height:
        raise FinalityError("bad-note", "the header is not the checkpoint's block")
    names = verify_finality(params, note.certificate)
    if tuple(note.names) != names:
        raise FinalityError("bad-note", "a signer's name is not the name the network file gives its key")
    return NoteCheck(checkpoint, note.header.time_ms, names, len(params.members or ()))


def parse_note(text: str) -> CheckpointNote:
    """A note from its text; FinalityError ``bad-note`` unless it is exactly the canonical form."""
    if len(text) > MAX_NOTE_BYTES:
        raise FinalityError("bad-note", f"longer than {MAX_NOTE_BYTES} bytes: not a checkpoint note")
    if not text.endswith("\n"):
        raise FinalityError("bad-note", "a note ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 9 or lines[0] != NOTE_TITLE:
        raise FinalityError("bad-note", f"not a checkpoint note: the first line is not {NOTE_TITLE!r}")
    try:
        network_name = _field(lines[1], "network")
        network_hash = _hex(_field(lines[2], "network-hash"), 32)
        height = _height(_field(lines[3], "height"))
        block_hash = _hex(_field(lines[4], "hash"), 32)
        header = Header.from_bytes(_hex(_field(lines[5], "header"), HEADER_SIZE))
        next_height, next_hash = _field(lines[7], "next").split(" ")
        signatures, names = [], []
        for line in lines[8:]:
            key, sig, name = _field(line, "signer").split(" ", 2)
            signatures.append((_hex(key, 32), _hex(sig, 64)))
            names.append(name)
    except (ValueError, FinalityError) as exc:
        raise FinalityError("bad-note", f"malformed note: {exc}") from None
    cert = Certificate(Checkpoint(height, block_hash), Checkpoint(_height(next_height), _hex(next_hash, 32)),
                       tuple(signatures))
    note = CheckpointNote(network_name, network_hash, header, cert, tuple(names))
    if note.text() != text:  # the time line, number forms and spacing all have one spelling
        raise FinalityError("bad-note", "not in canonical form (fields, spacing or the time line differ)")
    return note


@dataclass(frozen=True, slots=True)
class Fork:
    """Where two notes' branches part: at ``height`` the lower note holds one block and the
    higher note's branch another; ``common`` is the highest block both share, when the headers
    given reach down to it (None otherwise)."""

    height: int
    earlier_hash: bytes
    later_hash: bytes
    common: Checkpoint | None


@dataclass(frozen=True, slots=True)
class Consistency:
    """The answer for two notes: the later extends the earlier, or ``fork`` says where it does not.

    On a fork, ``evidence`` holds what the two certificates prove against members who signed
    both in breach of a slashing condition (empty if their links neither meet nor nest).
    """

    earlier: Checkpoint
    later: Checkpoint
    extends: bool
    fork: Fork | None = None
    evidence: tuple[Evidence, ...] = ()


def check_consistency(params: NetworkParams, first: CheckpointNote, second: CheckpointNote,
                      headers: Iterable[Header] = ()) -> Consistency:
    """Whether the higher note's checkpoint descends from the lower one's (notes in any order).

    ``headers``: block headers in any order, at least those of the higher note's branch from
    just above the lower checkpoint's height up to below its own (each note brings its own
    block's header). The branch is followed down by ``prev_hash``, each header named by its
    own hash, so no header can be slipped in. On a fork, headers of both branches further
    down let ``Fork.common`` name the block where they part. Both notes are verified; headers
    that do not reach the lower height raise ``bad-headers``.
    """
    verify_note(params, first)
    verify_note(params, second)
    earlier, later = sorted((first, second), key=lambda n: (n.checkpoint.height, n.checkpoint.hash))
    low, high = earlier.checkpoint, later.checkpoint
    pool = {header.hash(): header for header in (*headers, earlier.header, later.header)}
    later_branch = _walk(pool, high, low.height)
    if low.height not in later_branch:
        raise FinalityError("bad-headers", f"the headers do not lead from height {high.height} down to {low.height}")
    if later_branch[low.height] == low.hash:
        return Consistency(low, high, True)
    theirs, ours = _walk(pool, Checkpoint(low.height, later_branch[low.height]), 0), _walk(pool, low, 0)
    shared = [height for height, block_hash in ours.items() if theirs.get(height) == block_hash]
    common = Checkpoint(max(shared), ours[max(shared)]) if shared else None
    fork = Fork(low.height, low.hash, later_branch[low.height], common)
    evidence = tuple(certificate_evidence(earlier.certificate, later.certificate))
    return Consistency(low, high, False, fork, evidence)


def _walk(pool: Mapping[bytes, Header], tip: Checkpoint, down_to: int) -> dict[int, bytes]:
    """height -> hash down the branch ending at ``tip``, as far as ``pool`` and ``down_to`` allow."""
    branch = {tip.height: tip.hash}
    block_hash, height = tip.hash, tip.height
    while height > down_to:
        header = pool.get(block_hash)
        if header is None or header.height != height:
            break
        block_hash, height = header.prev_hash, height - 1
        branch[height] = block_hash
    return branch


def _field(line: str, name: str) -> str:
    if not line.startswith(name + " "):
        raise FinalityError("bad-note", f"expected a {name!r} line, got {line[:40]!r}")
    return line[len(name) + 1:]


def _hex(text: str, size: int) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != size or text != raw.hex():
        raise ValueError(f"expected {2 * size} lowercase hex digits")
    return raw


def _height(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or str(int(text)) != text:
        raise ValueError(f"{text!r} is not a height")
    return int(text)


def _iso(time_ms: int) -> str:
    try:
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=time_ms)
    except OverflowError:  # a header's u64 time can lie past year 9999
        return f"{time_ms}ms"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
