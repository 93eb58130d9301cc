"""Dependency graph and physical pruning: masked equivalence on generated networks and the detector."""
from __future__ import annotations

import copy
import io
import random
import warnings

import onnx
import pytest
import torch

from compress.criteria import allocate, bn_gamma, cost_of, fill_budget, filter_l1, round_channels, select_channels
from compress.depgraph import build_dependency_graph
from compress.detector import Detector, DetectorConfig
from compress.flops import count_flops_params
from compress.pruning import (PlanError, apply_plan_structure, make_plan, masked_model, prune_groups, validate_plan)
from tests.nets import GENERATED, randomise_bn


def _outputs(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _random_keep(dg, rng):
    keep = {}
    for g in dg.prunable_groups():
        k = rng.randint(1, g.size)
        keep[g.gid] = sorted(rng.sample(range(g.size), k))
    return keep


@pytest.mark.parametrize("name", sorted(GENERATED))
@pytest.mark.parametrize("seed", range(5))
def test_masked_equivalence_generated(name, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = randomise_bn(GENERATED[name](), gen).eval()
    dg = build_dependency_graph(model, 32)
    keep = _random_keep(dg, random.Random(seed))
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        ref = _outputs(masked_model(model, dg, keep)(x))
        pruned = copy.deepcopy(model)
        prune_groups(pruned, dg, keep)
        out = _outputs(pruned.eval()(x))
        dense = _outputs(model(x))
    for r, o, d in zip(ref, out, dense):
        assert r.shape == o.shape
        assert (r - o).abs().max().item() <= 1e-5
    # The cut is real: fewer parameters, and (for a non-trivial plan) a different function from the dense model.
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert max((d - o).abs().max().item() for d, o in zip(dense, out)) > 1e-4


def test_groups_of_generated_structures():
    dg = build_dependency_graph(GENERATED["resnet"]().eval(), 32)
    prods = {tuple(sorted(g.producers)) for g in dg.prunable_groups()}
    # The stem and the two blocks of layer1 share one residual stream; likewise 'down' and layer2.
    assert ("layer1.0.b.0", "layer1.1.b.0", "stem.0") in prods
    assert ("down.0", "layer2.0.b.0", "layer2.1.b.0") in prods
    assert not any("fc" in p for ps in prods for p in ps)  # the classifier output reaches the graph output
    dg = build_dependency_graph(GENERATED["mobilenetv2"]().eval(), 32)
    prods = {tuple(sorted(g.producers)) for g in dg.prunable_groups()}
    assert ("blocks.3.conv.2.0", "blocks.4.conv.2.0", "blocks.5.conv.2.0") in prods
    assert ("blocks.1.conv.0.0",) in prods  # expansion channels: one group with their depthwise conv
    dg = build_dependency_graph(GENERATED["neck"]().eval(), 64)
    prods = {tuple(sorted(g.producers)) for g in dg.prunable_groups()}
    assert ("bu4.0", "td4.0") in prods  # the add couples n4 with p4


def test_detector_groups_and_masked_equivalence():
    gen = torch.Generator().manual_seed(0)
    model = randomise_bn(Detector(DetectorConfig()), gen).eval()
    dg = build_dependency_graph(model, 96)
    groups = dg.prunable_groups()
    assert len(groups) == 43
    streams = sorted(len(g.producers) for g in groups)
    assert streams[-5:] == [2, 3, 3, 3, 4]  # residual streams: 24 (2 blocks), 32, 96, 160 (3 each), 64 (4)
    frozen = [g for g in dg.groups.values() if not g.prunable and g.size > 0]
    assert sorted(g.frozen_reason for g in frozen).count("reaches a graph output") == 3
    keep = _random_keep(dg, random.Random(0))
    x = torch.randn(1, 3, 96, 96, generator=gen)
    with torch.no_grad():
        ref = masked_model(model, dg, keep)(x)
        pruned = copy.deepcopy(model)
        prune_groups(pruned, dg, keep)
        out = pruned(x)
    for r, o in zip(ref, out):
        assert (r - o).abs().max().item() <= 1e-5


def test_cost_model_matches_counted_flops_and_allocation_meets_target():
    model = Detector(DetectorConfig()).eval()
    dg = build_dependency_graph(model, 320)
    mods = dict(model.named_modules())
    macs, params = cost_of(dg, {}, mods)
    counted = count_flops_params(model)
    assert (macs, params) == (counted.macs, counted.params)
    for method in ("uniform", "bn"):
        counts, info = allocate(dg, mods, method, 0.5, bn_scores=bn_gamma(dg, mods))
        assert 0.5 <= info["flops_reduction"] < 0.505  # rounding's leftover is filled back in
        assert all(c % 8 == 0 and c >= 8 for c in counts.values())
        pruned = copy.deepcopy(model)
        prune_groups(pruned, dg, select_channels(filter_l1(dg, mods), counts))
        assert count_flops_params(pruned).macs == info["macs"]
    with pytest.raises(ValueError, match="target"):
        allocate(dg, mods, "uniform", 1.5)


def test_allocation_rounded_to_16_lands_on_the_target():
    model = Detector(DetectorConfig()).eval()
    dg = build_dependency_graph(model, 320)
    mods = dict(model.named_modules())
    sizes = {g.gid: g.size for g in dg.prunable_groups()}
    for method in ("uniform", "bn"):
        for target in (0.5, 0.7):
            counts, info = allocate(dg, mods, method, target, round_to=16, min_channels=16,
                                    bn_scores=bn_gamma(dg, mods))
            assert target <= info["flops_reduction"] < target + 0.005, (method, target, info["flops_reduction"])
            assert all(c % 16 == 0 or c == sizes[g] for g, c in counts.items())


def test_keep_whole_groups_keep_every_channel_and_the_rest_meet_the_target():
    from compress.prune_pipeline import groups_of

    model = Detector(DetectorConfig()).eval()
    dg = build_dependency_graph(model, 320)
    mods = dict(model.named_modules())
    whole = groups_of(dg, ["backbone.features.2.conv.2", "backbone.features.4.conv.2"])
    sizes = {g.gid: g.size for g in dg.prunable_groups()}
    assert [sizes[g] for g in whole] == [24, 32]  # the stride-4 and stride-8 residual streams
    free, _ = allocate(dg, mods, "uniform", 0.7, round_to=16, min_channels=16)
    assert [free[g] for g in whole] == [16, 16]  # without the option both are cut by a third / a half
    counts, info = allocate(dg, mods, "uniform", 0.7, round_to=16, min_channels=16, keep_whole=whole)
    assert [counts[g] for g in whole] == [24, 32]
    assert 0.7 <= info["flops_reduction"] < 0.705
    # the others pay for it: none grows, some shrink
    others = [g for g in sizes if g not in whole]
    assert all(counts[g] <= free[g] for g in others) and any(counts[g] < free[g] for g in others)
    with pytest.raises(ValueError, match="not the producer of a prunable channel group.*backbone.features.2.conv"):
        groups_of(dg, ["backbone.features.2.conv"])
    with pytest.raises(ValueError, match="not prunable"):
        allocate(dg, mods, "uniform", 0.7, keep_whole=[10 ** 6])


def test_fine_streams_alias_names_the_stride_4_and_8_residual_streams():
    from benchmarks.finetune_budget import FINE_STREAMS
    from compress.prune_pipeline import expand_keep_whole

    for width in (1.0, 0.5):
        model = Detector(DetectorConfig(width_mult=width))
        assert expand_keep_whole(model, ["fine-streams"]) == FINE_STREAMS == [
            "backbone.features.2.conv.2", "backbone.features.4.conv.2"]
    assert model.backbone.residual_streams(32) == [f"features.{i}.conv.2" for i in (2, 4, 7, 11, 14)]
    assert expand_keep_whole(model, ["backbone.features.4.conv.2", "fine-streams", "neck.lateral3.0"]) == [
        "backbone.features.4.conv.2", "backbone.features.2.conv.2", "neck.lateral3.0"]


def test_fill_budget_hand_case():
    # cost = total channels, budget 80; rounding left {0: 32, 1: 16} against the wish {0: 40, 1: 20}.
    # Step 1: group 0 is furthest below its wish (-8/64 vs -4/64) -> 48 (cost 64). Step 2: group 1 (-4/64 vs
    # +8/64) -> 32 (cost 80). Step 3: any further 16 channels cost 96 > 80: stop.
    out = fill_budget({0: 32, 1: 16}, {0: 40.0, 1: 20.0}, {0: 64, 1: 64}, 16, lambda c: sum(c.values()), 80)
    assert out == {0: 48, 1: 32}
    # a group already at full size is never grown; nothing fits -> unchanged
    assert fill_budget({0: 64, 1: 16}, {0: 64.0, 1: 60.0}, {0: 64, 1: 64}, 16, lambda c: sum(c.values()), 90) \
        == {0: 64, 1: 16}


def test_round_channels():
    assert round_channels(37.0, 96, 8, 8) == 40
    assert round_channels(2.0, 96, 8, 8) == 8
    assert round_channels(200.0, 96, 8, 8) == 96
    assert round_channels(3.4, 5, 8, 1) == 3


def test_plan_survives_onnx_export_and_rebuilds_structure():
    model = Detector(DetectorConfig()).eval()
    dg = build_dependency_graph(model, 96)
    keep = _random_keep(dg, random.Random(1))
    pruned = copy.deepcopy(model)
    layers = prune_groups(pruned, dg, keep)
    plan = make_plan({}, layers, dg, keep, "test", {"kind": "flops", "reduction": 0.5}, 8, {})
    validate_plan(plan)
    # Plan keys are module paths; the TorchScript exporter keeps them in initializer names.
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is the design's choice (dynamo=False): no nagging
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 3, 96, 96), buf, opset_version=13, dynamo=False,
                          do_constant_folding=False)
    inits = {i.name for i in onnx.load_from_string(buf.getvalue()).graph.initializer}
    convs = [n for n, s in plan["layers"].items() if s["kind"] in ("conv", "dwconv")]
    assert convs and all(f"{n}.weight" in inits for n in convs)
    # A fresh dense model given the plan's structure loads the pruned weights exactly.
    rebuilt = apply_plan_structure(Detector(DetectorConfig()), plan)
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.eval()(x), pruned(x)))


def test_bad_plans_rejected():
    model = Detector(DetectorConfig()).eval()
    dg = build_dependency_graph(model, 64)
    g = dg.prunable_groups()[0]
    with pytest.raises(PlanError, match="sorted"):
        prune_groups(copy.deepcopy(model), dg, {g.gid: [3, 1]})
    frozen = next(x for x in dg.groups.values() if not x.prunable and x.size > 0)
    with pytest.raises(PlanError, match="not prunable"):
        prune_groups(copy.deepcopy(model), dg, {frozen.gid: [0]})
    with pytest.raises(PlanError, match="prune plan"):
        validate_plan({"layers": {}})
    other = {"format": "jetson-compress-prune-plan", "format_version": 1,
             "layers": {"neck.nosuch": {"kind": "conv", "in": 1, "out": 1, "keep_in": None, "keep_out": None}}}
    with pytest.raises(PlanError, match="neck.nosuch"):
        apply_plan_structure(Detector(DetectorConfig()), other)
