"""Exact fusion before export (method M6, the fusion part of M5).

- :func:`fold_conv_bn`: a convolution followed by an eval-mode BatchNorm becomes one biased convolution,
  ``W' = W * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
- :func:`fuse_resconv`: a :class:`compress.layer_pruning.ResConv` ``act(s * BN(conv(x)) + x)`` becomes
  ``act(conv_f(x))`` with ``conv_f = s * fold(conv, BN) + I`` (``I`` the identity kernel: 1 at the kernel centre
  for channel c -> c; per channel for a depthwise conv). No Add, no Mul, no BatchNormalization left.
- A :class:`compress.layer_pruning.ScaledInvertedResidual` ``x + s * F(x)`` gets ``s`` folded into the last
  (linear) conv of ``F`` and goes back to a plain ``InvertedResidual`` (the block's own shortcut Add stays: it is
  not an extra one).
- :func:`fuse_model` does all of that to a copy of a model, everywhere, and by default refuses to return a model
  that still holds a BatchNorm.

Folding uses the BN running statistics, i.e. eval-mode semantics; the arithmetic is done in float64 and the
results cast back, so fused and unfused agree to float32 rounding. Module paths are kept (the conv of a
ConvBNAct stays at index 0, the BN slot holds ``nn.Identity``), so names in the prune plan still match.

Host side: imports torch.
"""
from __future__ import annotations

import copy
from typing import Dict, List

import torch
from torch import nn

from compress.layer_pruning import ResConv, ScaledInvertedResidual, identity_kernel
from compress.mobilenetv2 import InvertedResidual


class FusionError(ValueError):
    pass


def _new_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    out = out.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight.to(conv.weight.dtype))
        out.bias.copy_(bias.to(conv.weight.dtype))
    return out


@torch.no_grad()
def folded_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple:
    """(weight, bias) in float64 of ``bn(conv(x))`` as one convolution (eval-mode BN)."""
    if conv.out_channels != bn.num_features:
        raise FusionError(f"conv with {conv.out_channels} outputs followed by a BN of {bn.num_features} features")
    if bn.running_mean is None or bn.running_var is None:
        raise FusionError("BatchNorm without running statistics cannot be folded")
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64,
                                                                     device=w.device)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(b)
    a = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    return w * a.view(-1, 1, 1, 1), (b - bn.running_mean.double()) * a + beta


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new biased convolution equal to ``bn(conv(x))`` in eval mode."""
    w, b = folded_weights(conv, bn)
    return _new_conv(conv, w, b)


@torch.no_grad()
def fuse_resconv(block: ResConv) -> nn.Sequential:
    """``act(s * BN(conv(x)) + x)`` as ``Sequential(conv_f, Identity, act)`` (indices kept)."""
    conv, bn = block[0], block[1]
    if isinstance(bn, nn.BatchNorm2d):
        w, b = folded_weights(conv, bn)
    else:  # BN already folded
        w = conv.weight.double()
        b = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    s = block.scale.detach().double()
    w = s * w + identity_kernel(conv).double()
    layers: List[nn.Module] = [_new_conv(conv, w, s * b), nn.Identity()]
    if len(block) > 2:
        layers.append(block[2])
    return nn.Sequential(*layers)


@torch.no_grad()
def fuse_scaled_block(block: ScaledInvertedResidual) -> InvertedResidual:
    """Fold ``s`` into the last conv of the residual branch and return a plain InvertedResidual."""
    branch = fold_sequentials(block.conv)
    convs = [i for i, m in enumerate(branch) if isinstance(m, nn.Conv2d)]
    if not convs or any(not isinstance(m, nn.Identity) for m in list(branch)[convs[-1] + 1:]):
        raise FusionError("the residual branch must end with a convolution (and folded BN) to take the scale")
    last = branch[convs[-1]]
    s = block.scale.detach().double()
    bias = last.bias.double() if last.bias is not None else torch.zeros(last.out_channels, dtype=torch.float64)
    branch[convs[-1]] = _new_conv(last, s * last.weight.double(), s * bias)
    plain = InvertedResidual.__new__(InvertedResidual)
    nn.Module.__init__(plain)
    plain.conv = branch
    plain.use_res_connect = True
    plain.out_channels = block.out_channels
    return plain


def fold_sequentials(module: nn.Module) -> nn.Module:
    """In place: every Conv2d directly followed by a BatchNorm2d in an ``nn.Sequential`` is folded (BN -> Identity)."""
    for mod in list(module.modules()):
        if not isinstance(mod, nn.Sequential) or isinstance(mod, ResConv):
            continue
        for i in range(len(mod) - 1):
            if isinstance(mod[i], nn.Conv2d) and isinstance(mod[i + 1], nn.BatchNorm2d):
                mod[i] = fold_conv_bn(mod[i], mod[i + 1])
                mod[i + 1] = nn.Identity()
    return module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if attr.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def fuse_model(model: nn.Module, inplace: bool = False, strict: bool = True) -> nn.Module:
    """Fuse every ResConv and scaled block, fold every conv-BN pair; returns the (copied) model in eval mode.

    ``strict``: raise naming the BatchNorm layers that could not be folded (not directly after a conv in a
    Sequential), instead of exporting them.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    # Innermost first: a ResConv inside a scaled block is fused before the block takes its scale.
    scaled = [(n, m) for n, m in model.named_modules() if isinstance(m, (ResConv, ScaledInvertedResidual))]
    for name, mod in sorted(scaled, key=lambda nm: -nm[0].count(".")):
        if name == "":
            raise FusionError("fuse the model that contains the ResConv, not the ResConv itself")
        new = fuse_resconv(mod) if isinstance(mod, ResConv) else fuse_scaled_block(mod)
        _replace(model, name, new)
    fold_sequentials(model)
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if strict and left:
        raise FusionError(f"BatchNorm layers not preceded by a conv in a Sequential could not be folded: {left[:5]}")
    return model.eval()


def fusion_report(before: nn.Module, after: nn.Module) -> Dict[str, int]:
    """Counts that show what fusion removed (BN layers, scaled layers, convs)."""
    def count(m: nn.Module, t) -> int:
        return sum(1 for x in m.modules() if isinstance(x, t))

    return {"bn_before": count(before, nn.BatchNorm2d), "bn_after": count(after, nn.BatchNorm2d),
            "scaled_before": count(before, (ResConv, ScaledInvertedResidual)),
            "scaled_after": count(after, (ResConv, ScaledInvertedResidual)),
            "convs_before": count(before, nn.Conv2d), "convs_after": count(after, nn.Conv2d)}
