"""Sparsity training and fine-grained sparsity (method M4).

1. ``AdaptiveBNL1``: an L1 penalty on the BatchNorm scaling factors of prunable channel groups (network
   slimming) whose per-layer coefficient follows the changing structure:

       lambda_l = lambda0 * (F_l / mean F) * (1 - s_l)

   with F_l the layer's share of the model's MACs (layers that cost more are pushed harder) and s_l its current
   sparsity (fraction of |gamma| below ``eps``; a layer that is already sparse is pushed less, so no layer
   collapses). The coefficients are refreshed every ``refresh_every`` steps.

2. ``kernel_sparsify``: at dimension-matched positions, where whole filters cannot be removed without breaking a
   residual add or a concat (the producers of coupled groups), keep the filter count and zero whole k x k kernels
   (one input channel of one filter) with the smallest L1 norm. Reported honestly: these zeros reduce parameters
   and FLOPs *on paper only*; dense TensorRT/ONNX Runtime kernels run exactly as before (measured by
   ``benchmarks/kernel_sparsity.py``: 1.00x at -14% paper FLOPs, 0.99x at -50%).
   The speed-giving alternative at those positions is to prune the whole coupled group (the residual stream of a
   stage) consistently, which the channel pruner already does.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from compress.depgraph import DependencyGraph


class AdaptiveBNL1:
    """Callable extra loss for :func:`compress.train.train`: sum_l lambda_l * ||gamma_l||_1."""

    def __init__(self, model: nn.Module, dg: DependencyGraph, lambda0: float = 1e-4, eps: float = 1e-2,
                 refresh_every: int = 50) -> None:
        modules = dict(model.named_modules())
        self.layers: List[Tuple[str, nn.BatchNorm2d, float]] = []
        macs_by_group: Dict[int, float] = {}
        for name, info in dg.layers.items():
            if info.kind in ("conv", "dwconv") and info.out_segments and len(info.out_segments) == 1:
                gid = dg.space_group[info.out_segments[0][0]]
                h, w = info.out_hw
                mod = modules[name]
                macs_by_group[gid] = macs_by_group.get(gid, 0.0) + h * w * mod.weight[0].numel() * mod.out_channels
        for name, info in dg.layers.items():
            if info.kind != "bn" or not info.in_segments or len(info.in_segments) != 1:
                continue
            gid = dg.space_group[info.in_segments[0][0]]
            if dg.groups[gid].prunable:
                self.layers.append((name, modules[name], macs_by_group.get(gid, 0.0)))
        total = sum(m for _, _, m in self.layers) or 1.0
        mean = total / max(len(self.layers), 1)
        self.flops_weight = {name: (m / mean if m > 0 else 1.0) for name, _, m in self.layers}
        self.lambda0, self.eps, self.refresh_every = lambda0, eps, refresh_every
        self.coeff: Dict[str, float] = {}
        self.steps = 0
        self.refresh()

    @torch.no_grad()
    def sparsity(self) -> Dict[str, float]:
        return {name: float((bn.weight.abs() < self.eps).float().mean()) for name, bn, _ in self.layers}

    @torch.no_grad()
    def gamma_l1(self) -> float:
        """sum |gamma| over the penalised BatchNorms (what the penalty drives down)."""
        return float(sum(bn.weight.abs().sum() for _, bn, _ in self.layers))

    def refresh(self) -> None:
        sp = self.sparsity()
        self.coeff = {name: self.lambda0 * self.flops_weight[name] * (1.0 - sp[name]) for name, _, _ in self.layers}

    def __call__(self, model: nn.Module) -> torch.Tensor:
        self.steps += 1
        if self.steps % self.refresh_every == 0:
            self.refresh()
        terms = [self.coeff[name] * bn.weight.abs().sum() for name, bn, _ in self.layers]
        return torch.stack(terms).sum() if terms else torch.zeros(())


def dimension_matched_convs(dg: DependencyGraph) -> List[str]:
    """Convs whose output channels are tied to other layers (residual streams): filter removal is constrained."""
    names = []
    for g in dg.groups.values():
        if len(g.producers) > 1:
            names.extend(g.producers)
    return names


class KernelMask:
    """The k x k kernels :func:`kernel_sparsify` zeroed, kept zero through training: pass the mask as ``after_step``
    to :func:`compress.train.train` (it re-zeroes them after every optimiser step, before the EMA update, so the EMA
    weights keep the same zeros). ``report``: per layer, the kernels zeroed and the weights now zero."""

    def __init__(self, masks: Dict[str, torch.Tensor], report: Dict[str, Dict[str, int]]) -> None:
        self.masks, self.report = masks, report

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name, mask in self.masks.items():
            w = modules[name].weight
            w.mul_(mask.to(w.device, w.dtype))


@torch.no_grad()
def kernel_sparsify(model: nn.Module, layer_names: List[str], ratio: float) -> KernelMask:
    """Zero the ``ratio`` fraction of k x k kernels with the smallest L1 norm in each named conv (in place).

    Returns the :class:`KernelMask` of what was zeroed (its ``report``: per layer, the kernels zeroed and the weights
    now zero, the paper saving).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"kernel sparsity ratio must be in [0, 1), got {ratio}")
    modules = dict(model.named_modules())
    report, masks = {}, {}
    for name in layer_names:
        conv = modules[name]
        w = conv.weight  # (out, in/groups, kh, kw)
        norms = w.abs().sum((2, 3)).flatten()
        k = int(ratio * norms.numel())
        if k > 0:
            idx = torch.topk(norms, k, largest=False).indices
            mask = torch.ones_like(norms)
            mask[idx] = 0
            masks[name] = mask.view(w.shape[0], w.shape[1], 1, 1)
            w.mul_(masks[name])
        report[name] = {"kernels_zeroed": k, "zero_weights": int((w == 0).sum())}
    return KernelMask(masks, report)


def nonzero_cost(model: nn.Module, dg: DependencyGraph) -> Dict[str, int]:
    """MACs and parameters counting only non-zero conv weights (the 'on paper' figure of fine-grained sparsity)."""
    modules = dict(model.named_modules())
    macs = params = 0
    for name, info in dg.layers.items():
        mod = modules[name]
        if isinstance(mod, nn.Conv2d):
            nz = int((mod.weight != 0).sum())
            h, w = info.out_hw
            macs += nz * h * w
            params += nz + (mod.bias.numel() if mod.bias is not None else 0)
        elif isinstance(mod, nn.Linear):
            nz = int((mod.weight != 0).sum())
            macs += nz
            params += nz + (mod.bias.numel() if mod.bias is not None else 0)
        elif isinstance(mod, nn.BatchNorm2d):
            params += 2 * mod.num_features
    return {"macs": macs, "params": params}


PAPER_ONLY_NOTE = ("zeros inside dense kernels: parameters and FLOPs fall on paper only; TensorRT and ONNX Runtime "
                   "run the same dense convolutions (no sparse kernels on the Nano's Maxwell GPU)")


def sparsify_dimension_matched(model: nn.Module, ratio: float, input_size: int,
                               layer_names: Optional[Sequence[str]] = None) -> Tuple[KernelMask, Dict[str, Any]]:
    """M4's fine granularity on ``model`` (in place): zero ``ratio`` of the k x k kernels of every
    dimension-matched convolution (or of ``layer_names``). Returns the mask to keep them zero while training and the
    report: dense FLOPs/params (what runs), paper FLOPs/params (dense minus the zeroed multiply-adds and weights)."""
    from compress.depgraph import build_dependency_graph
    from compress.flops import count_flops_params

    dg = build_dependency_graph(model.eval(), input_size)
    names = dimension_matched_convs(dg) if layer_names is None else list(layer_names)
    dense = count_flops_params(model, (1, 3, input_size, input_size))
    before = nonzero_cost(model, dg)
    mask = kernel_sparsify(model, names, ratio)
    after = nonzero_cost(model, dg)
    paper_flops = dense.flops - 2 * (before["macs"] - after["macs"])
    paper_params = dense.params - (before["params"] - after["params"])
    return mask, {"ratio": ratio, "layers": names,
                  "kernels_zeroed": sum(r["kernels_zeroed"] for r in mask.report.values()),
                  "dense_flops": dense.flops, "dense_params": dense.params,
                  "paper_flops": paper_flops, "paper_params": paper_params, "note": PAPER_ONLY_NOTE}
