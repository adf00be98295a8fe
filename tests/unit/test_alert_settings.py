"""Alert hold times as node settings: flags, environment and TOML, checked like every other
setting, and handed to the alert book (gridchain.config.Thresholds)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gridchain.cli.settings import NODE_SETTINGS, build_node_parser, load_node_settings
from gridchain.config import (
    DEFAULT_ALERT_CLOCK_OFF_S, DEFAULT_ALERT_FINALITY_LAG_BLOCKS, DEFAULT_ALERT_PEER_DOWN_S,
    DEFAULT_ALERT_RELAY_DOWN_S, NodeConfig,
)
from gridchain.web.alerts import Thresholds

# Each alert setting and the Thresholds field it sets (the clock limit is given in seconds).
ALERT_KEYS = {
    "alert_relay_down": "relay_down_s", "alert_relay_silent": "relay_silent_s",
    "alert_signature_window": "signature_window_s", "alert_gap_window": "gap_window_s",
    "alert_peer_down": "peer_down_s", "alert_finality_stall": "finality_stall_s",
    "alert_finality_lag": "finality_lag_blocks", "alert_clock_off": "clock_off_ms",
}


def config_of(argv: list[str], env: dict | None = None) -> NodeConfig:
    return load_node_settings(argv, env or {}, default_config=None).config


def error_of(capsys, argv: list[str], env: dict | None = None) -> str:
    with pytest.raises(SystemExit) as exit_info:
        load_node_settings(argv, env or {}, default_config=None)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_the_defaults_are_the_alert_books_defaults():
    config = config_of([])
    assert config.alerts.peer_down_s == DEFAULT_ALERT_PEER_DOWN_S == Thresholds().peer_down_s
    assert config.alerts.relay_down_s == DEFAULT_ALERT_RELAY_DOWN_S
    assert config.alerts.finality_lag_blocks == DEFAULT_ALERT_FINALITY_LAG_BLOCKS
    assert config.alerts == Thresholds()
    assert Thresholds().clock_off_ms == DEFAULT_ALERT_CLOCK_OFF_S * 1000


def test_every_threshold_has_a_setting_and_each_setting_reaches_its_field():
    assert set(ALERT_KEYS.values()) == {f.name for f in dataclasses.fields(Thresholds)}
    assert set(ALERT_KEYS) == {s.key for s in NODE_SETTINGS if s.key.startswith("alert_")}
    argv = []
    for i, key in enumerate(ALERT_KEYS):
        argv += ["--" + key.replace("_", "-"), str(7 + i)]
    thresholds = config_of(argv).alerts
    for i, (key, field) in enumerate(ALERT_KEYS.items()):
        expected = (7 + i) * 1000 if field == "clock_off_ms" else 7 + i
        assert getattr(thresholds, field) == expected, key


def test_flags_env_and_file_layer_as_the_other_settings(tmp_path):
    toml = tmp_path / "node.toml"
    toml.write_text("alert_peer_down = 5\nalert_relay_down = 12.5\nalert_finality_lag = 4\nalert_clock_off = 90\n")
    env = {"GRIDCHAIN_ALERT_RELAY_DOWN": "20", "GRIDCHAIN_ALERT_RELAY_SILENT": "0.5"}
    config = config_of(["--config", str(toml), "--alert-clock-off", "30"], env)
    assert config.alerts.peer_down_s == 5.0  # the file
    assert config.alerts.relay_down_s == 20.0  # the environment beats the file
    assert config.alerts.relay_silent_s == 0.5
    assert config.alerts.clock_off_ms == 30_000  # a flag beats the file
    assert config.alerts.finality_lag_blocks == 4
    assert config.alerts.clock_off_ms == 30_000


def test_zero_holds_for_no_time():
    assert config_of(["--alert-peer-down", "0"]).alerts.peer_down_s == 0.0


@pytest.mark.parametrize("argv, expected", [
    (["--alert-peer-down", "-1"], "gridchaind: error: --alert-peer-down: -1 is below the minimum of 0.0"),
    (["--alert-peer-down", "soon"], "--alert-peer-down: 'soon' is not a number"),
    (["--alert-relay-down", "inf"], "--alert-relay-down: inf is not finite"),
    (["--alert-gap-window", "nan"], "--alert-gap-window: nan is not finite"),
    (["--alert-finality-lag", "0"], "--alert-finality-lag: 0 is below 1"),
    (["--alert-finality-lag", "2.5"], "--alert-finality-lag: '2.5' is not a whole number"),
    (["--alert-clock-off", "0.5"], "--alert-clock-off: 0.5 is below the minimum of 1.0"),
])
def test_bad_flags_give_one_line(capsys, argv, expected):
    assert expected in error_of(capsys, argv)


def test_a_bad_environment_value_names_the_variable(capsys):
    assert error_of(capsys, [], {"GRIDCHAIN_ALERT_SIGNATURE_WINDOW": "-5"}) == \
        "gridchaind: error: GRIDCHAIN_ALERT_SIGNATURE_WINDOW: -5 is below the minimum of 0.0"


@pytest.mark.parametrize("text, expected", [
    ('alert_peer_down = "30s"\n', "alert_peer_down: '30s' is not a number"),
    ("alert_peer_down = true\n", "alert_peer_down: True is not a number"),
    ("alert_peer_down = -0.1\n", "alert_peer_down: -0.1 is below the minimum of 0.0"),
    ("alert_finality_stall = [1]\n", "alert_finality_stall: [1] is not a number"),
    ("alert_peer_dwn = 5\n", "unknown setting 'alert_peer_dwn' (did you mean 'alert_peer_down'?)"),
])
def test_bad_config_file_values_name_the_file_and_key(capsys, tmp_path, text, expected):
    toml = tmp_path / "node.toml"
    toml.write_text(text)
    line = error_of(capsys, ["--config", str(toml)])
    assert line.startswith(f"gridchaind: error: {toml}: ") and expected in line


def test_help_lists_the_alert_settings_and_a_percent_in_help_text_prints_as_is():
    text = build_node_parser().format_help()
    assert "--alert-peer-down S" in text and "--alert-clock-off S" in text
    assert "Feeder%207" in text


def test_the_deploy_example_documents_the_alert_settings_with_their_defaults(tmp_path):
    example = (Path(__file__).resolve().parents[2] / "deploy" / "node.toml").read_text()
    lines = [line.removeprefix("# ") for line in example.splitlines() if line.startswith("# alert_")]
    assert sorted(line.split(" =")[0] for line in lines) == sorted(ALERT_KEYS)
    toml = tmp_path / "alerts.toml"
    toml.write_text("\n".join(lines) + "\n")  # as an operator uncommenting them would
    assert config_of(["--config", str(toml)]).alerts == Thresholds()
