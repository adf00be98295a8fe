"""`gridchain verify`: re-check a whole chain, on a running node or in a store on disk.

Against a node, the node audits its own store and reports. With ``--data-dir`` the client
audits a store itself, with no node running (e.g. after a crash, before restarting, or on a
backup copy): every block's hash, proof of work, signature, Merkle root, links and readings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gridchain.api.client import NodeClient
from gridchain.config import DEFAULT_DIFFICULTY, DEFAULT_NETWORK
from gridchain.consensus.params import NetworkParams
from gridchain.cli.commands.output import Progress, dumps, is_tty

STORE_FILE = "chain.sqlite3"  # the ledger's database inside a data dir


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("verify", parents=[common],
                                 help="re-check every block (on the node, or offline with --data-dir)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="audit this node data dir offline instead")
    parser.add_argument("--network", default=DEFAULT_NETWORK, help=f"with --data-dir: network name "
                        f"(default: {DEFAULT_NETWORK})")
    parser.add_argument("--difficulty", type=int, default=DEFAULT_DIFFICULTY, metavar="BITS",
                        help=f"with --data-dir: the network's difficulty (default: {DEFAULT_DIFFICULTY})")
    parser.set_defaults(func=verify_command)


def problem_row(problem: object) -> dict:
    """A problem (height, block hash as bytes or hex, reason) as a dict for printing."""
    height, block_hash, reason = problem
    if isinstance(block_hash, (bytes, bytearray)):
        block_hash = bytes(block_hash).hex()
    return {"height": height, "hash": block_hash, "reason": reason}


def report(ok: bool, checked: int, problems: list[dict], where: str, as_json: bool) -> int:
    if as_json:
        print(dumps({"ok": ok, "checked": checked, "problems": problems}, pretty=True))
    elif ok:
        print(f"OK: {checked:,} blocks checked in {where}, no problems")
    else:
        print(f"FAILED: {len(problems)} problem(s) in {where} ({checked:,} blocks checked)")
        for p in problems:
            height = p["height"] if p["height"] is not None and p["height"] >= 0 else "-"
            print(f"  height {height:<8} {str(p['hash'])[:12] or '-':<12}  {p['reason']}")
    return 0 if ok else 1


async def verify_command(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        return audit_data_dir(args.data_dir, NetworkParams(args.network, args.difficulty), args.json)
    if is_tty(sys.stderr) and not args.json:
        print(f"asking {args.node} to re-check its whole chain...", file=sys.stderr)
    async with NodeClient(args.node, args.timeout) as node:
        reply = await node.verify()
    problems = [problem_row(p) for p in reply.problems]
    return report(reply.ok, reply.checked, problems, f"the chain of {args.node}", args.json)


def audit_data_dir(data_dir: Path, params: NetworkParams, as_json: bool) -> int:
    from gridchain.ledger.audit import audit_store  # only this command needs the ledger
    from gridchain.ledger.ledger import LedgerDamaged
    from gridchain.ledger.store import StoreError

    store = data_dir / STORE_FILE
    if not store.is_file():
        print(f"gridchain: error: {data_dir} holds no {STORE_FILE} (is it a node's data dir?)", file=sys.stderr)
        return 2
    progress = Progress(f"verifying {store}")
    try:
        result = audit_store(store, params, progress=progress.update)
    except (LedgerDamaged, StoreError) as exc:
        progress.done()
        return report(False, 0, [{"height": None, "hash": "", "reason": str(exc)}], str(store), as_json)
    progress.done()
    problems = [problem_row(p) for p in result.problems]
    if result.omitted:
        problems.append({"height": None, "hash": "", "reason": f"... and {result.omitted} more not listed"})
    return report(result.ok, result.checked, problems, str(store), as_json)
