"""The message envelope both protocols of a node's port share: ``[type, body]`` in one frame. Pure.

A message is a frozen dataclass with a ``TYPE`` name, ``to_body()`` and ``from_body()``;
on the wire it is the msgpack array ``[type, body]``, the type a str and the body a map
with str keys (gridchain.wire.frames carries it). ``decoder(classes)`` builds the strict
decoding function of a set of message classes: the peer protocol (gridchain.net.messages)
and the operator protocol (gridchain.api.messages) each have theirs, and the node, whose
port carries both, decodes with the union (gridchain.node.port).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gridchain.wire.fields import BAD_SHAPE, UNKNOWN_TYPE, MessageError, describe

MAX_CODE = 64  # bytes: reject codes and error reasons are short stable names like "bad-pow"
MAX_DETAIL = 4096  # bytes: one human-readable sentence or error text, never a payload


def encode_message(message: object) -> list:
    """The ``[type, body]`` array for ``message``, ready for ``wire.encode_frame``."""
    return [message.TYPE, message.to_body()]


def decoder(classes: Iterable[type]) -> Callable[[object], object]:
    """The strict decoding function of these message classes (types outside them: unknown-type)."""
    decoders = {cls.TYPE: cls.from_body for cls in classes}

    def decode(obj: object) -> object:
        """The message a decoded frame holds; MessageError (and nothing else) when it holds none."""
        if type(obj) is not list or len(obj) != 2:
            raise MessageError(BAD_SHAPE, f"a message is a [type, body] array, got {describe(obj)}")
        kind, body = obj
        if type(kind) is not str:
            raise MessageError(BAD_SHAPE, f"the type is a str, got {describe(kind)}")
        if type(body) is not dict:
            raise MessageError(BAD_SHAPE, f"the body is a map, got {describe(body)}")
        decode_body = decoders.get(kind)
        if decode_body is None:
            raise MessageError(UNKNOWN_TYPE, repr(kind[:40]))
        return decode_body(body)

    return decode
