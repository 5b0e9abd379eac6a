"""The worker result format (monitor/wire.py) and the worker set-up as text (na64_online/worker_setup.py)."""

from __future__ import annotations

import json
import pickle
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from na64_online.config import Config
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.decoders.channelmap import ChannelMap
from na64_online.decoders.decode import ReconstructionParams
from na64_online.errors import ChannelMapError, ConfigError, FormatError, ResultFormatError
from na64_online.monitor.health import HealthConfig
from na64_online.monitor.histograms import HistogramConfig
from na64_online.monitor.pipeline import MonitorConfig
from na64_online.monitor.spill_monitor import HISTOGRAMS, STATS, make_processor
from na64_online.monitor.wire import VERSION, decode_accumulator, encode_accumulator
from na64_online.worker_setup import build_processor, decode_setup, encode_setup, to_toml

TIMING = ("processing_seconds", "finished_at")


@pytest.fixture(scope="module")
def channel_map():
    return ChannelMap.default()


@pytest.fixture(scope="module")
def processor(channel_map):
    return make_processor(channel_map, Config().monitor, Config().histograms)


@pytest.fixture(scope="module")
def parts(processor, channel_map):
    """Three accumulators of one simulated spill (as three workers' chunks would give)."""
    sim = ReadoutSimulator(SimulationConfig(run=5, spills=1, events_per_spill=600, seed=3, signal_fraction=0.02),
                           channel_map)
    spill = next(iter(sim.spills()))
    words = np.frombuffer(bytearray(spill.raw()), dtype=np.uint32)
    from na64_online.decoders.decode import index_events

    index = index_events(words)
    cuts = [0, len(index) // 3, 2 * len(index) // 3, len(index)]
    return [processor.accumulate(words, index.slice(a, b)) for a, b in zip(cuts, cuts[1:])]


def as_bytes(frames) -> list[bytes]:
    return [bytes(f) for f in frames]


def record(processor, acc) -> dict:
    out = processor.finish(acc).to_dict()
    for key in TIMING:
        out.pop(key)
    return out


def reseal(frames: list[bytes]) -> list[bytes]:
    """Frames with a recomputed checksum: what a peer that means it (or a bug) would send."""
    crc = 0
    for f in frames[:-1]:
        crc = zlib.crc32(f, crc)
    return frames[:-1] + [struct.pack("<I", crc)]


def with_header(frames: list[bytes], change) -> list[bytes]:
    header = json.loads(frames[0])
    change(header)
    return reseal([json.dumps(header).encode(), *frames[1:]])


# --------------------------------------------------------------------------- round trip
def test_round_trip_merges_exactly_as_the_pickled_path(processor, parts):
    """Merged over the wire == merged from pickles (the path it replaces): record, histograms, statistics."""
    via_wire = processor.new_accumulator()
    via_pickle = processor.new_accumulator()
    for part in parts:
        via_wire.merge(processor.decode_result(as_bytes(processor.encode_result(part))))
        via_pickle.merge(pickle.loads(pickle.dumps(part)))
    assert record(processor, via_wire) == record(processor, via_pickle)
    assert record(processor, via_wire)["candidates"]  # candidates travel too (signal_fraction above)
    assert via_wire.extensions[HISTOGRAMS].to_json() == via_pickle.extensions[HISTOGRAMS].to_json()
    a, b = via_wire.extensions[STATS], via_pickle.extensions[STATS]
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.sums, b.sums) and a.events == b.events
    assert np.array_equal(via_wire.seen_events, via_pickle.seen_events)
    assert via_wire.issues == via_pickle.issues and via_wire.scalers == via_pickle.scalers


def test_decode_buffers_kept_from_spill_to_spill_give_what_fresh_ones_give(processor, parts, channel_map):
    """One thread's decode buffers serve spill after spill (the parts above: three lengths, decoded one after the
    other into the same buffers): each result is what a processor that never decoded before gives, bit for bit
    (as encoded for the wire); another thread and a pickled copy get buffers of their own."""
    import threading

    sim = ReadoutSimulator(SimulationConfig(run=5, spills=1, events_per_spill=600, seed=3, signal_fraction=0.02),
                           channel_map)
    words = np.frombuffer(bytearray(next(iter(sim.spills())).raw()), dtype=np.uint32)
    from na64_online.decoders.decode import index_events

    index = index_events(words)
    cuts = [0, len(index) // 3, 2 * len(index) // 3, len(index)]
    kept = processor.decode_buffers()
    assert kept is processor.decode_buffers() and kept.rows >= cuts[1]
    for part, (a, b) in zip(parts, zip(cuts, cuts[1:])):
        fresh = make_processor(channel_map, Config().monitor, Config().histograms)
        alone = fresh.accumulate(words, index.slice(a, b))
        assert as_bytes(processor.encode_result(part))[1:-1] == as_bytes(fresh.encode_result(alone))[1:-1]  # header: timing
        assert record(processor, part) == record(fresh, alone)
    again = processor.accumulate(words, index)  # the whole spill after its parts, in the kept buffers
    assert record(processor, again) == record(fresh, fresh.accumulate(words, index))
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(processor.decode_buffers()))
    thread.start()
    thread.join()
    assert elsewhere[0] is not kept
    assert pickle.loads(pickle.dumps(processor)).decode_buffers() is not kept


def test_read_result_merges_as_the_decoded_accumulator_without_copying(processor, parts):
    """What the service merges (read_result: views of the frames, no accumulator per result) adds up to
    exactly what decoded accumulators do."""
    frames = [as_bytes(processor.encode_result(part)) for part in parts]
    via_views, via_decoded = processor.new_accumulator(), processor.new_accumulator()
    for f in frames:
        result = processor.read_result(f)
        arrays = [np.frombuffer(x, np.uint8) for x in f]
        assert any(np.shares_memory(result.extensions[HISTOGRAMS]._coded["ecal_hcal"].counts, a) for a in arrays)
        assert any(np.shares_memory(result.extensions[STATS].counts, a) for a in arrays)
        via_views.merge(result)
        via_decoded.merge(processor.decode_result(f))
    assert record(processor, via_views) == record(processor, via_decoded)
    assert via_views.extensions[HISTOGRAMS].to_json() == via_decoded.extensions[HISTOGRAMS].to_json()
    a, b = via_views.extensions[STATS], via_decoded.extensions[STATS]
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.sums, b.sums) and a.events == b.events
    with pytest.raises(ResultFormatError):  # refused before anything is merged
        processor.read_result(with_header(frames[0], lambda h: h["extensions"][HISTOGRAMS].update(events=-1)))


def test_empty_accumulator_round_trips(processor):
    acc = processor.new_accumulator()
    back = processor.decode_result(as_bytes(processor.encode_result(acc)))
    assert record(processor, back) == record(processor, acc)


def test_header_is_small_json_naming_format_version_and_arrays(processor, parts):
    frames = as_bytes(processor.encode_result(parts[0]))
    header = json.loads(frames[0])
    assert header["format"] == "na64-spill-accumulator" and header["version"] == VERSION
    assert len(frames) == len(header["arrays"]) + 2
    assert {"name": "seen_events", "dtype": "|b1", "shape": [len(parts[0].seen_events)]} in header["arrays"]
    assert len(frames[0]) < 8000
    assert b"pickle" not in frames[0] and not any(f.startswith(b"\x80") for f in frames[:1])


def test_candidates_raw_events_travel_capped_and_show_as_dump_shows_them(processor, parts, channel_map):
    """The first candidates' raw events come back word for word, merge up to the cap, and decode (the code
    of ``dump``) to the candidate with its waveforms; the live lookup answers from a snapshot of them."""
    from types import SimpleNamespace

    from na64_online.decoders.decode import index_events
    from na64_online.events import LiveCandidateEvents, event_from_words

    config = Config()
    cap = config.monitor.candidate_events_per_spill
    sent = [e for part in parts for e in part.candidate_events]
    assert sent and all(len(p.candidate_events) == min(cap, len(p.candidates)) for p in parts)
    merged = processor.new_accumulator()
    for part in parts:
        back = processor.read_result(as_bytes(processor.encode_result(part)))
        assert [(e, w.tolist()) for e, w in back.candidate_events] == [(e, w.tolist()) for e, w in part.candidate_events]
        merged.merge(back)
    assert [e for e, _ in merged.candidate_events] == [e for e, _ in sent][:cap]
    event, words = merged.candidate_events[0]
    shown = event_from_words(words, index_events(words), config, channel_map)
    assert shown["event"] == event and shown["candidate"] is True
    assert any(len(c["samples"]) > 8 and c["detector"] == "ECAL" for c in shown["channels"])
    live = LiveCandidateEvents(config, channel_map, spills=2)
    snapshot = SimpleNamespace(record=SimpleNamespace(run=5, spill=1),
                               candidate_events=tuple((e, w.tobytes()) for e, w in merged.candidate_events))
    live.add(snapshot)
    assert live(5, 1, event) == shown
    assert "not kept" in live(5, 2, event)["error"]


def _candidate_frames(processor, parts, change):
    """The result of the part with candidates, its candidate arrays replaced by ``change(event, size, words)``."""
    part = next(p for p in parts if p.candidate_events)
    frames = as_bytes(processor.encode_result(part))
    header = json.loads(frames[0])
    at = {a["name"]: i for i, a in enumerate(header["arrays"])}
    arrays = {name: np.frombuffer(frames[at[name] + 1], dtype=header["arrays"][at[name]]["dtype"]).copy()
              for name in ("candidate_events.event", "candidate_events.size", "candidate_events.words")}
    event, size, words = change(*arrays.values())
    for name, arr in zip(arrays, (event, size, words)):
        header["arrays"][at[name]]["shape"] = [len(arr)]
        frames[at[name] + 1] = np.ascontiguousarray(arr).tobytes()
    return reseal([json.dumps(header).encode(), *frames[1:]])


def _other_event(event, size, words):
    """The first kept event relabelled as the second candidate's number (its words say otherwise)."""
    return np.array([event[1]] + list(event[1:])), size, words


@pytest.mark.parametrize("change, message", [
    (lambda e, s, w: (e, s, w[:-1]), "do not divide"),  # a word short
    (lambda e, s, w: (e, s + np.array([1] + [0] * (len(s) - 1)), np.append(w, np.uint32(0))), "not that event"),
    (lambda e, s, w: (e, np.where(s == s, 0, s), w[:0]), "do not divide"),
    (lambda e, s, w: (e + 10 ** 6, s, w), "not a candidate"),
    (lambda e, s, w: (e, s, np.full_like(w, 0xDEADBEEF)), "not that event"),
    (_other_event, "not that event"),
    (lambda e, s, w: (np.repeat(e, 100), np.repeat(s, 100), np.tile(w, 100)), "at most"),
])
def test_a_malformed_candidate_event_is_refused(processor, parts, change, message):
    with pytest.raises(ResultFormatError, match=message):
        processor.read_result(_candidate_frames(processor, parts, change))


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("change, message", [
    (lambda h: h.update(version=VERSION + 1), "version"),
    (lambda h: h.update(version=True), "version"),
    (lambda h: h.update(format="pickle"), "format"),
    (lambda h: h["arrays"][0].update(dtype="|O"), "dtype"),
    (lambda h: h["arrays"][0].update(dtype="<i4"), "dtype"),
    (lambda h: h["arrays"][0].update(shape=[10 ** 6]), "bytes"),
    (lambda h: h["arrays"][0].update(shape=[-1]), "shape"),
    (lambda h: h["arrays"][0].update(shape="7"), "shape"),
    (lambda h: h["arrays"].pop(), "array"),
    (lambda h: h["scalars"].update(events=-1), "scalars.events"),
    (lambda h: h["scalars"].update(events=1 << 70), "scalars.events"),
    (lambda h: h["scalars"].update(events="5"), "scalars.events"),
    (lambda h: h["scalars"].update(saw_end_of_burst=1), "saw_end_of_burst"),
    (lambda h: h["scalars"].update(extra=1), "unexpected"),
    (lambda h: h["scalars"].update(scalers=[1] * 1000), "scalers"),
    (lambda h: h["scalars"].update(decode_seconds=-1.0), "decode_seconds"),
    (lambda h: h.update(issues=[[1, "os.system", 1]]), "unknown issue label"),
    (lambda h: h.update(issues=[[0, [], None]]), "unknown issue label"),  # unhashable: was a TypeError (Hypothesis)
    (lambda h: h.update(issues=[[1, "event_truncated"]]), "issues"),
    (lambda h: h["extensions"].pop(HISTOGRAMS), "extensions"),
    (lambda h: h["extensions"][HISTOGRAMS]["config"].update(e_ecal=[10, 0.0, 150.0]), "binning"),
    (lambda h: h["extensions"][STATS].update(nslots=3), "slots"),
    (lambda h: h["extensions"][STATS].update(kind="pickle"), "channel statistics"),
    (lambda h: h.update(arrays={}), "arrays"),
    (lambda h: h.clear(), "format"),
])
def test_damaged_header_is_refused_with_a_clear_error(processor, parts, change, message):
    frames = with_header(as_bytes(processor.encode_result(parts[0])), change)
    with pytest.raises(ResultFormatError, match=message):
        processor.decode_result(frames)


def test_swapped_arrays_and_wrong_shapes_are_refused(processor, parts):
    frames = as_bytes(processor.encode_result(parts[0]))
    header = json.loads(frames[0])
    names = [a["name"] for a in header["arrays"]]
    i, j = names.index(f"{STATS}.counts"), names.index(f"{STATS}.sums")
    header["arrays"][i]["name"], header["arrays"][j]["name"] = names[j], names[i]
    swapped = reseal([json.dumps(header).encode(), *frames[1:]])
    with pytest.raises(ResultFormatError, match="dtype"):
        processor.decode_result(swapped)
    # sparse histogram bins of another shape, consistent with their frame: refused
    k = names.index(f"{HISTOGRAMS}.e_ecal.bins")
    header = json.loads(frames[0])
    header["arrays"][k]["shape"] = [36, 10]
    bad = reseal([json.dumps(header).encode(), *frames[1:k + 1], bytes(36 * 10 * 8), *frames[k + 2:]])
    with pytest.raises(ResultFormatError, match="e_ecal.bins.*dimensions"):
        processor.decode_result(bad)


def _with_bins(frames: list[bytes], hname: str, change) -> list[bytes]:
    """The result with histogram ``hname``'s sparse bins and counts replaced by ``change(bins, counts)``."""
    header = json.loads(frames[0])
    names = [a["name"] for a in header["arrays"]]
    kb, kc = names.index(f"{HISTOGRAMS}.{hname}.bins"), names.index(f"{HISTOGRAMS}.{hname}.counts")
    bins, counts = change(np.frombuffer(frames[kb + 1], "<i8"), np.frombuffer(frames[kc + 1], "<i8"))
    out = list(frames)
    for k, arr in ((kb, bins), (kc, counts)):
        header["arrays"][k]["shape"] = [len(arr)]
        out[k + 1] = np.asarray(arr, "<i8").tobytes()
    return reseal([json.dumps(header).encode(), *out[1:]])


def test_histograms_travel_sparse_and_add_only_their_bins(processor, parts, channel_map):
    """Each histogram is its set bins and their counts: a result is a small fraction of the dense counts, and
    bins out of range, repeated or unsorted, or counts not matching the bins are refused."""
    frames = as_bytes(processor.encode_result(parts[0]))
    dense = sum(np.asarray(h.view(flow=True)).nbytes for h in parts[0].extensions[HISTOGRAMS]._coded.values())
    assert sum(map(len, frames)) < dense / 10
    hist = parts[0].extensions[HISTOGRAMS]._coded["ecal_hcal"]
    flat = np.asarray(hist.view(flow=True)).ravel(order="F")  # the first axis fastest
    result = processor.read_result(frames).extensions[HISTOGRAMS]._coded["ecal_hcal"]
    assert np.array_equal(result.bins, np.flatnonzero(flat))
    assert np.array_equal(result.toarray(), np.asarray(hist.view(flow=True)))
    size = flat.size
    for change, message in [
        (lambda b, c: (np.append(b, size), np.append(c, 1)), "within"),
        (lambda b, c: (np.append(-1, b), np.append(1, c)), "within"),
        (lambda b, c: (np.append(b, b[-1]), np.append(c, 1)), "strictly increasing"),
        (lambda b, c: (b[::-1], c), "strictly increasing"),
        (lambda b, c: (b, c[:-1]), "counts.*shape"),
        (lambda b, c: (np.arange(size + 1), np.ones(size + 1)), "bins, the histogram has"),
    ]:
        with pytest.raises(ResultFormatError, match=message):
            processor.read_result(_with_bins(frames, "ecal_hcal", change))
    # an empty histogram travels as no bins at all, and merges as zeros
    empty = processor.read_result(_with_bins(frames, "ecal_hcal", lambda b, c: (b[:0], c[:0])))
    acc = processor.new_accumulator()
    acc.merge(empty)
    assert not np.any(np.asarray(acc.extensions[HISTOGRAMS]._coded["ecal_hcal"].view(flow=True)))


def test_per_detector_arrays_of_another_table_are_refused(processor, parts):
    """A worker with another detector table (one more detector) sends 7 entries, the service keeps 6."""
    frames = as_bytes(processor.encode_result(parts[0]))
    header = json.loads(frames[0])
    names = [a["name"] for a in header["arrays"]]
    k = names.index("detector_hits")
    header["arrays"][k]["shape"] = [header["arrays"][k]["shape"][0] + 1]
    bad = reseal([json.dumps(header).encode(), *frames[1:k + 1], frames[k + 1] + bytes(8), *frames[k + 2:]])
    with pytest.raises(ResultFormatError, match="detector_hits.*shape"):
        processor.decode_result(bad)
    header["arrays"][k]["shape"] = [header["arrays"][k]["shape"][0] - 1]
    negative = bytearray(frames[k + 1])
    negative[-1] = 0xFF  # the last count's sign bit
    bad = reseal([json.dumps(header).encode(), *frames[1:k + 1], bytes(negative), *frames[k + 2:]])
    with pytest.raises(ResultFormatError, match="negative"):
        processor.decode_result(bad)


def test_not_a_result_is_refused(processor, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for frames in ([pickle.dumps(Exploit())], [pickle.dumps(Exploit()), b"", b"\0\0\0\0"], [], [b"{}"] * 3,
                   [b"\xff" * 10, b"", b"1234"], [b"null", b"x" * 4]):
        with pytest.raises(ResultFormatError):
            processor.decode_result(frames)
    assert not marker.exists()
    assert issubclass(ResultFormatError, FormatError)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damaged_byte_or_frame_is_refused(processor, parts, data):
    """Mutations of the frames (bytes flipped, cut, grown, frames dropped or added) are refused, never a crash."""
    frames = as_bytes(processor.encode_result(parts[0]))
    kind = data.draw(st.sampled_from(["flip", "cut", "grow", "drop", "add"]))
    i = data.draw(st.integers(0, len(frames) - 1))
    f = bytearray(frames[i])
    if kind == "flip" and f:
        pos = data.draw(st.integers(0, len(f) - 1))
        f[pos] ^= data.draw(st.integers(1, 255))
        frames[i] = bytes(f)
    elif kind == "cut" and f:
        frames[i] = bytes(f[: data.draw(st.integers(0, len(f) - 1))])
    elif kind == "grow":
        frames[i] = bytes(f) + data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "drop":
        del frames[i]
    else:
        frames.insert(i, data.draw(st.binary(max_size=16)))
    if frames == as_bytes(processor.encode_result(parts[0])):
        return  # (an empty frame cut or flipped: nothing changed)
    with pytest.raises(ResultFormatError):
        processor.decode_result(frames)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_resealed_header_change_is_refused_or_decodes_to_a_usable_accumulator(processor, parts, data):
    """A header changed on purpose (checksum recomputed) passes only if it is a well-formed result; then it
    merges and finishes like any other. Nothing else than ResultFormatError ever comes out."""
    frames = as_bytes(processor.encode_result(parts[0]))
    header = json.loads(frames[0])
    # pick a node of the header and replace it by an arbitrary JSON value
    path, node = [], header
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    value = data.draw(json_values)
    if path:
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    else:
        header = value
    damaged = reseal([json.dumps(header).encode(), *frames[1:]])
    try:
        acc = processor.decode_result(damaged)
    except ResultFormatError:
        return
    merged = processor.new_accumulator()
    merged.merge(acc)
    processor.finish(merged).to_dict()


def test_refused_result_keeps_the_template_untouched_for_the_caller(processor, parts):
    """decode_result takes a fresh template each time: a refused result leaves nothing half-filled behind."""
    good = as_bytes(processor.encode_result(parts[1]))
    bad = with_header(good, lambda h: h["scalars"].update(scalers="x"))
    with pytest.raises(ResultFormatError):
        processor.decode_result(bad)
    assert record(processor, processor.decode_result(good)) == record(processor, parts[1])


# --------------------------------------------------------------------------- worker set-up as text
def test_setup_round_trips_configuration_and_channel_map(channel_map):
    config = Config(monitor=MonitorConfig(chunk_events=1000),
                    histograms=HistogramConfig().replace(e_ecal=(120, 0.0, 130.0)),
                    health=HealthConfig(hit_threshold=33.0))
    toml_bytes, csv_bytes, table_bytes = encode_setup(config, channel_map)
    assert b"[monitor.cuts]" in toml_bytes and b"[histograms]" in toml_bytes
    assert csv_bytes.startswith(b"src_id,port,channel,detector,module,x,y,gain_gev\n")
    assert table_bytes.startswith(b"[[detector]]")
    monitor, histograms, health, cmap = decode_setup([toml_bytes, csv_bytes, table_bytes])
    assert monitor == config.monitor and histograms == config.histograms and health.hit_threshold == 33.0
    assert cmap.detectors == channel_map.detectors
    for col in ("src_id", "port", "channel", "detector", "module", "x", "y", "gain_gev"):
        assert np.array_equal(getattr(cmap, col), getattr(channel_map, col)), col
    p = build_processor([toml_bytes, csv_bytes, table_bytes])
    assert p.config == config.monitor and len(p.channel_map) == len(channel_map)
    assert p.new_accumulator().extensions["channel_stats"].hit_threshold == 33.0
    # without an explicit one, the workers count hits above the reconstruction threshold, as the service does
    config = Config(monitor=MonitorConfig(reconstruction=ReconstructionParams(amplitude_threshold=27.0)))
    assert decode_setup(encode_setup(config, channel_map))[2].hit_threshold == 27.0


def test_channel_map_csv_keeps_every_gain_exactly(tmp_path):
    text = "src_id,port,channel,detector,module,x,y,gain_gev\n600,0,0,ECAL,1,0,0,0.1\n600,0,1,HCAL,0,1,2,0.30000000000000004\n"
    cmap = ChannelMap.from_csv_text(text)
    again = ChannelMap.from_csv_text(cmap.to_csv_text())
    assert again.gain_gev.tolist() == [0.1, 0.30000000000000004]
    assert again.to_csv_text() == cmap.to_csv_text()


_TABLE = b'[[detector]]\nname = "ECAL"\nrole = "ecal"\nsubsystem = "ecal"\nmodules = 2\nnx = 6\nny = 6\n'
_HEAD = b"[setup]\nformat = 'na64-worker-setup'\nversion = 3\n"


@pytest.mark.parametrize("payload, error, message", [
    ([b"[setup]\nformat = 'na64-worker-setup'\nversion = 2\n", b"", _TABLE], ConfigError, "version 2"),
    ([b"[monitor]\nchunk_events = 10\n", b"", _TABLE], ConfigError, "format"),
    ([_HEAD + b"[monitor]\nchunk_events = 0\n", b"", _TABLE], ConfigError,
     r"monitor\.chunk_events: must be .*worker set-up"),
    ([_HEAD + b"[monitor]\nbogus = 1\n", b"", _TABLE], ConfigError, "bogus"),
    ([_HEAD + b"[archive]\npath = '/etc/passwd'\n", b"", _TABLE], ConfigError, "unknown section"),
    ([b"not toml ==", b"", _TABLE], ConfigError, "TOML"),
    ([b"\xff\xfe", b"", _TABLE], ConfigError, "UTF-8"),
    ([b"x"], ConfigError, "3 frames"),
    ([_HEAD, b"a,b\n1,2\n", _TABLE], ChannelMapError, "first line"),
    ([_HEAD, b"src_id,port,channel,detector,module,x,y,gain_gev\n600,0,0,HCAL,0,0,0,0.1\n", _TABLE],
     ChannelMapError, "'HCAL' not one of ECAL"),
    ([_HEAD, b"", b"[[detector]]\nname = 'X'\n"], ConfigError, "missing key"),
])
def test_bad_setup_names_what_is_wrong(payload, error, message):
    with pytest.raises(error, match=message):
        build_processor(payload)


def test_toml_writer_round_trips_awkward_values():
    import tomllib

    tables = {"a": {"f": 1e-05, "g": float("inf"), "s": 'quote " and \\ \u00e9', "t": [1, 2.5], "b": True,
                    "sub": {"x": -3}}}
    assert tomllib.loads(to_toml(tables)) == tables | {"a": tables["a"] | {"t": [1, 2.5]}}


def test_the_event_display_cap_is_no_part_of_the_processing_version(channel_map):
    """Raw events kept for the event display shape no record: archived records keep their version."""
    from na64_online.service import processing_version

    config = Config()
    fewer = config.replace(monitor=config.monitor.replace(candidate_events_per_spill=2))
    assert processing_version(fewer, channel_map) == processing_version(config, channel_map)
    cuts = config.replace(monitor=config.monitor.replace(chunk_events=1000))
    assert processing_version(cuts, channel_map) != processing_version(config, channel_map)


def test_a_task_decoder_reuses_its_storage_and_gives_fresh_results(processor, channel_map):
    """A worker's per-task step (buffers and histogram storage kept from task to task, a task of up to 1.5
    chunks decoded as one) gives what a fresh accumulate + encode gives, task after task; the frames of one
    task stay intact while the next is decoded (they may still be queued for sending, zero-copy)."""
    from na64_online.decoders.decode import index_events

    sim = ReadoutSimulator(SimulationConfig(run=6, spills=2, events_per_spill=700, seed=4, signal_fraction=0.02),
                           channel_map)
    tasks = []
    for spill in sim.spills():
        words = np.frombuffer(bytearray(spill.raw()), dtype=np.uint32)
        index = index_events(words)
        for a, b in ((0, 250), (250, len(index))):
            tasks.append(words[int(index.offset[a]):int(index.offset[b - 1] + index.size[b - 1])].copy())
    small = make_processor(channel_map, Config().monitor.model_copy(update={"chunk_events": 128}),
                           Config().histograms)  # tasks of more than 1.5 chunks too
    for proc in (processor, small):
        decode_task = proc.task_decoder()
        earlier, kept = None, None
        for words in tasks + tasks[:1]:
            frames = decode_task(words)
            expected = as_bytes(proc.encode_result(proc.accumulate(words)))
            got = proc.decode_result(as_bytes(frames))
            want = proc.decode_result(expected)
            assert record(proc, got) == record(proc, want)
            assert got.extensions[HISTOGRAMS].to_json() == want.extensions[HISTOGRAMS].to_json()
            a, b = got.extensions[STATS], want.extensions[STATS]
            assert np.array_equal(a.counts, b.counts) and np.array_equal(a.sums, b.sums) and a.events == b.events
            if earlier is not None:  # the last task's frames, untouched by this one
                assert as_bytes(earlier[0]) == earlier[1]
            earlier = (frames, as_bytes(frames))
            histograms = decode_task._done.extensions[HISTOGRAMS]
            assert kept is None or histograms is kept  # emptied and reused, not made anew
            kept = histograms
