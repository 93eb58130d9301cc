"""Layer pruning (M5): ResConv conversion, function preservation, L1 on layer scales, selection, exact removal,
plan + checkpoint round trip, depth + width under one target, and ``jetson-compress prune --method layer``."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from compress.checkpoint import load_model, save_checkpoint
from compress.detector import Detector
from compress.flops import count_flops_params
from compress.fusion import fuse_model
from compress.layer_pruning import (LayerPruningError, LayerScaleL1, ResConv, ScaledInvertedResidual,
                                    apply_layer_structure, convert_to_resconv, count_layers, find_eligible,
                                    layer_table, preserve_function, remove_layers, scaled_layers, select_layers)
from compress.prune_pipeline import layer_prune_detector
from compress.pruning import PlanError, apply_plan_structure, validate_plan
from tests.nets import random_detector, run_cli, tiny_config

SMALL = tiny_config(96)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    return random_detector(SMALL, seed)


def _maxdiff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_eligible_layers_of_the_detector():
    model, _ = _model()
    names = find_eligible(model, torch.zeros(1, 3, 96, 96))
    blocks = [n for n in names if isinstance(model.get_submodule(n), nn.Module) and n.count(".") == 2
              and n.startswith("backbone.features.")]
    # Shortcut blocks of MobileNetV2: features 3, 5, 6, 8, 9, 10, 12, 13, 15, 16.
    assert blocks == [f"backbone.features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]
    dw = [n for n in names if n.endswith(".conv.1") or n.endswith(".conv.0")]
    assert len(dw) == 13  # the stride-1 depthwise convs (features 1 has no expansion: its dw is conv.0)
    neck = [n for n in names if n.startswith("neck.")]
    assert neck == ["neck.top_down4.dw", "neck.top_down4.project", "neck.top_down3.dw", "neck.top_down3.project",
                    "neck.down3.pw", "neck.bottom_up4.dw", "neck.bottom_up4.project", "neck.down4.pw",
                    "neck.bottom_up5.dw", "neck.bottom_up5.project"]
    assert len([n for n in names if n.startswith("heads.")]) == 12
    assert len(names) == 10 + 13 + 10 + 12
    # Not eligible: channel-changing or strided convs, the prediction convs, and neck.lateral3 (16 -> 16 here) whose
    # input is a linear block output, on which ReLU6 is not the identity (removal would not be exact).
    assert "neck.lateral3" not in names and "neck.down3.dw" not in names and "backbone.features.2" not in names
    with pytest.raises(LayerPruningError, match="neck.lateral4"):
        convert_to_resconv(copy.deepcopy(model), ["neck.lateral4"])
    with pytest.raises(LayerPruningError, match="backbone.features.2"):
        convert_to_resconv(copy.deepcopy(model), ["backbone.features.2"])


def test_conversion_preserves_the_function():
    model, gen = _model(1)
    x = torch.randn(2, 3, 96, 96, generator=gen)
    calib = torch.randn(6, 3, 96, 96, generator=gen)
    conv = copy.deepcopy(model)
    names = find_eligible(conv, x[:1])
    convert_to_resconv(conv, names)
    assert len(scaled_layers(conv)) == len(names) == 45
    preserve_function(conv, calib)
    with torch.no_grad():
        ref, out = model(x), conv(x)
    assert _maxdiff(ref, out) <= 1e-5 * max(1.0, max(r.abs().max().item() for r in ref))
    # The state dict keeps every original key (plus one scale per layer): names in plans and ONNX don't move.
    assert set(model.state_dict()) <= set(conv.state_dict())
    assert len(set(conv.state_dict()) - set(model.state_dict())) == 45
    # Train-mode BN of a ResConv starts at the calibration statistics: its output mean is the eval one.
    rc = conv.get_submodule("neck.top_down4.project")
    assert isinstance(rc, ResConv) and rc.scale.item() == 1.0


def test_removing_a_zero_scale_layer_is_exact():
    model, gen = _model(2)
    convert_to_resconv(model, find_eligible(model, torch.zeros(1, 3, 96, 96)))
    chosen = ["backbone.features.6", "backbone.features.11.conv.1", "neck.down3.pw", "heads.1.dw2"]
    with torch.no_grad():
        for n in chosen:
            model.get_submodule(n).scale.zero_()
    x = torch.randn(2, 3, 96, 96, generator=gen)
    pruned = copy.deepcopy(model)
    assert remove_layers(pruned, chosen) == sorted(chosen, key=lambda n: (n.count("."), n))
    with torch.no_grad():
        assert _maxdiff(model(x), pruned(x)) == 0.0
    assert count_layers(model) - count_layers(pruned) == 3 + 1 + 1 + 1
    macs = count_flops_params(model, (1, 3, 96, 96)).macs - count_flops_params(pruned, (1, 3, 96, 96)).macs
    table = {r["name"]: r["macs"] for r in layer_table(model, 96)}
    assert macs == sum(table[n] for n in chosen)
    with pytest.raises(LayerPruningError, match="neck.lateral4"):
        remove_layers(pruned, ["neck.lateral4"])
    with pytest.raises(LayerPruningError, match="neck.nosuch"):
        remove_layers(pruned, ["neck.nosuch"])


def test_layer_scale_l1_and_sparsity_steps():
    model, _ = _model(3)
    convert_to_resconv(model, find_eligible(model, torch.zeros(1, 3, 96, 96)))
    pen = LayerScaleL1(model, 96, lam=0.01)
    with torch.no_grad():
        for i, m in enumerate(scaled_layers(model).values()):
            m.scale.fill_(0.5 - 0.02 * i)
    expected = 0.01 * sum(pen.weight[n] * abs(m.scale.item()) for n, m in scaled_layers(model).items())
    assert abs(float(pen(model).detach()) - expected) <= 1e-6 * expected
    assert abs(sum(pen.weight.values()) / len(pen.weight) - 1.0) < 1e-9  # weights are relative to the mean
    flat = LayerScaleL1(model, 96, lam=0.01, flops_weighted=False)
    assert set(flat.weight.values()) == {1.0}
    scales = [m.scale for m in scaled_layers(model).values()]
    before = [abs(float(s.detach())) for s in scales]
    opt = torch.optim.SGD(scales, lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        flat(model).backward()
        opt.step()
    after = [abs(float(s.detach())) for s in scales]
    # L1 alone: every |s| shrinks by exactly lr * lam per step until it crosses zero.
    assert all(abs(b - a - 5 * 0.5 * 0.01) < 1e-6 for a, b in zip(after, before) if b > 0.03)


def test_select_layers_hand_made_table():
    table = [
        {"name": "b.1", "score": 0.01, "macs": 100},
        {"name": "b.1.conv.1", "score": 0.001, "macs": 30},
        {"name": "n.dw", "score": 0.05, "macs": 50},
        {"name": "h.pw", "score": 0.5, "macs": 400},
        {"name": "h.dw", "score": 0.02, "macs": 10},
    ]
    assert select_layers(table, threshold=0.03) == ["b.1", "h.dw"]  # the nested layer goes with its block
    assert select_layers(table, macs_to_save=100) == ["b.1"]  # 30 (inner) then the block: 100 in all
    assert select_layers(table, macs_to_save=120) == ["b.1", "h.dw", "n.dw"]
    with pytest.raises(LayerPruningError, match="lower the target"):
        select_layers(table, macs_to_save=10_000)
    with pytest.raises(LayerPruningError, match="exactly one"):
        select_layers(table)


def _plan_roundtrip(tmp_path, result, x):
    pruned, plan = result["model"], result["plan"]
    validate_plan(plan)
    assert plan["format_version"] == 2
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, pruned, ["person"], extra={"prune_plan": json.loads(json.dumps(plan))})
    loaded, ckpt = load_model(path)
    with torch.no_grad():
        assert _maxdiff(pruned(x), loaded(x)) == 0.0
    cost = count_flops_params(loaded, (1, 3, 96, 96))
    assert cost.flops == plan["achieved"]["flops"] and cost.params == plan["achieved"]["params"]
    return loaded


def test_layer_method_end_to_end(tmp_path):
    model, gen = _model(4)
    calib = torch.randn(8, 3, 96, 96, generator=gen)
    x = torch.randn(2, 3, 96, 96, generator=gen)
    res = layer_prune_detector(model, "layer", 0.2, calib, log=lambda s: None)
    pruned, plan = res["model"], res["plan"]
    assert plan["achieved"]["flops_reduction"] >= 0.2
    assert plan["layers"] == {} and plan["removed_layers"]
    n_removed_convs = count_layers(model) - count_layers(pruned)
    assert n_removed_convs == sum(sum(isinstance(m, nn.Conv2d) for m in model.get_submodule(n).modules())
                                  for n in plan["removed_layers"])
    # Physically smaller, and the kept layers are still ResConvs with their scales.
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(isinstance(pruned.get_submodule(n), (ResConv, ScaledInvertedResidual)) for n in plan["resconv_layers"])
    loaded = _plan_roundtrip(tmp_path, res, x)
    fused = fuse_model(loaded)
    with torch.no_grad():
        assert _maxdiff(loaded(x), fused(x)) <= 1e-5 * max(1.0, max(r.abs().max().item() for r in loaded(x)))
    from export.onnx_export import export_onnx

    import onnx

    export_onnx(fused, tmp_path / "layer.onnx", 96, opset=13)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "layer.onnx")).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == count_layers(pruned)


def test_layer_plus_richness_one_target(tmp_path):
    model, gen = _model(5)
    calib = torch.randn(8, 3, 96, 96, generator=gen)
    x = torch.randn(2, 3, 96, 96, generator=gen)
    res = layer_prune_detector(model, "layer+richness", 0.5, calib, layer_share=0.4, log=lambda s: None)
    plan = res["plan"]
    a = plan["achieved"]
    assert 0.2 <= a["layer_flops_reduction"] < 0.5  # ~40% of the target by depth, overshoot of one layer allowed
    assert 0.45 <= a["flops_reduction"] <= 0.62
    assert plan["layers"] and plan["removed_layers"] and plan["method"] == "layer+richness"
    _plan_roundtrip(tmp_path, res, x)


def test_plan_layer_fields_validated():
    plan = {"format": "jetson-compress-prune-plan", "format_version": 1, "layers": {},
            "removed_layers": ["neck.down3.pw"]}
    with pytest.raises(PlanError, match="format_version 2"):
        validate_plan(plan)
    plan["format_version"] = 2
    validate_plan(plan)
    with pytest.raises(PlanError, match="resconv_layers"):
        validate_plan(dict(plan, resconv_layers=[3]))
    with pytest.raises(PlanError, match="neck.lateral4"):
        apply_plan_structure(Detector(SMALL), dict(plan, removed_layers=["neck.lateral4"]))
    m = apply_layer_structure(Detector(SMALL), dict(plan, resconv_layers=["neck.down3.pw", "heads.0.dw1"]))
    assert isinstance(m.neck.down3.pw, nn.Identity) and isinstance(m.heads[0].dw1, ResConv)


def test_prune_cli_layer_method(tmp_path, voc_sample):
    ckpt = tmp_path / "base.pt"
    model = Detector(tiny_config(64)).eval()
    save_checkpoint(ckpt, model, ["person"])
    out = tmp_path / "layer"
    rc, stdout, err = run_cli(["prune", "--checkpoint", str(ckpt), "--data", str(voc_sample), "--method", "layer",
                            "--target-flops", "0.3", "--calibration-images", "4", "--no-eval",
                            "--finetune", "distill", "--finetune-seconds", "2", "--set", "train.batch_size=2",
                            "--out", str(out)])
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flops_reduction"] >= 0.3 and metrics["layers_removed"] > 0
    assert metrics["retrain"]["method"] == "distill" and metrics["retrain"]["steps"] >= 1
    loaded, ck = load_model(out / "pruned.pt")
    assert count_flops_params(loaded, (1, 3, 64, 64)).flops == ck["prune_plan"]["achieved"]["flops"]
    rc, _, err = run_cli(["prune", "--checkpoint", str(ckpt), "--data", str(voc_sample), "--method", "layer",
                       "--target-params", "0.3", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "FLOPs target" in err
    rc, _, err = run_cli(["prune", "--checkpoint", str(ckpt), "--data", str(voc_sample), "--finetune", "graft",
                       "--out", str(tmp_path / "bad2")])
    assert rc == 2 and "--finetune-epochs or --finetune-seconds" in err


def test_sparsity_training_of_layer_scales(tmp_path, voc_sample):
    from compress.voc import VOCDataset

    model, gen = random_detector(tiny_config(64), 6)
    train_set = VOCDataset(voc_sample, "trainval", ["person"])
    calib = torch.randn(4, 3, 64, 64, generator=gen)
    res = layer_prune_detector(model, "layer", 0.15, calib, train_set=train_set, out_dir=tmp_path,
                               sparsity_epochs=1, layer_lambda=0.05, layer_score="scale",
                               train_cfg={"batch_size": 2, "lr": 0.05, "freeze_blocks": 0, "mosaic_prob": 0.0,
                                          "ema_decay": 0.0},
                               log=lambda s: None)
    table = res["table"]
    # Three AdamW steps of lr 0.05 with the L1 push: every trainable scale left 1.0 downwards.
    assert len(table) == 45 and all(r["scale"] < 0.999 for r in table)
    assert res["info"]["sparsity_seconds"] > 0
    removed = res["plan"]["removed_layers"]
    kept = [r["scale"] for r in table if not any(r["name"] == n or r["name"].startswith(n + ".") for n in removed)]
    assert max(r["scale"] for r in table if r["name"] in removed) <= min(kept) + 1e-9  # lowest |s| removed first
    assert res["plan"]["achieved"]["flops_reduction"] >= 0.15
