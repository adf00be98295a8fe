"""`gridchain network init` and `gridchain network show`: write and read a network file.

``init`` takes every member and relay on the command line, either as a public key that
member sent (``NAME=KEYHEX``) or, when the keys are made on this machine (the demo, the
compose init service), as a data dir or key file whose key is read, or made 0600 if there
is none yet (``--member-data-dir NAME=DIR``, ``--relay-key-file ID=FILE``). Only public
keys go into the file. Writing over a different file needs ``--force``; writing the same
content again is a no-op, so an init step may run on every start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from gridchain.cli.commands.output import Column, dumps, plural, table
from gridchain.cli.settings import DEFAULT_SUBSTATION
from gridchain.config import DEFAULT_DIFFICULTY, Address
from gridchain.identity.key_files import load_or_create_key_file
from gridchain.identity.keys import KEY_FILE, KeyFileError
from gridchain.identity.network_file import (
    Member, NetworkDocument, NetworkFileError, RelayEntry, check_document, load_network_file, parse_key,
)

EXIT_FAILED = 1
EXIT_USAGE = 2


class _InOrder(argparse.Action):
    """Appends (flag, value) to one list, so members and relays keep the command line's order."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        getattr(namespace, self.dest).append((option_string, values))


class InitError(ValueError):
    """A --member/--relay value that cannot be used; str() names the flag and the problem."""


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    network = commands.add_parser("network", help="write or show a network file (members, relays, difficulty)")
    actions = network.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser("init", parents=[common], help="write a network file",
                              description="Write a network file naming the network, its members and its relays.")
    init.add_argument("--name", required=True, help="the network's name")
    init.add_argument("--difficulty", type=int, default=DEFAULT_DIFFICULTY, metavar="BITS",
                      help=f"proof-of-work bits (default: {DEFAULT_DIFFICULTY})")
    init.set_defaults(members=[], relays=[])
    init.add_argument("--member", action=_InOrder, dest="members", metavar="NAME=KEYHEX[@HOST:PORT]",
                      help="a member node by its public key (repeatable; `gridchain keys` prints one)")
    init.add_argument("--member-data-dir", action=_InOrder, dest="members", metavar="NAME=DIR[@HOST:PORT]",
                      help=f"a member whose key is DIR/{KEY_FILE}, made now if missing (repeatable)")
    init.add_argument("--relay", action=_InOrder, dest="relays", metavar="ID=KEYHEX[@SUBSTATION]",
                      help=f"a relay by its public key (repeatable; substation default: {DEFAULT_SUBSTATION!r})")
    init.add_argument("--relay-key-file", action=_InOrder, dest="relays", metavar="ID=FILE[@SUBSTATION]",
                      help="a relay whose key is FILE, made now if missing (repeatable)")
    init.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the network file")
    init.add_argument("--force", action="store_true", help="replace a different network file at --out")
    init.set_defaults(func=init_command)

    show = actions.add_parser("show", parents=[common], help="print a network file and its network hash")
    show.add_argument("file", type=Path, metavar="FILE")
    show.set_defaults(func=show_command)


# --- parsing the command line's members and relays ---------------------------------------------
def _split(flag: str, text: str, what: str) -> tuple[str, str, str | None]:
    """``NAME=VALUE[@EXTRA]`` -> (NAME, VALUE, EXTRA or None)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise InitError(f"{flag} {text!r}: expected NAME={what}")
    value, at, extra = rest.partition("@")
    if at and not extra.strip():
        raise InitError(f"{flag} {text!r}: nothing after '@'")
    return name.strip(), value.strip(), extra.strip() if at else None


def _key_hex(flag: str, text: str, value: str) -> bytes:
    try:
        return parse_key(value)
    except ValueError as exc:
        raise InitError(f"{flag} {text!r}: {exc}") from None


def _key_file(flag: str, text: str, path: Path) -> bytes:
    try:
        return load_or_create_key_file(path).public_key
    except KeyFileError as exc:
        raise InitError(f"{flag} {text!r}: {exc}") from None


def _member_address(flag: str, text: str, extra: str | None) -> Address | None:
    if extra is None:
        return None
    try:
        return Address.parse(extra)
    except ValueError as exc:
        raise InitError(f"{flag} {text!r}: {exc}") from None


def members_from_args(args: argparse.Namespace) -> list[Member]:
    members = []
    for flag, text in args.members:
        if flag == "--member":
            name, value, extra = _split(flag, text, "KEYHEX[@HOST:PORT]")
            key = _key_hex(flag, text, value)
        else:
            name, value, extra = _split(flag, text, "DIR[@HOST:PORT]")
            key = _key_file(flag, text, Path(value) / KEY_FILE)
        members.append(Member(name, key, _member_address(flag, text, extra)))
    return members


def relays_from_args(args: argparse.Namespace) -> list[RelayEntry]:
    relays = []
    for flag, text in args.relays:
        if flag == "--relay":
            relay_id, value, extra = _split(flag, text, "KEYHEX[@SUBSTATION]")
            key = _key_hex(flag, text, value)
        else:
            relay_id, value, extra = _split(flag, text, "FILE[@SUBSTATION]")
            key = _key_file(flag, text, Path(value))
        relays.append(RelayEntry(relay_id, extra or DEFAULT_SUBSTATION, key))
    return relays


# --- the commands ---------------------------------------------------------------------------------
def init_command(args: argparse.Namespace) -> int:
    try:
        members, relays = members_from_args(args), relays_from_args(args)
        document = check_document(args.name, args.difficulty, members, relays)
    except (InitError, NetworkFileError) as exc:
        print(f"gridchain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = document.to_toml()
    out: Path = args.out
    if out.exists() and not args.force:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if out.read_text() == text:
                _report(document, out, args.json, "unchanged")
                return 0
        print(f"gridchain: error: {out} already exists and differs; --force replaces it", file=sys.stderr)
        return EXIT_FAILED
    try:
        write_network_file(out, document)
    except OSError as exc:
        print(f"gridchain: error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    _report(document, out, args.json, "written")
    return 0


def write_network_file(path: Path, document: NetworkDocument) -> None:
    """Write whole or not at all: a node starting meanwhile never reads half a network file."""
    text = document.to_toml()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _report(document: NetworkDocument, out: Path, as_json: bool, state: str) -> None:
    if as_json:
        print(dumps({"file": str(out), "state": state, **document.as_dict()}, pretty=True))
        return
    print(f"{out}: {state}: network {document.name!r}, {plural(len(document.members), 'member')}, "
          f"{plural(len(document.relays), 'relay')}, network hash {document.network_hash().hex()}")
    print(f"every member runs: gridchaind --network-file {out.name} ...")


def show_command(args: argparse.Namespace) -> int:
    try:
        document = load_network_file(args.file)
    except NetworkFileError as exc:
        print(f"gridchain: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(dumps({"file": str(args.file), **document.as_dict()}, pretty=True))
    else:
        print_document(document, sys.stdout)
    return 0


def print_document(document: NetworkDocument, out) -> None:
    print(f"network       {document.name}", file=out)
    print(f"difficulty    {document.difficulty} bits", file=out)
    print(f"network hash  {document.network_hash().hex()}", file=out)
    print(f"\nmembers ({len(document.members)})", file=out)
    table([Column("NAME", 4, lambda m: m.name), Column("KEY", 64, lambda m: m.key.hex()),
           Column("ADDRESS", 7, lambda m: str(m.address) if m.address else "-")], document.members, out, "  ")
    print(f"\nrelays ({len(document.relays)})", file=out)
    table([Column("ID", 2, lambda r: r.relay_id), Column("SUBSTATION", 10, lambda r: r.substation),
           Column("KEY", 64, lambda r: r.key.hex())], document.relays, out, "  ")
