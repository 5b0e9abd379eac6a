"""Typed configuration: TOML file, environment, arguments; one error type whose message names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from na64_online.config import Config, load_config
from na64_online.errors import ConfigError
from na64_online.monitor.health import HealthConfig
from na64_online.monitor.spill_monitor import STATS, make_processor

ROOT = Path(__file__).parents[1]


def test_defaults_are_the_spec_values():
    config = load_config(environ={})
    assert config == Config()
    cuts = config.monitor.cuts
    assert (cuts.candidate_ecal_max_gev, cuts.hadron_hcal_min_gev, cuts.beam_cell) == (50.0, 10.0, (2, 2))
    assert config.monitor.reconstruction.amplitude_threshold == 20.0
    # the beam-dependent keys come from the default beam profile (decoders/beam-profiles.toml), at these values
    assert all(config.origin(key) in ("default", "derived:monitor.reconstruction.amplitude_threshold",
                                      "profile:electrons-100") for key, _ in config.settings())
    assert config.origin(("monitor", "cuts", "hadron_hcal_min_gev")) == "profile:electrons-100"


def test_arguments_over_environment_over_file_over_defaults(tmp_path):
    path = tmp_path / "na64.toml"
    path.write_text("[monitor]\nchunk_events = 100\nno_data_after_seconds = 30\n"
                    "[monitor.cuts]\ncandidate_ecal_max_gev = 40\n")
    environ = {"NA64_MONITOR__CHUNK_EVENTS": "200", "NA64_DEBUG": "1", "NA64_CHANNEL_MAP": "env.csv"}
    config = load_config(path, environ=environ)
    assert config.monitor.chunk_events == 200 and config.monitor.no_data_after_seconds == 30.0
    assert config.monitor.cuts.candidate_ecal_max_gev == 40.0 and config.channel_map == "env.csv"
    assert config.origin(("monitor", "chunk_events")) == "env:NA64_MONITOR__CHUNK_EVENTS"
    assert config.origin(("monitor", "cuts", "candidate_ecal_max_gev")) == f"file:{path}"
    assert config.origin(("web", "port")) == "default"
    config = load_config(path, environ={**environ, "NA64_CONFIG": "ignored-when-a-path-is-given"},
                         overrides={"channel_map": "my.csv"})
    assert config.channel_map == "my.csv" and config.origin(("channel_map",)) == "argument"
    assert load_config(environ={"NA64_CONFIG": str(path)}).monitor.chunk_events == 100
    with pytest.raises(Exception):
        config.monitor = None  # frozen
    with pytest.raises(Exception):
        config.monitor.chunk_events = 1  # sections too


def test_without_a_file_or_setting_variables_pydantic_settings_is_not_needed_and_nothing_changes(tmp_path):
    """With no file and no ``NA64_`` variable naming a setting, load_config validates the arguments alone (no
    pydantic-settings sources): the same configuration, with the same origins, as through the sources (an empty
    file), and one setting variable is enough to take the sources' path again."""
    (tmp_path / "empty.toml").write_text("")
    program_own = {"NA64_KERNELS": "aot", "NA64_DEBUG": "1", "NA64_LOG_FORMAT": "json", "HOME": "/nowhere"}
    overrides = {"channel_map": "arg.csv", "monitor": {"chunk_events": 300}}
    alone = load_config(environ=program_own, overrides=overrides)
    through_sources = load_config(tmp_path / "empty.toml", environ=program_own, overrides=overrides)
    assert alone == through_sources and alone.monitor.chunk_events == 300
    assert list(alone.settings()) == list(through_sources.settings())
    assert [alone.origin(k) for k, _ in alone.settings()] == [through_sources.origin(k) for k, _ in alone.settings()]
    assert alone.origin(("monitor", "chunk_events")) == "argument"
    config = load_config(environ={**program_own, "NA64_MONITOR__NO_DATA_AFTER_SECONDS": "45"})
    assert config.monitor.no_data_after_seconds == 45.0
    assert config.origin(("monitor", "no_data_after_seconds")) == "env:NA64_MONITOR__NO_DATA_AFTER_SECONDS"
    with pytest.raises(ConfigError, match=r"monitor\.chunk_events: expected an integer.*argument"):
        load_config(environ=program_own, overrides={"monitor": {"chunk_events": "many"}})


def test_environment_values_are_toml_literals():
    config = load_config(environ={"NA64_INGEST__EXPECTED_LDCS": "[3, 4]", "NA64_REFERENCE": "[12, 7]",
                                  "NA64_WEB__HOST": "0.0.0.0", "NA64_MONITOR__CUTS__BEAM_CELL": "[1, 3]",
                                  "NA64_ALARMS__SOUND_MIN_SEVERITY": "warning"})
    assert config.ingest.expected_ldcs == (3, 4) and config.reference == (12, 7)
    assert config.web.host == "0.0.0.0" and config.monitor.cuts.beam_cell == (1, 3)
    assert config.alarms.sound_min_severity == "warning"


@pytest.mark.parametrize("text, message", [
    # unknown keys, with the near names
    ("[monitor]\nchunk_size = 1\n", r"^monitor\.chunk_size: unknown key; did you mean chunk_events\? \(file:.*bad\.toml\)$"),
    ("[monitr]\n", r"^monitr: unknown key; did you mean monitor\? \(file:"),
    ("[monitor.cuts]\nsrd_max = 1\n", r"^monitor\.cuts\.srd_max: unknown key"),
    # wrong types
    ("[monitor]\nchunk_events = 'many'\n", r"^monitor\.chunk_events: expected an integer, got 'many' \(file:"),
    ("monitor = 3\n", r"^monitor: expected a table, got 3 \(file:"),
    ("[web]\nhost = 8064\n", r"^web\.host: expected a string, got 8064"),
    ("[monitor.cuts]\nbeam_cell = [1]\n", r"^monitor\.cuts\.beam_cell: expected 2 values, got 1"),
    ("[monitor.cuts]\nbeam_cell = [1, 'x']\n", r"^monitor\.cuts\.beam_cell\[1\]: expected an integer"),
    # out of range
    ("[monitor]\nchunk_events = 0\n", r"^monitor\.chunk_events: must be greater than or equal to 1, got 0 \(file:"),
    ("[web]\nport = 70000\n", r"^web\.port: must be less than or equal to 65535, got 70000"),
    ("[health]\nwindow = 2\nmin_history = 3\n", r"^health\.min_history: must not exceed window \(2\)"),
    # settings that must agree
    ("[monitor.cuts]\nsrd_sum_min_gev = 1.0\n", r"^monitor\.cuts\.srd_sum_min_gev: must not exceed srd_sum_max_gev"),
    ("[quality]\nreference_trigger = 'physiks'\n", r"^quality\.reference_trigger: must be one of beam, physics"),
    # several at once: each named
    ("[web]\nport = -1\n[ingest]\nworkers = -2\n", r"^2 problems: ingest\.workers: .*; web\.port: "),
    ("not toml at all [", "is not valid TOML"),
])
def test_bad_config_files_name_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path, environ={})
    if "TOML" not in message:
        assert all(p.source == f"file:{path}" for p in caught.value.problems)


@pytest.mark.parametrize("environ, message", [
    ({"NA64_MONITOR__CHUNK_EVENTS": "lots"},
     r"^monitor\.chunk_events: expected an integer, got 'lots' \(env:NA64_MONITOR__CHUNK_EVENTS\)$"),
    ({"NA64_MONITOR__CHUNK_EVENT": "8"}, r"^monitor\.chunk_event: unknown key; .*\(env:NA64_MONITOR__CHUNK_EVENT\)$"),
    ({"NA64_MONITR__CHUNK_EVENTS": "8"}, r"^monitr: unknown key; did you mean monitor\? \(env:NA64_MONITR"),
    ({"NA64_WEB__PORT": "-5"}, r"^web\.port: must be greater than or equal to 0, got -5 \(env:NA64_WEB__PORT\)$"),
    ({"NA64_INGEST__WORKER_SECRET_KEY": "/k/server.key_secret"},
     r"^ingest\.worker_clients_dir: must be set too.*\(env:NA64_INGEST__WORKER_SECRET_KEY\)$"),
])
def test_bad_environment_variables_name_the_key_and_the_variable(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)


def test_file_and_environment_problems_are_told_apart(tmp_path):
    path = tmp_path / "na64.toml"
    path.write_text("[web]\nport = 99999\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"NA64_MONITOR__CHUNK_EVENTS": "0"})
    assert {(p.key, p.source) for p in caught.value.problems} == {
        ("web.port", f"file:{path}"), ("monitor.chunk_events", "env:NA64_MONITOR__CHUNK_EVENTS")}


def test_sections_built_directly_raise_the_same_error():
    with pytest.raises(ConfigError, match=r"^health\.raise_after: must be greater than or equal to 1"):
        HealthConfig(raise_after=0)
    with pytest.raises(ConfigError, match=r"^health\.windw: unknown key; did you mean window\?"):
        HealthConfig(windw=3)
    with pytest.raises(ConfigError, match=r"^web\.port"):
        Config().web.replace(port=-1)


def test_every_section_is_a_frozen_model_refusing_unknown_keys():
    from na64_online.config_section import ConfigSection, section_class

    def sections(model, prefix=()):
        for name, info in model.model_fields.items():
            sub = section_class(info.annotation)
            if sub is not None:
                yield prefix + (name,), sub
                yield from sections(sub, prefix + (name,))

    found = dict(sections(Config))
    assert {".".join(k) for k in found} >= {"monitor", "monitor.reconstruction", "monitor.cuts", "histograms",
                                              "health", "quality", "alarms", "archive", "ingest", "web"}
    for key, cls in found.items():
        assert issubclass(cls, ConfigSection) and cls.section == ".".join(key), key
        assert cls.model_config["frozen"] and cls.model_config["extra"] == "forbid", key
        assert not hasattr(cls, "__post_init__"), key


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, environ={})


def test_health_hit_threshold_follows_the_reconstruction_threshold(tmp_path):
    path = tmp_path / "na64.toml"
    path.write_text("[monitor.reconstruction]\namplitude_threshold = 35.0\n")
    config = load_config(path, environ={})
    assert config.health.hit_threshold == 35.0
    assert config.origin(("health", "hit_threshold")) == "derived:monitor.reconstruction.amplitude_threshold"
    stats = make_processor_stats(config)
    assert stats.hit_threshold == 35.0
    # replacing the reconstruction keeps them in step; an explicit value wins
    replaced = config.replace(monitor=config.monitor.replace(
        reconstruction=config.monitor.reconstruction.replace(amplitude_threshold=12.5)))
    assert replaced.health.hit_threshold == 12.5
    assert replaced.origin(("health", "hit_threshold")) == "derived:monitor.reconstruction.amplitude_threshold"
    assert replaced.origin(("monitor", "reconstruction", "amplitude_threshold")) == "argument"
    assert replaced.origin(("monitor", "chunk_events")) == "default"
    config = load_config(path, environ={"NA64_HEALTH__HIT_THRESHOLD": "50"})
    assert config.health.hit_threshold == 50.0 and make_processor_stats(config).hit_threshold == 50.0
    assert config.origin(("health", "hit_threshold")) == "env:NA64_HEALTH__HIT_THRESHOLD"
    # sections used without the composed configuration: the same rule
    assert make_processor_stats(Config()).hit_threshold == Config().monitor.reconstruction.amplitude_threshold


def make_processor_stats(config: Config):
    from na64_online.decoders.channelmap import ChannelMap

    processor = make_processor(ChannelMap.default(), config.monitor, config.histograms, config.health)
    return processor.new_accumulator().extensions[STATS]


@pytest.mark.parametrize("path", [ROOT / "deploy" / "na64-online.toml",
                                  *sorted((ROOT / "na64_online").glob("*.toml"))], ids=lambda p: p.name)
def test_shipped_configurations_load(path):
    config = load_config(path, environ={})
    assert all(config.origin(key) != "argument" for key, _ in config.settings())
    if path.parent.name == "deploy":
        assert config.ingest.endpoints and config.ingest.expected_ldcs == (1, 2)
        assert config.origin(("ingest", "workers")) == f"file:{path}"


# --------------------------------------------------------------------------- na64-online config show / check
def run_cli(*args: str, environ: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("NA64_")} | (environ or {})
    return subprocess.run([sys.executable, "-m", "na64_online.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_config_show_prints_each_value_with_its_source(tmp_path):
    import json
    import tomllib

    path = tmp_path / "na64.toml"
    path.write_text("[monitor.reconstruction]\namplitude_threshold = 30.0\n[web]\nport = 9000\n")
    environ = {"NA64_CONFIG": str(path), "NA64_INGEST__WORKERS": "3",
               "NA64_ALARMS__ALERTMANAGER_URL": "http://shift:hunter2@am.na64:9093"}
    shown = run_cli("config", "show", "--json", "--map", "my-map.csv", environ=environ)
    assert shown.returncode == 0, shown.stderr
    table = json.loads(shown.stdout)
    assert table["web.port"] == {"value": 9000, "source": f"file:{path}"}
    assert table["ingest.workers"] == {"value": 3, "source": "env:NA64_INGEST__WORKERS"}
    assert table["health.hit_threshold"] == {"value": 30.0,
                                             "source": "derived:monitor.reconstruction.amplitude_threshold"}
    assert table["channel_map"] == {"value": "my-map.csv", "source": "argument"}
    assert table["monitor.chunk_events"] == {"value": 4096, "source": "default"}
    assert table["alarms.alertmanager_url"]["value"] == "http://shift:***@am.na64:9093"  # no password shown
    assert "hunter2" not in shown.stdout
    # TOML form: valid TOML (sources in comments) that loads back to the same configuration
    shown = run_cli("config", "show", "--config", str(path), environ={"NA64_INGEST__WORKERS": "3"})
    assert shown.returncode == 0, shown.stderr
    assert "port = 9000" in shown.stdout and f"# file:{path}" in shown.stdout
    assert "# env:NA64_INGEST__WORKERS" in shown.stdout
    again = tmp_path / "shown.toml"
    again.write_text(shown.stdout)
    assert tomllib.loads(shown.stdout)["web"]["port"] == 9000
    assert load_config(again, environ={}) == load_config(path, environ={"NA64_INGEST__WORKERS": "3"})


def test_config_check_exit_status_and_messages(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("[ingest]\nworkers = 2\n")
    bad.write_text("[monitor]\nchunk_events = 0\n[web]\nprot = 8064\n")
    done = run_cli("config", "check", str(ROOT / "deploy" / "na64-online.toml"))
    assert done.returncode == 0 and "valid configuration" in done.stdout and not done.stderr
    done = run_cli("config", "check", str(bad))
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.splitlines() == [
        f"na64-online: error: {bad}: monitor.chunk_events: must be greater than or equal to 1, got 0 (file:{bad})",
        f"na64-online: error: {bad}: web.prot: unknown key; did you mean port? (file:{bad})",
    ]
    # the environment counts only when asked for (as the service would see it)
    environ = {"NA64_WEB__PORT": "http"}
    assert run_cli("config", "check", str(good), environ=environ).returncode == 0
    done = run_cli("config", "check", "--env", str(good), environ=environ)
    assert done.returncode == 1 and "web.port: expected an integer, got 'http' (env:NA64_WEB__PORT)" in done.stderr
    # the files it names, on request
    good.write_text(f"channel_map = '{tmp_path / 'absent.csv'}'\n")
    done = run_cli("config", "check", "--files", str(good))
    assert done.returncode == 1 and "channel_map: cannot read channel map" in done.stderr
    from na64_online.config import check_config

    assert [p.reason for p in check_config(tmp_path / "nope.toml")] == [
        f"cannot read config file {tmp_path / 'nope.toml'}: No such file or directory"]
