"""The network file: one TOML document naming a network, its difficulty, its members and relays.

Every member of a network holds the same file. Its canonical content is hashed into the
network's identity (``network_hash``, committed to by the genesis block), so two nodes with
different files refuse each other. Layout::

    [network]
    name = "substation-7"
    difficulty = 16

    [[members]]            # one per node allowed to mine and to peer
    name = "operator"
    key = "<64 hex digits: the node's Ed25519 public key>"
    address = "10.0.0.1:5004"   # optional, not part of the identity

    [[relays]]             # one per relay whose signed readings the chain accepts
    id = "Relay 1"
    substation = "Substation 7"
    key = "<64 hex digits: the relay's Ed25519 public key>"

    [finality]             # optional; these are the defaults
    checkpoint_interval = 1     # a checkpoint every this many blocks (heights 0, i, 2i, ...)
    quorum = 3                  # votes a link needs: more than 2/3 of members, at most all

Canonical bytes: msgpack (bin for keys) of a map whose keys are written in sorted order::

    {"difficulty": int, "finality": {"checkpoint_interval": int, "quorum": int},
     "members": [[key, name], ...] sorted by key,
     "name": str, "relays": [[id, substation, key], ...] sorted by id}

Addresses are left out (a member may move without changing the network). ``finality`` is
there only when the settings differ from the defaults (interval 1, quorum the smallest count
above two thirds of the members), with both values written out: networks from before
finality keep their hash, and spelling out a default never changes the network. An open
development network (no file) is ``{"difficulty": int, "name": str}`` alone. Tables this
version does not know are refused by name rather than ignored, so a node never runs a
network whose rules it does not enforce; a new table becomes one more entry of ``_SECTIONS``
and one more key of the canonical map.

Parsing is pure (``parse_network_text``); ``load_network_file`` only adds reading the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgpack

from gridchain.config import Address
from gridchain.consensus.errors import GridchainError
from gridchain.consensus.params import DEFAULT_CHECKPOINT_INTERVAL, default_quorum, finality_entry

KEY_SIZE = 32  # raw Ed25519 public key
# Network and member names end up in blocks, whose text fields hold at most 256 bytes
# (the genesis block's substation is "gridchain network <name>"): the CLI's own cap.
MAX_NAME_BYTES = 200
MAX_RELAY_ID_BYTES = 255  # one length byte in the relay's signed messages
MAX_DIFFICULTY = 64  # past 64 leading zero bits no machine would ever mine a block
# A network file is a few hundred bytes per member; a megabyte is far past any real one and
# keeps a wrong path (a chain database, say) from being read whole.
MAX_FILE_BYTES = 1024 * 1024
MAX_MEMBERS = 1000  # a consortium, not a public network
MAX_RELAYS = 10_000
# Checkpoints further apart than this leave the newest blocks unprotected for too long to be
# worth having: at a block a minute, a week of blocks.
MAX_CHECKPOINT_INTERVAL = 10_080


class NetworkFileError(GridchainError):
    """The network file cannot be used; str() names the file, line and field when known."""

    def __init__(self, detail: str, path: Path | str | None = None, line: int | None = None,
                 reason: str = "bad-network-file") -> None:
        where = f"{path}:{line}" if path is not None and line is not None else str(path) if path is not None else ""
        super().__init__(reason, f"{where}: {detail}" if where else detail)
        self.path, self.line = path, line

    def __str__(self) -> str:  # one line for the operator; the reason is in .reason
        return self.detail


@dataclass(frozen=True, slots=True)
class Member:
    """A node allowed to mine and to peer: its name, Ed25519 public key and optional address."""

    name: str
    key: bytes
    address: Address | None = None


@dataclass(frozen=True, slots=True)
class RelayEntry:
    """A relay whose signed readings the chain accepts."""

    relay_id: str
    substation: str
    key: bytes


@dataclass(frozen=True, slots=True)
class NetworkDocument:
    """One network's identity. ``members``/``relays`` are None for an open development network.

    Members and relays keep the order they were written in (for people); the canonical
    bytes sort them, so reordering never changes the network.
    """

    name: str
    difficulty: int
    members: tuple[Member, ...] | None = None
    relays: tuple[RelayEntry, ...] | None = None
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    quorum: int | None = None  # None: default_quorum of the members

    @classmethod
    def open_network(cls, name: str, difficulty: int) -> NetworkDocument:
        """The document of a node run without a network file: any key may mine."""
        try:
            return cls(_checked_name(name), _checked_difficulty(difficulty))
        except _FieldError as exc:
            raise NetworkFileError(f"network: {exc}") from None

    @property
    def is_open(self) -> bool:
        return self.members is None

    @property
    def finality_quorum(self) -> int | None:
        """The quorum in force: the written one, or the default for the members (None: open)."""
        if self.quorum is not None or self.members is None:
            return self.quorum
        return default_quorum(len(self.members))

    def canonical_bytes(self) -> bytes:
        document: dict[str, object] = {"difficulty": self.difficulty}
        finality = finality_entry(None if self.members is None else len(self.members), self.checkpoint_interval,
                                  self.quorum)
        if finality is not None:
            document["finality"] = finality
        if self.members is not None:
            document["members"] = sorted([m.key, m.name] for m in self.members)
        document["name"] = self.name
        if self.relays is not None:
            document["relays"] = sorted([r.relay_id, r.substation, r.key] for r in self.relays)
        return msgpack.packb(document, use_bin_type=True)

    def network_hash(self) -> bytes:
        return hashlib.sha256(self.canonical_bytes()).digest()

    def member(self, key: bytes) -> Member | None:
        return next((m for m in self.members or () if m.key == key), None)

    def relay(self, relay_id: str) -> RelayEntry | None:
        return next((r for r in self.relays or () if r.relay_id == relay_id), None)

    def params(self):
        """The consensus parameters of this network (gridchain.consensus.params.NetworkParams)."""
        from gridchain.consensus.params import NetworkParams, RelayInfo

        if self.is_open:
            return NetworkParams(self.name, self.difficulty)
        return NetworkParams(
            self.name, self.difficulty, members=frozenset(m.key for m in self.members),
            network_hash=self.network_hash(), member_names={m.key: m.name for m in self.members},
            relays={r.relay_id: RelayInfo(r.key, r.substation) for r in self.relays},
            checkpoint_interval=self.checkpoint_interval, quorum=self.finality_quorum)

    def to_toml(self) -> str:
        """The document as a network file; ``parse_network_text(doc.to_toml()) == doc``."""
        if self.is_open:
            raise ValueError("an open development network has no network file")
        lines = [f"# gridchain network file; network hash {self.network_hash().hex()}",
                 "# Every member runs with this same file: gridchaind --network-file FILE", "",
                 "[network]", f"name = {_quote(self.name)}", f"difficulty = {self.difficulty}"]
        for m in self.members:
            lines += ["", "[[members]]", f"name = {_quote(m.name)}", f"key = {_quote(m.key.hex())}"]
            if m.address is not None:
                lines.append(f"address = {_quote(str(m.address))}")
        for r in self.relays:
            lines += ["", "[[relays]]", f"id = {_quote(r.relay_id)}", f"substation = {_quote(r.substation)}",
                      f"key = {_quote(r.key.hex())}"]
        if self.checkpoint_interval != DEFAULT_CHECKPOINT_INTERVAL or self.quorum is not None:
            lines += ["", "[finality]"]
            if self.checkpoint_interval != DEFAULT_CHECKPOINT_INTERVAL:
                lines.append(f"checkpoint_interval = {self.checkpoint_interval}")
            if self.quorum is not None:
                lines.append(f"quorum = {self.quorum}")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        """For ``--json`` output: keys as hex, plus the network hash."""
        return {
            "name": self.name, "difficulty": self.difficulty, "network_hash": self.network_hash().hex(),
            "open": self.is_open,
            "members": [{"name": m.name, "key": m.key.hex(), "address": str(m.address) if m.address else None}
                        for m in self.members or ()],
            "relays": [{"id": r.relay_id, "substation": r.substation, "key": r.key.hex()} for r in self.relays or ()],
            "finality": {"checkpoint_interval": self.checkpoint_interval, "quorum": self.finality_quorum},
        }


def load_network_file(path: Path | str) -> NetworkDocument:
    """Read and validate a network file; raises NetworkFileError naming the file, line and field."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NetworkFileError("no such file", path, reason="network-file-missing") from None
    except OSError as exc:
        raise NetworkFileError(f"cannot read it: {exc.strerror or exc}", path,
                               reason="network-file-unreadable") from None
    if len(data) > MAX_FILE_BYTES:
        raise NetworkFileError(f"larger than {MAX_FILE_BYTES} bytes: not a network file", path)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise NetworkFileError("not UTF-8 text", path) from None
    return parse_network_text(text, path)


def parse_network_text(text: str, path: Path | str | None = "<network file>") -> NetworkDocument:
    """Validate a network file's text; ``path`` (None: no file, so no line numbers) names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NetworkFileError(f"not valid TOML: {exc}", path) from None
    return _Parser(text, path).document(document)


# --- validation -------------------------------------------------------------------------------
_SECTIONS = {"network": "a table", "members": "an array of tables ([[members]])",
             "relays": "an array of tables ([[relays]])", "finality": "a table"}
_FIELDS = {"network": ("name", "difficulty"), "members": ("name", "key", "address"),
           "relays": ("id", "substation", "key"), "finality": ("checkpoint_interval", "quorum")}
_REQUIRED = {"network": ("name", "difficulty"), "members": ("name", "key"), "relays": ("id", "substation", "key"),
             "finality": ()}


class _Parser:
    """Checks a decoded TOML document, pointing each error at the line it is about."""

    def __init__(self, text: str, path: Path | str | None) -> None:
        self.lines = text.splitlines()
        self.path = path

    def fail(self, field: str, problem: str, section: str | None = None, index: int = 0, key: str | None = None,
             reason: str = "bad-network-file"):
        line = self._line(section, index, key) if self.path is not None else None
        raise NetworkFileError(f"{field}: {problem}", self.path, line, reason)

    def document(self, doc: Mapping[str, object]) -> NetworkDocument:
        for name in doc:
            if name not in _SECTIONS:
                self.fail(name, f"unknown table or key (known: {', '.join(_SECTIONS)})",
                          name if isinstance(doc[name], dict) else None,
                          key=None if isinstance(doc[name], dict) else name)
        network = self._table(doc, "network")
        members = [self._member(i, entry) for i, entry in enumerate(self._array(doc, "members", MAX_MEMBERS))]
        relays = [self._relay(i, entry) for i, entry in enumerate(self._array(doc, "relays", MAX_RELAYS))]
        self._unique(members, "members", "key", lambda m: m.key, lambda m: m.key.hex()[:16])
        self._unique(members, "members", "name", lambda m: m.name, lambda m: repr(m.name))
        self._unique(relays, "relays", "id", lambda r: r.relay_id, lambda r: repr(r.relay_id))
        name = self._value("network", 0, "name", network["name"], _checked_name, MAX_NAME_BYTES)
        difficulty = self._value("network", 0, "difficulty", network["difficulty"], _checked_difficulty)
        interval, quorum = self._finality(doc, len(members))
        return NetworkDocument(name, difficulty, tuple(members), tuple(relays), interval, quorum)

    def _finality(self, doc: Mapping[str, object], members: int) -> tuple[int, int | None]:
        """``[finality]``: optional; each value checked against its bounds, with its own reason."""
        if "finality" not in doc:
            return DEFAULT_CHECKPOINT_INTERVAL, None
        table = self._table(doc, "finality")
        interval = table.get("checkpoint_interval", DEFAULT_CHECKPOINT_INTERVAL)
        if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= MAX_CHECKPOINT_INTERVAL:
            self.fail("finality.checkpoint_interval", f"{interval!r} is not a whole number of blocks in "
                      f"1..{MAX_CHECKPOINT_INTERVAL}", "finality", key="checkpoint_interval",
                      reason="bad-checkpoint-interval")
        quorum = table.get("quorum")
        if quorum is None:
            return interval, None
        if isinstance(quorum, bool) or not isinstance(quorum, int):
            self.fail("finality.quorum", f"{quorum!r} is not a whole number of members", "finality", key="quorum",
                      reason="bad-quorum")
        if 3 * quorum <= 2 * members:
            self.fail("finality.quorum", f"{quorum} of {members} members is not more than two thirds "
                      f"(at least {default_quorum(members)}): two quorums could then share no honest member",
                      "finality", key="quorum", reason="quorum-too-small")
        if quorum > members:
            self.fail("finality.quorum", f"{quorum} is more than the {members} members: nothing could ever be "
                      "final", "finality", key="quorum", reason="quorum-too-large")
        return interval, quorum

    def _table(self, doc: Mapping[str, object], section: str) -> Mapping[str, object]:
        table = doc.get(section)
        if not isinstance(table, dict):
            self.fail(section, f"missing [{section}] table" if table is None else f"must be {_SECTIONS[section]}",
                      key=section if table is not None else None)
        self._fields(section, 0, table)
        return table

    def _array(self, doc: Mapping[str, object], section: str, limit: int) -> list[Mapping[str, object]]:
        entries = doc.get(section)
        if entries is None or entries == []:
            self.fail(section, f"the network names no {section}: add at least one [[{section}]] table")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            self.fail(section, f"must be {_SECTIONS[section]}", key=section)
        if len(entries) > limit:
            self.fail(section, f"{len(entries)} entries, more than the {limit} allowed")
        for index, entry in enumerate(entries):
            self._fields(section, index, entry)
        return entries

    def _fields(self, section: str, index: int, table: Mapping[str, object]) -> None:
        label = section if section in ("network", "finality") else f"{section}[{index + 1}]"
        for key in table:
            if key not in _FIELDS[section]:
                known = ", ".join(_FIELDS[section])
                self.fail(f"{label}.{key}", f"unknown field (known: {known})", section, index, key)
        for key in _REQUIRED[section]:
            if key not in table:
                self.fail(f"{label}.{key}", "missing", section, index)

    def _value(self, section: str, index: int, key: str, raw: object, check, *args):
        label = section if section in ("network", "finality") else f"{section}[{index + 1}]"
        try:
            return check(raw, *args)
        except _FieldError as exc:
            self.fail(f"{label}.{key}", str(exc), section, index, key)

    def _member(self, index: int, entry: Mapping[str, object]) -> Member:
        raw_address = entry.get("address")
        address = None if raw_address is None else self._value("members", index, "address", raw_address, _address)
        return Member(self._value("members", index, "name", entry["name"], _checked_name, MAX_NAME_BYTES),
                      self._value("members", index, "key", entry["key"], parse_key), address)

    def _relay(self, index: int, entry: Mapping[str, object]) -> RelayEntry:
        return RelayEntry(self._value("relays", index, "id", entry["id"], _checked_name, MAX_RELAY_ID_BYTES),
                          self._value("relays", index, "substation", entry["substation"], _checked_name,
                                      MAX_NAME_BYTES),
                          self._value("relays", index, "key", entry["key"], parse_key))

    def _unique(self, entries: list, section: str, key: str, value, shown) -> None:
        seen: dict[object, int] = {}
        for index, entry in enumerate(entries):
            first = seen.setdefault(value(entry), index)
            if first != index:
                self.fail(f"{section}[{index + 1}].{key}",
                          f"{shown(entry)} is already used by {section}[{first + 1}]", section, index, key)

    def _line(self, section: str | None, index: int, key: str | None) -> int | None:
        """1-based line of ``key`` in the index-th ``[section]``/``[[section]]`` (or top level)."""
        start, stop = 0, len(self.lines)
        if section is not None:
            header = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
            starts = [n for n, line in enumerate(self.lines) if header.match(line)]
            if index >= len(starts):
                return None
            start = starts[index]
            stop = next((n for n in range(start + 1, len(self.lines)) if self.lines[n].lstrip().startswith("[")),
                        len(self.lines))
            if key is None:
                return start + 1
        if key is None:
            return None
        assignment = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
        found = next((n for n in range(start, stop) if assignment.match(self.lines[n])), None)
        return None if found is None else found + 1


class _FieldError(ValueError):
    """One field's value is unusable (the parser adds where)."""


def _checked_name(raw: object, max_bytes: int = MAX_NAME_BYTES) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _FieldError(f"{raw!r} is not a non-empty string")
    if raw != raw.strip():
        raise _FieldError(f"{raw!r} starts or ends with white space")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise _FieldError(f"{raw!r} holds a control character")
    if len(raw.encode()) > max_bytes:
        raise _FieldError(f"{raw!r} is longer than {max_bytes} bytes")
    return raw


def _checked_difficulty(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_DIFFICULTY:
        raise _FieldError(f"{raw!r} is not a whole number of bits in 0..{MAX_DIFFICULTY}")
    return raw


def parse_key(raw: object) -> bytes:
    """An Ed25519 public key from 64 hex digits; raises ValueError naming the problem."""
    if not isinstance(raw, str):
        raise _FieldError(f"{raw!r} is not a string of {2 * KEY_SIZE} hex digits")
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        raise _FieldError(f"{raw!r} is not hex") from None
    if len(key) != KEY_SIZE:
        raise _FieldError(f"{len(key)} bytes, an Ed25519 public key is {KEY_SIZE} ({2 * KEY_SIZE} hex digits)")
    return key


def _address(raw: object) -> Address:
    if not isinstance(raw, str):
        raise _FieldError(f"{raw!r} is not a HOST:PORT string")
    if ":" not in raw:
        raise _FieldError(f"{raw!r} is not HOST:PORT")
    try:
        return Address.parse(raw)
    except ValueError as exc:
        raise _FieldError(str(exc)) from None


def check_document(name: str, difficulty: int, members: list[Member], relays: list[RelayEntry]) -> NetworkDocument:
    """Build a document from values given on a command line, with the same checks as a file.

    Goes through the TOML form, so whatever can be built can be loaded back.
    """
    draft = NetworkDocument(name, difficulty, tuple(members), tuple(relays))
    try:
        text = draft.to_toml()
    except (TypeError, ValueError, AttributeError) as exc:
        raise NetworkFileError(str(exc)) from None
    return parse_network_text(text, None)


def _quote(text: str) -> str:
    # A TOML basic string: JSON's escapes are TOML's, and names hold no control characters
    # (checked), so json.dumps gives exactly the TOML form.
    return json.dumps(text, ensure_ascii=False)
