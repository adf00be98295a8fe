"""``python -m gridchain node|relay|device|client ARGS``: the programs without installed scripts.

``python -m gridchain node`` is gridchaind, ``relay`` is gridchain-relay, ``device`` is
gridchain-device and ``client`` (or
any other first word, e.g. ``python -m gridchain status``) is the gridchain client.
"""

from __future__ import annotations

import sys

from gridchain.cli.main import client_main, device_main, node_main, relay_main

PROGRAMS = {"node": node_main, "relay": relay_main, "device": device_main, "client": client_main}


def main(argv: list[str]) -> None:
    if argv and argv[0] in PROGRAMS:
        PROGRAMS[argv[0]](argv[1:])
    else:
        client_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
