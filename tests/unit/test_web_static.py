"""The dashboard's shipped third-party files are the ones THIRD_PARTY.md records, and the package ships them."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

STATIC = resources.files("gridchain.web") / "static"


def test_third_party_files_match_their_recorded_hashes():
    record = (STATIC / "THIRD_PARTY.md").read_text()
    hashes = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", record, re.M))
    assert set(hashes) == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    for name, digest in hashes.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name
    assert "1.6.32" in record and "MIT" in record
    assert "MIT License" in (STATIC / "uPlot.LICENSE").read_text()


def test_the_page_loads_only_its_own_files():
    page = (STATIC / "index.html").read_text()
    for name in re.findall(r'(?:src|href)="/static/([^"]+)"', page):
        assert (STATIC / name).is_file(), name
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
