"""A configured peer address that accepts and closes at once: named in the log, backed off, still dialled.

A live ``gridchain node`` process is configured with one peer address served by a tiny server
in this test that accepts each connection and closes it at once (what a port that is no
node's, or a node turning strangers away unheard, looks like to a dialler). On an open
network (plaintext links) and on a network file's (TLS 1.3, where the close lands under the
dialler's ClientHello):

- each failure has a named reason in the node's JSON log, ``peer.dial_failed``
  ``reason=closed-before-hello`` with the count of failures in a row, and the log does not
  flood: the first failure, then at most once a minute, plus at once when the reason changes
  (the server gone: ``refused``);
- the redials back off, doubling from 0.25 s to the ``--redial-max`` cap, and never stop;
- once a real member listens at the address the dialler links to it and logs ``peer.restored``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support import outsider as o
from tests.support.ports import free_port
from tests.support.processes import Proc, Processes, answers, wait_status
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(90)

NETWORK = "dial-net"
DIFFICULTY = 8
REDIAL_MAX_S = 1.0  # the cap, small so the doubling reaches it within the test
FIRST_DELAY_S = 0.25  # gridchain.net.dialer.DIAL_FIRST_DELAY_S, the documented first redial
JITTER = 0.2  # each wait is the delay times 1 +- 0.2 (docs/protocol.md)
SLACK_S = 0.5  # a process on a shared 2-core host may answer this late
ATTEMPTS = 7  # 0.25 + 0.5 + 1 + 1 + ...: about 5 s of redials
START_TIMEOUT_S = 20.0


class Closer:
    """Accepts on a port and closes each connection at once; when each one came."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[float] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> Closer:
        async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted.append(time.monotonic())
            writer.close()

        self.server = await asyncio.start_server(close_at_once, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def dial_failures(proc: Proc, address: str) -> list[dict]:
    return [e for e in proc.events(("peer.dial_failed",)) if e.get("peer") == address]


@pytest.mark.parametrize("tls", [False, True], ids=["open-network", "network-file"])
async def test_an_address_that_accepts_and_closes_is_logged_by_name_backed_off_and_still_dialled(tmp_path, tls):
    port = free_port()
    address = f"127.0.0.1:{port}"
    extra = ["--redial-max", f"{REDIAL_MAX_S:g}"]
    if tls:
        keys = {name: Ed25519PrivateKey.generate() for name in ("dialler", "member")}
        for name, key in keys.items():
            o.write_key_file(tmp_path / name / "node.key", key)
        relay = o.RelayEntry("Relay 1", "Test Substation", o.raw_public(Ed25519PrivateKey.generate()))
        members = tuple(o.Member(name, o.raw_public(key)) for name, key in keys.items())
        extra += ["--network-file", str(o.Network(NETWORK, DIFFICULTY, members, (relay,)).write(tmp_path / "net.toml"))]
    closer = await Closer(port).start()
    with Processes(tmp_path, NETWORK, DIFFICULTY) as procs:
        dialler = procs.node("dialler", peers=[port], data_dir=tmp_path / "dialler", extra=extra)
        try:
            await wait_until(lambda: len(closer.accepted) >= ATTEMPTS or not dialler.alive(), 30.0,
                             what=f"{ATTEMPTS} dials of the closing address")
        finally:
            await closer.stop()
        assert dialler.alive(), "the dialler exited"
        gaps = [b - a for a, b in zip(closer.accepted, closer.accepted[1:])]

        # Backed off: doubling from the first delay, never faster than the cap allows once there,
        # and never slower than the cap (it is still dialled).
        low, high = 1 - JITTER, 1 + JITTER
        assert FIRST_DELAY_S * low - 0.05 <= gaps[0] <= FIRST_DELAY_S * high + SLACK_S, gaps
        assert gaps[1] >= 2 * FIRST_DELAY_S * low - 0.05, f"the second wait did not double: {gaps}"
        assert all(REDIAL_MAX_S * low - 0.05 <= g <= REDIAL_MAX_S * high + SLACK_S for g in gaps[3:]), \
            f"the redials after the third are not at the cap of {REDIAL_MAX_S} s: {gaps}"

        # Named, and not a line per failure.
        failures = dial_failures(dialler, address)
        assert failures, "the failures were never logged"
        assert [e["reason"] for e in failures] == ["closed-before-hello"], failures
        assert failures[0]["failures"] == 1 and failures[0]["level"] == "info"
        assert failures[0]["retry_s"] <= FIRST_DELAY_S * high

        # Nothing listens any more: the new reason is logged at once, not a minute later.
        await wait_until(lambda: any(e["reason"] == "refused" for e in dial_failures(dialler, address)),
                         REDIAL_MAX_S * high + 3 * SLACK_S, what="the dial to a closed port logged as refused")
        refused = [e for e in dial_failures(dialler, address) if e["reason"] == "refused"]
        assert len(refused) == 1 and refused[0]["failures"] >= len(closer.accepted) + 1, refused
        assert not dialler.events(("peer.restored",)), "a dial that never linked was called restored"

        # A real member comes to the address: the dialler links to it and says so once.
        member = procs.node("member", port=port, data_dir=tmp_path / "member", extra=extra[2:])
        await wait_status(member, answers, START_TIMEOUT_S, "the member to start")
        await wait_status(dialler, lambda s: len(s["peers"]) == 1 and s["peers"][0]["state"] == "ready",
                          START_TIMEOUT_S, "the dialler to link to the member")
        restored = dialler.events(("peer.restored",))
        assert [e["peer"] for e in restored] == [address], restored
        await procs.stop_all()
    assert not procs.unclean, procs.unclean
    assert len(dial_failures(dialler, address)) == 2, "more than one line per reason within a minute"
