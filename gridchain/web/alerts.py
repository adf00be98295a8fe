"""Alerts: what an operator must be told, raised and cleared from observations of the node. Pure.

The node hands ``AlertBook.update`` an ``Observation`` now and then (its relays, configured
peers, the chain's unfilled gaps, caught members, finality, clock offsets, with the time);
the book answers with the edges: an ``AlertRaised`` for each alert that became true, an
``AlertCleared`` for each that stopped being true. ``active()`` is the list ``status`` and
the dashboard banner show; ``counts()`` feeds the ``gridchain_alerts{name}`` gauge. Each
alert is (name, subject): one per relay, peer or member it concerns.

Names (stable; the log event of an edge is ``alert.raised`` / ``alert.cleared`` with them):
  alert.relay_down               a relay the node polls has been unreachable or sending bad
                                 data for ``relay_down_s``
  alert.relay_silent             a reachable relay's newest reading is ``relay_silent_s`` old
  alert.relay_signature_failure  a relay's readings failed their signature check in the last
                                 ``signature_window_s`` (or the relay is refused for its key)
  alert.reading_gap              the main chain has a hole in a relay's readings noticed in
                                 the last ``gap_window_s`` (cleared when filled or older)
  alert.member_equivocation      the node holds evidence that a member signed conflicting votes
  alert.peer_down                a configured peer has not been connected for ``peer_down_s``
                                 (it stays listed, as `bitcoin-cli getaddednodeinfo` does)
  alert.finality_stalled         the finalized height has not moved for ``finality_stall_s``
                                 while the tip is ``finality_lag_blocks`` or more past it
  alert.clock_off                the node's clock is off the median of its sources by
                                 ``clock_off_ms`` or more (blocks it mines would be refused)

Each of those limits is a ``Thresholds`` field (gridchain.config), set from the node's ``alert_*``
settings.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from gridchain.config import Thresholds  # re-exported: the alert book's limits

RELAY_DOWN = "alert.relay_down"
RELAY_SILENT = "alert.relay_silent"
RELAY_SIGNATURE_FAILURE = "alert.relay_signature_failure"
READING_GAP = "alert.reading_gap"
MEMBER_EQUIVOCATION = "alert.member_equivocation"
PEER_DOWN = "alert.peer_down"
FINALITY_STALLED = "alert.finality_stalled"
CLOCK_OFF = "alert.clock_off"
ALERT_NAMES = (RELAY_DOWN, RELAY_SILENT, RELAY_SIGNATURE_FAILURE, READING_GAP, MEMBER_EQUIVOCATION, PEER_DOWN,
               FINALITY_STALLED, CLOCK_OFF)
CRITICAL = frozenset({RELAY_SIGNATURE_FAILURE, MEMBER_EQUIVOCATION, CLOCK_OFF})  # the rest are warnings

DOWN_STATES = frozenset({"unreachable", "bad-data"})  # RelayWatch states that mean no readings come
# Relay errors that are a signature or key failure (gridchain.relay.client reasons).
SIGNATURE_REASONS = frozenset({"bad-relay-signature", "bad-seal", "relay-key-mismatch", "relay-key-changed"})


@dataclass(frozen=True, slots=True)
class RelayFacts:
    """One relay the node polls (its RelayWatch status) and its signature failures so far."""

    relay_id: str  # or the relay's address before its id is known
    state: str
    newest_ms: int | None = None
    signature_failures: int = 0  # cumulative: the book notices when it grows
    last_error: str = ""  # "reason: detail", as RelayWatch keeps it


@dataclass(frozen=True, slots=True)
class GapFacts:
    """A hole in a relay's readings on the main chain (gridchain.ledger.store.Gap)."""

    relay_id: str
    first_seq: int
    last_seq: int
    noticed_ms: int  # when the relay resumed after the hole (its reading's time)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the node looks like at ``now_ms`` (milliseconds since the epoch, the node's clock)."""

    now_ms: int
    relays: tuple[RelayFacts, ...] = ()
    configured_peers: Mapping[str, bool] = field(default_factory=dict)  # address -> connected (ready)
    gaps: tuple[GapFacts, ...] = ()
    equivocators: tuple[str, ...] = ()  # members with evidence against them (names or key hex)
    tip_height: int = 0
    finalized_height: int | None = None  # None: no finality on this network
    clock_offsets_ms: Mapping[str, int] = field(default_factory=dict)  # source -> our clock minus theirs
    # address -> seconds a configured peer has been down, as the node's peer book knows it (from
    # the moment its link went away); a peer missing here is timed from the first look that saw it down.
    peers_down_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    """One active alert: ``since_ms`` is when it was raised; ``detail`` says what is wrong now."""

    name: str
    subject: str
    since_ms: int
    detail: str
    severity: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "subject": self.subject, "since_ms": self.since_ms, "detail": self.detail,
                "severity": self.severity}


@dataclass(frozen=True, slots=True)
class AlertRaised:
    alert: Alert


@dataclass(frozen=True, slots=True)
class AlertCleared:
    alert: Alert  # as it was when last active
    at_ms: int


class AlertBook:
    """The node's active alerts, and what it remembers between observations to decide them."""

    def __init__(self, thresholds: Thresholds = Thresholds()) -> None:
        self.thresholds = thresholds
        self._active: dict[tuple[str, str], Alert] = {}
        self._first_seen: dict[tuple[str, str], int] = {}  # condition key -> when it began to hold
        self._signature_counts: dict[str, int] = {}
        self._signature_last_ms: dict[str, int] = {}
        self._finalized: tuple[int, int] | None = None  # (height, when it last moved)

    def active(self) -> list[Alert]:
        """Active alerts, critical first, then oldest first."""
        return sorted(self._active.values(), key=lambda a: (a.severity != "critical", a.since_ms, a.name, a.subject))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ALERT_NAMES, 0)
        for name, _ in self._active:
            counts[name] += 1
        return counts

    def update(self, obs: Observation) -> list[AlertRaised | AlertCleared]:
        """Take one observation; the edges it caused, cleared ones first."""
        now = obs.now_ms
        holding = dict(self._conditions(obs))
        edges: list[AlertRaised | AlertCleared] = []
        for key in [k for k in self._active if k not in holding]:
            edges.append(AlertCleared(self._active.pop(key), now))
        for key, detail in holding.items():
            alert = self._active.get(key)
            if alert is None:
                alert = Alert(key[0], key[1], now, detail, "critical" if key[0] in CRITICAL else "warning")
                self._active[key] = alert
                edges.append(AlertRaised(alert))
            elif alert.detail != detail:
                self._active[key] = replace(alert, detail=detail)
        return edges

    # --- the conditions ------------------------------------------------------------------------
    def _conditions(self, obs: Observation) -> Iterable[tuple[tuple[str, str], str]]:
        t = self.thresholds
        now = obs.now_ms
        held: set[tuple[str, str]] = set()
        for relay in obs.relays:
            if relay.state in DOWN_STATES:
                key = (RELAY_DOWN, relay.relay_id)
                held.add(key)
                if self._lasted(key, now, t.relay_down_s):
                    yield key, f"{relay.state} for {self._age_s(key, now):.0f} s" + _error_text(relay.last_error)
            else:
                key = (RELAY_SILENT, relay.relay_id)
                held.add(key)
                since = relay.newest_ms if relay.newest_ms is not None else self._first_seen.setdefault(key, now)
                if now - since >= t.relay_silent_s * 1000:
                    yield key, f"newest reading {(now - since) / 1000:.0f} s old"
            yield from self._signature(relay, now)
        for address, connected in sorted(obs.configured_peers.items()):
            if not connected:
                key = (PEER_DOWN, address)
                held.add(key)
                down_s = obs.peers_down_s.get(address)
                if down_s is None and self._lasted(key, now, t.peer_down_s):
                    down_s = self._age_s(key, now)
                if down_s is not None and down_s >= t.peer_down_s:
                    yield key, f"not connected for {down_s:.0f} s"
        yield from _gap_alerts(obs.gaps, now, t.gap_window_s)
        for member in sorted(set(obs.equivocators)):
            yield (MEMBER_EQUIVOCATION, member), "signed conflicting finality votes (evidence held)"
        yield from self._finality(obs)
        yield from _clock(obs.clock_offsets_ms, t.clock_off_ms)
        # A condition that stopped holding starts its clock again the next time it holds.
        for key in [k for k in self._first_seen if k not in held]:
            del self._first_seen[key]

    def _lasted(self, key: tuple[str, str], now: int, seconds: float) -> bool:
        return now - self._first_seen.setdefault(key, now) >= seconds * 1000

    def _age_s(self, key: tuple[str, str], now: int) -> float:
        return (now - self._first_seen[key]) / 1000

    def _signature(self, relay: RelayFacts, now: int) -> Iterable[tuple[tuple[str, str], str]]:
        before = self._signature_counts.get(relay.relay_id, 0)
        self._signature_counts[relay.relay_id] = relay.signature_failures
        if relay.signature_failures > before:
            self._signature_last_ms[relay.relay_id] = now
        refused = relay.state == "bad-data" and relay.last_error.split(":", 1)[0] in SIGNATURE_REASONS
        last = self._signature_last_ms.get(relay.relay_id)
        recent = last is not None and now - last < self.thresholds.signature_window_s * 1000
        if refused or recent:
            detail = f"{relay.signature_failures} failure(s) so far" if recent else "refused"
            yield (RELAY_SIGNATURE_FAILURE, relay.relay_id), detail + _error_text(relay.last_error if refused else "")

    def _finality(self, obs: Observation) -> Iterable[tuple[tuple[str, str], str]]:
        if obs.finalized_height is None:
            self._finalized = None
            return
        if self._finalized is None or self._finalized[0] != obs.finalized_height:
            self._finalized = (obs.finalized_height, obs.now_ms)
        stalled_s = (obs.now_ms - self._finalized[1]) / 1000
        behind = obs.tip_height - obs.finalized_height
        t = self.thresholds
        if stalled_s >= t.finality_stall_s and behind >= t.finality_lag_blocks:
            yield (FINALITY_STALLED, "chain"), (f"finalized height {obs.finalized_height} unchanged for "
                                                f"{stalled_s:.0f} s, {behind} block(s) behind the tip")


def _gap_alerts(gaps: Iterable[GapFacts], now: int, window_s: float) -> Iterable[tuple[tuple[str, str], str]]:
    recent: dict[str, list[GapFacts]] = {}
    for gap in gaps:
        if now - gap.noticed_ms < window_s * 1000:
            recent.setdefault(gap.relay_id, []).append(gap)
    for relay_id, holes in sorted(recent.items()):
        missing = sum(g.last_seq - g.first_seq + 1 for g in holes)
        seqs = ", ".join(f"{g.first_seq}..{g.last_seq}" for g in holes[:3]) + (" ..." if len(holes) > 3 else "")
        yield (READING_GAP, relay_id), f"{missing} reading(s) missing (seq {seqs})"


def _clock(offsets: Mapping[str, int], limit_ms: int) -> Iterable[tuple[tuple[str, str], str]]:
    if not offsets:
        return
    median = statistics.median(offsets.values())
    if abs(median) >= limit_ms:
        direction = "ahead of" if median > 0 else "behind"
        yield (CLOCK_OFF, "node"), f"clock {abs(median) / 1000:.0f} s {direction} the median of {len(offsets)} source(s)"


def _error_text(last_error: str) -> str:
    return f" ({last_error})" if last_error else ""


def observation_from_status(status: Mapping, now_ms: int, *, configured_peers: Iterable[str] = (),
                            gaps: Iterable = (), equivocators: Iterable[str] = (),
                            signature_failures: Mapping[str, int] | None = None) -> Observation:
    """An Observation from the node's status map (gridchain.node.status.build_status) and the
    facts it lacks: configured peer addresses, the store's gaps (``Gap`` objects or GapFacts),
    caught members, signature failures per relay. Finality is read from ``finalized_height``
    or ``finality.finalized_height`` when the status has one."""
    failures = signature_failures or {}
    relays = tuple(RelayFacts(r.get("relay_id") or r.get("address", "?"), r.get("state", "?"), r.get("newest_ms"),
                              failures.get(r.get("relay_id") or "", 0), r.get("last_error") or "")
                   for r in status.get("relays", ()))
    ready = {p.get("address") for p in status.get("peers", ()) if p.get("state") == "ready"}
    peers = {str(address): str(address) in ready for address in configured_peers}
    gap_facts = tuple(g if isinstance(g, GapFacts) else GapFacts(g.relay_id, g.first_seq, g.last_seq, g.resume_ms
                                                                if g.resume_ms is not None else g.after_ms)
                      for g in gaps)
    offsets = {f"relay {r.get('relay_id') or r.get('address')}": -int(r["clock_skew_ms"])
               for r in status.get("relays", ()) if r.get("clock_skew_ms") is not None and r.get("state") == "ok"}
    finality = status.get("finality") if isinstance(status.get("finality"), Mapping) else {}
    finalized = status.get("finalized_height", finality.get("finalized_height"))
    return Observation(now_ms, relays, peers, gap_facts, tuple(equivocators), int(status.get("height", 0)),
                       finalized, offsets)
