"""Who may ask the operator API what: two roles, their tokens, and the session's opening frame.

Two roles (docs/security.md, "Operator access"):

- **read**: status, blocks and headers, readings, proofs, finality checkpoints, subscribe
  (``READ_REQUESTS``);
- **admin**: everything, including ``verify`` (a whole-store audit) and any request not
  named as a read one: a request type added later needs admin until someone decides otherwise.

Each role has a token, 32 random bytes written as 64 hex digits in the node's data dir
(``read.token``, ``admin.token``, mode 0600, made on the node's first start). A client proves
its role by opening its session with ``["auth", {"token": "<64 hex>"}]``; the node answers
``["auth_ok", {"role": "read"|"admin"}]`` or ``["error", {"reason": "bad-token"}]`` and closes.
Without ``auth``, a session from the node's own host (127.0.0.1 or the Unix socket) is
``read``; from another host it is refused (``token-required``). ``admin`` always needs its
token, local or not, so an account on the node's host that cannot read the data dir cannot
start an audit. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from gridchain.consensus.errors import GridchainError

READ, ADMIN = "read", "admin"
TOKEN_FILES = {READ: "read.token", ADMIN: "admin.token"}
TOKEN_BYTES = 32  # 256 bits: not guessable, not worth brute-forcing
MAX_TOKEN_CHARS = 128
AUTH_TYPE = "auth"
AUTH_OK_TYPE = "auth_ok"
READ_REQUESTS = frozenset({
    "status_request", "block_request", "headers_request", "readings_request", "proof_request", "subscribe",
    "finality_request", "raw_headers_request",
})


class AccessError(GridchainError):
    """A session may not do what it asked (``reason``: bad-token, token-required, admin-required)."""


def role_allows(role: str, request_type: str) -> bool:
    return role == ADMIN or (role == READ and request_type in READ_REQUESTS)


def auth_token(frame: object) -> str | None:
    """The token of an ``auth`` frame; None if the frame is not one. AccessError if malformed."""
    if not (type(frame) is list and len(frame) == 2 and frame[0] == AUTH_TYPE):
        return None
    body = frame[1]
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise AccessError("bad-token", "auth needs a token string")
    return token


@dataclass(frozen=True, slots=True)
class Tokens:
    """The node's two tokens (hex text)."""

    read: str
    admin: str

    def role_of(self, token: str) -> str | None:
        given = token.strip().encode()
        if hmac.compare_digest(given, self.admin.encode()):
            return ADMIN
        if hmac.compare_digest(given, self.read.encode()):
            return READ
        return None

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Tokens:
        return cls(read=_token_file(Path(data_dir) / TOKEN_FILES[READ]),
                   admin=_token_file(Path(data_dir) / TOKEN_FILES[ADMIN]))


def _token_file(path: Path) -> str:
    if not path.exists():
        fd = os.open(path.with_name(f".{path.name}.{os.getpid()}.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(TOKEN_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(path.with_name(f".{path.name}.{os.getpid()}.tmp"), path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            os.unlink(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    mode = path.stat().st_mode
    if mode & 0o077:
        raise AccessError("insecure-permissions", f"{path}: mode {stat.S_IMODE(mode):04o} lets other users read it; "
                          f"run chmod 600 {path}")
    token = path.read_text()[:MAX_TOKEN_CHARS + 2].strip()
    if len(token) < 32:
        raise AccessError("bad-token-file", f"{path}: holds no token (delete it to have a new one made)")
    return token


def read_token_file(path: Path) -> str:
    """A client's token from a file (``--token-file``): its first line, stripped."""
    text = Path(path).read_text()[:MAX_TOKEN_CHARS + 2]
    return text.strip().splitlines()[0] if text.strip() else ""
