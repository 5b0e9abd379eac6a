"""Typed configuration: TOML file, environment, overrides; clear errors naming the key."""

from __future__ import annotations

import pytest

from na64_online.config import Config, load_config
from na64_online.errors import ConfigError


def test_defaults_are_the_spec_values():
    config = load_config(environ={})
    assert config == Config()
    cuts = config.monitor.cuts
    assert (cuts.candidate_ecal_max_gev, cuts.hadron_hcal_min_gev, cuts.beam_cell) == (50.0, 10.0, (2, 2))
    assert config.monitor.reconstruction.amplitude_threshold == 20.0


def test_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "na64.toml"
    path.write_text("[monitor]\nchunk_events = 100\n[monitor.cuts]\ncandidate_ecal_max_gev = 40\n")
    config = load_config(path, environ={"NA64_MONITOR__CHUNK_EVENTS": "200"})
    assert config.monitor.chunk_events == 200
    assert config.monitor.cuts.candidate_ecal_max_gev == 40.0
    config = load_config(path, environ={"NA64_CONFIG": "ignored-when-a-path-is-given"},
                         overrides={"channel_map": "my.csv"})
    assert config.channel_map == "my.csv" and config.monitor.chunk_events == 100
    with pytest.raises(Exception):
        config.monitor = None  # frozen


@pytest.mark.parametrize("text, message", [
    ("[monitor]\nchunk_size = 1\n", "unknown key"),
    ("[monitr]\n", "unknown key"),
    ("[monitor]\nchunk_events = 'many'\n", "expected an integer"),
    ("[monitor]\nchunk_events = 0\n", "chunk_events must be"),
    ("[monitor.cuts]\nbeam_cell = [1]\n", "expected 2 values"),
    ("[monitor.cuts]\nsrd_sum_min_gev = 1.0\n", "must not exceed"),
    ("monitor = 3\n", "expected a table"),
    ("not toml at all [", "not valid TOML"),
])
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", environ={})


def test_deploy_example_configuration_loads():
    from pathlib import Path

    example = Path(__file__).parents[1] / "deploy" / "na64-online.toml"
    config = load_config(example, environ={})
    assert config.ingest.endpoints and config.ingest.expected_ldcs == (1, 2)
