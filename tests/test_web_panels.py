"""web/panels.py: the dashboard's content prepared from a replayed spill, and alarms and channels in words."""

from __future__ import annotations

import math

import numpy as np
import pytest
from web_site import replayed_run

from na64_online.decoders.channelmap import ChannelMap
from na64_online.web.panels import (STATE_COLOURS, alarm_text, channel_maps, finding_text, nodes_html, prepare,
                                    tiles_html)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    replayer, _, _, records = replayed_run(tmp_path_factory.mktemp("panels"), spills=3, events=1500, seed=5)
    yield replayer
    replayer.close()


def test_channel_findings_and_alarms_read_as_words():
    cmap = ChannelMap.default()
    slot = next(s for s in range(len(cmap)) if cmap.describe(s) | {} and cmap.describe(s)["src_id"] == 610
                and cmap.describe(s)["port"] == 1 and cmap.describe(s)["channel"] == 15)
    finding = {"slot": slot, "kind": "dead", "spills": 3}
    assert finding_text(finding, cmap) == "ECAL cell (3,2) (610/1/15) dead for 3 spills"
    alarm = {"name": "dead_channels", "condition": "channel_findings.dead > 0", "spills": 2, "value": 1,
             "description": "Dead channels (channel-health findings; …)"}
    assert alarm_text(alarm, [finding], cmap) == "ECAL cell (3,2) (610/1/15) dead for 3 spills"
    hf = {"name": "high_hadron_fraction", "condition": "hadron_fraction > 0.15", "spills": 3, "value": 0.30371,
          "description": "Hadron contamination of the beam (E_HCAL > 10 GeV in beam-trigger events) is high"}
    assert alarm_text(hf, [], cmap) == "Hadron contamination of the beam: 0.304 for 3 spills"


def test_tiles_name_the_failing_checks_and_grey_when_stale():
    quality = {"overall": "WARNING", "subsystems": {"ecal": "WARNING", "beam": "GOOD"},
               "checks": [{"name": "ecal.energy_scale", "subsystem": "ecal", "state": "WARNING",
                           "detail": "electron peak 91.8 GeV for a 100 GeV beam"},
                          {"name": "beam.s0", "subsystem": "beam", "state": "GOOD", "detail": "fine"}]}
    fresh = tiles_html(quality, stale=False)
    assert "electron peak 91.8 GeV for a 100 GeV beam" in fresh and "fine" not in fresh
    assert STATE_COLOURS["WARNING"] in fresh and STATE_COLOURS["GOOD"] in fresh
    stale = tiles_html(quality, stale=True)
    assert STATE_COLOURS["WARNING"] not in stale and stale.count('data-state="NO_DATA"') == 7


def test_node_tiles_say_connected_rate_and_losses():
    service = {"nodes": {"1": {"connected": True, "last_message_time": 99.5, "messages_per_second": 12.0,
                               "lost_messages": 4},
                         "2": {"connected": False, "last_message_time": 50.0, "messages_per_second": 0.0}}}
    out = nodes_html({"lost_messages": {"total": 2, "by_ldc": {"1": 2}}, "missing_ldcs": [2]}, service, now=100.0,
                     stale=False)
    one, two = out.split('data-ldc="2"')
    assert "LDC 1" in one and "12 msg/s" in one and "lost 2 this spill, 4 total" in one
    assert STATE_COLOURS["BAD"] in one  # messages lost this spill
    assert STATE_COLOURS["NO_DATA"] in two and "MISSING" in two and 'data-t="50"' in two
    # before the ingest has said anything of its nodes: the tiles come from the record's LDCs
    early = nodes_html({"lost_messages": {"total": 3, "by_ldc": {"1": 3, "2": 0}}}, {}, now=100.0, stale=False)
    assert 'data-ldc="1"' in early and 'data-ldc="2"' in early and "lost 3 this spill" in early
    assert "total" not in early and "by_ldc" not in early


def test_prepare_a_replayed_spill(replayed):
    from na64_online.web.live import plain_snapshot

    monitor = replayed.monitor
    snapshot = plain_snapshot(monitor.latest)
    data = prepare(snapshot, monitor.channel_map, cuts=monitor.processor.config.cuts,
                   limits={"warning": 0.05, "bad": 0.15})
    trend = data.sources["trend"]
    assert list(trend["spill"]) == [1, 2, 3]
    assert np.allclose(trend["eot_cum"], np.cumsum(trend["eot"]))
    assert set(trend["hf_colour"]) == {STATE_COLOURS["BAD"]}  # 30 % hadrons: above the BAD limit
    assert data.values["hf_limits"] == (0.05, 0.15) and data.values["hf_top"] > 0.3
    assert data.values["signal_box"] == (0.0, 50.0, 0.0, 1.0)
    hcal = data.sources["spec_e_hcal"]  # log axis: empty bins are gaps, never 0
    assert not np.any(hcal["y"] == 0) and np.any(np.isnan(hcal["y"])) and np.nansum(hcal["y"]) > 0
    image = data.sources["plane"]["image"][0]
    assert np.isnan(image).any() and np.nanmin(image) >= 1  # log colour: empty bins transparent
    (ecal_main,) = [m["source"] for m in channel_maps(monitor.channel_map) if m["title"] == "ECAL main"]  # from the table
    ecal = data.sources[ecal_main]
    assert len(ecal["x"]) == len(ecal["src_id"]) == len(ecal["occupancy"]) > 0
    assert data.texts["chi2_e_ecal"] == "no reference set"
    assert "Run 1 · spill 3" in data.texts["conditions"] and "LIVE" in data.texts["conditions"]
    assert math.isclose(data.published_at, snapshot.published_at)


def test_the_reference_is_drawn_scaled_to_this_spill(replayed):
    from na64_online.web.live import _hist_json, plain_snapshot

    monitor = replayed.monitor
    reference = _hist_json(monitor.archive.get_histograms(1, 1))  # as the feed reads it for the record's reference
    data = prepare(plain_snapshot(monitor.latest), monitor.channel_map, reference=reference)
    own, ref = data.sources["spec_e_ecal"], data.sources["ref_e_ecal"]
    assert len(ref["y"]) == len(own["y"]) > 10
    assert np.nansum(ref["y"][:-1]) == pytest.approx(np.nansum(own["y"][:-1]))  # scaled to this spill's entries
    assert not np.array_equal(ref["y"], own["y"])  # another spill's, not the run itself
