"""The finality part of a proof bundle: the headers from the reading's block up to a finalized
checkpoint and that checkpoint's certificate, written and checked offline. Pure.

A bundle (`gridchain proof`, JSON) holds under ``finality``::

    "checkpoint": {"height": H, "hash": <hex>, "header": <256 hex: its 128-byte header>}
    "certificate": <hex: the finality certificate, gridchain.consensus.finality_certs>
    "headers": [<256 hex>, ...]   the main chain's headers above the block, up to and with H

``check_finality`` follows the headers down from the checkpoint by ``prev_hash`` (each named
by its own hash, so none can be slipped in) to the block of the reading, and checks the
certificate with the network file's member keys alone (verify_finality): a quorum of
distinct members signed the link from the checkpoint to the next one. A certificate that is
short, forged, for another network or not a finality link is refused by its reason name.
"""

from __future__ import annotations

from gridchain.consensus.block import HEADER_SIZE, Header
from gridchain.consensus.finality import Certificate, FinalityError, verify_finality
from gridchain.consensus.params import NetworkParams

# Headers a bundle may carry between its block and the checkpoint; finality follows the tip
# by a checkpoint or two, so a bundle saved at any time needs few. More is not a bundle.
MAX_BUNDLE_HEADERS = 1_000_000


def finality_section(header: bytes, certificate: bytes, headers: tuple[bytes, ...] | list[bytes]) -> dict:
    """The bundle's ``finality`` value for a node's FinalityReply."""
    checkpoint = Header.from_bytes(bytes(header))
    return {"checkpoint": {"height": checkpoint.height, "hash": checkpoint.hash().hex(), "header": bytes(header).hex()},
            "certificate": bytes(certificate).hex(), "headers": [bytes(h).hex() for h in headers]}


def check_finality(doc: dict, block: Header, params: NetworkParams | None) -> tuple[list[str], str, dict]:
    """(problems, verdict, facts) for the bundle's finality part; problems name their reason.

    The verdict is one line: "final: certified by 3 of 4 members (a, b, c) at checkpoint H"
    or "not final: why". No finality part, or no network file to check it with, is "not
    final" without a problem; a part that does not hold is a problem.
    """
    section = doc.get("finality")
    if section is None:
        return [], "not final: the bundle holds no finality certificate (its block was not final when it was saved)", {}
    if params is None or not params.members:
        return [], "not final: checking the certificate needs the network file (--network-file) for the members", {}
    try:
        cert = Certificate.decode(_hex(section["certificate"]))
        checkpoint = Header.from_bytes(_hex(section["checkpoint"]["header"], HEADER_SIZE))
        headers = [Header.from_bytes(_hex(h, HEADER_SIZE)) for h in _list(section["headers"])]
    except FinalityError as exc:
        return [f"{exc.reason}: {exc.detail}"], f"not final: the certificate does not decode ({exc.reason})", {}
    except (KeyError, TypeError, ValueError) as exc:
        return [f"bad-finality: the bundle's finality part is malformed ({exc})"], "not final: malformed", {}
    problems = []
    facts = {"checkpoint_height": checkpoint.height, "checkpoint_hash": checkpoint.hash().hex()}
    if checkpoint.hash() != cert.source.hash or checkpoint.height != cert.source.height:
        problems.append("bad-checkpoint: the checkpoint header is not the block the certificate finalizes")
    if str(section["checkpoint"].get("hash")) != checkpoint.hash().hex():
        problems.append("bad-claim: the checkpoint's hash field is not its header's hash")
    try:
        names = verify_finality(params, cert)
    except FinalityError as exc:
        problems.append(f"{exc.reason}: {exc.detail}")
        return problems, f"not final: the certificate is refused ({exc.reason})", facts
    link = _links_down(checkpoint, headers, block)
    if link is not None:
        problems.append(link)
    facts["signers"] = list(names)
    if problems:
        return problems, f"not final: {problems[0].split(':')[0]}", facts
    verdict = (f"final: certified by {len(names)} of {len(params.members)} members ({', '.join(names)}) "
               f"at checkpoint {checkpoint.height} {checkpoint.hash().hex()[:16]}")
    return [], verdict, facts


def _links_down(checkpoint: Header, headers: list[Header], block: Header) -> str | None:
    """Why the headers do not lead from the checkpoint down to the block, or None."""
    if block.height > checkpoint.height:
        return f"bad-headers: the checkpoint at {checkpoint.height} is below the block at {block.height}"
    pool = {h.hash(): h for h in headers}
    current = checkpoint
    while current.height > block.height:
        parent = pool.get(current.prev_hash)
        if parent is None:
            if current.height == block.height + 1 and current.prev_hash == block.hash():
                return None
            return f"bad-headers: no header for the parent of height {current.height} leads down to the block"
        if parent.height != current.height - 1:
            return f"bad-headers: the header under height {current.height} is at height {parent.height}"
        current = parent
    if current.hash() != block.hash():
        return (f"bad-headers: the checkpoint's branch holds {current.hash().hex()[:16]} at height {block.height}, "
                f"not the reading's block {block.hash().hex()[:16]}")
    return None


def _hex(value: object, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a hex string")
    raw = bytes.fromhex(value)
    if size is not None and len(raw) != size:
        raise ValueError(f"expected {size} bytes, got {len(raw)}")
    return raw


def _list(value: object) -> list:
    if not isinstance(value, list) or len(value) > MAX_BUNDLE_HEADERS:
        raise ValueError(f"headers: expected a list of at most {MAX_BUNDLE_HEADERS}")
    return value
