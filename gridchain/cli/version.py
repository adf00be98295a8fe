"""``--version`` for every program: the version the installed package's metadata records.

Read from the distribution's metadata (pyproject.toml's ``version`` once installed), so the
number a program prints is the one pip installed, never a second copy kept by hand.
"""

from __future__ import annotations

import argparse
import platform
from importlib import metadata

DISTRIBUTION = "gridchain"


def package_version() -> str:
    """The installed distribution's version, or ``unknown`` when run from a bare source tree."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def version_line(prog: str) -> str:
    """``gridchaind 0.1.0 (Python 3.11.7)``: what ``--version`` prints."""
    return f"{prog} {package_version()} (Python {platform.python_version()})"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=version_line(parser.prog),
                        help="print the program's version and exit")
