"""Running as a service: the systemd units, the pinned lock files, the Makefile, pyproject's metadata."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from gridchain.cli.settings import DEFAULT_CONFIG_PATH, build_node_parser, load_relay_settings

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((ROOT / "deploy" / name).read_text())
    return parser


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, hash count) of each requirement in a lock file."""
    found: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / lock).read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = match.group(1).lower().replace("_", "-")
            found[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, count = found[current]
            found[current] = (version, count + 1)
    return found


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


# --- lock files -----------------------------------------------------------------------------------
def test_the_run_lock_pins_every_dependency_with_hashes_and_no_test_tools():
    locked = pins("requirements.lock")
    assert requirement_names(PYPROJECT["project"]["dependencies"]) <= set(locked)
    assert all(count >= 1 for _, count in locked.values()), "every pin carries its hashes"
    assert not requirement_names(PYPROJECT["project"]["optional-dependencies"]["test"]) & set(locked)


def test_the_test_lock_adds_the_test_extra_at_the_same_versions():
    run, test = pins("requirements.lock"), pins("requirements-test.lock")
    assert requirement_names(PYPROJECT["project"]["optional-dependencies"]["test"]) <= set(test)
    assert {name: test[name][0] for name in run} == {name: version for name, (version, _) in run.items()}
    assert all(count >= 1 for _, count in test.values())


@pytest.mark.parametrize("target, lock, other", [("demo", "requirements.lock", "requirements-test.lock"),
                                                 ("test", "requirements-test.lock", "requirements.lock")])
def test_make_installs_from_the_lock_then_gridchain_without_dependencies(target, lock, other):
    commands = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True).stdout.splitlines()
    installs = [c for c in commands if "pip install" in c]
    assert len(installs) == 2, installs
    assert f"--require-hashes -r {lock}" in installs[0] and other not in " ".join(commands)
    assert installs[1].endswith("--no-deps -e .")
    assert not [c for c in commands if "[test]" in c], "make demo installs no test extra"


# --- pyproject ------------------------------------------------------------------------------------
def test_pyproject_metadata_builds_without_deprecations():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT", "an SPDX expression, not the deprecated table"
    assert all((ROOT / f).is_file() for f in project["license-files"])
    assert not [c for c in project["classifiers"] if c.startswith("License ::")], \
        "setuptools refuses licence classifiers next to an SPDX expression"
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
    requires = PYPROJECT["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires)
    assert set(project["scripts"]) == {"gridchaind", "gridchain-relay", "gridchain-device", "gridchain"}


# --- systemd --------------------------------------------------------------------------------------
def test_the_node_unit_runs_gridchaind_on_the_default_config_path():
    service = unit("gridchaind.service")["Service"]
    program, *argv = shlex.split(service["ExecStart"])
    assert program.endswith("/bin/gridchaind") and program.startswith("/")
    args = build_node_parser().parse_args(argv)
    assert args.config is None, "no --config: gridchaind reads /etc/gridchain/node.toml"
    assert DEFAULT_CONFIG_PATH == Path("/etc/gridchain") / "node.toml"
    assert service["ConfigurationDirectory"] == DEFAULT_CONFIG_PATH.parent.name
    example = tomllib.loads((ROOT / "deploy" / "node.toml").read_text())
    assert Path(example["data_dir"]) == Path("/var/lib") / service["StateDirectory"] == Path(service["WorkingDirectory"])
    assert service["User"] != "root" and service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == "2", "a bad setting (exit 2) is not retried forever"
    assert unit("gridchaind.service")["Install"]["WantedBy"] == "multi-user.target"


def test_the_relay_unit_parses_with_the_relay_parser():
    service = unit("gridchain-relay.service")["Service"]
    program, *argv = shlex.split(service["ExecStart"])
    assert program.endswith("/bin/gridchain-relay")
    settings = load_relay_settings(argv)
    assert settings.data_dir == Path("/var/lib") / service["StateDirectory"]
    assert settings.key_file.parent == settings.data_dir and settings.log_format == "json"
    assert service["User"] != "root"
