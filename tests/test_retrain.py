"""Retraining methods: grafting (M2) numbers, distillation, adversarial selection (M3), and each method running on
a tiny detector for a couple of steps."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from compress.flops import count_flops_params
from compress.layer_pruning import convert_to_resconv, find_eligible
from compress.retrain import (FeatureAdapters, compose_layer_plans, distill_loss, finetune, forward_with_features,
                              graft, graft_alpha, graft_units, pareto_front, select_candidate, weight_entropy)
from compress.voc import VOCDataset
from tests.nets import random_detector, randomise_bn, tiny_config

TINY = tiny_config(64)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    return random_detector(TINY, seed)[0]


def test_alpha_formula_values():
    assert graft_alpha(1.3, 1.3) == 0.5
    assert abs(graft_alpha(2.001, 2.0) - (0.4 * math.atan(0.5) + 0.5)) < 1e-9  # 0.68546...
    assert abs(graft_alpha(2.0, 2.001) - (0.5 - 0.4 * math.atan(0.5))) < 1e-9
    assert abs(graft_alpha(3.0, 1.0, clip=False) - (0.5 + 0.4 * math.atan(1000.0))) < 1e-12  # 1.1279...
    assert graft_alpha(3.0, 1.0) == 1.0 and graft_alpha(1.0, 3.0) == 0.0
    assert abs(graft_alpha(1.0, 1.002, A=0.2, c=100) - (0.5 + 0.2 * math.atan(-0.2))) < 1e-12


def test_weight_entropy_values():
    assert weight_entropy(torch.full((50,), 0.3)) == 0.0
    assert abs(weight_entropy(torch.tensor([0.0, 1.0] * 20)) - math.log(2)) < 1e-12
    uniform = torch.arange(100, dtype=torch.float32)  # 10 values in each of 10 bins
    assert abs(weight_entropy(uniform, bins=10) - math.log(10)) < 1e-9


def test_graft_alpha_one_keeps_w1_exactly_and_joint_bn():
    m1 = _model(1)
    m2 = copy.deepcopy(m1)
    s1_before = {k: v.clone() for k, v in m1.state_dict().items()}
    # Same conv weights, different BN: every alpha is 0.5 and the BNs are averaged (joint grafting).
    gen = torch.Generator().manual_seed(9)
    randomise_bn(m2, gen)
    alphas = graft(m1, m2, adaptive=False)
    assert set(alphas.values()) == {0.5}
    s1, s2 = m1.state_dict(), m2.state_dict()
    for k in s1:
        if k.endswith(("running_mean", "running_var")) or (k.endswith((".weight", ".bias")) and s1[k].dim() == 1):
            assert torch.allclose(s1[k], 0.5 * s1_before[k] + 0.5 * s2[k], atol=1e-7), k
        elif s1[k].dim() == 4:
            assert torch.equal(s1[k], s1_before[k]), k
    # Second network with two-valued (low-entropy) weights: alpha = clip(1.13) = 1, W1 is kept bit for bit.
    m1 = _model(2)
    m2 = copy.deepcopy(m1)
    with torch.no_grad():
        for m in m2.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.sign(torch.randn_like(m.weight)))
    before = {k: v.clone() for k, v in m1.state_dict().items()}
    alphas = graft(m1, m2, adaptive=False)
    assert all(a == 1.0 for a in alphas.values())
    assert all(torch.equal(before[k], v) for k, v in m1.state_dict().items())
    # The other way round (alpha = 0): W1 becomes W2 exactly.
    m3, ref = copy.deepcopy(m2), _model(2)
    graft(m3, ref, adaptive=False)
    s3, sr = m3.state_dict(), ref.state_dict()
    assert all(torch.equal(s3[t], sr[t]) for _, tensors in graft_units(m3) for t in tensors)


def test_adaptive_grafting_strength():
    m1, m2 = _model(3), _model(4)
    plain = graft(copy.deepcopy(m1), m2, adaptive=False)
    adapt = graft(copy.deepcopy(m1), m2, adaptive=True, g_min=0.25)
    h = {n: weight_entropy(m1.state_dict()[n + ".weight"]) for n in plain}
    richest, poorest = max(h, key=h.get), min(h, key=h.get)
    # The most informative layer is grafted with the minimum strength, the least informative one fully.
    assert abs(adapt[richest] - (1 - 0.25 * (1 - plain[richest]))) < 1e-12
    assert abs(adapt[poorest] - plain[poorest]) < 1e-12


def test_graft_units_are_joint():
    m = _model(0)
    convert_to_resconv(m, ["neck.down3.pw"])
    units = dict(graft_units(m))
    assert units["neck.down3.pw.0"] == ["neck.down3.pw.0.weight", "neck.down3.pw.1.weight", "neck.down3.pw.1.bias",
                                        "neck.down3.pw.1.running_mean", "neck.down3.pw.1.running_var",
                                        "neck.down3.pw.scale"]
    assert units["heads.0.pred"] == ["heads.0.pred.weight", "heads.0.pred.bias"]


def test_distillation_loss_zero_for_identical_models():
    m = _model(5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs, feats = forward_with_features(m, x)
        loss, parts = distill_loss(outs, outs, 1, feats, feats)
    assert float(loss) == 0.0 and parts == {"kd_cls": 0.0, "kd_box": 0.0, "kd_feat": 0.0}
    other = _model(6)
    with torch.no_grad():
        o2, f2 = forward_with_features(other, x)
        loss2, _ = distill_loss(o2, outs, 1, f2, feats)
    assert float(loss2) > 1e-3
    ad = FeatureAdapters([16, 8], [16, 24])
    assert isinstance(ad.maps[0], nn.Identity) and ad.maps[1].weight.shape == (24, 8, 1, 1)


def test_pareto_selection_hand_made_table():
    table = [
        {"name": "a", "channels": 400, "accuracy": 0.700, "flops": 10},
        {"name": "b", "channels": 360, "accuracy": 0.702, "flops": 9},   # dominates a
        {"name": "c", "channels": 300, "accuracy": 0.690, "flops": 8},
        {"name": "d", "channels": 300, "accuracy": 0.680, "flops": 8},   # dominated by c
        {"name": "e", "channels": 200, "accuracy": 0.600, "flops": 5},
        {"name": "f", "channels": 250, "accuracy": 0.550, "flops": 6},   # dominated by e
    ]
    assert [c["name"] for c in pareto_front(table)] == ["e", "c", "b"]
    assert select_candidate(table)["name"] == "b"  # most accurate on the front
    assert select_candidate(table, tolerance=0.015)["name"] == "c"  # fewest channels within 1.5 points of best
    assert select_candidate(table, max_channels=320)["name"] == "c"  # the budget excludes a and b
    assert select_candidate(table, max_flops=5)["name"] == "e"
    with pytest.raises(ValueError, match="budget"):
        select_candidate(table, max_channels=100)


def test_compose_layer_plans():
    first = {"c": {"kind": "conv", "in": 8, "out": 16, "keep_in": [0, 2, 4, 6], "keep_out": None},
             "b": {"kind": "bn", "in": 16, "out": 16, "keep_in": None, "keep_out": [1, 3, 5, 7, 9, 11]}}
    second = {"c": {"kind": "conv", "in": 4, "out": 16, "keep_in": [1, 3], "keep_out": [0, 15]},
              "b": {"kind": "bn", "in": 6, "out": 6, "keep_in": None, "keep_out": [0, 5]},
              "new": {"kind": "conv", "in": 3, "out": 3, "keep_in": None, "keep_out": [2]}}
    out = compose_layer_plans(first, second)
    assert out["c"]["keep_in"] == [2, 6] and out["c"]["keep_out"] == [0, 15] and out["c"]["in"] == 8
    assert out["b"]["keep_out"] == [1, 11] and out["b"]["out"] == 16
    assert out["new"]["keep_out"] == [2]


@pytest.fixture(scope="module")
def train_set(voc_sample):
    return VOCDataset(voc_sample, "trainval", ["person"])


CFG = {"batch_size": 2, "lr": 1e-3, "freeze_blocks": 2, "seed": 0, "mosaic_prob": 0.0}


@pytest.mark.parametrize("method", ["plain", "graft", "distill"])
def test_each_method_runs_and_changes_weights(method, train_set):
    teacher = _model(7)
    student = copy.deepcopy(teacher)
    before = copy.deepcopy(student.state_dict())
    res = finetune(student, train_set, CFG, method, teacher=teacher, steps=2,
                   options={"graft_every": 1}, log=lambda s: None)
    assert res["info"]["steps"] == 2 and res["model"] is student
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert not student.training and all(p.requires_grad for p in student.parameters())
    if method == "graft":
        assert len(res["info"]["alphas"]) == 2 and all(0.0 <= a <= 1.0 for a in res["info"]["alphas"])


def test_backbone_lr_mult_scales_the_backbone_step(train_set):
    """The fine-tune honours train.backbone_lr_mult as training does: Adam's first step moves each weight by the
    group's learning rate (g / |g|), so with weight decay off the unfrozen backbone moves by 0.1 x lr at most and
    the neck and heads by lr."""
    model = _model(3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = dict(CFG, lr=1e-3, weight_decay=0.0, backbone_lr_mult=0.1)
    finetune(model, train_set, cfg, "plain", steps=1, log=lambda s: None)
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    backbone = [v for n, v in moved.items() if n.startswith("backbone.") and v > 0]
    rest = [v for n, v in moved.items() if not n.startswith("backbone.")]
    assert backbone and max(backbone) == pytest.approx(1e-4, rel=1e-3)
    assert max(rest) == pytest.approx(1e-3, rel=1e-3)
    frozen = [n for n in moved if n.startswith(("backbone.features.0.", "backbone.features.1."))]
    assert frozen and all(moved[n] == 0.0 for n in frozen)


def test_adversarial_selects_a_candidate(train_set):
    teacher = _model(8)
    student = copy.deepcopy(teacher)
    convert_to_resconv(student, find_eligible(student, torch.zeros(1, 3, 64, 64))[:3])  # works on layer models too
    x = torch.randn(4, 3, 64, 64)

    def accuracy(cand):  # a deterministic proxy: minus the alignment loss to the teacher
        with torch.no_grad():
            return -float(distill_loss(cand.raw_outputs(x), teacher.raw_outputs(x), 1)[0])

    res = finetune(student, train_set, CFG, "adversarial", teacher=teacher, steps=2,
                   options={"candidate_quantiles": (0.0, 0.3, 0.6), "tolerance": 1.0}, accuracy_fn=accuracy,
                   log=lambda s: None)
    cands = res["candidates"]
    assert len(cands) >= 2 and cands[0]["threshold"] == 0.0
    assert cands[0]["channels"] > cands[-1]["channels"]
    # With a tolerance of a whole loss unit the fewest-channel Pareto candidate is chosen.
    front = pareto_front(cands)
    assert res["chosen"]["channels"] == min(c["channels"] for c in front)
    cost = count_flops_params(res["model"], (1, 3, 64, 64))
    assert cost.flops == res["chosen"]["flops"]
    with pytest.raises(ValueError, match="teacher"):
        finetune(copy.deepcopy(teacher), train_set, CFG, "distill", steps=1)
