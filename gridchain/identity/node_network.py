"""Which network a node runs: the one its network file names, or an open development network.

With ``--network-file`` the file decides the network's name, difficulty and members, so a
``--network``, ``--difficulty`` or ``--member`` that says otherwise is an error rather than
a silent override (two members must never disagree about what they run). Without a file the
node runs an open development network, where any key may mine and any relay is believed on
first contact, and says so in a ``network.open`` warning at start.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import structlog

from gridchain.config import NodeConfig
from gridchain.consensus.params import NetworkParams
from gridchain.identity.network_file import NetworkDocument, load_network_file

log = structlog.get_logger()

# The settings a network file decides, with how an operator names each one.
DECIDED_BY_FILE = {"network": "--network", "difficulty": "--difficulty", "members": "--member"}


class NetworkSettingConflict(ValueError):
    """A setting contradicts the network file; str() names both."""


def settings_from_network_file(path: Path, values: Mapping[str, object], explicit: Collection[str]) -> dict:
    """The name and difficulty a network file gives a node, checked against what was set explicitly.

    ``values`` are the resolved settings and ``explicit`` the keys set by a flag, the
    environment or a config file (not defaults). Raises NetworkFileError for an unusable
    file and NetworkSettingConflict for a contradiction.
    """
    document = load_network_file(path)
    given = {"network": document.name, "difficulty": document.difficulty}
    for key, value in given.items():
        if key in explicit and values.get(key) != value:
            raise NetworkSettingConflict(
                f"{DECIDED_BY_FILE[key]} {values.get(key)!r} contradicts the network file {path}, which says "
                f"{value!r}; leave {DECIDED_BY_FILE[key]} out (the file decides)")
    if "members" in explicit and values.get("members"):
        raise NetworkSettingConflict(f"--member is not used with a network file: the members are the ones {path} "
                                     "names")
    return given


def network_document(config: NodeConfig) -> NetworkDocument:
    """The node's network document: its network file's, or an open one from its settings."""
    if config.network_file is not None:
        return load_network_file(config.network_file)
    return NetworkDocument.open_network(config.network, config.difficulty)


def node_params(config: NodeConfig) -> NetworkParams:
    """The NetworkParams a node starts with; an open network is announced with a warning."""
    document = network_document(config)
    if not document.is_open:
        return document.params()
    log.warning("network.open", network=document.name, difficulty=document.difficulty,
                members="listed by --member" if config.members else "any key",
                detail="no --network-file: running an open development network; any key may mine and relay "
                       "keys are trusted on first contact. Use `gridchain network init` and --network-file "
                       "for a real deployment.")
    return NetworkParams(config.network, config.difficulty, config.members)
