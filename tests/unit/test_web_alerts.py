"""The alert state machine: each alert raised once when its condition has lasted, cleared once when it ends."""

from __future__ import annotations

from gridchain.web import alerts as a
from gridchain.web.alerts import AlertBook, AlertCleared, AlertRaised, GapFacts, Observation, RelayFacts, Thresholds

T0 = 1_700_000_000_000
S = 1000  # ms per second


def names(edges):
    return [(type(e).__name__, e.alert.name, e.alert.subject) for e in edges]


def ok_relay(newest_ms=T0, **kw):
    return RelayFacts("relay-1", "ok", newest_ms, **kw)


def test_a_relay_down_is_raised_after_its_hold_time_and_cleared_once():
    book = AlertBook(Thresholds(relay_down_s=30))
    down = RelayFacts("relay-1", "unreachable", T0, last_error="unreachable: refused")
    assert book.update(Observation(T0, (down,))) == []
    assert book.update(Observation(T0 + 29 * S, (down,))) == []
    edges = book.update(Observation(T0 + 30 * S, (down,)))
    assert names(edges) == [("AlertRaised", a.RELAY_DOWN, "relay-1")]
    assert "unreachable: refused" in edges[0].alert.detail and edges[0].alert.since_ms == T0 + 30 * S
    assert book.update(Observation(T0 + 40 * S, (down,))) == []  # no second edge while it lasts
    assert book.counts()[a.RELAY_DOWN] == 1
    edges = book.update(Observation(T0 + 41 * S, (ok_relay(T0 + 41 * S),)))
    assert names(edges) == [("AlertCleared", a.RELAY_DOWN, "relay-1")]
    assert edges[0].at_ms == T0 + 41 * S and book.active() == []


def test_a_short_outage_never_raises_and_its_clock_restarts():
    book = AlertBook(Thresholds(relay_down_s=30))
    down = RelayFacts("relay-1", "unreachable", T0)
    book.update(Observation(T0, (down,)))
    book.update(Observation(T0 + 20 * S, (ok_relay(T0 + 20 * S),)))
    assert book.update(Observation(T0 + 25 * S, (down,))) == []
    assert book.update(Observation(T0 + 50 * S, (down,))) == []  # 25 s into the second outage
    assert names(book.update(Observation(T0 + 55 * S, (down,)))) == [("AlertRaised", a.RELAY_DOWN, "relay-1")]


def test_a_silent_relay_is_raised_from_its_newest_reading_and_cleared_by_a_new_one():
    book = AlertBook(Thresholds(relay_silent_s=180))
    assert book.update(Observation(T0 + 179 * S, (ok_relay(T0),))) == []
    assert names(book.update(Observation(T0 + 180 * S, (ok_relay(T0),)))) == [("AlertRaised", a.RELAY_SILENT, "relay-1")]
    assert names(book.update(Observation(T0 + 190 * S, (ok_relay(T0 + 185 * S),)))) == [
        ("AlertCleared", a.RELAY_SILENT, "relay-1")]


def test_signature_failures_raise_at_once_and_clear_after_the_window():
    book = AlertBook(Thresholds(signature_window_s=600))
    assert book.update(Observation(T0, (ok_relay(T0, signature_failures=0),))) == []
    edges = book.update(Observation(T0 + S, (ok_relay(T0 + S, signature_failures=2),)))
    assert names(edges) == [("AlertRaised", a.RELAY_SIGNATURE_FAILURE, "relay-1")]
    assert edges[0].alert.severity == "critical"
    assert book.update(Observation(T0 + 600 * S, (ok_relay(T0 + 600 * S, signature_failures=2),))) == []
    edges = book.update(Observation(T0 + 601 * S, (ok_relay(T0 + 601 * S, signature_failures=2),)))
    assert names(edges) == [("AlertCleared", a.RELAY_SIGNATURE_FAILURE, "relay-1")]


def test_a_relay_refused_for_its_key_is_a_signature_failure_while_refused():
    book = AlertBook()
    bad = RelayFacts("relay-1", "bad-data", T0, last_error="bad-relay-signature: seal 3 does not verify")
    assert names(book.update(Observation(T0, (bad,)))) == [("AlertRaised", a.RELAY_SIGNATURE_FAILURE, "relay-1")]
    assert "seal 3" in book.active()[0].detail


def test_a_reading_gap_is_shown_for_its_window_and_cleared_when_filled():
    book = AlertBook(Thresholds(gap_window_s=3600))
    gap = GapFacts("relay-1", 41, 50, T0)
    edges = book.update(Observation(T0 + S, gaps=(gap,)))
    assert names(edges) == [("AlertRaised", a.READING_GAP, "relay-1")]
    assert "10 reading(s) missing (seq 41..50)" in edges[0].alert.detail
    assert names(book.update(Observation(T0 + 2 * S))) == [("AlertCleared", a.READING_GAP, "relay-1")]  # filled
    book.update(Observation(T0 + 3 * S, gaps=(gap,)))
    assert names(book.update(Observation(T0 + 3600 * S, gaps=(gap,)))) == [("AlertCleared", a.READING_GAP, "relay-1")]


def test_member_equivocation_lasts_while_the_evidence_is_held():
    book = AlertBook()
    edges = book.update(Observation(T0, equivocators=("carol", "carol")))
    assert names(edges) == [("AlertRaised", a.MEMBER_EQUIVOCATION, "carol")]
    assert book.update(Observation(T0 + 10 * S, equivocators=("carol",))) == []
    assert names(book.update(Observation(T0 + 20 * S))) == [("AlertCleared", a.MEMBER_EQUIVOCATION, "carol")]


def test_a_configured_peer_down_stays_listed_and_clears_on_reconnect():
    book = AlertBook(Thresholds(peer_down_s=30))
    peers = {"10.0.0.2:5004": False, "10.0.0.3:5004": True}
    book.update(Observation(T0, configured_peers=peers))
    edges = book.update(Observation(T0 + 30 * S, configured_peers=peers))
    assert names(edges) == [("AlertRaised", a.PEER_DOWN, "10.0.0.2:5004")]
    edges = book.update(Observation(T0 + 31 * S, configured_peers={"10.0.0.2:5004": True, "10.0.0.3:5004": True}))
    assert names(edges) == [("AlertCleared", a.PEER_DOWN, "10.0.0.2:5004")]


def test_finality_stalled_needs_both_time_and_a_tip_ahead():
    book = AlertBook(Thresholds(finality_stall_s=300, finality_lag_blocks=3))
    book.update(Observation(T0, tip_height=10, finalized_height=9))
    assert book.update(Observation(T0 + 400 * S, tip_height=11, finalized_height=9)) == []  # only 2 behind
    edges = book.update(Observation(T0 + 401 * S, tip_height=12, finalized_height=9))
    assert names(edges) == [("AlertRaised", a.FINALITY_STALLED, "chain")]
    assert names(book.update(Observation(T0 + 402 * S, tip_height=12, finalized_height=11))) == [
        ("AlertCleared", a.FINALITY_STALLED, "chain")]
    assert book.update(Observation(T0 + 600 * S, tip_height=12, finalized_height=None)) == []  # no finality


def test_clock_off_uses_the_median_of_its_sources():
    book = AlertBook(Thresholds(clock_off_ms=60_000))
    skewed = {"relay a": 300_000, "relay b": 299_000, "relay c": 1_000}
    edges = book.update(Observation(T0, clock_offsets_ms=skewed))
    assert names(edges) == [("AlertRaised", a.CLOCK_OFF, "node")]
    assert "299 s ahead of the median of 3 source(s)" in edges[0].alert.detail
    assert book.update(Observation(T0 + S, clock_offsets_ms={"relay a": 300_000, "b": 0, "c": 0})) != []


def test_active_lists_critical_first_and_counts_cover_every_name():
    book = AlertBook(Thresholds(relay_silent_s=1))
    book.update(Observation(T0, (ok_relay(T0 - 10 * S),), equivocators=("dave",)))
    assert [x.name for x in book.active()] == [a.MEMBER_EQUIVOCATION, a.RELAY_SILENT]
    counts = book.counts()
    assert set(counts) == set(a.ALERT_NAMES) and counts[a.RELAY_SILENT] == 1 and counts[a.PEER_DOWN] == 0


def test_a_changing_detail_updates_the_alert_without_a_new_edge():
    book = AlertBook(Thresholds(relay_silent_s=1))
    book.update(Observation(T0, (ok_relay(T0 - 10 * S),)))
    assert book.update(Observation(T0 + 5 * S, (ok_relay(T0 - 10 * S),))) == []
    assert book.active()[0].detail == "newest reading 15 s old" and book.active()[0].since_ms == T0


def test_an_observation_from_the_status_map():
    status = {"height": 12, "finality": {"finalized_height": 10},
              "relays": [{"address": "127.0.0.1:5010", "relay_id": "relay-1", "state": "ok", "newest_ms": T0,
                          "clock_skew_ms": -120_000, "last_error": ""}],
              "peers": [{"address": "10.0.0.2:5004", "state": "ready"}, {"address": "10.0.0.3:5004", "state": "handshake"}]}

    class Gap:
        relay_id, first_seq, last_seq, after_ms, resume_ms = "relay-1", 5, 6, T0 - 5 * S, T0

    obs = a.observation_from_status(status, T0, configured_peers=["10.0.0.2:5004", "10.0.0.3:5004", "10.0.0.4:5004"],
                                    gaps=[Gap()], signature_failures={"relay-1": 3})
    assert obs.tip_height == 12 and obs.finalized_height == 10
    assert obs.relays == (RelayFacts("relay-1", "ok", T0, 3, ""),)
    assert obs.configured_peers == {"10.0.0.2:5004": True, "10.0.0.3:5004": False, "10.0.0.4:5004": False}
    assert obs.gaps == (GapFacts("relay-1", 5, 6, T0),)
    assert obs.clock_offsets_ms == {"relay relay-1": 120_000}  # the relay is behind: our clock is ahead
    edges = AlertBook().update(obs)
    assert {e.alert.name for e in edges if isinstance(e, AlertRaised)} == {
        a.RELAY_SIGNATURE_FAILURE, a.READING_GAP, a.CLOCK_OFF}
    assert not any(isinstance(e, AlertCleared) for e in edges)
