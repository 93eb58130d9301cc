"""The roofline-sum latency model and the latency-aware allocation (hand-computed cases and the detector)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.criteria import (LATENCY_MODELS, LatencyModel, allocate, filter_l1, latency_of, latency_per_mac,
                               select_channels)
from compress.depgraph import build_dependency_graph
from compress.detector import Detector, DetectorConfig
from compress.flops import count_flops_params
from compress.pruning import prune_groups

# 1 MAC per second, 1 byte per element, 1 byte per second: seconds = MACs + elements moved.
UNIT = LatencyModel("unit", 1.0, 1.0, 1, "test")


class ExpandDw(nn.Module):
    """conv 3->8 (stride 2) -> BN -> ReLU -> depthwise 3x3 -> BN -> ReLU -> conv 8->4: one prunable group (8)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        return self.c2(torch.relu(self.b2(self.dw(x))))


def test_latency_of_hand_case():
    model = ExpandDw().eval()
    dg = build_dependency_graph(model, 16)
    mods = dict(model.named_modules())
    (g,) = dg.prunable_groups()
    assert g.size == 8
    # 8x8 output everywhere. c1: MACs 64*27*8 = 13824, moves 3*16*16 + 8*64 + 216 = 768 + 512 + 216 = 1496.
    # dw: MACs 64*9*8 = 4608, moves 8*64 + 8*64 + 72 = 1096. c2: MACs 64*8*4 = 2048, moves 512 + 256 + 32 = 800.
    # BN layers move nothing (folded).
    assert latency_of(dg, {}, mods, UNIT) == pytest.approx(13824 + 1496 + 4608 + 1096 + 2048 + 800)
    # keep 4 of 8: c1 6912 + (768 + 256 + 108); dw 2304 + (256 + 256 + 36); c2 1024 + (256 + 256 + 16)
    assert latency_of(dg, {g.gid: 4}, mods, UNIT) == pytest.approx(6912 + 1132 + 2304 + 548 + 1024 + 528)
    # per MAC saved by removing one channel: MACs 64*27 + 64*9 + 64*4 = 2560; moved 64+27 + 64+64+9 + 64+4 = 296
    assert latency_per_mac(dg, mods, UNIT)[g.gid] == pytest.approx((2560 + 296) / 2560)


def test_the_model_converts_units():
    m = LatencyModel("m", macs_per_s=2e9, bytes_per_s=1e9, bytes_per_element=4, source="test")
    assert m.seconds(2e9, 0) == pytest.approx(1.0)
    assert m.seconds(0, 1e9) == pytest.approx(4.0)


def _detector():
    model = Detector(DetectorConfig()).eval()
    dg = build_dependency_graph(model, 320)
    return model, dg, dict(model.named_modules())


def _richness(dg, value=0.5):
    return {g.gid: {"richness": value} for g in dg.prunable_groups()}


def test_depthwise_groups_cost_more_time_per_mac_than_residual_streams():
    model, dg, mods = _detector()
    rho = latency_per_mac(dg, mods, LATENCY_MODELS["ort-cpu"])
    by_producer = {g.producers[0]: rho[g.gid] for g in dg.prunable_groups()}
    # features.2's expansion (96 channels into a stride-2 depthwise at 160x160) against a residual stream at 20x20
    assert by_producer["backbone.features.2.conv.0.0"] > 1.5 * by_producer["backbone.features.11.conv.2"]


def test_latency_target_meets_the_modelled_budget():
    model, dg, mods = _detector()
    lm = LATENCY_MODELS["ort-cpu"]
    counts, info = allocate(dg, mods, "richness", 0.4, "latency", round_to=16, min_channels=16,
                            richness=_richness(dg), latency_model=lm)
    assert 0.4 <= info["modelled_latency_reduction"] < 0.41
    assert info["modelled_latency_reduction"] == pytest.approx(1 - latency_of(dg, counts, mods, lm)
                                                               / latency_of(dg, {}, mods, lm))
    pruned = copy.deepcopy(model)
    prune_groups(pruned, dg, select_channels(filter_l1(dg, mods), counts))
    assert count_flops_params(pruned).macs == info["macs"]


def test_tilt_zero_is_the_plain_allocation_and_a_tilt_buys_modelled_time_at_the_same_flops():
    model, dg, mods = _detector()
    lm = LATENCY_MODELS["ort-cpu"]
    # uneven richness so that the plain allocation is not uniform
    rich = {g.gid: {"richness": (i % 5) / 4} for i, g in enumerate(dg.prunable_groups())}
    plain, pinfo = allocate(dg, mods, "richness", 0.5, round_to=16, min_channels=16, richness=rich)
    zero, zinfo = allocate(dg, mods, "richness", 0.5, round_to=16, min_channels=16, richness=rich,
                           latency_model=lm, latency_tilt=0.0)
    assert zero == plain
    tilted, tinfo = allocate(dg, mods, "richness", 0.5, round_to=16, min_channels=16, richness=rich,
                             latency_model=lm, latency_tilt=1.0)
    assert 0.5 <= tinfo["flops_reduction"] < 0.505
    assert tinfo["modelled_latency_reduction"] > zinfo["modelled_latency_reduction"] + 0.03
    rho = latency_per_mac(dg, mods, lm)
    hot = max(rho, key=rho.get)  # the group whose channels cost the most time per MAC loses more of them
    assert tilted[hot] < plain[hot]


def test_latency_options_are_checked():
    model, dg, mods = _detector()
    with pytest.raises(ValueError, match="latency model"):
        allocate(dg, mods, "richness", 0.5, "latency", richness=_richness(dg))
    with pytest.raises(ValueError, match="latency model"):
        allocate(dg, mods, "richness", 0.5, richness=_richness(dg), latency_tilt=1.0)
    with pytest.raises(ValueError, match="richness and entropy"):
        allocate(dg, mods, "uniform", 0.5, latency_model=LATENCY_MODELS["ort-cpu"], latency_tilt=1.0)
    with pytest.raises(ValueError, match="target kind"):
        allocate(dg, mods, "uniform", 0.5, "seconds")


def test_the_cli_offers_every_latency_model():
    from jetson_compress.commands.prune import LATENCY_MODEL_NAMES

    assert set(LATENCY_MODEL_NAMES) == set(LATENCY_MODELS)


def test_the_cli_offers_every_channel_criterion():
    from compress.prune_pipeline import CHANNEL_CRITERIA
    from jetson_compress.commands.prune import CHANNEL_CRITERION_NAMES

    assert CHANNEL_CRITERION_NAMES == CHANNEL_CRITERIA


def test_capacity_tilt_keeps_parameters_at_the_same_flops():
    """The capacity tilt moves the cut towards the groups that save many MACs per parameter (high resolution):
    the same FLOPs reduction, more parameters kept, and the most parameter-heavy group keeps more channels."""
    from compress.criteria import macs_per_param

    model, dg, mods = _detector()
    rich = {g.gid: {"richness": (i % 5) / 4} for i, g in enumerate(dg.prunable_groups())}
    plain, pinfo = allocate(dg, mods, "richness", 0.5, round_to=8, min_channels=8, richness=rich)
    zero, _ = allocate(dg, mods, "richness", 0.5, round_to=8, min_channels=8, richness=rich, capacity_tilt=0.0)
    assert zero == plain and "capacity_tilt" not in pinfo
    tilted, tinfo = allocate(dg, mods, "richness", 0.5, round_to=8, min_channels=8, richness=rich, capacity_tilt=0.5)
    assert tinfo["capacity_tilt"] == 0.5
    assert 0.5 <= tinfo["flops_reduction"] < 0.51 and 0.5 <= pinfo["flops_reduction"] < 0.51
    assert tinfo["params"] > pinfo["params"] * 1.1
    mu = macs_per_param(dg, mods)
    assert all(v > 0 for v in mu.values())
    low, high = min(mu, key=mu.get), max(mu, key=mu.get)
    assert tilted[low] / dg.groups[low].size > plain[low] / dg.groups[low].size
    assert tilted[high] <= plain[high]
    with pytest.raises(ValueError, match="capacity tilt applies to the richness and entropy"):
        allocate(dg, mods, "uniform", 0.5, capacity_tilt=0.5)
