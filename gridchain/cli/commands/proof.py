"""`gridchain proof`: fetch the inclusion proof of one reading, and check a saved one offline.

A proof file is JSON holding the block's 128-byte header, its signature, the reading's
88 bytes with the Merkle path from that leaf to the header's payload root, and the capture
metadata (relay id, substation, openings, miner name) with its own path. ``--check``
needs nothing but the file: it recomputes the block hash from the header, checks the
proof of work and the miner's signature, and follows both paths to the payload root. What
it cannot tell offline is whether that block is on the chain: compare the hash with any
node's ``gridchain block <height>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gridchain.api.client import NodeClient
from gridchain.consensus.block import HEADER_SIZE, READING_SIZE, Block, Capture, Header, Reading, short_hash
from gridchain.consensus.merkle import metadata_leaf, payload_leaves
from gridchain.consensus.tree import inclusion_proof, leaf_hash, verify_inclusion
from gridchain.consensus.pow import meets_target
from gridchain.consensus.signing import verify_signature
from gridchain.cli.commands.output import dumps, iso_ms, parse_time_ms

PROOF_FORMAT = "gridchain-proof/1"


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("proof", parents=[common], help="prove one reading is in a block; check a proof offline")
    parser.add_argument("--relay", help="the reading's relay id")
    parser.add_argument("--timestamp", metavar="MS|ISO", help="the reading's exact timestamp")
    parser.add_argument("--out", type=Path, metavar="FILE", help="save the proof here instead of printing it")
    parser.add_argument("--check", type=Path, metavar="FILE", help="verify a saved proof (no node needed)")
    parser.set_defaults(func=proof_command)


async def proof_command(args: argparse.Namespace) -> int:
    if args.check is not None:
        return check_command(args.check, args.json)
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
    doc = proof_document(reply, block)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"saved the proof of {args.relay} at {iso_ms(timestamp_ms)} (block {reply.height}, "
              f"{short_hash(reply.hash)}) to {args.out}", file=sys.stderr)
    return 0


def proof_document(reply, block: Block) -> dict:
    """The JSON proof file for a node's ProofReply, completed from the block it names."""
    capture = block.capture
    hashes = [leaf_hash(leaf) for leaf in payload_leaves(capture, block.miner_name)]
    reading = Reading.from_bytes(bytes(reply.leaf))
    return {
        "format": PROOF_FORMAT,
        "relay_id": capture.relay_id, "timestamp_ms": reading.timestamp_ms, "time": iso_ms(reading.timestamp_ms),
        "reading": reading.as_dict(),
        "height": reply.height, "hash": bytes(reply.hash).hex(), "header": bytes(reply.header).hex(),
        "signature": block.signature.hex(),
        "leaf": bytes(reply.leaf).hex(), "index": reply.index, "size": reply.size,
        "path": [bytes(p).hex() for p in reply.path],
        "metadata": {"substation": capture.substation, "openings": capture.openings,
                     "miner_name": block.miner_name, "path": [p.hex() for p in inclusion_proof(hashes, 0)]},
    }


class ProofFileError(ValueError):
    """The file is not a gridchain proof (unreadable, not JSON, or a field missing or malformed)."""


def _hex(doc: dict, key: str, size: int | None = None) -> bytes:
    try:
        value = bytes.fromhex(doc[key])
    except KeyError:
        raise ProofFileError(f"missing field {key!r}") from None
    except (TypeError, ValueError):
        raise ProofFileError(f"field {key!r} is not hex") from None
    if size is not None and len(value) != size:
        raise ProofFileError(f"field {key!r} is {len(value)} bytes, expected {size}")
    return value


def check_proof(doc: dict) -> tuple[list[str], dict]:
    """Every reason the proof fails (empty when it holds) and what it proves.

    Raises ProofFileError when the document is not shaped like a proof at all.
    """
    if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
        raise ProofFileError(f"not a {PROOF_FORMAT} document")
    header = Header.from_bytes(_hex(doc, "header", HEADER_SIZE))
    block_hash, signature, leaf = _hex(doc, "hash", 32), _hex(doc, "signature", 64), _hex(doc, "leaf", READING_SIZE)
    meta = doc.get("metadata")
    try:
        index, size, path = int(doc["index"]), int(doc["size"]), [bytes.fromhex(p) for p in doc["path"]]
        meta_path = [bytes.fromhex(p) for p in meta["path"]]
        capture = Capture(str(doc["relay_id"]), str(meta["substation"]), int(meta["openings"]))
        miner_name, claimed = str(meta["miner_name"]), int(doc["timestamp_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofFileError(f"missing or malformed field: {exc}") from None
    reading = Reading.from_bytes(leaf)
    problems = []
    if header.hash() != block_hash:
        problems.append(f"the header hashes to {header.hash().hex()}, not to the block hash {block_hash.hex()}")
    if not meets_target(header.hash(), header.bits):
        problems.append(f"the header's hash does not meet its difficulty of {header.bits} bits")
    if not verify_signature(header.miner_key, signature, header.hash()):
        problems.append(f"the signature is not the miner's ({header.miner_key.hex()[:12]}) over the block hash")
    if doc.get("height") is not None and doc["height"] != header.height:
        problems.append(f"the header is at height {header.height}, the file says {doc['height']}")
    if index < 1:
        problems.append("leaf 0 is the capture metadata, not a reading")
    if not verify_inclusion(leaf, index, size, path, header.payload_root):
        problems.append("the reading's Merkle path does not lead to the header's payload root")
    if not verify_inclusion(metadata_leaf(capture, miner_name), 0, size, meta_path, header.payload_root):
        problems.append("the relay id, substation, openings or miner name are not the ones in this block")
    if reading.timestamp_ms != claimed:
        problems.append(f"the proven reading is at {reading.timestamp_ms}, the file claims {claimed}")
    if doc.get("reading") is not None and doc["reading"] != reading.as_dict():
        problems.append("the readable 'reading' values differ from the proven leaf")
    facts = {"relay_id": capture.relay_id, "timestamp_ms": reading.timestamp_ms, "height": header.height,
             "hash": header.hash().hex(), "bits": header.bits, "miner_key": header.miner_key.hex(),
             "miner_name": miner_name, "reading": reading.as_dict()}
    return problems, facts


def check_command(path: Path, as_json: bool) -> int:
    try:
        doc = json.loads(path.read_text())
        problems, facts = check_proof(doc)
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
    else:
        print(f"OK: the reading of {facts['relay_id']} at {iso_ms(facts['timestamp_ms'])} is in block "
              f"{facts['height']} {facts['hash']}")
        print(f"    sealed with {facts['bits']} bits of proof of work and signed by {facts['miner_name']} "
              f"(key {facts['miner_key'][:16]})")
        print(f"    to confirm the block is on the chain: gridchain block {facts['height']}")
    return 0 if not problems else 1
