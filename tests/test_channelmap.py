"""Channel map loading: the packaged default, user maps, and clear errors for bad ones."""

from __future__ import annotations

import numpy as np
import pytest

from na64_online.decoders.channelmap import ECAL, HCAL, ChannelMap
from na64_online.errors import ChannelMapError

HEADER = "src_id,port,channel,detector,module,x,y,gain_gev\n"


def test_default_map(channel_map):
    assert len(channel_map) == 120
    assert len(channel_map.slots(ECAL)) == 72 and len(channel_map.slots(HCAL)) == 36
    slot = channel_map.lookup[ChannelMap.address(610, 1, 14)]
    assert channel_map.describe(int(slot)) == {"detector": "ECAL", "module": 1, "x": 2, "y": 2, "src_id": 610,
                                               "port": 1, "channel": 14}
    assert channel_map.lookup[ChannelMap.address(610, 7, 63)] == -1
    assert not channel_map.gain_gev.flags.writeable


@pytest.mark.parametrize("body, message", [
    ("", "no channels"),
    ("610,0,0,ECAL,0,0,0\n", "expected 8 columns"),
    ("610,0,x,ECAL,0,0,0,0.1\n", "invalid literal"),
    ("610,9,0,ECAL,0,0,0,0.1\n", "port 9"),
    ("610,0,64,ECAL,0,0,0,0.1\n", "channel 64"),
    ("2000,0,0,ECAL,0,0,0,0.1\n", "src_id 2000"),
    ("700,0,0,ECAL,0,0,0,0.1\n", "src_id 700"),
    ("610,0,0,PIXEL,0,0,0,0.1\n", "detector 'PIXEL'"),
    ("610,0,0,ECAL,0,0,0,-1\n", "gain_gev"),
    ("610,0,0,ECAL,0,0,0,nan\n", "gain_gev"),
    ("610,0,0,ECAL,0,0,0,0.1\n610,0,0,ECAL,0,1,0,0.1\n", "already mapped on line 2"),
])
def test_bad_maps_name_the_line(tmp_path, body, message):
    path = tmp_path / "map.csv"
    path.write_text(HEADER + body)
    with pytest.raises(ChannelMapError, match=message):
        ChannelMap.load(path)


def test_wrong_header_and_unreadable_files(tmp_path):
    with pytest.raises(ChannelMapError, match="first line"):
        ChannelMap.from_csv_text("a,b,c\n")
    with pytest.raises(ChannelMapError, match="cannot read"):
        ChannelMap.load(tmp_path / "missing.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ChannelMapError):
        ChannelMap.load(binary)


def test_user_map_with_other_gains(tmp_path, channel_map):
    text = HEADER + "610,1,14,ECAL,1,2,2,0.5\n"
    m = ChannelMap.from_csv_text(text)
    assert len(m) == 1 and m.gain_gev[0] == 0.5
    assert np.array_equal(m.src_kind[[610, 611, 700, 701]], [1, 0, 2, 3])
