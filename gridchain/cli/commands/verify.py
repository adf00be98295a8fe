"""`gridchain verify`: re-check a whole chain, on a running node or in a store on disk.

Against a node, the node audits its own store and reports. With ``--data-dir`` the client
audits a store itself, with no node running (e.g. after a crash, before restarting, or on a
backup copy): every block's hash, proof of work, signature, Merkle root, links, readings and
every relay signature (seals and gap notices), against the network file's keys when given.
Both list the chain's gaps: readings a relay itself signed as lost (a restart that lost its
buffer), with their sequence range and time range. A gap is not a fault of the chain, so it
does not fail the verification, but an operator must see it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gridchain.api.client import NodeClient
from gridchain.config import DEFAULT_DIFFICULTY, DEFAULT_NETWORK
from gridchain.consensus.params import NetworkParams
from gridchain.cli.commands.output import Progress, dumps, is_tty, iso_ms
from gridchain.identity.network_file import NetworkFileError, load_network_file

STORE_FILE = "chain.sqlite3"  # the ledger's database inside a data dir


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("verify", parents=[common],
                                 help="re-check every block (on the node, or offline with --data-dir)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="audit this node data dir offline instead")
    parser.add_argument("--network-file", type=Path, metavar="NET",
                        help="with --data-dir: the network file the node runs with")
    parser.add_argument("--network", default=None, help=f"with --data-dir and no network file: the open network's "
                        f"name (default: {DEFAULT_NETWORK})")
    parser.add_argument("--difficulty", type=int, default=None, metavar="BITS",
                        help=f"with --data-dir and no network file: its difficulty (default: {DEFAULT_DIFFICULTY})")
    parser.set_defaults(func=verify_command)


def offline_params(args: argparse.Namespace) -> NetworkParams:
    """The network a data dir is audited against; raises ValueError naming a bad choice."""
    if args.network_file is None:
        return NetworkParams(args.network or DEFAULT_NETWORK,
                             DEFAULT_DIFFICULTY if args.difficulty is None else args.difficulty)
    if args.network is not None or args.difficulty is not None:
        raise ValueError("--network and --difficulty come from the network file; leave them out")
    try:
        return load_network_file(args.network_file).params()
    except NetworkFileError as exc:
        raise ValueError(f"--network-file: {exc}") from None


def gap_row(gap: object) -> dict:
    """A gap (store.Gap, or a verify_reply's gap map from a node) as a dict for printing."""
    row = dict(gap) if isinstance(gap, dict) else gap.as_dict()
    if isinstance(row["block_hash"], (bytes, bytearray)):
        row["block_hash"] = bytes(row["block_hash"]).hex()
    return row


def gap_line(gap: dict) -> str:
    after = iso_ms(gap["after_ms"]) if gap.get("after_ms") is not None else "its first reading"
    return (f"  gap  {gap['relay_id']}: seq {gap['first_seq']}..{gap['last_seq']} ({gap['missing']:,} readings) "
            f"lost between {after} and {iso_ms(gap.get('resume_ms'))}; the relay restarted at "
            f"{iso_ms(gap.get('boot_ms'))} and signed the loss (block {gap.get('height', '?')})")


def problem_row(problem: object) -> dict:
    """A problem (height, block hash as bytes or hex, reason) as a dict for printing."""
    height, block_hash, reason = problem
    if isinstance(block_hash, (bytes, bytearray)):
        block_hash = bytes(block_hash).hex()
    return {"height": height, "hash": block_hash, "reason": reason}


def report(ok: bool, checked: int, problems: list[dict], where: str, as_json: bool,
           gaps: list[dict] = (), gaps_omitted: int = 0) -> int:
    if as_json:
        print(dumps({"ok": ok, "checked": checked, "problems": problems, "gaps": list(gaps),
                     "gaps_omitted": gaps_omitted}, pretty=True))
        return 0 if ok else 1
    if ok:
        print(f"OK: {checked:,} blocks checked in {where}, no problems"
              + (f"; {len(gaps) + gaps_omitted} gap(s) signed by the relay" if gaps else ""))
    else:
        print(f"FAILED: {len(problems)} problem(s) in {where} ({checked:,} blocks checked)")
        for p in problems:
            height = p["height"] if p["height"] is not None and p["height"] >= 0 else "-"
            print(f"  height {height:<8} {str(p['hash'])[:12] or '-':<12}  {p['reason']}")
    for gap in gaps:
        print(gap_line(gap))
    if gaps_omitted:
        print(f"  ... and {gaps_omitted:,} more gap(s) not listed")
    return 0 if ok else 1


async def verify_command(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        try:
            params = offline_params(args)
        except ValueError as exc:
            print(f"gridchain: error: {exc}", file=sys.stderr)
            return 2
        return audit_data_dir(args.data_dir, params, args.json)
    if args.network_file is not None or args.network is not None or args.difficulty is not None:
        print("gridchain: error: --network-file, --network and --difficulty go with --data-dir (a node knows its "
              "network)", file=sys.stderr)
        return 2
    if is_tty(sys.stderr) and not args.json:
        print(f"asking {args.node} to re-check its whole chain...", file=sys.stderr)
    async with NodeClient(args.node, args.timeout) as node:
        reply = await node.verify()
    problems = [problem_row(p) for p in reply.problems]
    gaps = [gap_row(g) for g in reply.gaps]
    return report(reply.ok, reply.checked, problems, f"the chain of {args.node}", args.json, gaps,
                  reply.gaps_omitted)


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
    return report(result.ok, result.checked, problems, str(store), as_json, [gap_row(g) for g in result.gaps])
