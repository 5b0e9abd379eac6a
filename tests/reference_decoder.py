"""Reference decoder and reconstruction for docs/raw-format.md — the test oracle.

Slow, obvious, pure Python, written straight from the spec (§2–§8, §11, §12) and
the lead's decisions that fill its gaps.  It deliberately imports nothing from
``na64_online``: the fast numba decoder is checked against it, so it must not
share a single line of code (or a single misunderstanding hidden in a shared
constant) with it.

Public API
----------
``load_channel_map(path)``  -> {(src_id, port, channel): {detector, module, x, y, gain_gev}}
``DEFAULT_MAP_PATH``        -> decoders/default-channel-map.csv
``load_detector_roles(path)`` -> {detector name: role} of a detector table (decoders/detectors.toml: data,
                               read here with tomllib; ``set_detector_roles`` makes another table current)
``detector_values(events, channel_map)`` -> per spill, per detector: channels, mean energy, hit fraction
``decode_stream(data, channel_map)`` -> one dict per top-level DATE event (rejected ones too)
``qa_records(events)``      -> the §12 QA record of every spill

Conventions of this oracle (where the spec leaves a choice)
-----------------------------------------------------------
* Every error is a tuple ``(src_id or None, label, byte_offset)``; ``byte_offset``
  is absolute in ``data`` and points at the structure found damaged:
  the (sub-)event header for event-level labels, the equipment header for
  ``equipment_bad_size``, the S-Link header for ``slink_*``, the ADC block header
  for ``adc_*``, the channel header for ``channel_*`` and the data word itself for
  ``data_bad_marker``.  ``src_id`` is the equipment id for equipment-level and
  deeper errors, None for event-level ones.
* A rejected top-level event has ``status`` = its label, exactly one error, no
  channels, and ``type/run/spill/event/trigger_mask/time`` = None (its header is
  not trusted).  Its reconstruction keys hold the values of an empty event.
* Sub-events of a super event are read as plain events (their payload is
  equipments), whatever their own super-event bit says.
"""

from __future__ import annotations

import csv
import struct
import tomllib
from pathlib import Path

DEFAULT_MAP_PATH = Path(__file__).parents[1] / "decoders" / "default-channel-map.csv"
DEFAULT_TABLE_PATH = Path(__file__).parents[1] / "decoders" / "detectors.toml"

# --- §2 DATE event header ----------------------------------------------------
DATE_MAGIC = 0xDA1E5AFE
DATE_MAGIC_SWAPPED = 0xFE5A1EDA
MIN_HEADER_BYTES = 68  # 17 words
SUPER_EVENT_BIT = 1 << 4  # in header word 13

START_OF_BURST = 5
END_OF_BURST = 6
PHYSICS_EVENT = 7
CALIBRATION_EVENT = 8
SPILL_EVENT_TYPES = (START_OF_BURST, END_OF_BURST, PHYSICS_EVENT, CALIBRATION_EVENT)

# --- §3 equipment header, §4 S-Link header -------------------------------------
EQUIPMENT_HEADER_BYTES = 28  # 7 words
SLINK_HEADER_WORDS = 3

# --- §6, §7 srcIDs [convention] -------------------------------------------------
SCALER_SRC_ID = 700
TRIGGER_TIME_SRC_ID = 701

# --- §5 MSADC ------------------------------------------------------------------
SATURATION = 4095

# --- §11 reconstruction defaults -----------------------------------------------
PEDESTAL_SAMPLES = 6
AMPLITUDE_THRESHOLD = 20.0
SRD_MODULE_MIN = 0.001
SRD_SUM_MIN = 0.005
SRD_SUM_MAX = 0.150
HADRON_HCAL_MIN = 10.0
CAND_PS_MIN = 0.5
CAND_ECAL_MAX = 50.0
CAND_HCAL_MAX = 1.0
CAND_VETO_MAX = 0.01
BEAM_CELL = (2, 2)
N_SRD_MODULES = 3
N_VETO_MODULES = 3

QA_KEYS = (
    "run", "spill", "events", "lost_events", "decode_errors", "modules_missing",
    "complete", "beam", "triggers_accepted", "hadron_fraction",
    "hadron_fraction_srd", "eot", "candidates",
)


# =============================================================================
# Channel map (§8)
# =============================================================================

def load_channel_map(path=DEFAULT_MAP_PATH) -> dict:
    """Read ``src_id,port,channel,detector,module,x,y,gain_gev`` rows."""
    channel_map = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (int(row["src_id"]), int(row["port"]), int(row["channel"]))
            channel_map[key] = {
                "detector": row["detector"],
                "module": int(row["module"]),
                "x": int(row["x"]),
                "y": int(row["y"]),
                "gain_gev": float(row["gain_gev"]),
            }
    return channel_map


def load_detector_roles(path=DEFAULT_TABLE_PATH) -> dict:
    """{detector name: role in the §11 selection} from a detector table's ``[[detector]]`` entries."""
    with open(path, "rb") as f:
        return {d["name"]: d["role"] for d in tomllib.load(f)["detector"]}


ROLES = load_detector_roles()


def set_detector_roles(roles: dict) -> None:
    """Reconstruct with another detector table's roles from now on."""
    ROLES.clear()
    ROLES.update(roles)


# =============================================================================
# Little helpers
# =============================================================================

def _word(data: bytes, offset: int) -> int:
    """The little-endian 32-bit word at byte ``offset``."""
    return struct.unpack_from("<I", data, offset)[0]


def _swapped_word(data: bytes, offset: int) -> int:
    """The word at ``offset`` read big-endian (what a byte-swapped writer meant)."""
    return struct.unpack_from(">I", data, offset)[0]


def _bits(word: int, first: int, count: int) -> int:
    return (word >> first) & ((1 << count) - 1)


def _plausible_size(size: int, room: int) -> bool:
    """An event size we can trust to skip by: multiple of 4, >= 68, fits in ``room``."""
    return size % 4 == 0 and size >= MIN_HEADER_BYTES and size <= room


class _Sink:
    """What the decoding of one top-level event accumulates."""

    def __init__(self):
        self.errors = []
        self.channels = {}  # (src, port, channel) -> channel dict, in decode order
        self.unknown_channels = []
        self.unknown_src_ids = []
        self.modules_missing = 0
        self.ldcs = []
        self.trigger_time_us = None
        self.scalers = None

    def error(self, src_id, label, offset):
        self.errors.append((src_id, label, offset))


# =============================================================================
# DATE header checks (§2), shared by top-level events and sub-events
# =============================================================================

def _check_event_header(data: bytes, offset: int, end: int):
    """Validate the DATE header at ``offset``; ``end`` bounds the event.

    Returns ``(label, skip)``: ``label`` None if the header is good, else the issue
    label; ``skip`` is the number of bytes to skip when the event size can be
    trusted, None when it cannot (resync / drop the rest), or the string
    ``"stop"`` for a truncated event.
    """
    room = end - offset
    if room < 8:
        return "event_truncated", "stop"
    size = _word(data, offset)
    magic = _word(data, offset + 4)
    if magic == DATE_MAGIC_SWAPPED:
        swapped_size = _swapped_word(data, offset)
        return "event_byte_swapped", (swapped_size if _plausible_size(swapped_size, room) else None)
    if magic != DATE_MAGIC:
        return "event_bad_magic", None
    if size % 4 != 0 or size < MIN_HEADER_BYTES:
        return "event_bad_header_size", None
    if size > room:
        return "event_truncated", "stop"
    version = _word(data, offset + 12)
    if version < 0x10000:
        return "event_old_layout", size
    header_length = _word(data, offset + 8)
    if header_length < MIN_HEADER_BYTES or header_length % 4 != 0 or header_length > size:
        return "event_bad_header_size", size
    return None, size


def _read_header(data: bytes, offset: int) -> dict:
    w = [_word(data, offset + 4 * i) for i in range(17)]
    return {
        "size": w[0],
        "header_length": w[2],
        "type": w[4] & 0xFFFF,
        "run": w[5],
        "event_in_run": w[6],
        "spill": _bits(w[7], 20, 12),
        "event": _bits(w[7], 0, 20),
        "trigger_mask": ((w[8] >> 1) | (w[9] << 31)) & 0xFFFFFFFF,
        "super": bool(w[13] & SUPER_EVENT_BIT),
        "ldc": w[14],
        "gdc": w[15],
        "time": w[16],
    }


def _resync(data: bytes, offset: int, want_super):
    """Next offset after ``offset`` (1-byte steps: damage may shift the stream by bytes) that
    looks like an event start, or None.

    Looks like one: the DATE magic, a plausible size, and — once an accepted
    event has been seen — the same super-event bit as the last accepted one, so
    that a damaged super event's own sub-events are not taken for events.
    """
    return _resync_within(data, offset + 1, len(data), want_super)


def _resync_within(data: bytes, first: int, end: int, want_super):
    """First offset in [first, end) that looks like an event start (see :func:`_resync`), or None.

    With no accepted event yet (``want_super`` None): the first super event if
    there is one, else the first plain event.
    """
    if want_super is None:
        found = _resync_within(data, first, end, True)
        return found if found is not None else _resync_within(data, first, end, False)
    position = first
    while position < end and position + 8 <= len(data):
        if _word(data, position + 4) == DATE_MAGIC and _plausible_size(
            _word(data, position), len(data) - position
        ):
            is_super = bool(_word(data, position + 52) & SUPER_EVENT_BIT) if position + 56 <= len(data) else False
            if is_super == want_super:
                return position
        position += 1
    return None


# =============================================================================
# Stream and events
# =============================================================================

def decode_stream(data: bytes, channel_map) -> list:
    """Decode every top-level DATE event of ``data`` (one dict each, rejected ones too).

    An event whose size runs past the end of ``data`` is truncated only if no
    plausible event starts after it; otherwise its size is damaged
    (``event_bad_size``) and the stream goes on at that next event.
    """
    data = bytes(data)
    src_ids_msadc = {key[0] for key in channel_map}
    events = []
    offset = 0
    want_super = None  # super-event bit of the last accepted top-level event of a known type
    last = None  # (offset, header or None if rejected) of the event just before, if skipped by its own size
    while offset < len(data):
        label, skip = _check_event_header(data, offset, len(data))
        if label is not None and skip is None and last is not None:
            # bytes lost inside the event before: the next event may start inside its claimed size;
            # the event before is cut to its whole words before it
            # (not knowing the stream yet: only a super event, never a sub-event of the one before)
            inside = _resync_within(data, last[0] + MIN_HEADER_BYTES, offset, True if want_super is None else want_super)
            if inside is not None:
                if last[1] is not None:  # an accepted event: decoded again up to there
                    events[-1] = _decode_event(data, last[0], {**last[1], "size": (inside - last[0]) // 4 * 4},
                                               channel_map, src_ids_msadc)
                offset = inside
                last = None
                continue
        last = None
        if label is not None:
            if skip == "stop":
                following = _resync(data, offset, want_super)
                if following is None:
                    events.append(_rejected_event(offset, label))
                    break
                events.append(_rejected_event(offset, "event_bad_size"))
                offset = following
                continue
            events.append(_rejected_event(offset, label))
            if skip is None:
                offset = _resync(data, offset, want_super)
                if offset is None:
                    break
            else:
                last = (offset, None)  # rejected, skipped by its own size
                offset += skip
            continue
        header = _read_header(data, offset)
        if header["type"] in (1, 2, 5, 6, 7, 8):  # a known type: its super bit tells what the stream is made of
            want_super = header["super"]
        events.append(_decode_event(data, offset, header, channel_map, src_ids_msadc))
        last = (offset, header)
        offset += header["size"]
    return events


def _rejected_event(offset: int, label: str) -> dict:
    sink = _Sink()
    sink.error(None, label, offset)
    event = {
        "offset": offset, "status": label, "type": None, "run": None, "spill": None,
        "event": None, "trigger_mask": None, "time": None,
    }
    event.update(_event_content(sink))
    event.update(reconstruct(event))
    return event


def _decode_event(data, offset, header, channel_map, src_ids_msadc) -> dict:
    sink = _Sink()
    payload_start = offset + header["header_length"]
    payload_end = offset + header["size"]
    if header["super"]:
        _decode_sub_events(data, payload_start, payload_end, header, sink, channel_map, src_ids_msadc)
    else:
        sink.ldcs.append(header["ldc"])
        _decode_equipments(data, payload_start, payload_end, header, sink, channel_map, src_ids_msadc)
    event = {
        "offset": offset, "status": None, "type": header["type"], "run": header["run"],
        "spill": header["spill"], "event": header["event"],
        "trigger_mask": header["trigger_mask"], "time": header["time"], "super": header["super"],
    }
    event.update(_event_content(sink))
    event.update(reconstruct(event))
    return event


def _event_content(sink: _Sink) -> dict:
    return {
        "ldcs": sorted(sink.ldcs),
        "trigger_time_us": sink.trigger_time_us,
        "scalers": sink.scalers,
        "channels": list(sink.channels.values()),
        "errors": sink.errors,
        "modules_missing": sink.modules_missing,
        "unknown_channels": sink.unknown_channels,
        "unknown_src_ids": sink.unknown_src_ids,
    }


def _decode_sub_events(data, start, end, parent, sink, channel_map, src_ids_msadc):
    """§2.1: the payload of a super event is a sequence of complete DATE events."""
    offset = start
    while offset < end:
        label, skip = _check_event_header(data, offset, end)
        if label is not None:
            sink.error(None, label, offset)
            if skip is None or skip == "stop":
                return  # the sub-event size cannot be trusted: drop the rest
            offset += skip
            continue
        header = _read_header(data, offset)
        if any(header[k] != parent[k] for k in ("type", "run", "spill", "event")):
            sink.error(None, "subevent_mismatch", offset)
            offset += header["size"]
            continue
        sink.ldcs.append(header["ldc"])
        _decode_equipments(
            data, offset + header["header_length"], offset + header["size"],
            header, sink, channel_map, src_ids_msadc,
        )
        offset += header["size"]


# =============================================================================
# Equipments (§3) and S-Link (§4)
# =============================================================================

def _decode_equipments(data, start, end, header, sink, channel_map, src_ids_msadc):
    offset = start
    while offset < end:
        if end - offset < EQUIPMENT_HEADER_BYTES:
            sink.error(None, "equipment_bad_size", offset)
            return
        size = _word(data, offset)
        src_id = _word(data, offset + 8)
        if size < EQUIPMENT_HEADER_BYTES or size % 4 != 0 or offset + size > end:
            sink.error(src_id, "equipment_bad_size", offset)
            return
        _decode_slink(data, offset, size, src_id, header, sink, channel_map, src_ids_msadc)
        offset += size


def _decode_slink(data, eq_offset, eq_size, src_id, header, sink, channel_map, src_ids_msadc):
    slink = eq_offset + EQUIPMENT_HEADER_BYTES
    if eq_size < EQUIPMENT_HEADER_BYTES + 4 * SLINK_HEADER_WORDS:
        sink.error(src_id, "slink_size_mismatch", slink)
        return
    w0 = _word(data, slink)
    w1 = _word(data, slink + 4)
    block_words = _bits(w0, 0, 16)
    if EQUIPMENT_HEADER_BYTES + 4 * block_words != eq_size or block_words < SLINK_HEADER_WORDS:
        sink.error(src_id, "slink_size_mismatch", slink)
        return
    if _bits(w0, 16, 10) != src_id:
        sink.error(src_id, "slink_src_mismatch", slink)
        return
    slink_event = _bits(w1, 0, 20)
    if slink_event != header["event"]:
        sink.error(src_id, "slink_event_mismatch", slink)
        return
    if _bits(w1, 20, 11) != header["spill"] & 0x7FF:
        sink.error(src_id, "slink_spill_mismatch", slink)
        return

    chip_start = slink + 4 * SLINK_HEADER_WORDS
    chip_words = [_word(data, chip_start + 4 * i) for i in range(block_words - SLINK_HEADER_WORDS)]
    if src_id in src_ids_msadc:
        _decode_msadc(chip_words, chip_start, src_id, slink_event, sink, channel_map)
    elif src_id == SCALER_SRC_ID:
        sink.scalers = chip_words  # §6: every word is a counter
    elif src_id == TRIGGER_TIME_SRC_ID:
        sink.trigger_time_us = chip_words[0] if chip_words else None  # §7
    else:
        sink.unknown_src_ids.append(src_id)  # counted, not an error


# =============================================================================
# MSADC chip data, "data format 3" (§5)
# =============================================================================

def _decode_msadc(words, chip_offset, src_id, slink_event, sink, channel_map):
    """``words``: the chip data; ``chip_offset``: byte offset of words[0] in the stream."""

    def at(i):
        return chip_offset + 4 * i

    i = 0
    while i < len(words):
        block = words[i]
        key = _bits(block, 30, 2)
        block_size = _bits(block, 12, 12)
        if key == 0 and block_size == 1:
            sink.modules_missing += 1  # "module missing" placeholder: not an error
            i += 1
            continue
        if key != 3:
            sink.error(src_id, "adc_bad_key", at(i))
            return  # rest of the chip data
        if block_size == 0 or i + block_size > len(words):
            sink.error(src_id, "adc_bad_size", at(i))
            return  # rest of the chip data
        if _bits(block, 0, 12) != slink_event & 0xFFF:
            sink.error(src_id, "adc_event_mismatch", at(i))
            i += block_size
            continue  # just that ADC block
        adc_id = _bits(block, 25, 2)
        port = _bits(block, 27, 3)
        _decode_adc_block(words, i + 1, i + block_size, at, src_id, port, adc_id, sink, channel_map)
        i += block_size


def _decode_adc_block(words, start, end, at, src_id, port, adc_id, sink, channel_map):
    """Channels in words[start:end]; damage stops the block, earlier channels stay."""
    j = start
    while j < end:
        header = words[j]
        if _bits(header, 30, 2) != 0b01:
            sink.error(src_id, "channel_bad_id", at(j))
            return
        n = _bits(header, 16, 9)
        n_words = (n + 1) // 2
        if n == 0 or j + 1 + n_words > end:
            sink.error(src_id, "channel_bad_samples", at(j))
            return
        samples = []
        for k in range(n_words):
            data_word = words[j + 1 + k]
            expected_marker = 0b01 if k == 0 else 0b10
            if _bits(data_word, 30, 2) != expected_marker:
                sink.error(src_id, "data_bad_marker", at(j + 1 + k))
                return
            samples.append(_bits(data_word, 0, 12))
            samples.append(_bits(data_word, 12, 12))
        samples = samples[:n]  # drop the padding half of the last word
        channel = adc_id * 16 + _bits(header, 26, 4)
        address = (src_id, port, channel)
        if address in channel_map:
            sink.channels.pop(address, None)  # same channel twice: the last one wins
            sink.channels[address] = _channel_record(address, channel_map[address], samples)
        else:
            sink.unknown_channels.append(address)
        j += 1 + n_words


# =============================================================================
# Reconstruction (§11)
# =============================================================================

def _mean(values) -> float:
    return sum(values) / len(values) if values else 0.0


def pedestals(samples, window=PEDESTAL_SAMPLES):
    """(even, odd): the mean of the first ``window`` samples of each parity (0.0 for none)."""
    first = samples[:window]
    return (_mean([s for k, s in enumerate(first) if k % 2 == 0]),
            _mean([s for k, s in enumerate(first) if k % 2 == 1]))


def amplitude(samples, window=PEDESTAL_SAMPLES, pedestal=(0.0, 0.0)):
    """Largest (sample - pedestal of its parity) after the pedestal window; 0.0 when there is none."""
    if len(samples) > window:
        return max(samples[k] - pedestal[k % 2] for k in range(window, len(samples)))
    return 0.0


def saturated(samples):
    """Any sample at the ADC's full scale."""
    return any(s == SATURATION for s in samples)


def energy(amp, gain_gev, threshold=AMPLITUDE_THRESHOLD):
    """gain x amplitude above the threshold, else 0."""
    return gain_gev * amp if amp > threshold else 0.0


def _channel_record(address, cell, samples) -> dict:
    src_id, port, channel = address
    pedestal_even, pedestal_odd = pedestals(samples)
    amp = amplitude(samples, PEDESTAL_SAMPLES, (pedestal_even, pedestal_odd))
    return {
        "detector": cell["detector"], "module": cell["module"], "x": cell["x"], "y": cell["y"],
        "src_id": src_id, "port": port, "channel": channel,
        "pedestal_even": pedestal_even, "pedestal_odd": pedestal_odd,
        "amplitude": amp, "energy_gev": energy(amp, cell["gain_gev"]),
        "saturated": saturated(samples),
        "samples": samples,
    }


def reconstruct(event: dict) -> dict:
    """Per-event sums and tags of §11 from ``event["channels"]`` and its trigger mask."""
    e_ps = e_ecal = e_hcal = 0.0
    srd = [0.0] * N_SRD_MODULES
    veto_pmts = [0.0] * N_VETO_MODULES
    main_ecal = {}
    e_wcal = 0.0
    detector_energy = {}
    for ch in event["channels"]:
        e = ch["energy_gev"]
        role = ROLES.get(ch["detector"])
        detector_energy[ch["detector"]] = detector_energy.get(ch["detector"], 0.0) + e
        if role == "ecal":
            e_ecal += e
            if ch["module"] == 0:
                e_ps += e
            if ch["module"] == 1:
                main_ecal[(ch["x"], ch["y"])] = e
        elif role == "hcal":
            e_hcal += e
        elif role == "electron_tag":
            srd[ch["module"]] += e
        elif role == "veto":
            veto_pmts[ch["module"]] += e
        elif role == "wcal":
            e_wcal += e
    veto = [v / 2.0 for v in veto_pmts]  # mean of the two PMTs (an absent one is 0)

    electron = all(e >= SRD_MODULE_MIN for e in srd) and SRD_SUM_MIN <= sum(srd) <= SRD_SUM_MAX
    mask = event["trigger_mask"] or 0
    physics_trigger = bool(mask & 1)
    beam_trigger = bool(mask & 2)
    hadron_like = beam_trigger and e_hcal > HADRON_HCAL_MIN

    beam_cell_energy = main_ecal.get(BEAM_CELL, 0.0)
    beam_cell_is_max = beam_cell_energy > 0 and all(e <= beam_cell_energy for e in main_ecal.values())
    candidate = (
        physics_trigger and electron and e_ps > CAND_PS_MIN and e_ecal < CAND_ECAL_MAX
        and e_hcal < CAND_HCAL_MAX and all(v < CAND_VETO_MAX for v in veto) and beam_cell_is_max
    )
    return {
        "e_ps": e_ps, "e_ecal": e_ecal, "e_hcal": e_hcal, "e_wcal": e_wcal, "srd": srd, "veto": veto,
        "detector_energy": detector_energy, "electron": electron, "physics_trigger": physics_trigger, "beam_trigger": beam_trigger,
        "hadron_like": hadron_like, "candidate": candidate,
    }


# =============================================================================
# Per-spill QA records (§12)
# =============================================================================

class _Spill:
    def __init__(self, run, spill):
        self.run = run
        self.spill = spill
        self.decode_errors = 0
        self.modules_missing = 0
        self.event_numbers = []
        self.beam_trigger = 0
        self.hadron_like = 0
        self.beam_not_electron = 0
        self.candidates = []
        self.scalers = None
        self.duplicates = 0

    def record(self, complete: bool) -> dict:
        numbers = set(self.event_numbers)
        highest = max(numbers, default=0)
        lost = sum(1 for n in range(1, highest + 1) if n not in numbers)
        if self.beam_trigger:
            hadron_fraction = self.hadron_like / self.beam_trigger
            hadron_fraction_srd = self.beam_not_electron / self.beam_trigger
        else:
            hadron_fraction = hadron_fraction_srd = None
        scalers = self.scalers or []
        beam = scalers[0] if len(scalers) > 0 else None
        triggers_accepted = scalers[3] if len(scalers) > 3 else None
        eot = None if beam is None or hadron_fraction is None else beam * (1 - hadron_fraction)
        record = {
            "run": self.run, "spill": self.spill, "events": len(self.event_numbers),
            "lost_events": lost, "decode_errors": self.decode_errors,
            "modules_missing": self.modules_missing, "complete": complete, "beam": beam,
            "triggers_accepted": triggers_accepted, "hadron_fraction": hadron_fraction,
            "hadron_fraction_srd": hadron_fraction_srd, "eot": eot,
            "candidates": sorted(self.candidates),
        }
        assert tuple(record) == QA_KEYS
        return record


def merge_plain_fragments(events: list) -> list:
    """One event per trigger: consecutive accepted plain events with the same type, run,
    burst and event number from different LDCs are fragments of one event (as an event
    builder would join them); their channels, errors and counters are combined."""
    merged = []
    for ev in events:
        last = merged[-1] if merged else None
        if (
            last is not None and ev["status"] is None and last["status"] is None
            and not ev.get("super") and not last.get("super")
            and all(ev[k] == last[k] for k in ("type", "run", "spill", "event"))
            and ev["ldcs"] != last["ldcs"][-1:]
        ):
            channels = {(c["src_id"], c["port"], c["channel"]): c for c in last["channels"] + ev["channels"]}
            combined = dict(last)
            combined.update(
                channels=list(channels.values()),
                errors=last["errors"] + ev["errors"],
                modules_missing=last["modules_missing"] + ev["modules_missing"],
                ldcs=last["ldcs"] + ev["ldcs"],
                trigger_time_us=ev["trigger_time_us"] if ev["trigger_time_us"] is not None else last["trigger_time_us"],
                scalers=ev["scalers"] if ev["scalers"] is not None else last["scalers"],
            )
            combined.update(reconstruct(combined))
            merged[-1] = combined
        else:
            merged.append(ev)
    return merged


def detector_values(events: list, channel_map: dict) -> dict:
    """{(run, spill): {detector: {channels, energy_mean_gev, hit_fraction}}} over each spill's accepted
    PHYSICS and CALIBRATION events (each event number once), for the detectors the map has, in the table's
    order: the mean per event of the detector's summed energy, the fraction of events it had energy.
    (For spills without header damage: no event is dropped here as damaged.)"""
    channels = {}
    for cell in channel_map.values():
        channels[cell["detector"]] = channels.get(cell["detector"], 0) + 1
    spills = {}
    for ev in merge_plain_fragments(events):
        if ev["status"] is not None or ev["type"] not in (PHYSICS_EVENT, CALIBRATION_EVENT):
            continue
        spill = spills.setdefault((ev["run"], ev["spill"]), {"numbers": set(), "energy": {}, "hits": {}})
        if ev["event"] in spill["numbers"]:
            continue
        spill["numbers"].add(ev["event"])
        for name, e in reconstruct(ev)["detector_energy"].items():
            spill["energy"][name] = spill["energy"].get(name, 0.0) + e
            spill["hits"][name] = spill["hits"].get(name, 0) + (e > 0)
    out = {}
    for key, spill in spills.items():
        n = len(spill["numbers"])
        out[key] = {name: {"channels": channels[name], "energy_mean_gev": spill["energy"].get(name, 0.0) / n,
                           "hit_fraction": spill["hits"].get(name, 0) / n}
                    for name in ROLES if name in channels}
    return out


def _header_damaged(seq: list) -> set:
    """Indices into ``seq`` (accepted spill events, in order) of events whose (run, burst) is damaged.

    Only a single event whose key differs from both neighbours', and that is not
    a late event of a spill closed before it, can be damaged. First data events:
    damaged when their neighbours inside a spill (the nearest event before that
    is not single itself, unless an END_OF_BURST comes first; the nearest after,
    unless a START_OF_BURST comes first) exist and share one key. Then,
    without those and without late events: a START_OF_BURST followed by an event that is not a
    START_OF_BURST, or by a START_OF_BURST that opens the next events' spill; an END_OF_BURST preceded by one that is not an END_OF_BURST.
    """
    keys = [(ev["run"], ev["spill"]) for ev in seq]
    closed_before = []  # per position: keys closed by an END_OF_BURST before it
    closed = set()
    for ev, key in zip(seq, keys):
        closed_before.append(set(closed))
        if ev["type"] == END_OF_BURST:
            closed.add(key)

    def single(order, j):
        i = order[j]
        prev_differs = j == 0 or keys[order[j - 1]] != keys[i]
        next_differs = j + 1 == len(order) or keys[order[j + 1]] != keys[i]
        return len(seq) > 1 and prev_differs and next_differs and keys[i] not in closed_before[i]

    def lonely(k):  # a single event (late or not): no neighbour to go by
        return (k == 0 or keys[k - 1] != keys[k]) and (k + 1 == len(seq) or keys[k + 1] != keys[k])

    damaged = set()
    order = list(range(len(seq)))
    for j, i in enumerate(order):
        if seq[i]["type"] in (START_OF_BURST, END_OF_BURST) or not single(order, j):
            continue
        around = []
        before = [k for k in range(i - 1, -1, -1) if seq[k]["type"] == END_OF_BURST or not lonely(k)]
        if before and seq[before[0]]["type"] != END_OF_BURST:
            around.append(keys[before[0]])
        after = [k for k in range(i + 1, len(seq)) if seq[k]["type"] == START_OF_BURST or not lonely(k)]
        if after and seq[after[0]]["type"] != START_OF_BURST:
            around.append(keys[after[0]])
        if around and len(set(around)) == 1:
            damaged.add(i)
    order = [i for i in range(len(seq)) if i not in damaged and keys[i] not in closed_before[i]]
    for j, i in enumerate(order):
        if not single(order, j):
            continue
        if seq[i]["type"] == START_OF_BURST and j + 1 < len(order):
            following = order[j + 1]
            opens_next = j + 2 < len(order) and keys[order[j + 2]] == keys[following]
            if seq[following]["type"] != START_OF_BURST or opens_next:
                damaged.add(i)
        elif seq[i]["type"] == END_OF_BURST and j > 0 and seq[order[j - 1]]["type"] != END_OF_BURST:
            damaged.add(i)
    return damaged


def _out_of_sequence(numbers: list) -> set:
    """Positions in a spill's event numbers (in stream order) that break the running sequence:
    inside, a number outside [previous, next] while previous < next; the first, a number above
    the second while the second is below the third; the last, below the one before while that
    one is not below its own predecessor."""
    bad = set()
    n = len(numbers)
    if n < 3:
        return bad
    for i in range(1, n - 1):
        if numbers[i - 1] < numbers[i + 1] and not numbers[i - 1] <= numbers[i] <= numbers[i + 1]:
            bad.add(i)
    if numbers[0] > numbers[1] and numbers[1] < numbers[2]:
        bad.add(0)
    if numbers[-1] < numbers[-2] and numbers[-3] <= numbers[-2]:
        bad.add(n - 1)
    return bad


def _rejected_header(ev: dict) -> dict:
    return {**ev, "status": "header_mismatch", "errors": [(None, "header_mismatch", ev["offset"])]}


def qa_records(events: list) -> list:
    """Group decoded events into spills (keyed by (run, burst)) and build their QA records.

    Header damage (:func:`_header_damaged`; then, per spill, an event number out
    of the running sequence, :func:`_out_of_sequence`) makes an event a
    rejected one (``header_mismatch``, one error) where it stands; an event
    number seen again in a spill is a duplicate: neither decoded nor counted
    again.
    """
    events = merge_plain_fragments(events)
    seq_positions = [i for i, ev in enumerate(events)
                     if ev["status"] is None and ev["type"] in SPILL_EVENT_TYPES]
    for i in _header_damaged([events[p] for p in seq_positions]):
        events[seq_positions[i]] = _rejected_header(events[seq_positions[i]])
    _, members = _spills(events)
    for positions in members:
        for i in _out_of_sequence([events[p]["event"] for p in positions]):
            events[positions[i]] = _rejected_header(events[positions[i]])
    return _spills(events)[0]


def _spills(events: list):
    """(QA records, per spill the positions of its data events, duplicates included)."""
    records = []
    members = []
    open_spill = None
    closed_keys = set()  # spills closed by END_OF_BURST: later events of theirs are late
    pending_errors = 0  # rejected events seen while no spill was open

    for position, ev in enumerate(events):
        if ev["status"] is not None:
            if open_spill is not None:
                open_spill.decode_errors += len(ev["errors"])
            else:
                pending_errors += len(ev["errors"])
            continue
        if ev["type"] not in SPILL_EVENT_TYPES:
            continue  # run-level and other events belong to no spill
        key = (ev["run"], ev["spill"])
        if key in closed_keys:
            continue  # late event of a spill whose END_OF_BURST already came
        if open_spill is None or (open_spill.run, open_spill.spill) != key:
            if open_spill is not None:
                records.append(open_spill.record(complete=False))
            open_spill = _Spill(*key)
            members.append([])
            open_spill.decode_errors += pending_errors
            pending_errors = 0
        if ev["type"] in (PHYSICS_EVENT, CALIBRATION_EVENT):
            members[-1].append(position)
            if ev["event"] in open_spill.event_numbers:
                open_spill.duplicates += 1
                continue

        open_spill.decode_errors += len(ev["errors"])
        open_spill.modules_missing += ev["modules_missing"]
        if ev["type"] in (PHYSICS_EVENT, CALIBRATION_EVENT):
            open_spill.event_numbers.append(ev["event"])
            if ev["beam_trigger"]:
                open_spill.beam_trigger += 1
                open_spill.hadron_like += ev["hadron_like"]
                open_spill.beam_not_electron += not ev["electron"]
            if ev["candidate"]:
                open_spill.candidates.append(ev["event"])
        elif ev["type"] == END_OF_BURST:
            open_spill.scalers = ev["scalers"]
            records.append(open_spill.record(complete=True))
            closed_keys.add(key)
            open_spill = None

    if open_spill is not None:
        records.append(open_spill.record(complete=False))
    return records, members
