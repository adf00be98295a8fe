"""A configured peer that is down stays listed in `status` (as `bitcoin-cli getaddednodeinfo`
keeps it with `connected: false`), raises `alert.peer_down` after its hold time, and shows up
as connected, with the alert cleared, once a node listens at its address.

Real gridchaind processes on 127.0.0.1, started and configured as an operator does (flags);
`gridchain status` is the real client, in text and in JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from tests.support.ports import api_port, free_port, listen_port
from tests.support.processes import REPO, Processes, wait_status

WAIT_S = 30.0  # each step takes a second or two on an idle box; a loaded one is far slower, never this slow
ALERT_WAIT_S = 30.0  # the alert loop looks every 5 s; the hold time here is 1 s
CLIENT_TIMEOUT_S = 20.0
PEER_DOWN = "alert.peer_down"
# Flags of the node under test: a peer is "down" after 1 s, and it is redialled at least every 0.5 s.
QUICK = ["--alert-peer-down", "1", "--redial-max", "0.5"]


def peer_down(info: dict, address: str) -> bool:
    return any(a.get("name") == PEER_DOWN and a.get("subject") == address for a in info.get("alerts", ()))


async def client(*args: str) -> tuple[int, str]:
    """`gridchain ARGS`: its exit status and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridchain", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    async with asyncio.timeout(CLIENT_TIMEOUT_S):
        out, _ = await proc.communicate()
    return proc.returncode, out.decode()


async def test_a_configured_peer_down_is_listed_alerted_and_cleared_when_it_comes_up(tmp_path):
    with Processes(tmp_path, "configured-net", 8) as procs:
        # Below the ephemeral range: no outgoing connection takes it as its source port meanwhile.
        b_port = listen_port()
        target = f"127.0.0.1:{b_port}"
        a = procs.node("a", port=free_port(), peers=[b_port], extra=QUICK)

        info = await wait_status(a, lambda s: bool(s.get("configured_peers")), WAIT_S, "a answers status")
        [row] = info["configured_peers"]
        assert row == {"address": target, "connected": False, "name": "", "node_key": "",
                       "since_s": row["since_s"], "last_connected_s_ago": None}
        assert isinstance(row["since_s"], float) and row["since_s"] >= 0
        assert info["peers"] == []  # a peer that is down is no connected peer

        info = await wait_status(a, lambda s: peer_down(s, target), ALERT_WAIT_S, "alert.peer_down on a")
        assert info["peers"] == [] and info["configured_peers"][0]["connected"] is False
        assert info["configured_peers"][0]["since_s"] >= 1.0  # raised only after its hold time

        node = f"127.0.0.1:{api_port(a.port)}"
        code, text = await client("status", "--node", node)
        assert code == 0, text
        assert f"configured peer {target} not connected for " in text
        assert "never connected since this node started" in text
        assert PEER_DOWN in text
        code, out = await client("status", "--node", node, "--json")
        assert code == 0, out
        shown = json.loads(out)
        assert [r["address"] for r in shown["configured_peers"]] == [target] and shown["peers"] == []

        started = time.monotonic()
        b = procs.node("b", port=b_port)
        b_info = await wait_status(b, lambda s: True, WAIT_S, "b answers status")
        info = await wait_status(a, lambda s: s["configured_peers"][0]["connected"], WAIT_S,
                                 "a sees its configured peer connected")
        [row] = info["configured_peers"]
        assert (row["name"], row["node_key"], row["last_connected_s_ago"]) == ("b", b_info["node_key"], 0.0)
        assert 0 <= row["since_s"] <= time.monotonic() - started  # counted from the link, not from a's start
        assert [p["address"] for p in info["peers"]] == [target]

        await wait_status(a, lambda s: not peer_down(s, target), ALERT_WAIT_S, "alert.peer_down cleared on a")
        code, text = await client("status", "--node", node)
        assert code == 0 and "configured peer " not in text, text

        stopped = time.monotonic()
        await procs.stop([b])
        info = await wait_status(a, lambda s: not s["configured_peers"][0]["connected"], WAIT_S,
                                 "a sees its configured peer gone")
        [row] = info["configured_peers"]
        assert (row["name"], row["node_key"]) == ("b", b_info["node_key"])  # who it was, while it is away
        assert row["last_connected_s_ago"] is not None
        assert 0 <= row["since_s"] <= time.monotonic() - stopped
        assert info["peers"] == []

        await procs.stop([a])
        assert not procs.unclean, procs.unclean
        edges = [(e["event"], e.get("subject")) for e in a.events(["alert.raised", "alert.cleared"])
                 if e.get("alert") == PEER_DOWN]
        assert edges[:2] == [("alert.raised", target), ("alert.cleared", target)]
