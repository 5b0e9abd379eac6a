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


KERNEL_SOURCES = [Path(__file__).parents[1] / "decoders" / name for name in ("_kernels.py", "estimators.py", "_vector.py")]


def _bare_numbers(path: Path) -> list[str]:
    """Every number in ``path`` that should have been a layout name: any hex/octal/binary literal, any
    integer other than 0 and 1 in the kernels, and any literal shift count."""
    import ast
    import io
    import tokenize

    found = []
    source = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NUMBER and tok.string[:2].lower() in ("0x", "0o", "0b"):
            found.append(f"{path.name}:{tok.start[0]}: hex literal {tok.string}")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.RShift)) \
                and isinstance(node.right, ast.Constant):
            found.append(f"{path.name}:{node.lineno}: literal shift by {node.right.value}")
        if path.name == "_kernels.py" and isinstance(node, ast.Constant) and type(node.value) is int \
                and node.value not in (0, 1):
            found.append(f"{path.name}:{node.lineno}: bare integer {node.value}")
    return found


@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernels_take_every_shift_mask_and_offset_from_the_layout(path):
    assert _bare_numbers(path) == []


def test_the_scan_finds_bare_numbers(tmp_path):
    bad = tmp_path / "_kernels.py"
    bad.write_text("def f(w):\n    return (w >> 20) & 0xFFFFF, w[7]\n")
    # the hex mask (as hex and as a bare integer), the shift by 20 (as a shift and an integer), the offset 7
    assert len(_bare_numbers(bad)) == 5


def test_monitor_uses_the_layout_event_types():
    root = Path(__file__).parents[1] / "monitor"
    for path in root.rglob("*.py"):
        for name in layout.EVENT_TYPE_NAMES.values():
            assert f"{name} = " not in path.read_text(), f"{path} redefines {name}: import it from decoders.layout"
