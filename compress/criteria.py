"""Importance criteria and per-group keep ratios (methods M1 and the baselines it is compared with).

Per-channel scores of a coupled group (coupled channels are scored and removed together, scores summed over the
group's producers): filter L1 norm, BatchNorm scaling factor |gamma|, activation entropy; and the group-aggregated
magnitude (``group_l1``: every layer that writes or reads the channels — producers, BatchNorms, depthwise and
consuming convolutions — each normalised by its mean, averaged); and ``reconstruction``: the channels from which a
least-squares re-fit of the next layers (M6) can best rebuild their outputs, by greedy backward elimination.

Per-group keep ratios:
- ``uniform``: the same ratio for every group (the classic L1 baseline);
- ``bn``: network slimming, one global threshold on |gamma| over all groups;
- ``richness`` (M1): layer entropy H (mean per-channel entropy of global-average-pooled activations over
  calibration images) and average L1 norm A (mean filter L1 norm / weights per filter); box-plot clipping of both
  to [Q1 - 1.5 IQR, Q3 + 1.5 IQR]; min-max normalisation; R = alpha * H + (1 - alpha) * A; keep ratio
  r = clip(s * (offset + R), r_min, 1) with one global scale s found by bisection to meet the target;
- ``entropy``: the alpha = 1 case of ``richness``.
Kept counts are rounded to a multiple of ``round_to`` (default 8) and never below ``min_channels``.

Targets: MACs (FLOPs), parameters, or the latency of a :class:`LatencyModel` (MACs / P + bytes / B per
convolution). The same model gives the richness allocation an optional latency tilt (``allocate(latency_tilt=)``):
keep ratios scaled by (seconds per MAC of the group / median) ** -beta, so a FLOPs budget buys more speed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from compress.depgraph import DependencyGraph, _Tracer
from compress.fusion import folded_weights

# --- cost model ------------------------------------------------------------------------------------------------


def _count(dg: DependencyGraph, segs, counts: Dict[int, int]) -> int:
    return sum(counts.get(dg.space_group[sid], n) for sid, n in segs) if segs is not None else 0


def _layer_terms(dg: DependencyGraph, counts: Dict[int, int], modules: Dict[str, nn.Module]):
    """Per layer that touches channels: (MACs, params, elements moved) if each group g kept ``counts[g]`` channels.
    Elements moved = input activation + output activation + weights (what a memory-bound kernel reads and writes);
    BatchNorm layers are folded into their convolution on every runtime, so they move nothing of their own."""
    for name, info in dg.layers.items():
        mod = modules[name]
        h, w = info.out_hw
        kh, kw = info.kernel
        if info.kind in ("conv", "dwconv", "gconv"):
            sh, sw = mod.stride
            if info.kind == "conv":
                cin = _count(dg, info.in_segments, counts) if info.in_segments is not None else mod.in_channels
                cout = _count(dg, info.out_segments, counts)
                wts = kh * kw * cin * cout
            elif info.kind == "dwconv":
                cin = cout = _count(dg, info.out_segments, counts)
                wts = kh * kw * cout
            else:
                cin, cout = mod.in_channels, mod.out_channels
                wts = kh * kw * cin * cout // mod.groups
            bias = cout if mod.bias is not None else 0
            yield h * w * wts, wts + bias, cin * h * sh * w * sw + cout * h * w + wts
        elif info.kind == "bn":
            yield 0, 2 * _count(dg, info.out_segments, counts), 0
        elif info.kind == "linear":
            cin = _count(dg, info.in_segments, counts) if info.in_segments is not None else mod.in_features
            cout = _count(dg, info.out_segments, counts)
            yield cin * cout, cin * cout + (cout if mod.bias is not None else 0), cin + cout + cin * cout


def cost_of(dg: DependencyGraph, counts: Dict[int, int], modules: Dict[str, nn.Module]) -> Tuple[int, int]:
    """(MACs, params) of the model if each group g kept ``counts[g]`` channels (others unchanged)."""
    macs = params = 0
    for m, p, _ in _layer_terms(dg, counts, modules):
        macs += m
        params += p
    return macs, params


@dataclass(frozen=True)
class LatencyModel:
    """Roofline-sum latency of a layer: ``MACs / macs_per_s + bytes / bytes_per_s`` (compute time plus memory time).

    MACs alone do not predict latency: a depthwise 3x3 convolution does 9 MACs per element it reads and writes, a
    1x1 convolution with 576 inputs does 576, and the first is memory-bound. Fitted on ONNX Runtime's per-node
    profile of the baseline and five pruned structures (``benchmarks/latency_model.py``), the two-term model explains
    R^2 0.92 of per-convolution latency on this project's CPU, against 0.60 for MACs alone."""

    name: str
    macs_per_s: float
    bytes_per_s: float
    bytes_per_element: int
    source: str

    def seconds(self, macs: float, elements: float) -> float:
        return macs / self.macs_per_s + elements * self.bytes_per_element / self.bytes_per_s


LATENCY_MODELS = {
    # Fitted by benchmarks/latency_model.py (results/latency_model.json): ONNX Runtime 1.32 CPU, 1 thread, fp32,
    # this project's 2-core Xeon (AVX-512).
    "ort-cpu": LatencyModel("ort-cpu", 90.3e9, 16.8e9, 4, "fitted: benchmarks/results/latency_model.json"),
    # Jetson Nano datasheet figures, not measured: 472 GFLOPS fp16 peak (236 G MAC/s), 25.6 GB/s LPDDR4 shared
    # with the CPU; TensorRT FP16 moves 2 bytes per element.
    "jetson-nano-fp16": LatencyModel("jetson-nano-fp16", 236e9, 25.6e9, 2, "datasheet peaks, not measured"),
}


def latency_of(dg: DependencyGraph, counts: Dict[int, int], modules: Dict[str, nn.Module],
               model: LatencyModel) -> float:
    """Modelled latency (seconds, convolutions and linears only) if each group g kept ``counts[g]`` channels."""
    return sum(model.seconds(m, e) for m, _, e in _layer_terms(dg, counts, modules))


def _one_channel_savings(dg: DependencyGraph, modules: Dict[str, nn.Module],
                         model: Optional[LatencyModel] = None) -> Dict[int, Tuple[int, int, float]]:
    """Per prunable group: the MACs, parameters and (with ``model``) modelled seconds saved by removing one of its
    channels."""
    base_macs, base_params = cost_of(dg, {}, modules)
    base_lat = latency_of(dg, {}, modules, model) if model is not None else 0.0
    out = {}
    for g in dg.prunable_groups():
        fewer = {g.gid: g.size - 1}
        macs, params = cost_of(dg, fewer, modules)
        lat = latency_of(dg, fewer, modules, model) if model is not None else 0.0
        out[g.gid] = (base_macs - macs, base_params - params, base_lat - lat)
    return out


def latency_per_mac(dg: DependencyGraph, modules: Dict[str, nn.Module], model: LatencyModel) -> Dict[int, float]:
    """Per prunable group: modelled seconds saved per MAC saved by removing one of its channels. High for groups
    whose channels feed memory-bound layers (depthwise convolutions, thin 1x1s at high resolution)."""
    return {gid: d_lat / max(d_macs, 1) for gid, (d_macs, _, d_lat) in _one_channel_savings(dg, modules, model).items()}


def macs_per_param(dg: DependencyGraph, modules: Dict[str, nn.Module]) -> Dict[int, float]:
    """Per prunable group: MACs saved per parameter saved by removing one of its channels — the spatial size its
    layers run at, in effect. Low for the wide layers at strides 16 and 32, which hold most of the parameters
    (the capacity) and few of the MACs."""
    return {gid: d_macs / max(d_params, 1) for gid, (d_macs, d_params, _) in _one_channel_savings(dg, modules).items()}


# --- per-channel scores ----------------------------------------------------------------------------------------


def filter_l1(dg: DependencyGraph, modules: Dict[str, nn.Module]) -> Dict[int, torch.Tensor]:
    """Sum over the group's producers of each output filter's mean absolute weight."""
    scores: Dict[int, torch.Tensor] = {}
    for g in dg.prunable_groups():
        s = torch.zeros(g.size)
        for name in g.producers:
            wt = modules[name].weight.detach().float()
            s += wt.abs().flatten(1).mean(1)
        scores[g.gid] = s
    return scores


def group_l1(dg: DependencyGraph, modules: Dict[str, nn.Module]) -> Dict[int, torch.Tensor]:
    """Group-aggregated magnitude of each channel: every layer that touches the group's channels gives one score per
    channel — a producer its output filter's mean ``|w|``, a depthwise convolution its filter's, a BatchNorm
    ``|gamma|``, a consuming convolution or linear layer the mean ``|w|`` of the input column that reads the channel —
    each normalised by its mean over the channels, then averaged over the layers. Unlike :func:`filter_l1` it counts
    how strongly the next layers read a channel, not only how large the filter that writes it is."""
    parts: Dict[int, List[torch.Tensor]] = {g.gid: [] for g in dg.prunable_groups()}

    def add(gid: int, v: torch.Tensor) -> None:
        if gid in parts:
            parts[gid].append(v / v.mean().clamp_min(1e-12))

    for g in dg.prunable_groups():
        for name in g.producers:
            add(g.gid, modules[name].weight.detach().float().abs().flatten(1).mean(1))
    for name, info in dg.layers.items():
        if info.in_segments is None:
            continue
        w = getattr(modules.get(name), "weight", None)
        if w is None:
            continue
        w = w.detach().float().abs()
        offset = 0
        for sid, n in info.in_segments:
            gid = dg.space_group[sid]
            if info.kind in ("bn", "dwconv"):
                if len(info.in_segments) == 1:
                    add(gid, w.flatten(1).mean(1) if w.dim() > 1 else w)
            elif info.kind in ("conv", "linear"):
                add(gid, w[:, offset:offset + n].transpose(0, 1).flatten(1).mean(1))
            offset += n
    return {gid: torch.stack(v).mean(0) for gid, v in parts.items()}


def greedy_elimination(consumers: Sequence[Tuple[torch.Tensor, torch.Tensor, int]], size: int, n_remove: int,
                       ridge: float = 1e-3) -> List[int]:
    """Which ``n_remove`` of a group's ``size`` channels to remove, in order, so that least squares can best re-fit
    the layers that read them. Each consumer is ``(G, W, offset)``: the Gram matrix ``X^T X`` of its input over
    calibration positions (Cin x Cin), its weights ``W`` (Cout x Cin) and where the group's channels start among its
    inputs. Backward elimination: at each step the channel whose removal raises the consumers' re-fit error least
    (each consumer's error as a fraction of its output energy ``tr(W G W^T)``, summed) goes. With ``H`` the inverse
    (ridge-regularised) Gram of the inputs still kept and ``B`` the re-fitted weights (Cin x Cout; ``W^T`` at the
    start), removing input ``j`` raises the error by ``||B_j||^2 / H_jj``, and ``H`` and ``B`` follow by rank-one
    downdates — the deletion formula of least squares, so no step solves a system again."""
    states = []
    for gram, w, offset in consumers:
        g = gram.double()
        lam = ridge * float(g.diagonal().mean()) + 1e-12
        h = torch.linalg.inv(g + lam * torch.eye(g.shape[0], dtype=g.dtype))
        w = w.double()
        energy = float((w @ g @ w.t()).diagonal().sum()) + 1e-30
        states.append((h, w.t().clone(), offset, energy))
    removed = torch.zeros(size, dtype=torch.bool)
    order: List[int] = []
    for _ in range(n_remove):
        cost = torch.zeros(size, dtype=torch.float64)
        for h, b, offset, energy in states:
            idx = torch.arange(size) + offset
            cost += b[idx].pow(2).sum(1) / h.diagonal()[idx].clamp_min(1e-300) / energy
        cost[removed] = float("inf")
        j = int(torch.argmin(cost))
        removed[j] = True
        order.append(j)
        for h, b, offset, _ in states:
            c = j + offset
            hc = h[:, c].clone()
            b -= torch.outer(hc / hc[c], b[c].clone())
            h -= torch.outer(hc, hc) / hc[c]
            h[c, c] = 1.0  # the removed input: its row and column are zero now; 1 keeps the diagonal divisible
    return order


@torch.no_grad()
def reconstruction(model: nn.Module, dg: DependencyGraph, counts: Dict[int, int], calibration: torch.Tensor,
                   ridge: float = 1e-3, batch: int = 16) -> Dict[int, torch.Tensor]:
    """Channel scores for :func:`select_channels` that keep, in every group cut to ``counts[g]`` channels, the
    channels from which M6's least-squares compensation can best rebuild what the next layers read: the group's
    1x1 consumers (the layers :func:`compress.compensation.compensate` re-fits, outputs scaled by their own
    BatchNorm to post-BN units) and :func:`greedy_elimination` over the Gram matrices of their inputs on the
    calibration images. A removed channel scores its elimination step (earlier = lower), a kept one more than any
    removed one; groups with no 1x1 consumer (or not cut) score by :func:`group_l1`. Unlike the magnitude criteria
    it sees redundancy: a channel the others can reproduce goes first, however large its weights."""
    modules = dict(model.named_modules())
    bn_of_space = {info.in_segments[0][0]: modules[name] for name, info in dg.layers.items()
                   if info.kind == "bn" and info.in_segments is not None and len(info.in_segments) == 1}
    consumers: Dict[int, List[Tuple[str, int]]] = {}
    for name, info in dg.layers.items():
        mod = modules.get(name)
        if (info.kind != "conv" or info.in_segments is None or not isinstance(mod, nn.Conv2d)
                or mod.kernel_size != (1, 1) or mod.stride != (1, 1) or mod.groups != 1):
            continue
        offset = 0
        for sid, n in info.in_segments:
            gid = dg.space_group[sid]
            if gid in counts and counts[gid] < dg.groups[gid].size:
                consumers.setdefault(gid, []).append((name, offset))
            offset += n
    grams: Dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(mod, inp, out):
            x = inp[0].detach().double()
            x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            grams[name] = grams.get(name, 0) + x.t() @ x
        return fn

    was_training = model.training
    model.eval()
    handles = [modules[n].register_forward_hook(hook(n)) for n in {n for v in consumers.values() for n, _ in v}]
    try:
        for i in range(0, len(calibration), batch):
            model(calibration[i:i + batch])
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    scores = group_l1(dg, modules)
    for gid, readers in consumers.items():
        terms = []
        for name, offset in readers:
            conv = modules[name]
            out = dg.layers[name].out_segments
            bn = bn_of_space.get(out[0][0]) if out else None
            # the BN-folded weights: the error in the units the next layer sees (a row's sign does not change it)
            w = (folded_weights(conv, bn)[0] if isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
                 else conv.weight.detach().double()).flatten(1)
            terms.append((grams[name], w, offset))
        size = dg.groups[gid].size
        order = greedy_elimination(terms, size, size - counts[gid], ridge)
        base = scores[gid].double()
        s = float(size) + base / base.max().clamp_min(1e-12)  # kept: above every removed channel, by magnitude
        s[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order), dtype=torch.float64)
        scores[gid] = s.float()
    return scores


def bn_gamma(dg: DependencyGraph, modules: Dict[str, nn.Module]) -> Dict[int, torch.Tensor]:
    """Sum of |gamma| of the BatchNorms that act directly on a group's channels (single-space inputs)."""
    scores: Dict[int, torch.Tensor] = {}
    for name, info in dg.layers.items():
        if info.kind != "bn" or info.in_segments is None or len(info.in_segments) != 1:
            continue
        gid = dg.space_group[info.in_segments[0][0]]
        if not dg.groups[gid].prunable:
            continue
        gamma = modules[name].weight.detach().float().abs()
        scores[gid] = scores.get(gid, torch.zeros_like(gamma)) + gamma
    for g in dg.prunable_groups():
        scores.setdefault(g.gid, filter_l1(dg, modules)[g.gid])
    return scores


def _chain_ends(gm: fx.GraphModule, dg: DependencyGraph) -> Dict[str, str]:
    """For each producer, the node after its BN/activation chain (where 'activation' is read)."""
    modules = dict(gm.named_modules())
    users: Dict[str, List[fx.Node]] = {}
    for node in gm.graph.nodes:
        for a in node.all_input_nodes:
            users.setdefault(a.name, []).append(node)
    ends: Dict[str, str] = {}
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    for g in dg.prunable_groups():
        for prod in g.producers:
            node = by_target[prod]
            while True:
                us = users.get(node.name, [])
                if len(us) != 1 or us[0].op != "call_module":
                    break
                m = modules[us[0].target]
                if not isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.LeakyReLU, nn.Hardswish)):
                    break
                node = us[0]
            ends[prod] = node.name
    return ends


@torch.no_grad()
def channel_activations(model: nn.Module, dg: DependencyGraph, batches: Iterable[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Global-average-pooled activation (images, channels) at the end of each producer's BN/activation chain."""
    gm = fx.GraphModule(model, _Tracer(()).trace(model))
    ends = _chain_ends(gm, dg)
    wanted = set(ends.values())
    store: Dict[str, List[torch.Tensor]] = {k: [] for k in wanted}

    class _Interp(fx.Interpreter):
        def run_node(self, n: fx.Node):
            res = super().run_node(n)
            if n.name in wanted:
                store[n.name].append(res.float().mean((2, 3)) if res.dim() == 4 else res.float())
            return res

    was = model.training
    gm.eval()
    try:
        for x in batches:
            _Interp(gm).run(x)
    finally:
        model.train(was)
    return {prod: torch.cat(store[node]) for prod, node in ends.items()}


def histogram_entropy(values: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Shannon entropy (nats) of each column's histogram; values (N, C)."""
    v = values.double()
    lo, hi = v.min(0).values, v.max(0).values
    width = (hi - lo).clamp(min=1e-12)
    idx = ((v - lo) / width * bins).floor().clamp(0, bins - 1).long()
    counts = torch.zeros(bins, v.shape[1], dtype=torch.float64)
    counts.scatter_add_(0, idx, torch.ones_like(v))
    p = counts / v.shape[0]
    ent = -(p * torch.log(p.clamp(min=1e-300))).sum(0)
    ent[(hi - lo) < 1e-12] = 0.0  # a constant channel carries no information
    return ent.float()


def activation_entropy(acts: Dict[str, torch.Tensor], dg: DependencyGraph, bins: int = 32) -> Dict[int, torch.Tensor]:
    scores: Dict[int, torch.Tensor] = {}
    for g in dg.prunable_groups():
        s = torch.zeros(g.size)
        for prod in g.producers:
            s += histogram_entropy(acts[prod], bins)
        scores[g.gid] = s / max(len(g.producers), 1)
    return scores


# --- layer-level richness and keep ratios ---------------------------------------------------------------------


def boxplot_clip(values: np.ndarray) -> np.ndarray:
    q1, q3 = np.percentile(values, [25, 75])
    iqr = q3 - q1
    return np.clip(values, q1 - 1.5 * iqr, q3 + 1.5 * iqr)


def minmax(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.full_like(values, 0.5)


def layer_richness(dg: DependencyGraph, modules: Dict[str, nn.Module], entropy: Dict[int, torch.Tensor],
                   alpha: float = 0.5) -> Dict[int, Dict[str, float]]:
    """Per prunable group: raw H, raw A, and the fused richness R in [0, 1]."""
    groups = dg.prunable_groups()
    h = np.array([float(entropy[g.gid].mean()) for g in groups])
    a = []
    for g in groups:
        vals = [modules[p].weight.detach().abs().flatten(1).mean(1).mean().item() for p in g.producers]
        a.append(float(np.mean(vals)))
    a = np.array(a)
    hn, an = minmax(boxplot_clip(h)), minmax(boxplot_clip(a))
    r = alpha * hn + (1 - alpha) * an
    return {g.gid: {"entropy": float(h[i]), "avg_l1": float(a[i]), "richness": float(r[i])} for i, g in enumerate(groups)}


def round_channels(n_float: float, size: int, round_to: int, min_channels: int) -> int:
    if round_to > 1 and size >= round_to:
        n = int(round(n_float / round_to)) * round_to
    else:
        n = int(round(n_float))
    floor = min(size, max(min_channels, round_to if size >= round_to else 1))
    return int(min(size, max(floor, n)))


def bisect_scale(counts_for: Callable[[float], Dict[int, int]], cost: Callable[[Dict[int, int]], float],
                 budget: float, lo: float = 0.0, hi: float = 4.0, iters: int = 50) -> Tuple[float, Dict[int, int]]:
    """Largest scale whose counts meet ``cost <= budget`` (cost grows with the scale)."""
    best = counts_for(lo)
    if cost(best) > budget:
        raise ValueError(
            f"the target cannot be met: even the minimum channel counts cost {cost(best):.4g} > budget {budget:.4g}"
        )
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        c = counts_for(mid)
        if cost(c) <= budget:
            lo, best = mid, c
        else:
            hi = mid
    return lo, best


def fill_budget(counts: Dict[int, int], wanted: Dict[int, float], sizes: Dict[int, int], step: int,
                cost: Callable[[Dict[int, int]], float], budget: float) -> Dict[int, int]:
    """Spend what rounding left of the budget: grow groups by ``step`` channels, the ones furthest below the
    allocation's own (unrounded) wish first, while ``cost <= budget``.

    Bisection over a scale with counts rounded to ``step`` stops short of the budget (with 16-channel rounding the
    detector lands ~2 points past a -50% FLOPs target); this keeps the ranking of the allocation and only fills the gap.
    """
    counts = dict(counts)
    step = max(int(step), 1)
    while True:
        order = sorted((g for g in counts if counts[g] < sizes[g]),
                       key=lambda g: (counts[g] - wanted[g]) / sizes[g])
        grown = False
        for g in order:
            trial = dict(counts)
            trial[g] = min(sizes[g], counts[g] + step)
            if cost(trial) <= budget:
                counts = trial
                grown = True
                break
        if not grown:
            return counts


def allocate(
    dg: DependencyGraph,
    modules: Dict[str, nn.Module],
    method: str,
    target_reduction: float,
    target_kind: str = "flops",
    round_to: int = 8,
    min_channels: int = 8,
    r_min: float = 0.1,
    richness: Optional[Dict[int, Dict[str, float]]] = None,
    bn_scores: Optional[Dict[int, torch.Tensor]] = None,
    offset: float = 0.5,
    latency_model: Optional[LatencyModel] = None,
    latency_tilt: float = 0.0,
    keep_whole: Iterable[int] = (),
    capacity_tilt: float = 0.0,
) -> Tuple[Dict[int, int], Dict[str, float]]:
    """Kept channel count per prunable group meeting ``cost <= (1 - target_reduction) * baseline``; the cost is
    MACs (``target_kind="flops"``), parameters (``"params"``) or ``latency_model``'s modelled latency (``"latency"``).

    ``latency_tilt`` (beta, richness/entropy only) makes the allocation latency-aware: each group's keep ratio is
    multiplied by ``(rho_g / median rho) ** -beta``, rho_g being the modelled seconds saved per MAC saved by cutting
    the group (:func:`latency_per_mac`), so that under the same budget the cuts go where they buy the most time.
    ``capacity_tilt`` (gamma, richness/entropy only) multiplies it by ``(mu_g / median mu) ** -gamma``, mu_g being the
    MACs saved per parameter saved (:func:`macs_per_param`): under the same FLOPs budget the cuts go to the
    high-resolution layers and the parameters of the low-resolution ones are kept.

    Groups in ``keep_whole`` keep all their channels; the budget is met by the others."""
    if not 0.0 < target_reduction < 1.0:
        raise ValueError(f"target reduction must be in (0, 1), got {target_reduction}")
    if target_kind not in ("flops", "params", "latency"):
        raise ValueError(f"unknown target kind {target_kind!r} (flops, params or latency)")
    if (target_kind == "latency" or latency_tilt) and latency_model is None:
        raise ValueError("a latency target or a latency tilt needs a latency model")
    for name, beta in (("latency", latency_tilt), ("capacity", capacity_tilt)):
        if beta and method not in ("richness", "entropy"):
            raise ValueError(f"a {name} tilt applies to the richness and entropy allocations, not {method!r}")
    groups = dg.prunable_groups()
    base_macs, base_params = cost_of(dg, {}, modules)

    def cost(counts: Dict[int, int]) -> float:
        if target_kind == "latency":
            return latency_of(dg, counts, modules, latency_model)
        return cost_of(dg, counts, modules)[0 if target_kind == "flops" else 1]

    budget = (1.0 - target_reduction) * cost({})
    tilt = {g.gid: 1.0 for g in groups}
    if latency_tilt:
        rho = latency_per_mac(dg, modules, latency_model)
        ref = float(np.median(list(rho.values())))
        tilt = {gid: (r / ref) ** -latency_tilt for gid, r in rho.items()}
    if capacity_tilt:
        mu = macs_per_param(dg, modules)
        ref = float(np.median(list(mu.values())))
        tilt = {gid: tilt[gid] * (m / ref) ** -capacity_tilt for gid, m in mu.items()}
    sizes = {g.gid: g.size for g in groups}
    if method == "uniform":
        def wanted_for(s: float) -> Dict[int, float]:
            r = min(1.0, max(r_min, s))
            return {g.gid: r * g.size for g in groups}
        hi = 1.0
    elif method in ("richness", "entropy"):
        assert richness is not None
        def wanted_for(s: float) -> Dict[int, float]:
            return {g.gid: min(1.0, max(r_min, s * (offset + richness[g.gid]["richness"]) * tilt[g.gid])) * g.size
                    for g in groups}
        hi = 1.0 / (offset * min(tilt.values()))
    elif method == "bn":
        assert bn_scores is not None
        # Global ranking of all channels by |gamma| (ties broken by position): s keeps the top fraction s.
        allg = torch.cat([bn_scores[g.gid] for g in groups])
        owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
        order = torch.sort(allg, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))

        def wanted_for(s: float) -> Dict[int, float]:
            kept = rank >= int(round((1.0 - min(max(s, 0.0), 1.0)) * len(rank)))
            per_group = torch.bincount(owner[kept], minlength=len(groups))
            return {g.gid: float(per_group[i]) for i, g in enumerate(groups)}
        hi = 1.0
    else:
        raise ValueError(f"unknown allocation method {method!r}")

    whole = set(keep_whole)
    unknown = whole - set(sizes)
    if unknown:
        raise ValueError(f"keep_whole names groups that are not prunable: {sorted(unknown)}")

    def counts_for(s: float) -> Dict[int, int]:
        return {gid: sizes[gid] if gid in whole else round_channels(n, sizes[gid], round_to, min_channels)
                for gid, n in wanted_for(s).items()}

    scale, counts = bisect_scale(counts_for, cost, budget, 0.0, hi)
    counts = fill_budget(counts, wanted_for(scale), sizes, round_to, cost, budget)
    macs, params = cost_of(dg, counts, modules)
    info = {"scale": scale, "macs": macs, "params": params, "baseline_macs": base_macs,
            "baseline_params": base_params, "flops_reduction": 1 - macs / base_macs,
            "params_reduction": 1 - params / base_params}
    if capacity_tilt:
        info["capacity_tilt"] = capacity_tilt
    if latency_model is not None:
        base_lat = latency_of(dg, {}, modules, latency_model)
        info.update(latency_model=latency_model.name, latency_tilt=latency_tilt,
                    modelled_latency_reduction=1 - latency_of(dg, counts, modules, latency_model) / base_lat)
    return counts, info


def select_channels(scores: Dict[int, torch.Tensor], counts: Dict[int, int]) -> Dict[int, List[int]]:
    """Keep the ``counts[g]`` highest-scoring channels of each group (sorted indices)."""
    keep = {}
    for gid, n in counts.items():
        s = scores[gid]
        if n >= s.numel():
            continue
        top = torch.topk(s, n, largest=True, sorted=False).indices
        keep[gid] = sorted(int(i) for i in top)
    return keep
