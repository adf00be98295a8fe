"""The identity proof of the peer handshake: what each side signs, byte for byte. Pure.

A ``hello`` only claims a node key. Each side proves it holds the private key by signing,
with that key, a statement that names this one connection: a domain tag, the network's
genesis, the signer's role (it dialled, or it accepted), both node keys and both sides'
fresh nonces, the signer's first, and a channel binding. Nothing in the statement can be
reused elsewhere: another connection has other nonces, the other role signs another byte,
and another network another genesis. The channel binding is empty on today's plaintext
links; once links run over TLS it is a value both ends derive from their TLS session, so a
proof made on one TLS session does not verify on another and a party relaying two
sessions (a man in the middle) cannot pass one side's proof to the other.

The layout (docs/protocol.md, "Identity proof"), 186 bytes plus the binding:

    offset  size  field
    0       24    PROOF_TAG, ASCII "gridchain/hello-proof/v1"
    24      32    genesis hash
    56      1     the signer's role: 0x01 dialler, 0x02 listener
    57      32    the signer's node key
    89      32    the other side's node key (as its hello claims it)
    121     32    the signer's nonce (from the signer's hello)
    153     32    the other side's nonce (from the other side's hello)
    185     1     n, the length of the channel binding (0 on a plaintext link)
    186     n     the channel binding

The signature is plain Ed25519 (RFC 8032) over those bytes.
"""

from __future__ import annotations

from gridchain.consensus.signing import verify_signature

PROOF_TAG = b"gridchain/hello-proof/v1"  # 24 bytes: no other gridchain signature starts so
DIALLER = 1
LISTENER = 2
NONCE_SIZE = 32  # bytes of fresh randomness per hello: never repeats, never guessable
KEY_SIZE = 32
# A TLS exporter value is 32 bytes (RFC 9266); the cap leaves room for a longer one.
MAX_BINDING = 64


def proof_statement(*, genesis: bytes, role: int, signer_key: bytes, other_key: bytes, signer_nonce: bytes,
                    other_nonce: bytes, binding: bytes = b"") -> bytes:
    """The exact bytes a side signs to prove its key on one connection (layout above)."""
    if role not in (DIALLER, LISTENER):
        raise ValueError(f"role {role}: 1 (dialler) or 2 (listener)")
    for name, value, size in (("genesis", genesis, 32), ("signer_key", signer_key, KEY_SIZE),
                              ("other_key", other_key, KEY_SIZE), ("signer_nonce", signer_nonce, NONCE_SIZE),
                              ("other_nonce", other_nonce, NONCE_SIZE)):
        if len(value) != size:
            raise ValueError(f"{name}: {len(value)} bytes, expected {size}")
    if len(binding) > MAX_BINDING:
        raise ValueError(f"binding: {len(binding)} bytes, at most {MAX_BINDING}")
    return b"".join((PROOF_TAG, genesis, bytes([role]), signer_key, other_key, signer_nonce, other_nonce,
                     bytes([len(binding)]), binding))


def verify_proof(signature: bytes, **statement) -> bool:
    """Whether ``signature`` is the signer's (``statement["signer_key"]``) over the statement."""
    try:
        message = proof_statement(**statement)
    except ValueError:
        return False
    return verify_signature(statement["signer_key"], signature, message)
