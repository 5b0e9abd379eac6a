"""The format module: bit layouts pack and unpack, and the generated docs are current."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from na64_online.decoders import layout


@pytest.mark.parametrize("bits", [layout.ADC_HEADER, layout.CHANNEL_HEADER, layout.DATA_WORD, layout.SLINK_WORD0,
                                  layout.SLINK_WORD1, layout.SLINK_WORD2, layout.BURST_EVENT])
def test_fields_tile_the_word_without_overlap(bits):
    used = 0
    for f in bits.fields:
        mask = f.mask << f.shift
        assert used & mask == 0, f.name
        used |= mask
    assert used <= 0xFFFFFFFF


@given(st.integers(0, 0xFFF), st.integers(0, 0xFFF), st.integers(0, 1), st.integers(0, 3), st.integers(0, 7))
def test_adc_header_round_trip(event, size, error, adc_id, port):
    word = layout.ADC_HEADER.pack(event=event, size=size, error=error, adc_id=adc_id, port=port, key=3)
    assert layout.ADC_HEADER.unpack(word) == dict(event=event, size=size, error=error, adc_id=adc_id, port=port,
                                                  key=3)


def test_pack_rejects_overflow_and_unknown_fields():
    with pytest.raises(ValueError):
        layout.ADC_HEADER.pack(port=8)
    with pytest.raises(KeyError):
        layout.ADC_HEADER.pack(colour=1)


def test_spec_constants():
    assert layout.SLINK_WORD2.pack(tcs_error=0x08) == layout.SLINK_WORD2_VALUE == 0x800
    assert layout.trigger_words(0x80000003) == (0x00000006, 1)
    assert layout.ENVELOPE_DTYPE.itemsize == 24


def test_generated_docs_are_current():
    """docs/layout.md is `na64-online format` output; regenerate it when the layout changes."""
    doc = Path(__file__).parents[1] / "docs" / "layout.md"
    assert doc.read_text() == layout.markdown()
