"""The `gridchain` client: one subcommand per module, one place that turns failures into exit codes.

Exit status: 0 success; 1 the answer is "no" (verify found problems, a proof does not hold)
or the node refused the request; 2 bad usage; 3 the node is not reachable; 130 interrupted.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from gridchain.api.client import NodeUnavailable, RequestFailed
from gridchain.config import DEFAULT_PORT, Address
from gridchain.cli.commands import chain, keys, network, proof, readings, verify

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
DEFAULT_NODE = f"127.0.0.1:{DEFAULT_PORT}"


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_globals(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--node", type=_address, metavar="HOST:PORT",
                        default=default(_address(os.environ.get("GRIDCHAIN_NODE", DEFAULT_NODE))),
                        help=f"the node to ask (default: $GRIDCHAIN_NODE or {DEFAULT_NODE})")
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=default(5.0), metavar="SECONDS",
                        help="how long to wait for the node (default: 5)")


def build_client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridchain", description="Ask a gridchain node about its ledger.")
    _add_globals(parser, suppress=False)
    # The same options after the subcommand (`gridchain status --json`); SUPPRESS keeps the
    # value given before it when they are not repeated.
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chain.register(commands, common)
    readings.register(commands, common)
    verify.register(commands, common)
    proof.register(commands, common)
    network.register(commands, common)
    keys.register(commands, common)
    from gridchain.cli import demo  # the demo starts processes; its parser is all that is needed here

    demo.register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_client_parser()
    args = parser.parse_args(argv)
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
