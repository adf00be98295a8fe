"""What the node's one port carries: the peer protocol and the operator protocol. Pure.

Both share the frame codec and the ``[type, body]`` envelope (gridchain.wire), but neither
package imports the other; the node, which listens for both, puts them together here. The
port's ``decode_message`` knows every type either side may send, so a peer that sends an
operator request is told ``unexpected-message`` (not ``unknown-type``), and an operator
connection that sends a peer message is told the same. The names below are the port's
whole vocabulary, for the node and for tests that cover every message at once.
"""

from __future__ import annotations

from gridchain.api.messages import (
    CLIENT_REPLIES, CLIENT_REQUESTS, HEADER_ROW_KEYS, MAX_HEADERS, MAX_INFO_DEPTH, MAX_PROBLEMS, MAX_PROOF_PATH,
    MAX_READINGS_PAGE, BlockEvent, BlockReply, BlockRequest, Error, HeadersReply, HeadersRequest, ProofReply,
    ProofRequest, ReadingsReply, ReadingsRequest, Status, StatusRequest, Subscribe, VerifyReply, VerifyRequest,
    is_request_frame,
)
from gridchain.net.messages import (
    MAX_BLOCKS_PER_MESSAGE, MAX_LOCATOR, PEER_MESSAGES, PROTOCOL_VERSION, BlockMessage, Blocks, GetBlocks, Hello,
    Ping, Pong, Reject, Tip, work_to_bytes,
)
from gridchain.wire.codec import MAX_CODE, MAX_DETAIL, decoder, encode_message
from gridchain.wire.fields import (
    BAD_BLOCK, BAD_FIELD, BAD_SHAPE, READINGS_ROW_LENGTH, TOO_MANY, UNKNOWN_TYPE, MessageError,
)

__all__ = [
    "BAD_BLOCK", "BAD_FIELD", "BAD_SHAPE", "CLIENT_REPLIES", "CLIENT_REQUESTS", "HEADER_ROW_KEYS", "MAX_BLOCKS_PER_MESSAGE",
    "MAX_CODE", "MAX_DETAIL", "MAX_HEADERS", "MAX_INFO_DEPTH", "MAX_LOCATOR", "MAX_PROBLEMS", "MAX_PROOF_PATH",
    "MAX_READINGS_PAGE", "PEER_MESSAGES", "PROTOCOL_VERSION", "READINGS_ROW_LENGTH", "TOO_MANY", "UNKNOWN_TYPE",
    "BlockEvent", "BlockMessage", "BlockReply", "BlockRequest", "Blocks", "Error", "GetBlocks", "HeadersReply",
    "HeadersRequest", "Hello", "MessageError", "Ping", "Pong", "ProofReply", "ProofRequest", "ReadingsReply",
    "ReadingsRequest", "Reject", "Status", "StatusRequest", "Subscribe", "Tip", "VerifyReply", "VerifyRequest",
    "encode_message", "is_request_frame", "work_to_bytes", "ALL_MESSAGES", "decode_message",
]

ALL_MESSAGES = PEER_MESSAGES + CLIENT_REQUESTS + CLIENT_REPLIES

decode_message = decoder(ALL_MESSAGES)
