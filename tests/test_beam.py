"""decoders.beam: beam profiles as data — energy-scaled cuts unless set, expectations per beam, the
profile named in the record; visible mode with a WCAL; positrons' and hadrons' expectations."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import pytest

from na64_online.config import Config, load_channel_map, load_config
from na64_online.decoders.beam import SCALED, BeamConfig, profile, profile_settings, profiles
from na64_online.decoders.channelmap import ChannelMap
from na64_online.decoders.detectors import DetectorTable
from na64_online.errors import ConfigError
from na64_online.monitor.spill_monitor import SpillMonitor
from na64_online.service import Replayer
from na64_online.sim.simulator import SimulationConfig, beam_settings, write_raw_file

PACKAGED_MAP = resources.files("na64_online.decoders").joinpath("default-channel-map.csv").read_text()
WCAL_ROWS = "".join(f"613,0,{i},WCAL,0,{i % 3},{i // 3},0.03\n" for i in range(9))


def test_packaged_profiles_are_the_status_paper_set_ups():
    assert set(profiles()) == {"electrons-100", "positrons-100", "electrons-150", "visible-100", "hadrons-100"}
    assert profile("positrons-100").hadron_fraction_expected == pytest.approx(
        10 * profile("electrons-100").hadron_fraction_expected)
    assert profile("visible-100").requires == ("wcal",) and profile("hadrons-100").particle == "hadron"


def test_default_profile_is_the_built_in_configuration():
    """electrons-100 implies exactly the defaults the configuration classes had: records stay as they were."""
    assert load_config(environ={}) == Config()
    assert load_config(environ={}).beam.profile == "electrons-100"
    for section in ("monitor", "histograms", "quality"):
        assert getattr(Config(), section) == type(getattr(Config(), section))()


def test_cuts_scale_with_the_beam_energy_unless_set():
    c = load_config(environ={"NA64_BEAM__PROFILE": "electrons-150",
                             "NA64_MONITOR__CUTS__CANDIDATE_ECAL_MAX_GEV": "45"})
    assert c.monitor.cuts.hadron_hcal_min_gev == 15.0  # scaled: 10 GeV at 100 GeV
    assert c.monitor.cuts.candidate_ecal_max_gev == 45.0  # set explicitly: kept
    assert c.monitor.cuts.candidate_hcal_max_gev == Config().monitor.cuts.candidate_hcal_max_gev  # not energy-like
    assert c.quality.beam_energy_gev == 150.0 and c.histograms.e_ecal == (300, 0.0, 225.0)
    assert set(profile_settings(profile("electrons-150"))["histograms"]) == {p[1] for p in SCALED if p[0] == "histograms"}
    assert c.origin(("quality", "beam_energy_gev")) == "profile:electrons-150"
    assert c.origin(("monitor", "cuts", "candidate_ecal_max_gev")) == "env:NA64_MONITOR__CUTS__CANDIDATE_ECAL_MAX_GEV"


def test_unknown_profile_names_the_key_and_the_known_ones(tmp_path):
    (tmp_path / "c.toml").write_text('[beam]\nprofile = "muons-160"\n')
    with pytest.raises(ConfigError, match=r"beam.profile: beam profile 'muons-160' unknown; known: electrons-100, "
                                          r"positrons-100.*file:"):
        load_config(tmp_path / "c.toml", environ={})


def test_visible_mode_needs_a_wcal_in_the_map(channel_map):
    with pytest.raises(ConfigError, match="visible-100 needs a detector of role wcal"):
        SpillMonitor(channel_map, beam_profile="visible-100")


def _replay(tmp_path, config, channel_map, **simulation):
    sim = SimulationConfig(spills=1, events_per_spill=1500, seed=11,
                           **{**beam_settings(profile(config.beam.profile)), **simulation})
    write_raw_file(tmp_path / "run.dat", sim, channel_map)
    replayer = Replayer(config, channel_map)
    try:
        (record,) = [r for r, _ in replayer.replay_file(tmp_path / "run.dat") if r is not None]
    finally:
        replayer.close()
    return record, {c["name"]: c for c in record["quality"]["checks"]}


def test_visible_mode_two_showers_sum_to_the_beam_energy(tmp_path):
    (tmp_path / "map.csv").write_text(PACKAGED_MAP + WCAL_ROWS)
    (tmp_path / "na64.toml").write_text(f'channel_map = "{tmp_path / "map.csv"}"\n[beam]\nprofile = "visible-100"\n')
    config = load_config(tmp_path / "na64.toml", environ={})
    record, checks = _replay(tmp_path, config, load_channel_map(config), signal_fraction=0.05)
    assert record["beam_profile"] == "visible-100"
    assert record["detectors"]["WCAL"]["energy_mean_gev"] > 70  # electrons shower in the WCAL
    assert record["detectors"]["ECAL"]["energy_mean_gev"] < 15  # only leaks and the decays' showers
    scale = checks["ecal.energy_scale"]
    assert scale["state"] == "GOOD" and 95 < scale["value"] < 105, scale
    assert scale["reason"].startswith("electron peak (e_total)") and "expected 100 ± 5 GeV" in scale["reason"]
    assert "wcal" in record["quality"]["subsystems"] and "wcal.channels" in checks


def test_positron_beam_expects_ten_times_the_hadrons(tmp_path, channel_map):
    positrons = load_config(environ={"NA64_BEAM__PROFILE": "positrons-100"})
    record, checks = _replay(tmp_path, positrons, channel_map)
    assert record["beam_profile"] == "positrons-100" and 0.10 < record["hadron_fraction"] < 0.20
    assert checks["beam.hadron_fraction"]["state"] == "GOOD"
    assert "expected at most 0.3" in checks["beam.hadron_fraction"]["reason"]
    # the same beam judged as an electron beam: far too many hadrons
    electrons = positrons.replace(beam=BeamConfig(profile="electrons-100"), quality=Config().quality)
    _, checks = _replay(tmp_path, electrons, channel_map, hadron_fraction=0.15)
    assert checks["beam.hadron_fraction"]["state"] in ("WARNING", "BAD")  # limits 0.05 / 0.15


def test_hadron_calibration_beam(tmp_path, channel_map):
    record, checks = _replay(tmp_path, load_config(environ={"NA64_BEAM__PROFILE": "hadrons-100"}), channel_map)
    assert record["beam_profile"] == "hadrons-100" and record["hadron_fraction"] > 0.95
    assert "beam.hadron_fraction" not in checks and "srd.electron_tag" not in checks  # do not apply
    scale = checks["ecal.energy_scale"]  # the calorimeter sum of beam-trigger events, ~75 % for pions
    assert scale["state"] == "GOOD" and scale["detail"].startswith("beam-trigger peak (e_total)")
    assert "expected 75 ± 3.75 GeV" in scale["reason"]


def test_simulate_follows_the_configured_profile(tmp_path):
    """``na64-online simulate --config`` as a process: a 150 GeV profile simulates a 150 GeV beam."""
    (tmp_path / "na64.toml").write_text('[beam]\nprofile = "electrons-150"\n')
    subprocess.run([sys.executable, "-m", "na64_online.cli", "simulate", "--config", str(tmp_path / "na64.toml"),
                    "--out", str(tmp_path / "r.dat"), "--events", "1000", "--seed", "2"],
                   check=True, capture_output=True, timeout=300)
    config = load_config(tmp_path / "na64.toml", environ={})
    replayer = Replayer(config, ChannelMap.default())
    try:
        (record,) = [r for r, _ in replayer.replay_file(tmp_path / "r.dat") if r is not None]
    finally:
        replayer.close()
    assert record["beam_profile"] == "electrons-150"
    assert 140 < record["detectors"]["ECAL"]["energy_mean_gev"] < 150
    assert record["quality"]["subsystems"]["ecal"] != "BAD"
    assert "for a 150 GeV beam" in {c["name"]: c for c in record["quality"]["checks"]}["ecal.energy_scale"]["detail"]


def test_config_check_files_knows_the_detector_table_and_the_profile(tmp_path):
    """``config check --files`` as a process: the table, the map over it, and the profile's detectors."""
    def check(text):
        (tmp_path / "c.toml").write_text(text)
        return subprocess.run([sys.executable, "-m", "na64_online.cli", "config", "check", "--files",
                               str(tmp_path / "c.toml")], capture_output=True, text=True, timeout=120)

    done = check('[beam]\nprofile = "visible-100"\n')
    assert done.returncode == 1 and "beam.profile: visible-100 needs a detector of role wcal in the channel map" \
        in done.stderr
    from na64_online.config import check_config  # the same check, in process

    (tmp_path / "map.csv").write_text(PACKAGED_MAP + WCAL_ROWS)
    (tmp_path / "c.toml").write_text(f'channel_map = "{tmp_path / "map.csv"}"\n[beam]\nprofile = "visible-100"\n')
    assert check_config(tmp_path / "c.toml", files=True) == []
    (tmp_path / "t.toml").write_text('[[detector]]\nname = "ECAL"\n')
    (tmp_path / "c.toml").write_text(f'detectors = "{tmp_path / "t.toml"}"\n')
    (problem,) = check_config(tmp_path / "c.toml", files=True)
    assert problem.key == "detectors" and "missing key(s) modules, nx, ny, role" in problem.reason
