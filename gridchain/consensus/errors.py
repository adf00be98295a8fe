"""The one error base: every refusal in gridchain carries a stable ``reason`` and a ``detail``.

It lives in the consensus package because consensus may import only itself, and every other
layer (wire, net, relay, ledger, api) sits above it. What a fault costs the peer that caused
it (ban, drop, nothing) is not decided here but in gridchain/net/penalties.py, by reason.
"""

from __future__ import annotations


class GridchainError(Exception):
    """A named failure: ``reason`` is short kebab-case for logs and tests, ``detail`` is for people."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
