"""The whole per-spill chain as `replay --archive` drives it: simulated spills with known faults."""

from __future__ import annotations

import json

import pytest

from na64_online.config import load_config
from na64_online.sim.simulator import SimulationConfig, write_raw_file
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.archive import Archive
from na64_online.service import Replayer


def replay(tmp_path, sim: SimulationConfig, name="run.dat", config=None):
    path = tmp_path / name
    truth = write_raw_file(path, sim)
    replayer = Replayer(config or load_config(environ={}), ChannelMap.default(), archive_path=tmp_path / "qa.sqlite")
    try:
        records = [r for r, _ in replayer.replay_file(path) if r is not None]
    finally:
        replayer.close()
    return records, truth


def alarm_names(record):
    return {a["name"] for a in record["alarms"]}


def test_dead_channel_raises_alarm_and_is_archived(tmp_path):
    sim = SimulationConfig(spills=5, events_per_spill=700, seed=3, dead_channels=((610, 1, 15),))
    records, truth = replay(tmp_path, sim)
    assert len(records) == 5
    first_dead = [i for i, r in enumerate(records) if "dead_channels" in alarm_names(r)]
    assert first_dead and first_dead[0] <= 3, [sorted(alarm_names(r)) for r in records]
    finding = [f for f in records[-1]["channel_findings"] if f["kind"] == "dead"]
    assert [(f["detector"], f["module"], f["x"], f["y"]) for f in finding] == [("ECAL", 1, 3, 2)]
    assert records[-1]["quality"]["subsystems"]["ecal"] in ("WARNING", "BAD")
    with Archive(tmp_path / "qa.sqlite", readonly=True) as archive:
        stored = archive.list_spills(run=1)
        assert [s["spill"] for s in stored] == [1, 2, 3, 4, 5]
        stored_spill = archive.get_spill(1, 5)
        assert stored_spill["record"]["events"] == 700
        assert stored_spill["overall"] == records[-1]["quality"]["overall"]
        assert "e_ecal" in stored_spill["histograms"]
        history = archive.alarm_history(name="dead_channels")
        assert history and history[0]["state"] in ("raised", "acknowledged", "cleared")


def test_hadron_fraction_recovered_and_alarmed(tmp_path):
    sim = SimulationConfig(spills=4, events_per_spill=1500, seed=4, hadron_fraction=0.25)
    records, truth = replay(tmp_path, sim)
    for record, spill_truth in zip(records, truth):
        assert record["hadron_fraction"] == pytest.approx(spill_truth.hadron_fraction, abs=0.02)
    assert "high_hadron_fraction" not in alarm_names(records[1])  # must persist 3 spills
    assert "high_hadron_fraction" in alarm_names(records[2])
    assert records[-1]["quality"]["subsystems"]["beam"] == "BAD"
    assert records[-1]["eot_run"] == pytest.approx(sum(r["eot"] for r in records))


def test_clean_run_is_good_and_bad_spill_list_is_empty(tmp_path):
    sim = SimulationConfig(spills=3, events_per_spill=1500, seed=6)
    records, _ = replay(tmp_path, sim)
    assert [r["alarms"] for r in records] == [[], [], []]
    assert {r["quality"]["overall"] for r in records} <= {"GOOD", "NO_DATA"}, [r["quality"] for r in records]
    with Archive(tmp_path / "qa.sqlite", readonly=True) as archive:
        out = tmp_path / "bad.json"
        archive.export_bad_spills(out, "json")
        exported = json.loads(out.read_text())
        assert exported["count"] == 0 and exported["spills"] == []


def _episodes(*episodes, events=800, seed=21):
    """Spills from consecutive simulator configurations: (number of spills, extra settings) each."""
    from na64_online.sim.simulator import ReadoutSimulator

    first = 1
    for n, extra in episodes:
        sim = ReadoutSimulator(SimulationConfig(first_spill=first, spills=n, events_per_spill=events, seed=seed,
                                                **extra))
        for spill in sim.spills():
            yield spill
        first += n


def _alarm_timeline(episodes, rule):
    from na64_online.decoders.decode import as_words
    from na64_online.monitor.spill_monitor import SpillMonitor

    monitor = SpillMonitor(ChannelMap.default())
    timeline = []
    try:
        for spill in _episodes(*episodes):
            record = monitor.handle(monitor.processor.accumulate(as_words(spill.raw())[0]))
            timeline.append(rule in alarm_names(record))
    finally:
        monitor.close()
    return timeline


@pytest.mark.parametrize("rule, fault", [
    ("hot_channels", {"hot_channels": ((611, 0, 4),)}),
    ("noisy_channels", {"noisy_channels": ((610, 0, 20),), "noisy_sigma": 30.0}),
])
def test_channel_fault_alarm_raises_and_clears(rule, fault):
    """Clean spills 1-4, the fault in 5-7, fixed in 8-9: raised within the fault, cleared once fixed."""
    timeline = _alarm_timeline([(4, {}), (3, fault), (2, {})], rule)
    assert not any(timeline[:4]), timeline
    assert any(timeline[4:7]), timeline
    assert not timeline[-1], timeline


def test_pedestal_drift_alarm_raises_and_clears():
    """2 ADC counts per spill on one channel: flagged once 5 counts off its baseline; cleared when reset."""
    drift = {"pedestal_drift_per_spill": 2.0, "drift_channels": ((610, 1, 20),)}  # main ECAL: always read
    timeline = _alarm_timeline([(7, drift), (2, {})], "pedestal_drift")
    assert not any(timeline[:3]), timeline
    assert any(timeline[3:7]), timeline
    assert not timeline[-1], timeline


def test_reference_run_flags_changed_spectra(tmp_path):
    """A clean run archived as reference; a run with far more hadrons fails the E_HCAL comparison."""
    config = load_config(environ={})
    replayer = Replayer(config, ChannelMap.default(), archive_path=tmp_path / "qa.sqlite")
    try:
        write_raw_file(tmp_path / "good.dat", SimulationConfig(run=1, spills=2, events_per_spill=1500, seed=1))
        write_raw_file(tmp_path / "bad.dat", SimulationConfig(run=2, spills=1, events_per_spill=1500, seed=2,
                                                              hadron_fraction=0.3))
        write_raw_file(tmp_path / "same.dat", SimulationConfig(run=3, spills=1, events_per_spill=1500, seed=3))
        list(replayer.replay_file(tmp_path / "good.dat"))
        replayer.monitor.set_reference(1)  # run 1 summed
        (bad, *_), (same, *_) = (list(replayer.replay_file(tmp_path / f"{n}.dat"))[0] for n in ("bad", "same"))
    finally:
        replayer.close()
    checks = {name: {c["name"]: c for c in r["quality"]["checks"]} for name, r in (("bad", bad), ("same", same))}
    assert checks["bad"]["hcal.e_hcal_vs_reference"]["state"] == "BAD"
    assert checks["same"]["hcal.e_hcal_vs_reference"]["state"] == "GOOD"
    assert bad["reference"] == [1, None]


def _simulated_spills(n: int, events: int = 600, seed: int = 3):
    import numpy as np

    from na64_online.sim.simulator import ReadoutSimulator
    from na64_online.decoders import layout

    sim = ReadoutSimulator(SimulationConfig(spills=n, events_per_spill=events, seed=seed, run_events=False),
                           ChannelMap.default())
    return [np.frombuffer(bytearray(s.raw()), dtype=layout.WORD) for s in sim.spills()]


def test_interrupted_spill_is_archived_unjudged_and_leaves_alarms_alone(tmp_path):
    """A spill cut short by a stop: archived as INTERRUPTED, no alarm raised or cleared, no history touched."""
    from na64_online.daq.live import LiveExtras
    from na64_online.service import build_monitor

    config = load_config(environ={})
    monitor = build_monitor(config, ChannelMap.default(), archive_path=tmp_path / "qa.sqlite")
    good, cut = _simulated_spills(2)
    try:
        monitor.handle(monitor.processor.accumulate(good), live=LiveExtras(dropped_events=7))
        active_before = [a["name"] for a in monitor.alarms.active()]
        assert active_before == ["dropped_events"]  # the live path dropped events: an alarm says so
        history_before = monitor.alarms.history()
        latest_before, judged_before = monitor.latest, monitor.history.spills_judged
        partial = cut[: len(cut) // 3].copy()  # START_OF_BURST and a third of the events, no END_OF_BURST
        record = monitor.handle(monitor.processor.accumulate(partial), complete=False,
                                live=LiveExtras(interrupted=True))
        assert record["interrupted"] is True and record["alarms"] == [] and record["complete"] is False
        assert record["quality"]["overall"] == "INTERRUPTED" and record["quality"]["checks"] == []
        assert [a["name"] for a in monitor.alarms.active()] == active_before  # neither raised nor cleared
        assert monitor.alarms.history() == history_before
        assert monitor.latest is latest_before and monitor.spills_handled == 1 and monitor.spills_interrupted == 1
        assert monitor.history.spills_judged == judged_before  # no channel looks dead from a partial spill
        row = monitor.archive.get_spill(record["run"], record["spill"])
        assert row["overall"] == "INTERRUPTED" and row["record"]["interrupted"] is True and row["histograms"]
        bad = monitor.archive.bad_spills()
        # spill 1 (7 of 600 events dropped) is BAD; spill 2 is listed apart, as INTERRUPTED
        assert [(b["spill"], b["overall"]) for b in bad] == [(1, "BAD"), (2, "INTERRUPTED")]
        assert bad[1]["failing_subsystems"] == [] and "not judged" in bad[1]["reasons"][0]
        assert [b["spill"] for b in monitor.archive.bad_spills(include_interrupted=False)] == [1]
    finally:
        monitor.close()


def test_summary_line_says_dropped_and_interrupted():
    from na64_online.cli import _summary_line

    record = {"run": 1, "spill": 3, "events": 2255, "lost_events": 0, "decode_errors": 0, "complete": True,
              "beam": 10, "hadron_fraction": 0.01, "eot": 9.9, "candidates": [], "dropped_events": 2745,
              "quality": {"overall": "BAD"}, "alarms": [{"name": "dropped_events"}]}
    line = _summary_line(record)
    assert "2745 events DROPPED" in line and line.endswith("ALARMS dropped_events")
    assert "DROPPED" not in _summary_line(dict(record, dropped_events=0))
    cut = _summary_line(dict(record, dropped_events=0, complete=False, interrupted=True, alarms=[],
                             quality={"overall": "INTERRUPTED"}))
    assert "INTERRUPTED (the service stopped during this spill; not judged)" in cut


def test_replay_builds_no_dashboard_snapshot_and_its_records_are_the_same(tmp_path):
    """``replay`` (no metrics store, nothing serves its monitor) skips the dashboard snapshot's JSON; a replayer
    asked for snapshots keeps the latest one, and both give the same records."""
    path = tmp_path / "run.dat"
    write_raw_file(path, SimulationConfig(spills=3, events_per_spill=600, seed=8, dead_channels=((610, 1, 15),)))
    records = {}
    for snapshots in (None, True):
        replayer = Replayer(load_config(environ={}), ChannelMap.default(), snapshots=snapshots)
        try:
            records[snapshots] = [r for r, _ in replayer.replay_file(path) if r is not None]
            latest = replayer.monitor.latest
        finally:
            replayer.close()
        if snapshots:
            assert latest is not None and latest.record.spill == 3 and latest.run_histograms["events"] > 0
            assert latest.histograms["histograms"]["e_ecal"]["entries"] > 0 and latest.channel_stats
        else:
            assert latest is None and replayer.monitor.snapshots is False

    def comparable(r):  # up to when and how fast it was made
        r = {k: v for k, v in r.items() if k not in ("processing_seconds", "finished_at")}
        return r | {"alarms": [{k: v for k, v in a.items() if k not in ("alarm_id", "raised_at")} for a in r["alarms"]]}

    assert len(records[None]) == 3
    assert [comparable(r) for r in records[None]] == [comparable(r) for r in records[True]]
