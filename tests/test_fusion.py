"""Exact fusion (M6): conv-BN folding and ResConv -> one conv, on random layers and on the detector, and the
exported ONNX of a fused model (no BatchNormalization, no extra Add per ResConv)."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from compress.detector import Detector
from compress.fusion import FusionError, fold_conv_bn, fuse_model, fuse_resconv
from compress.layer_pruning import (ResConv, ScaledInvertedResidual, convert_to_resconv, find_eligible,
                                    remove_layers, scaled_layers)
from compress.mobilenetv2 import InvertedResidual
from tests.nets import random_detector, randomise_bn, tiny_config

SMALL = tiny_config(96)


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_scales(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in scaled_layers(model).values():
            m.scale.copy_(torch.rand((), generator=gen) * 2 - 0.5)


@pytest.mark.parametrize("cin,cout,k,stride,groups,bias", [
    (8, 16, 3, 1, 1, False), (16, 16, 1, 1, 1, True), (12, 12, 3, 2, 12, False), (12, 12, 5, 1, 12, True),
    (8, 8, 3, 1, 2, False),
])
def test_fold_conv_bn_exact(cin, cout, k, stride, groups, bias):
    gen = torch.Generator().manual_seed(cin * k + stride)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
    bn = randomise_bn(nn.Sequential(nn.BatchNorm2d(cout)), gen)[0].eval()
    x = torch.randn(3, cin, 17, 17, generator=gen)
    with torch.no_grad():
        ref = bn(conv(x))
        out = fold_conv_bn(conv, bn)(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("c,k,depthwise,act", [(16, 3, False, True), (16, 1, False, True), (24, 3, True, True),
                                               (8, 5, True, False), (8, 1, False, False)])
def test_resconv_fuses_into_one_conv(c, k, depthwise, act):
    gen = torch.Generator().manual_seed(c + k)
    torch.manual_seed(c + k)
    conv = nn.Conv2d(c, c, k, 1, k // 2, groups=c if depthwise else 1, bias=False)
    bn = randomise_bn(nn.Sequential(nn.BatchNorm2d(c)), gen)[0]
    block = ResConv(conv, bn, nn.ReLU6() if act else None, scale=0.37).eval()
    x = torch.randn(2, c, 11, 13, generator=gen) * 2 + 1
    with torch.no_grad():
        ref = block(x)
        fused = fuse_resconv(block).eval()
        out = fused(x)
        # The reference formula, written out: act(s * BN(conv(x)) + x).
        manual = 0.37 * bn(conv(x)) + x
        manual = manual.clamp(0, 6) if act else manual
    assert (ref - manual).abs().max().item() <= 1e-6
    assert (out - ref).abs().max().item() <= 1e-5
    assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) == 1
    assert not any(isinstance(m, (nn.BatchNorm2d, ResConv)) for m in fused.modules())
    assert fused[0].groups == (c if depthwise else 1) and fused[0].bias is not None


def test_scaled_inverted_residual_fuses():
    gen = torch.Generator().manual_seed(3)
    block = randomise_bn(InvertedResidual(16, 16, 1, 6), gen)
    scaled = ScaledInvertedResidual(block, scale=-0.6).eval()
    convert_to_resconv(scaled, ["conv.1"])  # the depthwise conv inside the block, nested ResConv
    with torch.no_grad():
        scaled.conv[1].scale.fill_(1.7)
    x = torch.randn(2, 16, 9, 9, generator=gen)
    with torch.no_grad():
        ref = scaled(x)
        fused = fuse_model(nn.Sequential(scaled))[0]
        out = fused(x)
    assert type(fused) is InvertedResidual and fused.use_res_connect
    assert (out - ref).abs().max().item() <= 1e-5
    assert not any(isinstance(m, (nn.BatchNorm2d, ResConv, ScaledInvertedResidual)) for m in fused.modules())
    with pytest.raises(FusionError, match="ResConv itself"):
        fuse_model(scaled.conv[1])


def _detector_with_resconvs(seed: int = 0):
    model, gen = random_detector(SMALL, seed)
    names = find_eligible(model, torch.zeros(1, 3, 96, 96))
    convert_to_resconv(model, names)
    randomise_bn(model, gen)
    _random_scales(model, gen)
    return model.eval(), names, gen


def test_detector_fused_equals_unfused():
    model, names, gen = _detector_with_resconvs()
    assert len(names) == 45  # 10 shortcut blocks + 13 stride-1 depthwise in the trunk, 8 in the neck, 12 in heads
    x = torch.randn(2, 3, 96, 96, generator=gen)
    fused = fuse_model(model)
    with torch.no_grad():
        ref = model(x)
        out = fused(x)
    assert not any(isinstance(m, (nn.BatchNorm2d, ResConv, ScaledInvertedResidual)) for m in fused.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules())
    for r, o in zip(ref, out):
        assert (r - o).abs().max().item() <= 1e-5 * max(1.0, r.abs().max().item())
    # And the plain detector (conv-BN folding only) is exact too.
    plain = randomise_bn(Detector(SMALL), gen).eval()
    with torch.no_grad():
        for r, o in zip(plain(x), fuse_model(plain)(x)):
            assert (r - o).abs().max().item() <= 1e-5 * max(1.0, r.abs().max().item())


def _ops(path):
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    return {op: ops.count(op) for op in set(ops)}


def test_fused_onnx_has_no_batchnorm_and_no_extra_add(tmp_path):
    from export.onnx_export import export_onnx

    model, names, _ = _detector_with_resconvs(1)
    removed = remove_layers(model, ["backbone.features.5", "neck.top_down3.dw"])
    assert removed == ["backbone.features.5", "neck.top_down3.dw"]
    base = Detector(SMALL).eval()
    export_onnx(fuse_model(base), tmp_path / "base.onnx", 96, opset=13)
    export_onnx(model, tmp_path / "unfused.onnx", 96, opset=13)
    info_fused = export_onnx(fuse_model(model), tmp_path / "fused.onnx", 96, opset=13)
    assert info_fused["opset"] == 13
    base_ops, unfused_ops, fused_ops = _ops(tmp_path / "base.onnx"), _ops(tmp_path / "unfused.onnx"), _ops(
        tmp_path / "fused.onnx")
    assert "BatchNormalization" not in fused_ops
    # The dense detector's Adds are its 10 shortcut blocks plus the box decoding; one block was removed.
    assert fused_ops.get("Add", 0) == base_ops.get("Add", 0) - 1
    kept_resconvs = sum(isinstance(m, ResConv) for m in model.modules())
    assert unfused_ops.get("Add", 0) >= fused_ops.get("Add", 0) + kept_resconvs  # the adds fusion removes
    assert fused_ops["Conv"] == base_ops["Conv"] - 3 - 1  # block 5 has 3 convs, neck.top_down3.dw one
    assert info_fused["parity"] is not None
