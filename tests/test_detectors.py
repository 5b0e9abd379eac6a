"""decoders.detectors: the detector table, and a detector added by a table row plus channel-map rows
reaching the QA record, /metrics and the dashboard data."""

from __future__ import annotations

from importlib import resources

import httpx
import pytest
from prometheus_client import CollectorRegistry

from na64_online.config import load_channel_map, load_config
from na64_online.sim.simulator import SimulationConfig, write_raw_file
from na64_online.decoders.channelmap import ChannelMap
from na64_online.decoders.detectors import DetectorTable
from na64_online.errors import ChannelMapError, ConfigError
from na64_online.monitor.metrics import register_metrics
from na64_online.service import Replayer
from na64_online.web.app import create_app
from na64_online.web.config import WebConfig
from na64_online.web.server import WebServer
from na64_online.web.state import AppState

PACKAGED_TABLE = resources.files("na64_online.decoders").joinpath("detectors.toml").read_text()
PACKAGED_MAP = resources.files("na64_online.decoders").joinpath("default-channel-map.csv").read_text()
HODOSCOPE = """
[[detector]]
name = "HODO"
title = "beam hodoscope"
role = "monitor"
subsystem = "tracking"
modules = 1
nx = 2
ny = 2
module_names = ["hodoscope"]
layout = "modules"
"""
HODOSCOPE_ROWS = "".join(f"612,1,{i},HODO,0,{i % 2},{i // 2},0.0005\n" for i in range(4))  # MIP: ~40 ADC


def test_packaged_table_describes_the_packaged_map(channel_map):
    table = channel_map.detectors
    assert table == DetectorTable.default()
    assert table.names[:5] == ("ECAL", "HCAL", "SRD", "VETO", "S")  # the map's historical codes 0-4
    assert channel_map.present_detectors() == ("ECAL", "HCAL", "SRD", "VETO", "S")
    assert table.by_role("ecal").name == "ECAL" and table.by_role("electron_tag").name == "SRD"
    assert channel_map.detector_subsystems() == {"ECAL": "ecal", "HCAL": "hcal", "SRD": "srd", "VETO": "veto",
                                                 "S": "beam"}
    assert DetectorTable.from_toml_text(table.to_toml_text()) == table


@pytest.mark.parametrize("text, message", [
    ("", "no \\[\\[detector\\]\\]"),
    ('[[detector]]\nname = "X"\n', "missing key"),
    ('[[detector]]\nname = "X"\nrole = "magic"\nsubsystem = "x"\nmodules = 1\nnx = 1\nny = 1\n', "role 'magic'"),
    ('[[detector]]\nname = "X"\nrole = "monitor"\nsubsystem = "X Y"\nmodules = 1\nnx = 1\nny = 1\n', "subsystem"),
    ('[[detector]]\nname = "X"\nrole = "monitor"\nsubsystem = "x"\nmodules = 0\nnx = 1\nny = 1\n', "modules"),
    ('[[detector]]\nname = "X"\nrole = "monitor"\nsubsystem = "x"\nmodules = 1\nnx = 1\nny = 1\ncolour = 1\n',
     "unknown key"),
    (PACKAGED_TABLE + '[[detector]]\nname = "ECAL2"\nrole = "ecal"\nsubsystem = "ecal"\nmodules = 2\nnx = 1\n'
     'ny = 1\n', "role 'ecal' already given to ECAL"),
    (PACKAGED_TABLE + '[[detector]]\nname = "HCAL"\nrole = "monitor"\nsubsystem = "x"\nmodules = 1\nnx = 1\n'
     'ny = 1\n', "name 'HCAL' used twice"),
])
def test_bad_table_names_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        DetectorTable.from_toml_text(text, source="t.toml")


def test_map_rows_must_name_a_detector_of_the_table_within_its_geometry():
    with pytest.raises(ChannelMapError, match=r":122: detector 'HODO' not one of ECAL"):
        ChannelMap.from_csv_text(PACKAGED_MAP + HODOSCOPE_ROWS)
    table = DetectorTable.from_toml_text(PACKAGED_TABLE + HODOSCOPE)
    with pytest.raises(ChannelMapError, match=r"module 0, x 2, y 0 outside HODO's geometry \(1 modules of 2 x 2\)"):
        ChannelMap.from_csv_text(PACKAGED_MAP + "612,1,0,HODO,0,2,0,0.001\n", detectors=table)
    with pytest.raises(ChannelMapError, match="outside ECAL's geometry"):
        ChannelMap.from_csv_text(PACKAGED_MAP + "612,1,0,ECAL,2,0,0,0.001\n")


@pytest.fixture(scope="module")
def with_hodoscope(tmp_path_factory):
    """A service whose configuration names a table with one more detector and a map with its rows,
    after one simulated spill."""
    tmp = tmp_path_factory.mktemp("hodo")
    (tmp / "detectors.toml").write_text(PACKAGED_TABLE + HODOSCOPE)
    (tmp / "map.csv").write_text(PACKAGED_MAP + HODOSCOPE_ROWS)
    (tmp / "na64.toml").write_text(f'channel_map = "{tmp / "map.csv"}"\ndetectors = "{tmp / "detectors.toml"}"\n')
    config = load_config(tmp / "na64.toml", environ={})
    channel_map = load_channel_map(config)
    write_raw_file(tmp / "run.dat", SimulationConfig(spills=1, events_per_spill=1200, seed=3), channel_map)
    registry = CollectorRegistry()
    replayer = Replayer(config, channel_map, metrics=register_metrics(registry))
    (record,) = [r for r, _ in replayer.replay_file(tmp / "run.dat") if r is not None]
    server = WebServer(create_app(WebConfig(port=0), AppState(monitor=replayer.monitor, registry=registry)),
                       "127.0.0.1", 0).start()
    with httpx.Client(base_url=server.url, timeout=20, trust_env=False) as client:
        yield record, client, replayer.monitor
    server.stop()
    replayer.close()


def test_added_detector_is_in_the_record(with_hodoscope):
    record, client, _ = with_hodoscope
    hodo = record["detectors"]["HODO"]
    assert hodo["channels"] == 4 and hodo["hit_fraction"] > 0.5 and 0.0 < hodo["energy_mean_gev"] < 0.1  # MIPs
    assert list(record["detectors"]) == ["ECAL", "HCAL", "SRD", "VETO", "S", "HODO"]
    assert record["detectors"]["ECAL"]["energy_mean_gev"] > 50  # the rest is decoded as before
    # its quality subsystem is judged (its channels) and rolls up into the spill's quality
    assert record["quality"]["subsystems"]["tracking"] in ("GOOD", "NO_DATA", "WARNING", "BAD")
    assert "tracking.channels" in [c["name"] for c in record["quality"]["checks"]]
    assert client.get("/api/spills/latest").json()["record"]["detectors"]["HODO"]["channels"] == 4


def test_added_detector_is_in_metrics(with_hodoscope):
    record, client, _ = with_hodoscope
    text = client.get("/metrics").text
    assert 'na64_detector_channels{detector="HODO"} 4.0' in text
    hit = [line for line in text.splitlines() if line.startswith('na64_detector_hit_ratio{detector="HODO"}')]
    assert hit and float(hit[0].split()[-1]) == pytest.approx(record["detectors"]["HODO"]["hit_fraction"])
    assert 'na64_channel_findings{detector="HODO",kind="dead"} 0.0' in text
    assert 'na64_quality_state{subsystem="tracking"}' in text
    assert 'na64_beam_profile{profile="electrons-100"} 1.0' in text and 'na64_beam_profile{profile="hadrons-100"} 0.0' in text


def test_added_detector_is_in_the_dashboard_data(with_hodoscope):
    _, client, monitor = with_hodoscope
    body = client.get("/api/detectors").json()
    hodo = {d["name"]: d for d in body["detectors"]}["HODO"]
    assert (hodo["role"], hodo["subsystem"], hodo["mapped"], hodo["nx"], hodo["ny"]) == ("monitor", "tracking", 4, 2, 2)
    (panel,) = hodo["panels"]
    assert panel["title"] == "hodoscope" and len(panel["slots"]) == 4 and sorted(panel["x"]) == [0, 0, 1, 1]
    assert hodo["hit_fraction"] is not None and hodo["quality"] is not None
    assert {d["name"]: d for d in body["detectors"]}["WCAL"]["mapped"] == 0  # in the table, not in this map
    # the page draws its channel map: a map panel of the table, filled with its channels in the pushed data
    from na64_online.web.live import plain_snapshot
    from na64_online.web.panels import channel_maps, prepare

    (hodo_map,) = [m for m in channel_maps(monitor.channel_map) if m["detector"] == "HODO"]
    assert hodo_map["title"] == "hodoscope"
    sources = prepare(plain_snapshot(monitor.latest), monitor.channel_map).sources
    assert list(sources[hodo_map["source"]]["detector"]) == ["HODO"] * 4
    assert len(sources[hodo_map["source"]]["occupancy"]) == 4
    schema = client.get("/api/openapi.json").json()
    assert "200" in schema["paths"]["/api/detectors"]["get"]["responses"]


def test_default_dashboard_panels_are_those_of_before(channel_map):
    from na64_online.web.detectors import detector_panels

    panels = detector_panels(channel_map)
    assert [(p["title"], len(p["slots"]), p["width"]) for p in panels] == [
        ("ECAL preshower", 36, 300), ("ECAL main", 36, 300), ("HCAL (modules 0–3)", 36, 420)]
    assert max(panels[2]["x"]) == 2 + 3.5 * 3  # HCAL modules side by side


def _fast_detector_values(data: bytes, channel_map: ChannelMap) -> dict:
    from na64_online.daq.rawfile import segment_spills
    from na64_online.decoders.decode import index_bytes
    from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor

    words, index = index_bytes(data)
    processor = SpillProcessor(MonitorConfig(chunk_events=7), channel_map)
    out = {}
    for seg in segment_spills(words, index):
        record = processor.process(seg.words, seg.index, complete=seg.complete).to_dict()
        out[(record["run"], record["spill"])] = record["detectors"]
    return out


def _assert_same_detector_values(fast: dict, slow: dict) -> None:
    assert fast.keys() == slow.keys()
    for key in slow:
        assert list(fast[key]) == list(slow[key]), key
        for name, values in slow[key].items():
            mine = fast[key][name]
            assert mine["channels"] == values["channels"] and mine["hit_fraction"] == values["hit_fraction"]
            # the fast path sums keV-rounded energies (exact merging): within 1 keV per event
            assert mine["energy_mean_gev"] == pytest.approx(values["energy_mean_gev"], abs=1e-6), (key, name)


def test_detector_values_match_the_reference_decoder(channel_map, ref_map):
    import reference_decoder as ref
    from conftest import VECTORS

    data = (VECTORS / "small.dat").read_bytes()
    _assert_same_detector_values(_fast_detector_values(data, channel_map),
                                 ref.detector_values(ref.decode_stream(data, ref_map), ref_map))


def test_added_detector_matches_the_reference_decoder(tmp_path):
    """The reference decoder reads the same table (data) and sums the new detector the same way."""
    import reference_decoder as ref

    (tmp_path / "detectors.toml").write_text(PACKAGED_TABLE + HODOSCOPE)
    (tmp_path / "map.csv").write_text(PACKAGED_MAP + HODOSCOPE_ROWS)
    table = DetectorTable.load(tmp_path / "detectors.toml")
    channel_map = ChannelMap.load(tmp_path / "map.csv", table)
    write_raw_file(tmp_path / "run.dat", SimulationConfig(spills=1, events_per_spill=60, seed=4), channel_map)
    data = (tmp_path / "run.dat").read_bytes()
    roles = dict(ref.ROLES)
    ref.set_detector_roles(ref.load_detector_roles(tmp_path / "detectors.toml"))
    try:
        ref_map = ref.load_channel_map(tmp_path / "map.csv")
        slow = ref.detector_values(ref.decode_stream(data, ref_map), ref_map)
    finally:
        ref.set_detector_roles(roles)
    fast = _fast_detector_values(data, channel_map)
    _assert_same_detector_values(fast, slow)
    assert fast[(1, 1)]["HODO"]["hit_fraction"] > 0.5  # a MIP per beam particle in the simulation
