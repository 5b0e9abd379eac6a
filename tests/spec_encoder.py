"""Test-side encoder, packed with ``struct`` straight from docs/raw-format.md.

Independent of the package's own layout module and simulator, so that tests
built on it check the decoder against the spec, not against itself.
"""

from __future__ import annotations

import struct

MAGIC = 0xDA1E5AFE
RUN = 777
SPILL = 3


# =============================================================================
# Encoder (test side, from the spec tables)
# =============================================================================

def pack(*ws) -> bytes:
    return struct.pack(f"<{len(ws)}I", *ws)


def pulse(amplitude, n=32, peak=10):
    """Pedestal 100 (even) / 110 (odd), one peak of ``amplitude`` at sample ``peak``."""
    s = [100 if k % 2 == 0 else 110 for k in range(n)]
    if peak < n:
        s[peak] += amplitude
    return s


def channel(chan_id, samples, *, id_bits=0b01, n=None, bad_marker_at=None):
    """§5 channel header + ceil(n/2) data words."""
    n = len(samples) if n is None else n
    ws = [(id_bits << 30) | (chan_id << 26) | (n << 16) | (sum(samples) & 0xFFFF)]
    padded = list(samples) + [0] * (len(samples) % 2)
    for i in range(0, len(padded), 2):
        marker = 0b01 if i == 0 else 0b10
        if bad_marker_at == i // 2:
            marker = 0b11
        ws.append((marker << 30) | (padded[i + 1] << 12) | padded[i])
    return ws


def adc_block(evnum, port, adc_id, channel_words, *, key=3, size=None):
    size = 1 + len(channel_words) if size is None else size
    header = (key << 30) | (port << 27) | (adc_id << 25) | (size << 12) | (evnum & 0xFFF)
    return [header] + channel_words


def placeholder(evnum, port, adc_id):
    return [(port << 27) | (adc_id << 25) | (1 << 12) | (evnum & 0xFFF)]


def equipment(src_id, chip, *, evnum, spill, type_=7, slink_src=None, slink_event=None,
              slink_spill=None, slink_size=None, eq_size=None) -> bytes:
    s = 3 + len(chip)
    slink = [
        ((type_ & 0x1F) << 26) | ((src_id if slink_src is None else slink_src) << 16)
        | (s if slink_size is None else slink_size),
        (((spill & 0x7FF) if slink_spill is None else slink_spill) << 20)
        | (evnum if slink_event is None else slink_event),
        0x00000800,
    ]
    body = slink + list(chip)
    size = 28 + 4 * len(body) if eq_size is None else eq_size
    return pack(size, 64, src_id, 0, 0, 0, 4) + pack(*body)


def date_event(type_, run, spill, evnum, payload=b"", *, mask=0, ldc=0, gdc=1, is_super=False,
               header_length=68, header_length_field=None, version=0x0003000E, magic=MAGIC,
               size=None) -> bytes:
    words = [
        header_length + len(payload) if size is None else size,
        magic,
        header_length if header_length_field is None else header_length_field,
        version,
        type_, run, evnum, (spill << 20) | evnum,
        (mask << 1) & 0xFFFFFFFF, mask >> 31, 0, 0, 0,
        0x10 if is_super else 0, ldc, gdc, 1750000000,
    ]
    words += [0xABCD0000 + i for i in range((header_length - 68) // 4)]  # extra words: ignored
    return pack(*words) + payload


def super_event(type_, run, spill, evnum, subs, *, mask=0, header_length=68, **kw) -> bytes:
    return date_event(type_, run, spill, evnum, b"".join(subs), mask=mask, ldc=0, gdc=1,
                      is_super=True, header_length=header_length, **kw)


def chip_610(evnum, *, b1=None):
    """Three ADC blocks: B0 port 0 ch 14 (PS beam cell), B1 port 1 ch 14 + 15, B2 port 1 ch 32."""
    b0 = adc_block(evnum, 0, 0, channel(14, pulse(200)))
    if b1 is None:
        b1 = adc_block(evnum, 1, 0, channel(14, pulse(1000)) + channel(15, pulse(100)))
    b2 = adc_block(evnum, 1, 2, channel(0, pulse(50)))
    return b0 + b1 + b2


def default_chips(evnum):
    return {
        610: chip_610(evnum),
        611: adc_block(evnum, 0, 0, channel(0, pulse(10))),
        612: adc_block(evnum, 0, 0, channel(0, pulse(200)) + channel(1, pulse(200)) + channel(2, pulse(200)))
        + adc_block(evnum, 0, 1, [w for c in range(6) for w in channel(c, pulse(0))]),  # VETO 16..21
        701: [1000 * evnum],
    }


def physics_event(evnum, *, run=RUN, spill=SPILL, mask=0b11, type_=7, chips=None, eqs=None,
                  ldc2_header=None, header_length=68, sub_header_length=68, plain=False, **kw):
    chip = default_chips(evnum)
    chip.update(chips or {})
    equipments = {src: equipment(src, words, evnum=evnum, spill=spill, type_=type_) for src, words in chip.items()}
    equipments.update(eqs or {})
    ldc1 = equipments[610]
    ldc2 = equipments[611] + equipments[612] + equipments[701]
    if plain:
        return date_event(type_, run, spill, evnum, ldc1 + ldc2, mask=mask, ldc=1, gdc=0,
                          header_length=header_length, **kw)
    sub1 = date_event(type_, run, spill, evnum, ldc1, mask=mask, ldc=1, gdc=0, header_length=sub_header_length)
    ldc2_kw = dict(mask=mask, ldc=2, gdc=0, header_length=sub_header_length)
    ldc2_kw.update(ldc2_header or {})
    sub2 = date_event(type_, run, ldc2_kw.pop("spill", spill), ldc2_kw.pop("evnum", evnum), ldc2, **ldc2_kw)
    return super_event(type_, run, spill, evnum, [sub1, sub2], mask=mask, header_length=header_length, **kw)


SCALERS = [5000, 6000, 40, 3, 4800000, 0xDEAD]


def sob(run=RUN, spill=SPILL, **kw):
    return super_event(5, run, spill, 0, [
        date_event(5, run, spill, 0, ldc=1, gdc=0), date_event(5, run, spill, 0, ldc=2, gdc=0)], **kw)


def eob(run=RUN, spill=SPILL, scalers=SCALERS, **kw):
    eq = equipment(700, scalers, evnum=0, spill=spill, type_=6) if scalers is not None else b""
    return super_event(6, run, spill, 0, [
        date_event(6, run, spill, 0, ldc=1, gdc=0), date_event(6, run, spill, 0, eq, ldc=2, gdc=0)], **kw)


def spill_stream(n=3, replace=None, run=RUN, spill=SPILL, with_eob=True):
    """SOB, physics events 1..n, EOB; ``replace`` maps an event number to its (damaged) bytes."""
    replace = replace or {}
    parts = [sob(run, spill)]
    parts += [replace.get(k, physics_event(k, run=run, spill=spill)) for k in range(1, n + 1)]
    if with_eob:
        parts.append(eob(run, spill))
    return b"".join(parts)


def byte_swap(data: bytes) -> bytes:
    return b"".join(data[i:i + 4][::-1] for i in range(0, len(data), 4))


def without_offset(event):
    return {k: v for k, v in event.items() if k != "offset"}


def addresses(event):
    return [(c["src_id"], c["port"], c["channel"]) for c in event["channels"]]


ALL_ADDRESSES = [(610, 0, 14), (610, 1, 14), (610, 1, 15), (610, 1, 32), (611, 0, 0),
                 (612, 0, 0), (612, 0, 1), (612, 0, 2)] + [(612, 0, c) for c in range(16, 22)]
NO_610 = [a for a in ALL_ADDRESSES if a[0] != 610]
ONLY_LDC1 = [a for a in ALL_ADDRESSES if a[0] == 610]
