"""The node key file: made once with mode 0600, the same key after, refused when unusable."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gridchain.consensus.signing import verify_signature
from gridchain.identity.keys import KEY_FILE, RELAY_KEY_FILE, KeyFileError, NodeKey, RelayKey


def test_first_start_creates_a_private_key_file(tmp_path):
    key = NodeKey.load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(key.public_key) == 32
    assert key.node_id == key.public_key.hex()[:12]
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE], "no temporary file left behind"


def test_restart_loads_the_same_key(tmp_path):
    first = NodeKey.load_or_create(tmp_path)
    again = NodeKey.load_or_create(tmp_path)
    assert again.public_key == first.public_key
    signature = again.sign(b"block hash")
    assert verify_signature(first.public_key, signature, b"block hash")
    assert not verify_signature(first.public_key, signature, b"another hash")


def test_from_seed_is_deterministic_and_checks_length():
    assert NodeKey.from_seed(b"\x01" * 32).public_key == NodeKey.from_seed(b"\x01" * 32).public_key
    assert NodeKey.from_seed(b"\x01" * 32).public_key != NodeKey.from_seed(b"\x02" * 32).public_key
    with pytest.raises(ValueError):
        NodeKey.from_seed(b"short")


def test_repr_never_shows_the_private_key():
    key = NodeKey.from_seed(b"\x05" * 32)
    assert repr(key) == f"NodeKey({key.node_id})"


def _write(path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


@pytest.mark.parametrize("content", [
    b"", b"not a key at all", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", b"x" * 10_000])
def test_corrupt_key_file_is_refused(tmp_path, content):
    _write(tmp_path / KEY_FILE, content)
    with pytest.raises(KeyFileError) as caught:
        NodeKey.load_or_create(tmp_path)
    assert caught.value.reason == "corrupt"
    assert str(tmp_path / KEY_FILE) in str(caught.value)
    assert isinstance(caught.value, OSError)  # reported like any unusable data dir
    assert (tmp_path / KEY_FILE).read_bytes() == content, "a bad key is never silently replaced"


def test_key_of_another_type_is_refused(tmp_path):
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(tmp_path / KEY_FILE, pem)
    with pytest.raises(KeyFileError) as caught:
        NodeKey.load_or_create(tmp_path)
    assert caught.value.reason == "wrong-key-type"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(tmp_path, mode):
    NodeKey.load_or_create(tmp_path)
    os.chmod(tmp_path / KEY_FILE, mode)
    with pytest.raises(KeyFileError) as caught:
        NodeKey.load_or_create(tmp_path)
    assert caught.value.reason == "insecure-permissions"
    assert "chmod 600" in str(caught.value)


def test_key_path_that_is_not_a_file_is_refused(tmp_path):
    (tmp_path / KEY_FILE).mkdir()
    with pytest.raises(KeyFileError) as caught:
        NodeKey.load_or_create(tmp_path)
    assert caught.value.reason == "not-a-file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_unreadable_key_file_is_refused(tmp_path):
    NodeKey.load_or_create(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o000)
    with pytest.raises(KeyFileError) as caught:
        NodeKey.load_or_create(tmp_path)
    assert caught.value.reason == "unreadable"


def test_a_key_written_by_a_racing_process_is_kept(tmp_path, monkeypatch):
    """Two processes starting at once: the second writer links nothing and loads the first key."""
    winner = NodeKey.from_seed(b"\x09" * 32)
    real_link = os.link

    def link_after_rival(src, dst):
        _write(tmp_path / KEY_FILE, winner.pem())  # the rival got there first
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_rival)
    key = NodeKey.load_or_create(tmp_path)
    assert key.public_key == winner.public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]


def test_a_key_that_cannot_be_written_is_named(tmp_path):
    with pytest.raises(KeyFileError) as caught:
        NodeKey.load_or_create(tmp_path / "no-such-dir")
    assert caught.value.reason == "cannot-create"


def test_a_relay_key_file_anywhere_says_whether_it_was_made_now(tmp_path):
    path = tmp_path / "keys" / RELAY_KEY_FILE
    path.parent.mkdir()
    key, created = RelayKey.open_path(path)
    assert created and isinstance(key, RelayKey) and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = RelayKey.open_path(path)
    assert not created and again.public_key == key.public_key
    assert repr(key) == f"RelayKey({key.node_id})"
    assert NodeKey.load_or_create(tmp_path / "keys", RELAY_KEY_FILE).public_key == key.public_key


def test_a_relay_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / RELAY_KEY_FILE
    RelayKey.open_path(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as caught:
        RelayKey.open_path(path)
    assert caught.value.reason == "insecure-permissions"
