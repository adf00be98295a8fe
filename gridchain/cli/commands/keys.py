"""`gridchain keys`: print a node's or a relay's public key, for the network file.

Members exchange public keys before they write the network file together, so this reads the
key from a data dir (``node.key``, ``relay.key``) or a relay's key file, and with
``--create`` makes it first (0600) when it is not there yet. It never prints a private key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gridchain.cli.commands.output import dumps
from gridchain.identity.key_files import KeyInfo, keys_in, node_key, relay_key
from gridchain.identity.keys import KeyFileError

EXIT_FAILED = 1
EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("keys", parents=[common], help="print a node's or relay's public key",
                                 description="Print the Ed25519 public key of a node (from its data dir) "
                                             "or of a relay (its key file or data dir).")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="a node's or relay's data dir: prints the node.key and relay.key found there")
    parser.add_argument("--relay-key-file", type=Path, metavar="FILE", help="a relay's key file (gridchain-relay "
                        "--key-file)")
    parser.add_argument("--create", action="store_true",
                        help="make the key first if there is none (with --data-dir: a node key)")
    parser.set_defaults(func=keys_command)


def find_keys(data_dir: Path | None, relay_key_file: Path | None, create: bool) -> list[KeyInfo]:
    """The keys asked for; raises KeyFileError for a key file that is missing or unusable."""
    found = []
    if relay_key_file is not None:
        found.append(relay_key(relay_key_file, create))
    if data_dir is not None:
        in_dir = keys_in(data_dir)
        if not in_dir and create and relay_key_file is None:
            in_dir = [node_key(data_dir, create=True)]
        if not in_dir and relay_key_file is None:
            raise KeyFileError("missing", data_dir, "holds no node.key or relay.key (a node makes its key on "
                                                    "first start; --create makes one now)")
        found.extend(in_dir)
    return found


def keys_command(args: argparse.Namespace) -> int:
    if args.data_dir is None and args.relay_key_file is None:
        print("gridchain: error: keys needs --data-dir DIR or --relay-key-file FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        found = find_keys(args.data_dir, args.relay_key_file, args.create)
    except KeyFileError as exc:
        print(f"gridchain: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(dumps(found[0].as_dict() if len(found) == 1 else [k.as_dict() for k in found], pretty=True))
    else:
        for info in found:
            print(f"{info.role:<6} {info.public_key.hex()}  {info.path}")
    return 0
