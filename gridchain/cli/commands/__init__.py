"""The `gridchain` client: one subcommand per module, one place that turns failures into exit codes.

Exit status: 0 success; 1 the answer is "no" (verify found problems, a proof does not hold)
or the node refused the request; 2 bad usage; 3 the node is not reachable; 130 interrupted.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from gridchain.api.client import (
    ACCESS, DEFAULT_NODE, NODE_ENV, NODE_KEY_ENV, TOKEN_ENV, TOKEN_FILE_ENV, NodeUnavailable, RequestFailed, default_node,
    default_node_key, default_token, parse_node,
)
from gridchain.config import Address
from gridchain.cli.commands import chain, checkpoint, health, keys, network, proof, readings, verify
from gridchain.cli.version import add_version_flag

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
# Subcommands that work without a node, so a bad $GRIDCHAIN_NODE does not stop them.
OFFLINE_COMMANDS = ("network", "keys", "demo")


def _address(text: str) -> Address:
    try:
        return parse_node(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _add_globals(parser: argparse.ArgumentParser, suppress: bool, node: Address | None) -> None:
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--node", type=_address, metavar="HOST:PORT", default=default(node),
                        help=f"the node's operator API, HOST:PORT or unix:PATH (default: ${NODE_ENV} or "
                             f"{DEFAULT_NODE})")
    parser.add_argument("--token-file", type=Path, metavar="FILE", default=default(None),
                        help=f"the token to open the session with, e.g. <data-dir>/admin.token (default: "
                             f"${TOKEN_ENV} or ${TOKEN_FILE_ENV}); needed from another host, and for verify")
    parser.add_argument("--node-key", metavar="HEX", default=default(None),
                        help=f"the node's key: TLS to it is pinned to this key (default: ${NODE_KEY_ENV})")
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")
    parser.add_argument("--timeout", type=_timeout, default=default(5.0), metavar="SECONDS",
                        help="how long to wait for the node (default: 5)")


def build_client_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The client's parser; ``--node`` defaults to ``$GRIDCHAIN_NODE`` from ``env`` (default os.environ).

    A bad ``$GRIDCHAIN_NODE`` leaves ``--node`` without a default and its message in
    ``node_error``, so only a command that needs a node fails on it.
    """
    parser = argparse.ArgumentParser(prog="gridchain", description="Ask a gridchain node about its ledger.")
    add_version_flag(parser)
    try:
        node, node_error = default_node(env), None
    except ValueError as exc:
        node, node_error = None, str(exc)
    parser.set_defaults(node_error=node_error)
    _add_globals(parser, suppress=False, node=node)
    # The same options after the subcommand (`gridchain status --json`); SUPPRESS keeps the
    # value given before it when they are not repeated.
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, suppress=True, node=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chain.register(commands, common)
    health.register(commands, common)
    readings.register(commands, common)
    verify.register(commands, common)
    proof.register(commands, common)
    checkpoint.register(commands, common)
    network.register(commands, common)
    keys.register(commands, common)
    from gridchain.cli import demo  # the demo starts processes; its parser is all that is needed here

    demo.register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_client_parser()
    args = parser.parse_args(argv)
    offline = args.command in OFFLINE_COMMANDS or getattr(args, "check", None) or getattr(args, "data_dir", None) \
        or getattr(args, "headers", None)
    if args.node is None and not offline:
        print(f"gridchain: error: {args.node_error}", file=sys.stderr)
        return EXIT_USAGE
    # Every NodeClient this command opens takes them (gridchain.api.client.ACCESS).
    token_file = getattr(args, "token_file", None)
    access = ACCESS.set((str(token_file) if token_file is not None else None, getattr(args, "node_key", None)))
    try:
        return _run(args, offline)
    finally:
        ACCESS.reset(access)


def _run(args: argparse.Namespace, offline: bool) -> int:
    try:
        if not offline:
            default_token(), default_node_key()
    except ValueError as exc:
        print(f"gridchain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if asyncio.iscoroutinefunction(args.func):
            import uvloop

            return uvloop.run(args.func(args))
        return args.func(args)
    except NodeUnavailable as exc:
        print(f"gridchain: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RequestFailed as exc:
        if exc.reason == "bad-reply":
            print(f"gridchain: {args.node} did not answer as a gridchain node ({exc.detail})", file=sys.stderr)
        else:
            print(f"gridchain: {args.node} could not answer {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # Ctrl-C is how `tail` (and the demo) are meant to end.
        return 0 if args.command in ("tail", "demo") else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`gridchain readings | head`): stop quietly, as cat would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
