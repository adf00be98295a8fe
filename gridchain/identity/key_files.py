"""Where node and relay keys live, and making one before its program first starts.

A node's key is ``<data-dir>/node.key`` and a relay's ``<data-dir>/relay.key`` (or the file
given to ``gridchain-relay --key-file``); both are keys.py's 0600 PEM files. Members of a
network exchange public keys before the network file exists, so a key must be creatable
without starting the program that will use it (``gridchain keys --create``, the demo, the
compose init service): a node started once without the file would have made a chain of the
open development network in its data dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gridchain.identity.keys import KEY_FILE, RELAY_KEY_FILE, KeyFileError, SigningKey

NODE_KEY_FILE = KEY_FILE


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key found on disk: whose it is (``node`` or ``relay``), its file and public key."""

    role: str
    path: Path
    public_key: bytes

    def as_dict(self) -> dict:
        return {"role": self.role, "path": str(self.path), "key": self.public_key.hex()}


def load_or_create_key_file(path: Path) -> SigningKey:
    """The key in ``path``, made (0600, written atomically, its directory too) if there is none yet."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError("cannot-create", path, exc.strerror or str(exc)) from None
    return SigningKey.open_path(path)[0]


def node_key(data_dir: Path, create: bool = False) -> KeyInfo:
    return _key("node", Path(data_dir) / NODE_KEY_FILE, create)


def relay_key(path: Path, create: bool = False) -> KeyInfo:
    return _key("relay", Path(path), create)


def keys_in(data_dir: Path) -> list[KeyInfo]:
    """Every node or relay key in a data dir (none when it holds neither)."""
    found = []
    for role, name in (("node", NODE_KEY_FILE), ("relay", RELAY_KEY_FILE)):
        path = Path(data_dir) / name
        if path.exists():
            found.append(_key(role, path, False))
    return found


def _key(role: str, path: Path, create: bool) -> KeyInfo:
    key = load_or_create_key_file(path) if create else SigningKey.load(path)
    return KeyInfo(role, path, key.public_key)
