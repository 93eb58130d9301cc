"""The padded-MAC cost model of ``benchmarks/channel_alignment.py`` on a hand-computed network."""
from __future__ import annotations

from torch import nn

from benchmarks.channel_alignment import padded_macs
from compress.flops import count_flops_params


def test_padded_macs_hand_computed():
    # 8x8 input. stem 3->24 3x3 (RGB input is not padded), depthwise 24 3x3, pointwise 24->40 1x1.
    net = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False),
                        nn.Conv2d(24, 40, 1, bias=False))
    hw = 64
    exact = hw * (24 * 3 * 9 + 24 * 9 + 40 * 24)
    assert count_flops_params(net, (1, 3, 8, 8)).macs == exact
    padded16 = hw * (32 * 3 * 9 + 32 * 9 + 48 * 32)
    assert padded_macs(net, 8, 16) == padded16
    padded8 = exact  # 24 and 40 are multiples of 8: nothing to pad
    assert padded_macs(net, 8, 8) == padded8
    aligned = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.Conv2d(32, 48, 1, bias=False))
    assert padded_macs(aligned, 8, 16) == count_flops_params(aligned, (1, 3, 8, 8)).macs
    assert len(net[0]._forward_hooks) == 0  # the hooks are removed again
