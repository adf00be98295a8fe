"""Disk trouble while a node runs: its database full or read-only for a while.

The node must say so clearly (a ``store.error`` event with the reason, for the blocks it
mines and for those its peer sends), keep running and keep its peer, take nothing into its
chain that it could not store, leave a store that audits clean, and resume committing, and
catch up with its peer, once the disk takes writes again.

Tests run as root, which file modes do not stop, so the faults are made inside SQLite on
the node's own connection: ``PRAGMA max_page_count`` pinned at the current size makes the
next write that needs a page fail with SQLITE_FULL ("database or disk is full", exactly what
a full file system gives), and ``PRAGMA query_only`` makes every write fail with
SQLITE_READONLY. Both are lifted the same way, with no restart.
"""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from gridchain.ledger.audit import audit_store
from gridchain.ledger.store import DB_FILE

from tests.support.nodes import node_config, start_node, start_relay
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(60)

SQLITE_DEFAULT_MAX_PAGES = 1_073_741_823

FAULTS = {
    # name: (pragma that breaks writes, pragma that mends them, StoreError reason)
    "full": ("PRAGMA max_page_count = {pages}", f"PRAGMA max_page_count = {SQLITE_DEFAULT_MAX_PAGES}",
             "disk-full"),
    "read-only": ("PRAGMA query_only = ON", "PRAGMA query_only = OFF", "read-only"),
}


def store_errors(logs: list[dict], node: str) -> list[dict]:
    return [e for e in logs if e["event"] == "store.error" and e.get("node") == node]


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_node_reports_disk_trouble_loses_nothing_and_resumes(tmp_path, fault):
    break_sql, mend_sql, reason = FAULTS[fault]
    relay = await start_relay(interval_s=0.1)
    with capture_logs() as logs:
        peer = await start_node(node_config(tmp_path / "peer", free_port(), relays=[relay.port], name="peer"))
        sick = await start_node(node_config(tmp_path / "sick", free_port(), [peer.config.port], [relay.port],
                                            name="sick"))
        nodes = [peer, sick]
        try:
            await wait_until(lambda: sick.height >= 3 and sick.node.gossip.peers, 15, what="a running pair")
            link = next(iter(sick.node.gossip.peers.values()))
            db = sick.ledger.store.db
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(break_sql.format(pages=pages))
            await wait_until(lambda: store_errors(logs, "sick"), 10, what="a store.error")
            height, peer_height = sick.height, peer.height
            await wait_until(lambda: peer.height >= peer_height + 3, 10, what="the peer mining on")
            assert sick.height == height, "nothing the store refused is in the chain"
            errors = store_errors(logs, "sick")
            assert {e["reason"] for e in errors} == {reason}
            assert any(e.get("peer") for e in errors), "a peer's block was refused"
            assert any(e.get("hash") and not e.get("peer") for e in errors), "an own block was refused"
            assert len(errors) <= 10 * (peer.height - peer_height + 2), "one error per block, not a storm"
            assert not sick.task.done() and sick.node.gossip.peers.get(link.node_key) is link, "peer kept"

            db.execute(mend_sql)
            await wait_until(lambda: sick.height > peer.height - 2 and sick.height > height + 2, 15,
                             what="committing again and caught up")
            await relay.close()
            relay = None
            await wait_until(lambda: sick.ledger.tip.hash == peer.ledger.tip.hash, 15, what="one tip")
        finally:
            for running in nodes:
                await running.shutdown()
            if relay is not None:
                await relay.close()
    assert not [e for e in logs if e["event"] == "peer.banned"], "our disk is not the peer's fault"
    report = audit_store(tmp_path / "sick" / DB_FILE, sick.node.params)
    assert report.ok, report.problems
    assert report.checked > height
