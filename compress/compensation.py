"""Pruning compensation (M6): after channels are removed, re-fit each consumer convolution by least squares so
that its output on calibration images changes as little as possible.

For a consumer conv with original weights W (output Y = W * X on the original model's input X) and pruned input
X' (fewer channels, and already changed by every upstream pruning and compensation), solve

    W' = argmin ||Y - W' * X'||^2 + lambda ||W'||^2

on im2col rows of the calibration activations. It runs in a single forward pass of the pruned model: a forward
pre-hook re-fits each consumer just before it runs, so downstream layers see the compensated upstream outputs
(sequential compensation at the price of one pass).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn


def _rows(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """im2col rows (N*L, Cin*kh*kw) of a conv's input."""
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), 0):
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (N, Cin*k*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def compensate(
    original: nn.Module,
    pruned: nn.Module,
    layers: Dict[str, Dict],
    calibration: torch.Tensor,
    ridge: float = 1e-3,
    max_rows: int = 65536,
    seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Re-fit every pruned model conv whose input channels were cut (``keep_in`` set). Returns per-layer errors."""
    names = [n for n, s in layers.items() if s["kind"] == "conv" and s.get("keep_in") is not None]
    orig_mods = dict(original.named_modules())
    pruned_mods = dict(pruned.named_modules())
    targets: Dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    row_index: Dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(mod, inp, out):
            y = out - (mod.bias.view(1, -1, 1, 1) if mod.bias is not None else 0)
            rows = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
            if rows.shape[0] > max_rows:
                idx = torch.randperm(rows.shape[0], generator=gen)[:max_rows]
                row_index[name] = idx
                rows = rows[idx]
            targets[name] = rows
        return hook

    handles = [orig_mods[n].register_forward_hook(capture(n)) for n in names]
    was_o, was_p = original.training, pruned.training
    original.eval()
    pruned.eval()
    try:
        original(calibration)
    finally:
        for h in handles:
            h.remove()

    report: Dict[str, Dict[str, float]] = {}

    def refit(name: str):
        def pre_hook(mod: nn.Conv2d, inp):
            x = _rows(inp[0], mod)
            if name in row_index:
                x = x[row_index[name]]
            y = targets[name]
            keep_out = layers[name].get("keep_out")
            if keep_out is not None:
                y = y[:, keep_out]
            w_old = mod.weight.reshape(mod.out_channels, -1)
            err_before = float(((x @ w_old.t()) - y).pow(2).mean())
            gram = x.t() @ x
            lam = ridge * float(gram.diagonal().mean()) + 1e-8
            gram += lam * torch.eye(gram.shape[0])
            w_new = torch.linalg.solve(gram.double(), (x.t() @ y).double()).t().float()
            err_after = float(((x @ w_new.t()) - y).pow(2).mean())
            if err_after < err_before:
                mod.weight.copy_(w_new.reshape_as(mod.weight))
            report[name] = {"mse_before": err_before, "mse_after": min(err_after, err_before),
                            "target_power": float(y.pow(2).mean())}
        return pre_hook

    handles = [pruned_mods[n].register_forward_pre_hook(refit(n)) for n in names]
    try:
        pruned(calibration)
    finally:
        for h in handles:
            h.remove()
        original.train(was_o)
        pruned.train(was_p)
    # BatchNorm after a re-fitted conv keeps its statistics: the conv now reproduces the original output.
    return report
