"""Shared fixtures. The tests folder is importable (reference decoder, spec encoder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
VECTORS = TESTS / "data" / "vectors"


@pytest.fixture(scope="session")
def channel_map():
    from na64_online.decoders.channelmap import ChannelMap

    return ChannelMap.default()


@pytest.fixture(scope="session")
def ref_map():
    import reference_decoder

    return reference_decoder.load_channel_map(reference_decoder.DEFAULT_MAP_PATH)
