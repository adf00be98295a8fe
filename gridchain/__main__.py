"""``python -m gridchain node|relay|client ARGS``: the three programs without installed scripts.

``python -m gridchain node`` is gridchaind, ``relay`` is gridchain-relay and ``client`` (or
any other first word, e.g. ``python -m gridchain status``) is the gridchain client.
"""

from __future__ import annotations

import sys

from gridchain.cli.main import client_main, node_main, relay_main

PROGRAMS = {"node": node_main, "relay": relay_main, "client": client_main}


def main(argv: list[str]) -> None:
    if argv and argv[0] in PROGRAMS:
        PROGRAMS[argv[0]](argv[1:])
    else:
        client_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
