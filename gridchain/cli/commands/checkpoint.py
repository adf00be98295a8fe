"""`gridchain checkpoint`: the newest finalized checkpoint as a signed note, and checks of notes.

A checkpoint note (gridchain.consensus.finality_note) is a short text a regulator can archive:
the finalized block's header and the finality certificate that signs it, a quorum of the
members' votes. Three uses:

- ``gridchain checkpoint [--out FILE]``: ask the node for its newest finalized checkpoint;
- ``gridchain checkpoint --check NOTE --network-file NET``: verify a note offline;
- ``gridchain checkpoint --consistency OLD NEW --network-file NET [--headers BUNDLE]``: prove
  the later note's checkpoint extends the earlier one's, or show where they fork, from the
  headers between them (asked of the node, or taken from a proof bundle's finality part).

Exit status: 0 the note holds / the later extends the earlier; 1 it does not (a fork, a
forged or short certificate); 2 bad usage or unreadable files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gridchain.api.client import NodeClient
from gridchain.cli.commands.output import dumps
from gridchain.consensus.block import Header
from gridchain.consensus.finality import FinalityError, check_consistency, parse_note, verify_note
from gridchain.identity.network_file import NetworkFileError, load_network_file


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("checkpoint", parents=[common],
                                 help="print the newest finalized checkpoint as a signed note; check notes offline")
    parser.add_argument("--out", type=Path, metavar="FILE", help="save the note here instead of printing it")
    parser.add_argument("--check", type=Path, metavar="NOTE", help="verify a saved note (no node needed)")
    parser.add_argument("--consistency", type=Path, nargs=2, metavar=("OLD", "NEW"),
                        help="prove NEW's checkpoint extends OLD's, or show the fork")
    parser.add_argument("--headers", type=Path, metavar="BUNDLE", help="with --consistency: take the headers "
                        "between from this proof bundle instead of asking the node")
    parser.add_argument("--network-file", type=Path, metavar="NET", help="the network file: the members' keys")
    parser.set_defaults(func=checkpoint_command)


async def checkpoint_command(args: argparse.Namespace) -> int:
    if args.check is not None or args.consistency is not None:
        if args.network_file is None:
            print("gridchain: error: checking a note needs --network-file (the members' keys)", file=sys.stderr)
            return 2
        try:
            params = load_network_file(args.network_file).params()
        except NetworkFileError as exc:
            print(f"gridchain: error: --network-file: {exc}", file=sys.stderr)
            return 2
        if args.check is not None:
            return check_note(args.check, params, args.json)
        return await consistency(args, params)
    async with NodeClient(args.node, args.timeout) as node:
        reply = await node.finality()
    if args.out is None:
        sys.stdout.write(reply.note)
    else:
        args.out.write_text(reply.note)
        height = Header.from_bytes(reply.header).height
        print(f"saved the finalized checkpoint at height {height} to {args.out}", file=sys.stderr)
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"gridchain: error: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def check_note(path: Path, params, as_json: bool) -> int:
    text = _read(path)
    try:
        result = verify_note(params, text)
    except FinalityError as exc:
        if as_json:
            print(dumps({"ok": False, "reason": exc.reason, "detail": exc.detail}, pretty=True))
        else:
            print(f"FAILED: {exc.reason}: {exc.detail}")
        return 1
    if as_json:
        print(dumps({"ok": True, "height": result.checkpoint.height, "hash": result.checkpoint.hash.hex(),
                     "time_ms": result.time_ms, "signers": list(result.signers), "members": result.members},
                    pretty=True))
    else:
        print(f"OK: {result.summary()}")
    return 0


async def consistency(args: argparse.Namespace, params) -> int:
    old_path, new_path = args.consistency
    try:
        first, second = parse_note(_read(old_path)), parse_note(_read(new_path))
    except FinalityError as exc:
        print(f"FAILED: {exc.reason}: {exc.detail}")
        return 1
    low, high = sorted((first.checkpoint, second.checkpoint))
    if args.headers is not None:
        headers = bundle_headers(args.headers)
    elif high.height - low.height > 1:
        async with NodeClient(args.node, args.timeout) as node:
            headers = [Header.from_bytes(raw) for raw in await node.raw_headers(low.height + 1, high.height - 1)]
    else:
        headers = []
    try:
        answer = check_consistency(params, first, second, headers)
    except FinalityError as exc:
        print(f"FAILED: {exc.reason}: {exc.detail}")
        return 1
    if args.json:
        print(dumps({"extends": answer.extends, "earlier": [answer.earlier.height, answer.earlier.hash.hex()],
                     "later": [answer.later.height, answer.later.hash.hex()],
                     "fork": None if answer.fork is None else {
                         "height": answer.fork.height, "earlier_hash": answer.fork.earlier_hash.hex(),
                         "later_hash": answer.fork.later_hash.hex(),
                         "common": None if answer.fork.common is None else answer.fork.common.height},
                     "evidence": [e.encode().hex() for e in answer.evidence]}, pretty=True))
    elif answer.extends:
        print(f"consistent: the checkpoint at {answer.later.height} ({answer.later.hash.hex()[:16]}) extends the one "
              f"at {answer.earlier.height} ({answer.earlier.hash.hex()[:16]})")
    else:
        fork = answer.fork
        common = "unknown (the headers do not reach it)" if fork.common is None else \
            f"height {fork.common.height} ({fork.common.hash.hex()[:16]})"
        print(f"FORK: at height {fork.height} the earlier note holds {fork.earlier_hash.hex()[:16]}, the later note's "
              f"branch {fork.later_hash.hex()[:16]}; last common block {common}")
        for evidence in answer.evidence:
            name = params.member_names.get(evidence.voter) or evidence.voter.hex()[:16]
            print(f"EVIDENCE: member {name} signed both certificates in breach of {evidence.kind}")
    return 0 if answer.extends else 1


def bundle_headers(path: Path) -> list[Header]:
    """The headers of a proof bundle's finality part (and its checkpoint's own)."""
    try:
        section = json.loads(_read(path))["finality"]
        raws = [*section["headers"], section["checkpoint"]["header"]]
        return [Header.from_bytes(bytes.fromhex(raw)) for raw in raws]
    except (KeyError, TypeError, ValueError) as exc:
        raise SystemExit(f"gridchain: error: {path} holds no proof bundle finality headers ({exc})") from None
