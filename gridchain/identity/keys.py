"""Ed25519 key files: made on first start, kept in the data dir, loaded on every start after.

A node's key file is ``<data_dir>/node.key`` and a relay's ``<data_dir>/relay.key`` (or any
path given with ``--key-file``); both are an unencrypted PKCS#8 PEM (so ``openssl pkey``
can read it), mode 0600. It is written to a temporary file first and linked into place,
so a crash never leaves a half-written key and two processes starting at once end up
with the same one. A key file that cannot be read, does not hold an Ed25519 key, or is
readable by other users is refused with a ``KeyFileError`` naming the reason: a node
must never quietly start under a new identity or sign with a key others could copy.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridchain.consensus.errors import GridchainError

KEY_FILE = "node.key"
RELAY_KEY_FILE = "relay.key"
SEED_SIZE = 32  # an Ed25519 private key is a 32-byte seed
# Group/other permission bits: any of them lets another account read or replace the key.
INSECURE_MODE_BITS = 0o077
# A PEM Ed25519 key is ~120 bytes; anything far larger is not a key file.
MAX_KEY_FILE_BYTES = 4096
NODE_ID_HEX = 12  # the same width as short_hash(), so logs line up


class KeyFileError(GridchainError, OSError):
    """The key file exists but cannot be used; ``reason`` is a short stable name.

    An OSError so that whatever reports an unusable data dir reports this too.
    """

    def __init__(self, reason: str, path: Path, detail: str) -> None:
        super().__init__(f"key file {path}: {reason}: {detail}")
        self.reason = reason
        self.path = path
        self.detail = detail


class SigningKey:
    """One Ed25519 signing identity (a node's or a relay's); ``public_key`` is 32 raw bytes."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: Path, file_name: str = KEY_FILE) -> SigningKey:
        return cls.open_path(Path(data_dir) / file_name)[0]

    @classmethod
    def open_path(cls, path: Path) -> tuple[SigningKey, bool]:
        """The key in ``path``, made there first if there is none; True when made now.

        The relay needs to know: a relay whose key is new has never used a sequence number.
        """
        path = Path(path)
        created = False
        if not path.exists():
            try:
                created = _write_new(path, cls.generate())
            except OSError as exc:
                raise KeyFileError("cannot-create", path, exc.strerror or str(exc)) from None
        return cls.load(path), created

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                raise KeyFileError("not-a-file", path, "expected a regular file")
            if mode & INSECURE_MODE_BITS:
                raise KeyFileError("insecure-permissions", path,
                                   f"mode {stat.S_IMODE(mode):04o} lets other users read it; run chmod 600 {path}")
            with path.open("rb") as handle:
                data = handle.read(MAX_KEY_FILE_BYTES + 1)
        except KeyFileError:
            raise
        except OSError as exc:
            raise KeyFileError("unreadable", path, exc.strerror or str(exc)) from None
        return cls(_parse(path, data))

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    @property
    def node_id(self) -> str:
        return self.public_key.hex()[:NODE_ID_HEX]

    def pem(self) -> bytes:
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())

    def __repr__(self) -> str:  # never the private half
        return f"{type(self).__name__}({self.node_id})"


class NodeKey(SigningKey):
    """A node's signing identity; ``public_key`` is what peers see."""


class RelayKey(SigningKey):
    """A relay's signing identity: it signs seals over readings and gap notices."""

    @classmethod
    def open_path(cls, path: Path) -> tuple[RelayKey, bool]:
        return super().open_path(path)  # type: ignore[return-value]


def _parse(path: Path, data: bytes) -> Ed25519PrivateKey:
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError("corrupt", path, f"larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError("corrupt", path, f"not a PEM private key ({exc})") from None
    except Exception as exc:  # the PEM parser raises its own types for unsupported algorithms
        raise KeyFileError("corrupt", path, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("wrong-key-type", path, f"{type(key).__name__} is not an Ed25519 key")
    return key


def _write_new(path: Path, key: SigningKey) -> bool:
    """Write ``key`` to ``path`` durably, never replacing a key another process just wrote.

    True when this call's key is the one in place, False when another process's won the race.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.pem())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
            won = True
        except FileExistsError:  # lost a race: keep the key that is there
            won = False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_dir(path.parent)
    return won


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
