"""`gridchain verify`: re-check a whole chain, on a running node or in a store on disk.

Against a node, the node audits its own store and reports. With ``--data-dir`` the client
audits a store itself, with no node running (e.g. after a crash, before restarting, or on a
backup copy): every block's hash, proof of work, signature, Merkle root, links, readings and
every relay signature (seals and gap notices), against the network file's keys when given.
Both list the chain's gaps: readings a relay itself signed as lost (a restart that lost its
buffer), with their sequence range and time range. A gap is not a fault of the chain, so it
does not fail the verification, but an operator must see it.

Offline, the network comes from the store itself: its meta table names the network and its
genesis block holds the difficulty, so an open network's store needs no flags. A closed
network's genesis commits to its network file, which must then be given. ``--network`` and
``--difficulty`` may still insist: a store of another network is then one line saying so.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from gridchain.consensus.finality import Evidence
from gridchain.api.client import NodeClient
from gridchain.config import DEFAULT_DIFFICULTY, DEFAULT_NETWORK
from gridchain.consensus.block import BlockDecodeError, Header, short_hash
from gridchain.consensus.genesis import make_genesis
from gridchain.consensus.params import NetworkParams
from gridchain.cli.commands.output import Progress, dumps, is_tty, iso_ms, plural
from gridchain.identity.network_file import NetworkFileError, load_network_file

STORE_FILE = "chain.sqlite3"  # the ledger's database inside a data dir


class StoreMismatch(ValueError):
    """The store holds another network than the one asked for (exit 1: the answer is no)."""


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    """Which network a store holds, as it records it: meta's name and genesis, genesis's bits."""

    network: str
    genesis: bytes
    bits: int


def read_store_identity(store: Path) -> StoreIdentity | None:
    """The network ``store`` records, read-only; None when it records none readably (the audit says why)."""
    try:
        db = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('network', 'genesis')"))
        network, genesis = meta.get("network"), meta.get("genesis")
        if not isinstance(network, str) or not isinstance(genesis, bytes):
            return None
        row = db.execute("SELECT header FROM blocks WHERE hash = ?", (genesis,)).fetchone()
        if row is None:
            return None
        return StoreIdentity(network, genesis, Header.from_bytes(bytes(row[0])).bits)
    except (sqlite3.Error, BlockDecodeError, ValueError):
        return None
    finally:
        db.close()


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("verify", parents=[common],
                                 help="re-check every block (on the node, or offline with --data-dir)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="audit this node data dir offline instead")
    parser.add_argument("--network-file", type=Path, metavar="NET",
                        help="with --data-dir: the network file the node runs with")
    parser.add_argument("--network", default=None, help="with --data-dir and no network file: insist on this "
                        "open network's name (default: the one the store records)")
    parser.add_argument("--difficulty", type=int, default=None, metavar="BITS",
                        help="with --data-dir and no network file: insist on this difficulty (default: the "
                        "store's genesis block's)")
    parser.set_defaults(func=verify_command)


def offline_params(args: argparse.Namespace, identity: StoreIdentity | None = None) -> NetworkParams:
    """The network a data dir is audited against: the network file's, else the open network the
    store records, the options insisting. ValueError names a bad choice, StoreMismatch a store
    of another network."""
    if args.network_file is not None:
        if args.network is not None or args.difficulty is not None:
            raise ValueError("--network and --difficulty come from the network file; leave them out")
        try:
            params = load_network_file(args.network_file).params()
        except NetworkFileError as exc:
            raise ValueError(f"--network-file: {exc}") from None
        if identity is not None and make_genesis(params).hash != identity.genesis:
            raise StoreMismatch(f"{args.network_file} is not the network of this store: the store holds network "
                                f"{identity.network!r} from genesis {short_hash(identity.genesis)}, the file "
                                f"network {params.name!r} from genesis {short_hash(make_genesis(params).hash)}")
        return params
    if identity is None:  # nothing readable to go by: the audit reports what is wrong with the store
        return NetworkParams(args.network or DEFAULT_NETWORK,
                             DEFAULT_DIFFICULTY if args.difficulty is None else args.difficulty)
    if args.network is not None and args.network != identity.network:
        raise StoreMismatch(f"the store holds network {identity.network!r}, not {args.network!r}")
    if args.difficulty is not None and args.difficulty != identity.bits:
        raise StoreMismatch(f"the store's network {identity.network!r} has difficulty {identity.bits} bits, "
                            f"not {args.difficulty}")
    params = NetworkParams(identity.network, identity.bits)
    if make_genesis(params).hash != identity.genesis:
        raise StoreMismatch(f"the store holds the closed network {identity.network!r} (genesis "
                            f"{short_hash(identity.genesis)}): give its --network-file")
    return params


def gap_row(gap: object) -> dict:
    """A gap (store.Gap, or a verify_reply's gap map from a node) as a dict for printing."""
    row = dict(gap) if isinstance(gap, dict) else gap.as_dict()
    if isinstance(row["block_hash"], (bytes, bytearray)):
        row["block_hash"] = bytes(row["block_hash"]).hex()
    return row


def gap_line(gap: dict) -> str:
    after = iso_ms(gap["after_ms"]) if gap.get("after_ms") is not None else "its first reading"
    return (f"  gap  {gap['relay_id']}: seq {gap['first_seq']}..{gap['last_seq']} ({plural(gap['missing'], 'reading')}) "
            f"lost between {after} and {iso_ms(gap.get('resume_ms'))}; the relay restarted at "
            f"{iso_ms(gap.get('boot_ms'))} and signed the loss (block {gap.get('height', '?')})")


def problem_row(problem: object) -> dict:
    """A problem (height, block hash as bytes or hex, reason) as a dict for printing."""
    height, block_hash, reason = problem
    if isinstance(block_hash, (bytes, bytearray)):
        block_hash = bytes(block_hash).hex()
    return {"height": height, "hash": block_hash, "reason": reason}


def report(ok: bool, checked: int, problems: list[dict], where: str, as_json: bool,
           gaps: list[dict] = (), gaps_omitted: int = 0, finality: dict | None = None) -> int:
    if as_json:
        print(dumps({"ok": ok, "checked": checked, "problems": problems, "gaps": list(gaps),
                     "gaps_omitted": gaps_omitted, "finality": finality}, pretty=True))
        return 0 if ok else 1
    if ok:
        print(f"OK: {plural(checked, 'block')} checked in {where}, no problems"
              + (f"; {plural(len(gaps) + gaps_omitted, 'gap')} signed by the relay" if gaps else ""))
    else:
        print(f"FAILED: {plural(len(problems), 'problem')} in {where} ({plural(checked, 'block')} checked)")
        for p in problems:
            height = p["height"] if p["height"] is not None and p["height"] >= 0 else "-"
            print(f"  height {height:<8} {str(p['hash'])[:12] or '-':<12}  {p['reason']}")
    if finality is not None:
        print(f"  finality: {plural(finality['certificates'], 'certificate')} checked"
              + "".join(f"; EVIDENCE against member {e['member']} ({e['kind']})" for e in finality["evidence"]))
    for gap in gaps:
        print(gap_line(gap))
    if gaps_omitted:
        print(f"  ... and {plural(gaps_omitted, 'more gap')} not listed")
    return 0 if ok else 1


async def verify_command(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        store = args.data_dir / STORE_FILE
        try:
            params = offline_params(args, read_store_identity(store) if store.is_file() else None)
        except StoreMismatch as exc:  # the answer is no, in one line (JSON: a report like any other)
            if args.json:
                return report(False, 0, [{"height": None, "hash": "", "reason": str(exc)}], str(store), True)
            print(f"FAILED: {store}: {exc}")
            return 1
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
                  reply.gaps_omitted, finality_summary(reply.certificates, [Evidence.decode(e) for e in reply.evidence]))


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
    return report(result.ok, result.checked, problems, str(store), as_json, [gap_row(g) for g in result.gaps],
                  finality=finality_summary(getattr(result, "certificates", 0), getattr(result, "evidence", []),
                                            params))


def finality_summary(certificates: int, evidence: list, params: NetworkParams | None = None) -> dict | None:
    """What the audit says of finality: certificates checked, members caught (None: none of either)."""
    if not certificates and not evidence:
        return None
    names = {} if params is None else params.member_names
    return {"certificates": certificates,
            "evidence": [{"member": names.get(e.voter) or e.voter.hex()[:16], "kind": e.kind or "conflict"}
                         for e in evidence]}
