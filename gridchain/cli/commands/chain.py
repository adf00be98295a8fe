"""`gridchain status`, `blocks`, `block` and `tail`: what a node holds and what it is doing."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from gridchain.api.client import NodeClient
from gridchain.consensus.block import HASH_SIZE, Block, short_hash
from gridchain.cli.commands.output import Column, StreamTable, dumps, duration, iso_ms, plural, table
from gridchain.cli.commands.readings import BreakerMarks, reading_table, reading_to_dict

RECENT_BLOCKS = 20  # `gridchain blocks` with no range shows this many of the newest
MIN_PREFIX = 4  # hex digits of the shortest hash prefix `block` looks up, as git's minimum
# A number with this many digits or more is a hash prefix, not a height: the tables print
# 12-digit hashes, and no chain will reach 10^11 blocks.
PREFIX_DIGITS = 12
CANDIDATES_SHOWN = 5  # an ambiguous prefix's error names this many of the blocks it matches
# Newest blocks searched for a relay's newest reading when the node's relay row has none.
NEWEST_SEARCH_BLOCKS = 100

BLOCK_COLUMNS = (
    Column("HEIGHT", 8, lambda r: r["height"], right=True),
    Column("HASH", 12, lambda r: short_hash(r["hash"])),
    Column("TIME", 24, lambda r: iso_ms(r.get("time_ms"))),
    Column("MINER", 14, lambda r: r.get("miner_name", "")),
    Column("RELAY", 10, lambda r: r.get("relay_id", "") or "-"),
    Column("READINGS", 8, lambda r: r.get("readings", 0), right=True),
    Column("NEWEST READING", 24, lambda r: iso_ms(r.get("newest_ms"))),
)


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    status = commands.add_parser("status", parents=[common], help="the node's chain, peers, relays and mining")
    status.set_defaults(func=status_command)

    blocks = commands.add_parser("blocks", parents=[common], help="a range of main-chain blocks, one line each")
    blocks.add_argument("--from", dest="start", type=int, metavar="N", help="first height (default: 20 below the tip)")
    blocks.add_argument("--to", dest="stop", type=int, metavar="M", help="last height (default: the tip)")
    blocks.set_defaults(func=blocks_command)

    block = commands.add_parser("block", parents=[common], help="one block in full, by height or hash")
    block.add_argument("ref", metavar="HASH|HEIGHT", help="a main-chain height, a full 64-hex block hash, or a "
                       f"unique prefix of at least {MIN_PREFIX} hex digits of a main-chain block's hash (as the "
                       "tables print them); a number starting with 0 or of 12+ digits is a prefix")
    block.set_defaults(func=block_command)

    tail = commands.add_parser("tail", parents=[common], help="print each new block as it arrives (Ctrl-C ends)")
    tail.set_defaults(func=tail_command)


async def status_command(args: argparse.Namespace) -> int:
    async with NodeClient(args.node, args.timeout) as node:
        info = await node.status()
        if not args.json and any(r.get("relay_id") and r.get("newest_ms") is None for r in info.get("relays", [])):
            height = int(info.get("height", 0))
            rows = await node.headers(max(1, height - NEWEST_SEARCH_BLOCKS + 1), height) if height > 0 else []
            info = with_chain_newest(info, rows)
    if args.json:
        print(dumps(info, pretty=True))
    else:
        print_status(info, sys.stdout)
    return 0


def with_chain_newest(info: dict, header_rows: list[dict]) -> dict:
    """``info`` with each relay row lacking a newest reading given its newest in ``header_rows``.

    A node polls its relay only for readings its chain lacks, so when its peers mined them
    first its relay row has none; the chain holds them all the same.
    """
    newest: dict[str, int] = {}
    for row in header_rows:
        if row.get("relay_id") and row.get("newest_ms") is not None:
            newest[row["relay_id"]] = max(newest.get(row["relay_id"], row["newest_ms"]), row["newest_ms"])
    relays = [{**r, "newest_ms": newest.get(r.get("relay_id"))} if r.get("newest_ms") is None else r
              for r in info.get("relays", [])]
    return {**info, "relays": relays}


def print_status(info: dict, out) -> None:
    lag = info.get("loop_lag_ms") or {}
    print(f"node       {info.get('name', '?')} on port {info.get('port', '?')}  key {str(info.get('node_key', ''))[:16]}",
          file=out)
    print(f"network    {info.get('network', '?')}  difficulty {info.get('difficulty', '?')} bits", file=out)
    print(f"chain      height {info.get('height', '?')}  tip {str(info.get('tip', ''))[:12]}  work {info.get('work', '?')}"
          + ("  (syncing)" if info.get("syncing") else ""), file=out)
    print_finality(info.get("finality"), out)
    print(f"mining     {info.get('mining', '?')}  capture every {info.get('capture_interval_s', '?')} s"
          f"  uptime {duration(float(info.get('uptime_s', 0)))}"
          + (f"  loop lag p99 {lag.get('p99', 0):.1f} ms" if lag else ""), file=out)
    peers = info.get("peers", [])
    print(f"peers ({len(peers)})", file=out)
    if peers:
        table((Column("ADDRESS", 0, lambda p: p.get("address", "")), Column("NAME", 0, lambda p: p.get("name", "")),
               Column("STATE", 0, lambda p: p.get("state", "")),
               Column("DIR", 0, lambda p: "in" if p.get("inbound") else "out"),
               Column("HEIGHT", 0, lambda p: p.get("height", ""), right=True),
               Column("TIP", 0, lambda p: str(p.get("tip", ""))[:12]),
               Column("KEY", 0, lambda p: str(p.get("node_key", ""))[:12])), peers, out, indent="  ")
    for row in info.get("configured_peers") or ():
        if not row.get("connected"):
            print(f"  {configured_peer_down(row)}", file=out)
    relays = info.get("relays", [])
    print(f"relays ({len(relays)})", file=out)
    if relays:
        table((Column("ADDRESS", 0, lambda r: r.get("address", "")),
               Column("RELAY", 0, lambda r: r.get("relay_id") or "-"),
               Column("STATE", 0, lambda r: r.get("state", "")),
               Column("NEWEST READING", 0, lambda r: iso_ms(r.get("newest_ms"))),
               Column("LAST ERROR", 0, lambda r: r.get("last_error") or "")), relays, out, indent="  ")
    alerts = info.get("alerts") or []
    print(f"alerts ({len(alerts)})", file=out)
    for alert in alerts:
        print(f"  {alert.get('severity', '?'):8} {alert.get('name', '?')}  {alert.get('subject', '')}"
              f"  since {iso_ms(alert.get('since_ms'))}  {alert.get('detail', '')}", file=out)


async def blocks_command(args: argparse.Namespace) -> int:
    async with NodeClient(args.node, args.timeout) as node:
        start, stop = args.start, args.stop
        if start is None or stop is None:
            height = (await node.status())["height"]
            stop = height if stop is None else stop
            start = max(0, stop - RECENT_BLOCKS + 1) if start is None else start
        if start < 0 or stop < start:
            print(f"gridchain: error: empty range --from {start} --to {stop}", file=sys.stderr)
            return 2
        writer = None if args.json else StreamTable(BLOCK_COLUMNS, sys.stdout)
        async for rows in node.header_pages(start, stop):
            if writer is None:
                sys.stdout.write("".join(dumps(row) + "\n" for row in rows))
            else:
                writer.rows(rows)
            sys.stdout.flush()
    return 0


def parse_block_ref(text: str) -> dict:
    """``{"height": n}`` for a height, ``{"hash": bytes}`` for 64 hex digits, ``{"prefix": str}``
    for a shorter hash prefix; ValueError otherwise.

    Heights never start with 0 (but 0 itself) while proof-of-work hashes do, so ``000026934773``
    is a prefix and ``26`` a height.
    """
    text = text.strip().lower()
    is_hex = bool(text) and all(c in "0123456789abcdef" for c in text)
    if len(text) == 2 * HASH_SIZE and is_hex:
        return {"hash": bytes.fromhex(text)}
    if text.isdigit() and (text == "0" or not text.startswith("0")) and len(text) < PREFIX_DIGITS:
        return {"height": int(text)}
    if is_hex and MIN_PREFIX <= len(text) < 2 * HASH_SIZE:
        return {"prefix": text}
    raise ValueError(f"{text!r} is neither a height, a full {2 * HASH_SIZE}-hex block hash nor a hash prefix "
                     f"of {MIN_PREFIX} to {2 * HASH_SIZE - 1} hex digits")


def _hash_bytes(value) -> bytes:
    return bytes(value) if isinstance(value, (bytes, bytearray)) else bytes.fromhex(str(value))


def prefix_matches(prefix: str, rows) -> list[dict]:
    """The header rows whose hash (bytes or hex) starts with ``prefix``."""
    return [row for row in rows if _hash_bytes(row["hash"]).hex().startswith(prefix)]


def ambiguous_text(prefix: str, matches: list[dict]) -> str:
    shown = ", ".join(f"{short_hash(_hash_bytes(m['hash']))} (height {m['height']})"
                      for m in matches[:CANDIDATES_SHOWN])
    more = f" and {len(matches) - CANDIDATES_SHOWN:,} more" if len(matches) > CANDIDATES_SHOWN else ""
    return (f"hash prefix {prefix} is ambiguous: {plural(len(matches), 'main-chain block')} match ({shown}{more}); "
            "give more digits")


async def resolve_prefix(node: NodeClient, prefix: str) -> bytes:
    """The one main-chain block hash starting with ``prefix``; LookupError or ValueError saying why not.

    Every main-chain header is scanned, so a unique answer is known to be unique.
    """
    height = int((await node.status())["height"])
    matches: list[dict] = []
    async for rows in node.header_pages(0, height):
        matches += prefix_matches(prefix, rows)
    if not matches:
        raise LookupError(f"no main-chain block's hash starts with {prefix} (a side-branch block needs its "
                          "full hash)")
    if len(matches) > 1:
        raise ValueError(ambiguous_text(prefix, sorted(matches, key=lambda m: -m["height"])))
    return _hash_bytes(matches[0]["hash"])


async def block_command(args: argparse.Namespace) -> int:
    try:
        ref = parse_block_ref(args.ref)
    except ValueError as exc:
        print(f"gridchain: error: {exc}", file=sys.stderr)
        return 2
    async with NodeClient(args.node, args.timeout) as node:
        if "prefix" in ref:
            try:
                ref = {"hash": await resolve_prefix(node, ref.pop("prefix"))}
            except (LookupError, ValueError) as exc:
                print(f"gridchain: error: {exc}", file=sys.stderr)
                return 1 if isinstance(exc, LookupError) else 2
        reply = await node.block(**ref)
    if reply.block is None:
        print(f"gridchain: {args.node} knows block {args.ref} but does not hold its contents", file=sys.stderr)
        return 1
    if args.json:
        print(dumps(block_to_dict(reply.block, reply.height, reply.main), pretty=True))
    else:
        print_block(reply.block, reply.height, reply.main, sys.stdout)
    return 0


def block_to_dict(block: Block, height: int, main: bool) -> dict:
    h, c = block.header, block.capture
    return {
        "height": height, "hash": block.hash.hex(), "main": main,
        "header": {"version": h.version, "height": h.height, "prev_hash": h.prev_hash.hex(),
                   "payload_root": h.payload_root.hex(), "time_ms": h.time_ms, "time": iso_ms(h.time_ms),
                   "bits": h.bits, "miner_key": h.miner_key.hex(), "nonce": h.nonce},
        "signature": block.signature.hex(), "miner_name": block.miner_name,
        "capture": {"relay_id": c.relay_id, "substation": c.substation, "relay_key": c.relay_key.hex(),
                    "seals": [{"first_seq": s.first_seq, "count": s.count, "signature": s.signature.hex()}
                              for s in c.seals],
                    "gap": None if c.gap is None else {"resume_seq": c.gap.resume_seq, "boot_ms": c.gap.boot_ms,
                                                       "signature": c.gap.signature.hex()},
                    "readings": [reading_to_dict(r) for r in c.readings]},
    }


def print_block(block: Block, height: int, main: bool, out) -> None:
    h, c = block.header, block.capture
    print(f"block {height}  {block.hash.hex()}  ({'main chain' if main else 'side branch'})", file=out)
    for label, value in (
        ("time", iso_ms(h.time_ms)), ("previous", h.prev_hash.hex()), ("payload root", h.payload_root.hex()),
        ("difficulty", f"{h.bits} bits, nonce {h.nonce}"), ("miner", f"{block.miner_name}  key {h.miner_key.hex()}"),
        ("signature", block.signature.hex()),
        ("relay", f"{c.relay_id or '-'} at {c.substation}, key {c.relay_key.hex()}"),
        ("readings", f"{len(c.readings)}" + (f", seq {c.first_seq}..{c.last_seq}, last openings count "
                                             f"{c.readings[-1].openings}" if c.readings else "")),
        ("seals", ", ".join(f"{s.first_seq}..{s.last_seq}" for s in c.seals) or "-"),
        *([("gap", f"the relay lost readings before seq {c.gap.resume_seq} (restart at {iso_ms(c.gap.boot_ms)})")]
          if c.gap is not None else []),
    ):
        print(f"  {label:<13} {value}", file=out)
    if c.readings:
        rows = BreakerMarks().mark((reading_to_dict(r) for r in c.readings), c.relay_id)
        reading_table(out, indent="  ", with_relay=False).rows(rows)


def configured_peer_down(row: dict) -> str:
    """One line for a configured peer with no link up (a row of status["configured_peers"])."""
    since = float(row.get("since_s") or 0)
    if row.get("last_connected_s_ago") is None:
        history = "never connected since this node started"
    else:
        history = f"last linked to {row.get('name') or '?'} {str(row.get('node_key', ''))[:12]}".rstrip()
    return f"configured peer {row.get('address', '?')} not connected for {since:.0f} s ({history})"


def print_finality(finality: dict | None, out) -> None:
    """The finality lines of `status`: finalized height and lag, the voter, any evidence."""
    if not finality:
        print("finality   none (an open network has no members to vote)", file=out)
        return
    vote = finality.get("last_vote")
    voter = (f"  votes as a member (last {vote['source']}->{vote['target']})" if vote else "  votes as a member") \
        if finality.get("voter") else "  not a member: follows, does not vote"
    print(f"finality   finalized {finality.get('finalized_height')} {str(finality.get('finalized_hash', ''))[:12]}"
          f"  {finality.get('finality_lag')} behind the tip  justified {finality.get('justified_height')}"
          f"  quorum {finality.get('quorum')} of {finality.get('members')}{voter}", file=out)
    if finality.get("safety") not in (None, "ok"):
        print(f"SAFETY     {str(finality['safety']).upper()}: more members misbehaved than finality survives; "
              "see the member.equivocation and finality.safety_* events", file=out)
    for row in finality.get("evidence") or ():
        votes = "  and  ".join(f"{s}->{t} {h[:12]}" for s, t, h in row.get("votes", []))
        print(f"EVIDENCE   member {row.get('member')} ({str(row.get('member_key', ''))[:16]}) {row.get('kind')}: "
              f"{votes}", file=out)


async def tail_command(args: argparse.Namespace) -> int:
    # Explicit handlers, so Ctrl-C and SIGTERM end the feed cleanly even where a shell
    # started us with SIGINT ignored (a background job).
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with NodeClient(args.node, args.timeout) as node:
        info = await node.status()
        if not args.json:
            print(f"following {info.get('name', args.node)} ({args.node}) at height {info.get('height')}; "
                  "Ctrl-C stops", file=sys.stderr)
        follow = asyncio.create_task(_follow(node, info.get("height", -1), args.json))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({follow, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (follow, stopped):
            task.cancel()
        if follow in done:
            follow.result()  # the feed ended: the node went away
    return 0


def _final(row: dict) -> str:
    """The FINAL column: the finalized height as the block joined, and how far behind it is."""
    if row.get("finalized") is None:
        return "-"
    return f"{row['finalized']} (-{row['height'] - row['finalized']})"


async def _follow(node: NodeClient, last_height: int, as_json: bool) -> None:
    writer = None if as_json else StreamTable((*BLOCK_COLUMNS, Column("FINAL", 10, lambda r: _final(r), right=True),
                                               Column("", 0, lambda r: r["note"])), sys.stdout)
    async for event in node.subscribe():
        row = {"height": event.height, "hash": event.hash, "miner_name": event.miner_name,
               "relay_id": event.relay_id, "readings": event.readings, "newest_ms": event.newest_ms,
               "time_ms": event.time_ms, "received_ms": int(time.time() * 1000), "finalized": event.finalized}
        # Events after a reorg start again below the old tip.
        row["note"] = "reorg" if event.height <= last_height else ""
        last_height = event.height
        if writer is None:
            print(dumps(row), flush=True)
        else:
            writer.rows([row])
            sys.stdout.flush()
