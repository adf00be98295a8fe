"""Configured peers in `status`: which link serves each, since when it is up or down, and how
`gridchain status` prints one that is down. Pure code, with stand-in links and explicit times."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from gridchain.cli.commands.chain import print_status
from gridchain.config import Address, NodeConfig
from gridchain.node.observability import Observability
from gridchain.net.dialer import linked_peer
from gridchain.node.status import (
    ConfiguredPeerBook, NodeFacts, build_status, configured_links,
)

ROW_KEYS = {"address", "connected", "name", "node_key", "since_s", "last_connected_s_ago"}
KEY_B, KEY_C = bytes([0xB0]) * 32, bytes([0xC0]) * 32


@dataclass(frozen=True)
class Hello:
    name: str
    node_key: bytes


@dataclass
class Link:
    """What a ready gridchain.net.peer.Peer shows of itself to the status report."""

    listen_address: str
    address: str
    inbound: bool
    hello: Hello | None
    height: int = 0
    tip: bytes = b""

    @property
    def node_key(self) -> bytes:
        return self.hello.node_key if self.hello else b""

    def link_state(self, now: float) -> str:
        return "ready"


def outbound(dialled: str, listen: str, name: str = "b", key: bytes = KEY_B) -> Link:
    return Link(listen, dialled, False, Hello(name, key))


def inbound(socket: str, listen: str, name: str = "c", key: bytes = KEY_C) -> Link:
    return Link(listen, socket, True, Hello(name, key))


# --- which link serves a configured address ------------------------------------------------------
def test_an_inbound_link_counts_by_its_listen_address_not_its_socket():
    link = inbound("127.0.0.1:40123", "127.0.0.1:5006")
    assert linked_peer("127.0.0.1:5006", [link]) is link
    assert linked_peer("127.0.0.1:40123", [link]) is None  # an ephemeral port is nobody's listener


def test_an_outbound_link_counts_by_the_address_dialled_or_its_listen_address():
    link = outbound("localhost:5005", "127.0.0.1:5005")
    assert linked_peer("localhost:5005", [link]) is link
    assert linked_peer("127.0.0.1:5005", [link]) is link
    assert linked_peer("127.0.0.1:5007", [link]) is None


def test_configured_links_names_every_configured_address():
    b = outbound("127.0.0.1:5005", "127.0.0.1:5005")
    links = configured_links([Address("127.0.0.1", 5005), Address("127.0.0.1", 5007)], [b])
    assert links == {"127.0.0.1:5005": b, "127.0.0.1:5007": None}


# --- since when -----------------------------------------------------------------------------------
def test_a_peer_never_linked_is_down_since_the_node_started():
    book = ConfiguredPeerBook(["127.0.0.1:5007"], now=100.0)
    book.observe({"127.0.0.1:5007": None}, now=120.0)
    [row] = book.rows(now=142.0)
    assert set(row) == ROW_KEYS
    assert row == {"address": "127.0.0.1:5007", "connected": False, "name": "", "node_key": "",
                   "since_s": 42.0, "last_connected_s_ago": None}


def test_since_counts_from_each_change_and_the_last_link_is_remembered():
    address = "127.0.0.1:5005"
    book = ConfiguredPeerBook([address], now=100.0)
    link = outbound(address, address, name="node-b")
    book.observe({address: link}, now=150.0)
    book.observe({address: link}, now=155.0)  # a later look at the same link changes nothing
    [row] = book.rows(now=160.0)
    assert (row["connected"], row["since_s"], row["last_connected_s_ago"]) == (True, 10.0, 0.0)
    assert (row["name"], row["node_key"]) == ("node-b", KEY_B.hex())

    book.observe({address: None}, now=180.0)
    book.observe({address: None}, now=185.0)
    [row] = book.rows(now=190.0)
    assert (row["connected"], row["since_s"], row["last_connected_s_ago"]) == (False, 10.0, 10.0)
    assert (row["name"], row["node_key"]) == ("node-b", KEY_B.hex())  # who it was, while it is away

    book.observe({address: outbound(address, address, name="node-b2", key=KEY_C)}, now=200.0)
    [row] = book.rows(now=201.5)
    assert (row["connected"], row["since_s"], row["name"], row["node_key"]) == (True, 1.5, "node-b2", KEY_C.hex())
    assert book.connected() == {address: True}


def test_a_link_replaced_by_another_to_the_same_peer_keeps_its_since():
    address = "127.0.0.1:5005"
    book = ConfiguredPeerBook([address], now=0.0)
    book.observe({address: outbound(address, address)}, now=10.0)
    book.observe({address: inbound("127.0.0.1:40000", address, name="b", key=KEY_B)}, now=20.0)
    [row] = book.rows(now=30.0)
    assert (row["connected"], row["since_s"]) == (True, 20.0)


def test_rows_are_sorted_by_address_and_never_negative():
    book = ConfiguredPeerBook(["127.0.0.1:5007", "10.0.0.2:5004", "127.0.0.1:5005"], now=50.0)
    rows = book.rows(now=49.9)  # a clock read just before the book's own
    assert [r["address"] for r in rows] == ["10.0.0.2:5004", "127.0.0.1:5005", "127.0.0.1:5007"]
    assert all(r["since_s"] == 0.0 for r in rows)


# --- the status map and its table -----------------------------------------------------------------
def status_with(peers, configured_rows, now=500.0):
    facts = NodeFacts("net", "node-a", bytes(32), bytes(32), 8, 60.0, started_at=0.0)
    tip = SimpleNamespace(height=3, hash=bytes(32), work=24)  # what the report reads of a ChainEntry
    return build_status(facts, now=now, port=5004, tip=tip, peers=peers, relays=[], mining=False, orphans=0,
                        syncing=False, loop_lag_ms={}, configured_peers=configured_rows)


def test_status_keeps_peers_to_the_ready_links_and_lists_configured_ones_apart():
    up = outbound("127.0.0.1:5005", "127.0.0.1:5005")
    book = ConfiguredPeerBook(["127.0.0.1:5005", "127.0.0.1:5007"], now=0.0)
    book.observe(configured_links(["127.0.0.1:5005", "127.0.0.1:5007"], [up]), now=400.0)
    info = status_with([up], book.rows(now=500.0))
    assert [p["address"] for p in info["peers"]] == ["127.0.0.1:5005"]
    assert [(r["address"], r["connected"]) for r in info["configured_peers"]] == \
        [("127.0.0.1:5005", True), ("127.0.0.1:5007", False)]
    assert status_with([], None)["configured_peers"] == [] and status_with([], None)["peers"] == []


def test_gridchain_status_prints_a_configured_peer_that_is_not_connected():
    up = outbound("127.0.0.1:5005", "127.0.0.1:5005")
    book = ConfiguredPeerBook(["127.0.0.1:5005", "127.0.0.1:5007", "127.0.0.1:5008"], now=0.0)
    book.observe({"127.0.0.1:5005": up, "127.0.0.1:5007": None,
                  "127.0.0.1:5008": outbound("127.0.0.1:5008", "127.0.0.1:5008", name="node-d", key=KEY_C)},
                 now=1.0)
    book.observe({"127.0.0.1:5008": None}, now=400.0)
    out = io.StringIO()
    print_status(status_with([up], book.rows(now=42.4 + 400.0)), out)
    text = out.getvalue()
    assert "peers (1)\n" in text  # the count is of links, as before
    assert "configured peer 127.0.0.1:5007 not connected for 442 s (never connected since this node started)" \
        in text
    assert f"configured peer 127.0.0.1:5008 not connected for 42 s (last linked to node-d {KEY_C.hex()[:12]})" \
        in text
    assert "configured peer 127.0.0.1:5005" not in text


# --- the node's observability: one place decides --------------------------------------------------
class FakeGossip:
    def __init__(self, configured, peers) -> None:
        self.configured = configured
        self.peers = {p.node_key: p for p in peers}


class FakeLedger:
    class store:  # noqa: N801 - the attribute Observability reads
        path = Path("/nonexistent/chain.sqlite3")


def test_observability_answers_alerts_metrics_and_status_from_the_same_links():
    clock = [1000.0]
    obs = Observability(name="t", chain=object(), ledger=FakeLedger(), status=dict, now_ms=lambda: 0, tokens=None,
                        log=None, monotonic=lambda: clock[0])
    assert obs.configured_peers() == {} and obs.configured_peer_rows(1000.0) == []  # no gossip yet
    b = inbound("127.0.0.1:41000", "127.0.0.1:5005", name="b", key=KEY_B)
    gossip = FakeGossip((Address("127.0.0.1", 5005), Address("127.0.0.1", 5007)), [b])
    obs.attach_gossip(gossip)
    clock[0] = 1003.0
    obs.links_changed()
    assert obs.configured_peers() == {"127.0.0.1:5005": True, "127.0.0.1:5007": False}
    rows = {r["address"]: r for r in obs.configured_peer_rows(1010.0)}
    assert rows["127.0.0.1:5005"]["since_s"] == 7.0 and rows["127.0.0.1:5007"]["since_s"] == 10.0
    gossip.peers.clear()
    clock[0] = 1020.0
    obs.links_changed()  # as ObservedGossip calls it when the link closes
    rows = {r["address"]: r for r in obs.configured_peer_rows(1025.0)}
    assert rows["127.0.0.1:5005"]["connected"] is False and rows["127.0.0.1:5005"]["since_s"] == 5.0


def test_thresholds_default_to_the_config_defaults():
    from gridchain.web.alerts import Thresholds

    assert NodeConfig(data_dir=Path("x")).alerts == Thresholds()


def test_peer_down_is_timed_from_when_the_link_went_away_not_from_the_first_look():
    from gridchain.web.alerts import PEER_DOWN, AlertBook, AlertCleared, AlertRaised, Observation, Thresholds

    book = AlertBook(Thresholds(peer_down_s=30))
    address = "127.0.0.1:5007"
    assert book.update(Observation(1_000_000, configured_peers={address: False}, peers_down_s={address: 29.0})) == []
    [raised] = book.update(Observation(1_002_000, configured_peers={address: False}, peers_down_s={address: 31.0}))
    assert isinstance(raised, AlertRaised) and (raised.alert.name, raised.alert.subject) == (PEER_DOWN, address)
    assert raised.alert.detail == "not connected for 31 s"  # the same count as `gridchain status` prints
    book.update(Observation(1_007_000, configured_peers={address: False}, peers_down_s={address: 36.0}))
    assert [a.detail for a in book.active()] == ["not connected for 36 s"]
    [cleared] = book.update(Observation(1_008_000, configured_peers={address: True}))
    assert isinstance(cleared, AlertCleared) and book.active() == []
