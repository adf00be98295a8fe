"""`gridchain proof`: fetch the provenance proof of one reading, and check a saved one offline.

A proof file (JSON, ``gridchain-proof/2``) holds two chains of evidence for one reading:

- **where it was measured**: the reading's 108-byte signed row, the relay's seal over the
  run it belongs to (first_seq, count, signature) and the row's path to that seal's root,
  so the relay's own signature covers it, whatever any node did;
- **where it is kept**: the block's 128-byte header and the miner's signature over its hash,
  the row's Merkle path to the header's payload root, and the block's metadata (relay id,
  substation, relay key, miner name, every seal, the gap notice) with its path, which binds
  the relay key and the seal to that block.

- **that it is final**: the headers from the block up to a finalized checkpoint and that
  checkpoint's finality certificate, a quorum of members' signed votes (finality_proof.py),
  written when the node has finalized the block.

``--check`` needs nothing but the file and, to know whose keys those are, the network file:
it names the relay and the member that mined the block, refuses a relay key or miner the
network does not list, and answers "final: certified by 3 of 4 members (names)" or "not
final: why". A forged or short certificate fails the check by its reason name. A bundle
without the finality part proves the reading is in a block, not that the block is on the
chain: compare the hash with any node's ``gridchain block <height>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gridchain.api.client import NodeClient, RequestFailed
from gridchain.cli.commands.finality_proof import check_finality, finality_section
from gridchain.cli.commands.output import dumps, iso_ms, parse_time_ms
from gridchain.cli.commands.readings import reading_to_dict
from gridchain.consensus.block import HEADER_SIZE, READING_SIZE, Block, Capture, Header, short_hash
from gridchain.consensus.merkle import metadata_leaf, payload_leaves
from gridchain.consensus.pow import meets_target
from gridchain.consensus.provenance import (
    GapNotice, ProvenanceError, Reading, Seal, seal_covering, verify_sealed_reading,
)
from gridchain.consensus.signing import verify_signature
from gridchain.consensus.tree import inclusion_proof, leaf_hash, verify_inclusion
from gridchain.identity.network_file import NetworkDocument, NetworkFileError, load_network_file

PROOF_FORMAT = "gridchain-proof/2"
MAX_PATH = 64  # a Merkle path over at most 2^64 leaves; anything longer is not a proof


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("proof", parents=[common], help="prove one reading is the relay's and in a block; "
                                 "check a proof offline")
    parser.add_argument("--relay", help="the reading's relay id")
    parser.add_argument("--timestamp", metavar="MS|ISO", help="the reading's exact timestamp")
    parser.add_argument("--out", type=Path, metavar="FILE", help="save the proof here instead of printing it")
    parser.add_argument("--check", type=Path, metavar="FILE", help="verify a saved proof (no node needed)")
    parser.add_argument("--network-file", type=Path, metavar="NET", help="with --check: the network file, to check "
                        "the relay's key and name the relay and the member that mined the block")
    parser.set_defaults(func=proof_command)


async def proof_command(args: argparse.Namespace) -> int:
    if args.check is not None:
        return check_command(args.check, args.json, args.network_file)
    if not args.relay or not args.timestamp:
        print("gridchain: error: proof needs --relay and --timestamp (or --check FILE)", file=sys.stderr)
        return 2
    try:
        timestamp_ms = parse_time_ms(args.timestamp)
    except ValueError as exc:
        print(f"gridchain: error: --timestamp: {exc}", file=sys.stderr)
        return 2
    async with NodeClient(args.node, args.timeout) as node:
        reply = await node.proof(args.relay, timestamp_ms)
        block = (await node.block(hash=reply.hash)).block
        try:
            final = await node.finality(since=reply.height)
        except RequestFailed as exc:
            if exc.reason != "not-found":
                raise
            final = None  # not final yet (or an open network): the bundle says so
    try:
        if block is None:
            raise ValueError(f"the node does not hold the contents of block {reply.hash.hex()}")
        doc = proof_document(reply, block)
        if final is not None:
            doc["finality"] = finality_section(final.header, final.certificate, final.headers)
    except (ValueError, ProvenanceError) as exc:
        print(f"gridchain: error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        finality = ("final at checkpoint " + str(doc["finality"]["checkpoint"]["height"]) if "finality" in doc
                    else "NOT final yet: no finality certificate in the bundle")
        print(f"saved the proof of {args.relay} seq {doc['seq']} at {iso_ms(timestamp_ms)} (block {reply.height}, "
              f"{short_hash(reply.hash)}, {finality}) to {args.out}", file=sys.stderr)
    return 0


def proof_document(reply, block: Block) -> dict:
    """The JSON proof file for a node's ProofReply, completed from the block it names."""
    capture = block.capture
    index = reply.index - 1
    reading = capture.readings[index]
    if reading.to_bytes() != bytes(reply.leaf):
        raise ValueError("the node's proof names a reading that is not in the block it sent")
    # The seal and its path come from the block itself (the reply names the same ones): the
    # file is then checkable whatever the node said.
    seal, path = seal_covering(capture.readings, capture.seals, index)
    hashes = [leaf_hash(leaf) for leaf in payload_leaves(capture, block.miner_name)]
    return {
        "format": PROOF_FORMAT,
        "relay_id": capture.relay_id, "seq": reading.seq, "timestamp_ms": reading.timestamp_ms,
        "time": iso_ms(reading.timestamp_ms), "reading": reading_to_dict(reading),
        "seal": {"first_seq": seal.first_seq, "count": seal.count, "signature": seal.signature.hex(),
                 "path": [p.hex() for p in path]},
        "height": reply.height, "hash": bytes(reply.hash).hex(), "header": bytes(reply.header).hex(),
        "signature": block.signature.hex(),
        "leaf": bytes(reply.leaf).hex(), "index": reply.index, "size": reply.size,
        "path": [bytes(p).hex() for p in reply.path],
        "metadata": {"substation": capture.substation, "relay_key": capture.relay_key.hex(),
                     "miner_name": block.miner_name,
                     "seals": [[s.first_seq, s.count, s.signature.hex()] for s in capture.seals],
                     "gap": None if capture.gap is None else [capture.gap.resume_seq, capture.gap.boot_ms,
                                                              capture.gap.signature.hex()],
                     "path": [p.hex() for p in inclusion_proof(hashes, 0)]},
    }


class ProofFileError(ValueError):
    """The file is not a gridchain proof (unreadable, not JSON, or a field missing or malformed)."""


def _hex(value: object, name: str, size: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ProofFileError(f"field {name!r} is missing or not hex") from None
    if size is not None and len(data) != size:
        raise ProofFileError(f"field {name!r} is {len(data)} bytes, expected {size}")
    return data


def _path(value: object, name: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > MAX_PATH:
        raise ProofFileError(f"field {name!r} is not a list of at most {MAX_PATH} hashes")
    return [_hex(p, name, 32) for p in value]


def _read(doc: dict) -> tuple[Header, bytes, bytes, Reading, Capture, str, Seal, list[bytes]]:
    """The proof's parts, decoded; raises ProofFileError when it is not shaped like a proof."""
    if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
        raise ProofFileError(f"not a {PROOF_FORMAT} document")
    meta, seal_doc = doc.get("metadata"), doc.get("seal")
    if not isinstance(meta, dict) or not isinstance(seal_doc, dict):
        raise ProofFileError("missing 'metadata' or 'seal'")
    try:
        header = Header.from_bytes(_hex(doc.get("header"), "header", HEADER_SIZE))
        reading = Reading.from_bytes(_hex(doc.get("leaf"), "leaf", READING_SIZE))
        seals = tuple(Seal(int(first), int(count), _hex(sig, "metadata.seals", 64))
                      for first, count, sig in meta["seals"])
        gap = meta.get("gap")
        notice = None if gap is None else GapNotice(int(gap[0]), int(gap[1]), _hex(gap[2], "metadata.gap", 64))
        capture = Capture(str(doc["relay_id"]), str(meta["substation"]), _hex(meta.get("relay_key"), "relay_key", 32),
                          seals=seals, gap=notice)
        seal = Seal(int(seal_doc["first_seq"]), int(seal_doc["count"]), _hex(seal_doc.get("signature"), "seal", 64))
        miner_name = str(meta["miner_name"])
    except ProvenanceError as exc:
        raise ProofFileError(f"the reading row does not decode ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProofFileError):
            raise
        raise ProofFileError(f"missing or malformed field: {exc}") from None
    return header, _hex(doc.get("hash"), "hash", 32), _hex(doc.get("signature"), "signature", 64), reading, \
        capture, miner_name, seal, _path(seal_doc.get("path"), "seal.path")


def check_proof(doc: dict, network: NetworkDocument | None = None) -> tuple[list[str], dict]:
    """Every reason the proof fails (empty when it holds), each starting with its reason name,
    and what it proves. Raises ProofFileError when the document is not shaped like a proof."""
    header, block_hash, signature, reading, capture, miner_name, seal, seal_path_ = _read(doc)
    meta = doc["metadata"]
    try:
        index, size = int(doc["index"]), int(doc["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofFileError(f"missing or malformed field: {exc}") from None
    path, meta_path = _path(doc.get("path"), "path"), _path(meta.get("path"), "metadata.path")
    problems = []
    # Where it is kept: the block.
    if header.hash() != block_hash:
        problems.append(f"bad-hash: the header hashes to {header.hash().hex()}, not to the block hash "
                        f"{block_hash.hex()}")
    if not meets_target(header.hash(), header.bits):
        problems.append(f"bad-pow: the header's hash does not meet its difficulty of {header.bits} bits")
    if not verify_signature(header.miner_key, signature, header.hash()):
        problems.append(f"bad-signature: the block signature is not the miner's ({header.miner_key.hex()[:16]}) "
                        "over the block hash")
    if doc.get("height") is not None and doc["height"] != header.height:
        problems.append(f"bad-height: the header is at height {header.height}, the file says {doc['height']}")
    if index < 1:
        problems.append("bad-index: leaf 0 is the block's metadata, not a reading")
    if not verify_inclusion(reading.to_bytes(), index, size, path, header.payload_root):
        problems.append("bad-merkle-path: the reading's path does not lead to the header's payload root")
    if not verify_inclusion(metadata_leaf(capture, miner_name), 0, size, meta_path, header.payload_root):
        problems.append("bad-metadata: the relay id, substation, relay key, miner name, seals or gap notice are "
                        "not the ones in this block")
    # Where it was measured: the relay's seal.
    if seal not in capture.seals:
        problems.append(f"bad-seal: seal {seal.first_seq}+{seal.count} is not one of this block's seals")
    try:
        verify_sealed_reading(capture.relay_key, capture.relay_id, reading, seal, seal_path_)
    except ProvenanceError as exc:
        problems.append(f"{exc.reason}: {exc.detail}")
    # The readable copies must say what the proven bytes say.
    for key, value in (("seq", reading.seq), ("timestamp_ms", reading.timestamp_ms)):
        if doc.get(key) != value:
            problems.append(f"bad-claim: the proven reading has {key} {value}, the file says {doc.get(key)}")
    if doc.get("reading") is not None and doc["reading"] != reading_to_dict(reading):
        problems.append("bad-claim: the readable 'reading' values differ from the proven row")
    member = relay = None
    if network is not None:
        problems += _against_network(network, header, capture)
        member, relay = network.member(header.miner_key), network.relay(capture.relay_id)
    final_problems, verdict, final_facts = check_finality(doc, header, None if network is None else network.params())
    problems += final_problems
    facts = {"relay_id": capture.relay_id, "substation": capture.substation, "relay_key": capture.relay_key.hex(),
             "seq": reading.seq, "timestamp_ms": reading.timestamp_ms, "height": header.height,
             "hash": header.hash().hex(), "bits": header.bits, "miner_key": header.miner_key.hex(),
             "miner_name": miner_name, "seal": {"first_seq": seal.first_seq, "count": seal.count},
             "network": None if network is None else network.name,
             "member": None if member is None else member.name, "relay_known": relay is not None,
             "reading": reading_to_dict(reading), "final": verdict.startswith("final:"), "finality": verdict,
             **final_facts}
    return problems, facts


def _against_network(network: NetworkDocument, header: Header, capture: Capture) -> list[str]:
    problems = []
    relay = network.relay(capture.relay_id)
    if relay is None:
        problems.append(f"unknown-relay: relay {capture.relay_id!r} is not in network {network.name!r}")
    elif relay.key != capture.relay_key:
        problems.append(f"relay-key-mismatch: the block's key for {capture.relay_id!r} is "
                        f"{capture.relay_key.hex()[:16]}, the network file's is {relay.key.hex()[:16]}")
    elif relay.substation != capture.substation:
        problems.append(f"substation-mismatch: the block says {capture.substation!r}, the network file "
                        f"{relay.substation!r}")
    if network.member(header.miner_key) is None:
        problems.append(f"not-a-member: the block was mined by key {header.miner_key.hex()[:16]}, not a member of "
                        f"network {network.name!r}")
    if header.bits != network.difficulty:
        problems.append(f"bad-difficulty: the block has {header.bits} bits, network {network.name!r} "
                        f"{network.difficulty}")
    return problems


def check_command(path: Path, as_json: bool, network_file: Path | None = None) -> int:
    network = None
    if network_file is not None:
        try:
            network = load_network_file(network_file)
        except NetworkFileError as exc:
            print(f"gridchain: error: --network-file: {exc}", file=sys.stderr)
            return 2
    try:
        doc = json.loads(path.read_text())
        problems, facts = check_proof(doc, network)
    except OSError as exc:
        print(f"gridchain: error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems, facts = [f"not a proof file: not JSON ({exc})"], {}
    except ProofFileError as exc:
        problems, facts = [f"not a proof file: {exc}"], {}
    if as_json:
        print(dumps({"ok": not problems, "problems": problems, **facts}, pretty=True))
    elif problems:
        for problem in problems:
            print(f"FAILED: {problem}")
        if facts.get("finality"):
            print(facts["finality"])
    else:
        _print_ok(facts, network_file)
    return 0 if not problems else 1


def _print_ok(facts: dict, network_file: Path | None) -> None:
    print(f"OK: reading seq {facts['seq']} of {facts['relay_id']} at {iso_ms(facts['timestamp_ms'])} is in block "
          f"{facts['height']} {facts['hash']}")
    seal = facts["seal"]
    print(f"    measured and signed by relay {facts['relay_id']} ({facts['substation']}, key "
          f"{facts['relay_key'][:16]}): seal over seq {seal['first_seq']}..{seal['first_seq'] + seal['count'] - 1}")
    if facts["member"] is not None:
        print(f"    mined by member {facts['member']!r} of network {facts['network']!r} "
              f"(key {facts['miner_key'][:16]}) with {facts['bits']} bits of proof of work")
        print(f"    relay key and miner checked against {network_file}")
    else:
        print(f"    mined by {facts['miner_name']} (key {facts['miner_key'][:16]}) with {facts['bits']} bits of "
              "proof of work")
        print("    the keys were not checked against a network file: add --network-file NET to know whose they are")
    print(facts["finality"])
    if not facts["final"]:
        print(f"    to confirm the block is on the chain: gridchain block {facts['height']}")
