"""Finality core benchmarks: vote checks, certificate checks, the state's cost per vote, notes.

Every rate is one thread on one core, pure code with no I/O. A vote check is compared with
a bare Ed25519 verify of the same message (``limit``, ``ratio``): the signature is the floor.

    python -m bench.bench_finality     # prints a table, writes bench/results_finality.json
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bench.nodes import QUICK, row, run_alone
from gridchain.consensus.block import BLOCK_VERSION, ZERO_HASH, Header
from gridchain.consensus.finality import (
    Certificate, Checkpoint, FinalityState, make_note, sign_vote, verify_certificate, verify_note, verify_vote,
)
from gridchain.consensus.finality_votes import VOTE_SIZE
from gridchain.consensus.genesis import GENESIS_TIME_MS
from gridchain.consensus.params import NetworkParams
from gridchain.identity.keys import NodeKey

RESULTS = Path(__file__).with_name("results_finality.json")
SECONDS = 0.3 if QUICK else 1.0  # per timed loop: long enough to swamp timer noise
CHAIN_BLOCKS = 300 if QUICK else 2_000  # blocks voted on, every one a checkpoint
ROUNDS = 3  # best of three


def _network(n: int) -> tuple[NetworkParams, list[NodeKey]]:
    keys = [NodeKey.from_seed(bytes([100 + i]) * 32) for i in range(n)]
    params = NetworkParams(f"bench-finality-{n}", 1, members=frozenset(k.public_key for k in keys),
                           member_names={k.public_key: f"member-{i}" for i, k in enumerate(keys)})
    return params, keys


def _chain(length: int) -> tuple[list[Header], dict[bytes, Header]]:
    headers = [Header(BLOCK_VERSION, 0, ZERO_HASH, bytes(32), GENESIS_TIME_MS, 1, bytes(32))]
    for height in range(1, length + 1):
        headers.append(Header(BLOCK_VERSION, height, headers[-1].hash(), height.to_bytes(32, "big"),
                              GENESIS_TIME_MS + height * 1000, 1, bytes(32)))
    return headers, {h.hash(): h for h in headers}


def _rate(call, items) -> float:
    """Calls per second over ``items``, cycling, best of ROUNDS loops of SECONDS each."""
    best = 0.0
    for _ in range(ROUNDS):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < SECONDS:
            for item in items:
                call(item)
            count += len(items)
        best = max(best, count / (time.perf_counter() - start))
    return best


def run() -> list[dict]:
    params, keys = _network(4)
    headers, by_hash = _chain(CHAIN_BLOCKS)
    hashes = [h.hash() for h in headers]
    cps = [Checkpoint(i, h) for i, h in enumerate(hashes)]
    votes = [sign_vote(keys[i % 4].sign, keys[i % 4].public_key, params, cps[i], cps[i + 1]) for i in range(200)]
    rows = [_vote_rate(params, votes)]
    rows += [_certificate(n, cps) for n in (4, 16)]
    rows += _state(params, keys, cps, hashes, by_hash)
    rows.append(_note(params, keys, headers, cps))
    return rows


def _vote_rate(params: NetworkParams, votes) -> dict:
    bare = [(Ed25519PublicKey.from_public_bytes(v.voter), v.signature, v.message(params.network_hash)) for v in votes]
    checked = _rate(lambda v: verify_vote(params, v), votes)
    floor = _rate(lambda b: b[0].verify(b[1], b[2]), bare)
    return row("verify_vote", checked, "votes/s", "-", 0, limit=round(floor), ratio=round(checked / floor, 3))


def _certificate(n: int, cps) -> dict:
    params, keys = _network(n)
    cert = Certificate.from_votes(sign_vote(k.sign, k.public_key, params, cps[0], cps[1]) for k in keys[:params.quorum])
    per_second = _rate(lambda c: verify_certificate(params, c), [cert])
    return row(f"verify_certificate, {params.quorum} of {n}", 1000 / per_second, "ms", "-", 3,
               bytes=len(cert.encode()))


def _state(params, keys, cps, hashes, by_hash) -> list[dict]:
    def ancestor_at(block_hash: bytes, height: int) -> bytes | None:
        header = by_hash.get(block_hash)
        return None if header is None or height > header.height else hashes[height]  # one branch

    votes = [sign_vote(k.sign, k.public_key, params, cps[h - 1], cps[h]) for h in range(1, len(cps)) for k in keys]
    results = []
    for verified in (True, False):
        best = float("inf")
        for _ in range(ROUNDS):
            state = FinalityState(params, hashes[0])
            start = time.perf_counter()
            for vote in votes:
                update = state.add_vote(vote, ancestor_at, verified=verified)
                if update.finalized:
                    state.prune(state.finalized.height)
            best = min(best, time.perf_counter() - start)
        assert state.finalized.height == len(cps) - 2
        label = "bookkeeping only (votes checked before)" if verified else "with the signature check"
        results.append(row(f"FinalityState.add_vote, {label}", best / len(votes) * 1e6, "us/vote", "-", 1,
                           votes=len(votes)))
    duplicate = _rate(lambda v: state.add_vote(v, ancestor_at), votes[-4:])
    results.append(row("FinalityState.add_vote, a duplicate from gossip", 1e6 / duplicate, "us/vote", "-", 2))
    results.append(row("vote size on the wire (before framing)", VOTE_SIZE, "bytes", "-", 0))
    return results


def _note(params, keys, headers, cps) -> dict:
    cert = Certificate.from_votes(sign_vote(k.sign, k.public_key, params, cps[5], cps[6]) for k in keys[:3])
    text = make_note(params, headers[5], cert).text()
    per_second = _rate(lambda t: verify_note(params, t), [text])
    return row("verify_note (parse + 3-of-4 certificate)", 1000 / per_second, "ms", "proof --check < 10 ms", 3,
               bytes=len(text))


if __name__ == "__main__":
    run_alone(run, RESULTS)
