"""Physical channel pruning: new, smaller tensors, driven by a versioned **prune plan**.

The plan is the contract with the export stage. Its key is the module path of every channel-touching layer
(``backbone.features.3.conv.0.0``), which ``torch.onnx.export`` keeps in the initializer names
(``backbone.features.3.conv.0.0.weight``) and node names (``/backbone/features.3/conv/conv.0/conv.0.0/Conv``).
For each layer it stores the kept input and output channel indices (``null`` = all kept), so that channel surgery
on the dense ONNX can apply exactly the same cut.

Plan format (version 1)::

    {"format": "jetson-compress-prune-plan", "format_version": 1,
     "method": "richness", "target": {"kind": "flops", "reduction": 0.5}, "round_to": 8,
     "model": {"architecture": ..., "input_size": 320, "model_config": {...}},
     "layers": {name: {"kind": "conv|dwconv|bn|linear", "in": int, "out": int,
                       "keep_in": [..] | null, "keep_out": [..] | null}},
     "groups": [{"group": gid, "channels": n, "kept": k, "producers": [...]}],
     "removed_layers": [],
     "achieved": {"macs": .., "params": .., "baseline_macs": .., "baseline_params": .., ...}}

Version 2 (written only when layers were converted or removed, so channel-only plans stay version 1) adds layer
pruning (M5, ``compress.layer_pruning``): ``"resconv_layers": [name, ...]`` (layers turned into ResConv or scaled
blocks, whose ``scale`` parameters are in the state dict) and a non-empty ``"removed_layers"`` (layers replaced by the
identity). The structure is rebuilt in this order: convert, remove, then slice channels (``layers``), which is
also the order in which ``--method layer+richness`` creates it.

Host side: imports torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.fx as fx
from torch import nn

from compress.depgraph import DependencyGraph

PLAN_FORMAT = "jetson-compress-prune-plan"
PLAN_VERSION = 2


class PlanError(ValueError):
    pass


def layer_plan(dg: DependencyGraph, keep: Dict[int, List[int]], modules: Dict[str, nn.Module]) -> Dict[str, Dict]:
    """Per-layer kept input/output indices from kept indices per group."""
    out: Dict[str, Dict] = {}
    for name, info in dg.layers.items():
        mod = modules[name]
        if info.kind == "gconv":
            continue
        keep_in = dg.indices(info.in_segments, keep) if info.kind in ("conv", "linear") else None
        keep_out = dg.indices(info.out_segments, keep)
        n_in = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features if isinstance(mod, nn.Linear) \
            else mod.num_features
        n_out = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features if isinstance(mod, nn.Linear) \
            else mod.num_features
        if keep_in is not None and len(keep_in) == n_in:
            keep_in = None
        if keep_out is not None and len(keep_out) == n_out:
            keep_out = None
        if info.kind in ("dwconv", "bn"):
            keep_in = None
        out[name] = {"kind": info.kind, "in": int(n_in), "out": int(n_out), "keep_in": keep_in, "keep_out": keep_out}
    return out


def _take(t: Optional[torch.Tensor], idx: Optional[List[int]], dim: int = 0) -> Optional[torch.Tensor]:
    if t is None or idx is None:
        return t
    return t.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device)).clone()


def _set(mod: nn.Module, name: str, value: Optional[torch.Tensor], param: bool) -> None:
    if value is None:
        return
    if param:
        setattr(mod, name, nn.Parameter(value, requires_grad=getattr(mod, name).requires_grad))
    else:
        setattr(mod, name, value)


def apply_layer_plan(model: nn.Module, layers: Dict[str, Dict]) -> nn.Module:
    """Slice every listed module in place to its kept channels (works on weights of any values)."""
    modules = dict(model.named_modules())
    for name, spec in layers.items():
        if name not in modules:
            raise PlanError(f"plan names layer {name!r}, which the model does not have")
        mod = modules[name]
        kin, kout, kind = spec.get("keep_in"), spec.get("keep_out"), spec["kind"]
        expected_out = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features \
            if isinstance(mod, nn.Linear) else getattr(mod, "num_features", None)
        if expected_out != spec["out"]:
            raise PlanError(f"layer {name}: plan expects {spec['out']} output channels, the model has {expected_out}")
        expected_in = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features \
            if isinstance(mod, nn.Linear) else getattr(mod, "num_features", None)
        if "in" in spec and expected_in != spec["in"]:
            raise PlanError(f"layer {name}: plan expects {spec['in']} input channels, the model has {expected_in}")
        if isinstance(mod, nn.Conv2d) and kind == "conv":
            _set(mod, "weight", _take(_take(mod.weight.data, kout, 0), kin, 1), True)
            _set(mod, "bias", _take(mod.bias.data if mod.bias is not None else None, kout), True)
            mod.out_channels = len(kout) if kout is not None else mod.out_channels
            mod.in_channels = len(kin) if kin is not None else mod.in_channels
        elif isinstance(mod, nn.Conv2d) and kind == "dwconv":
            _set(mod, "weight", _take(mod.weight.data, kout, 0), True)
            _set(mod, "bias", _take(mod.bias.data if mod.bias is not None else None, kout), True)
            if kout is not None:
                mod.out_channels = mod.in_channels = mod.groups = len(kout)
        elif isinstance(mod, nn.BatchNorm2d):
            if kout is not None:
                _set(mod, "weight", _take(mod.weight.data, kout), True)
                _set(mod, "bias", _take(mod.bias.data, kout), True)
                mod.running_mean = _take(mod.running_mean, kout)
                mod.running_var = _take(mod.running_var, kout)
                mod.num_features = len(kout)
        elif isinstance(mod, nn.Linear):
            _set(mod, "weight", _take(_take(mod.weight.data, kout, 0), kin, 1), True)
            _set(mod, "bias", _take(mod.bias.data if mod.bias is not None else None, kout), True)
            mod.out_features = len(kout) if kout is not None else mod.out_features
            mod.in_features = len(kin) if kin is not None else mod.in_features
        else:
            raise PlanError(f"layer {name}: cannot apply a {kind} plan to {type(mod).__name__}")
    return model


def prune_groups(model: nn.Module, dg: DependencyGraph, keep: Dict[int, List[int]]) -> Dict[str, Dict]:
    """Physically remove channels: ``keep`` maps a prunable group id to its sorted kept indices."""
    for gid, idx in keep.items():
        g = dg.groups[gid]
        if not g.prunable:
            raise PlanError(f"group {gid} ({g.producers}) is not prunable: {g.frozen_reason}")
        if not idx or sorted(set(idx)) != list(idx) or idx[-1] >= g.size or idx[0] < 0:
            raise PlanError(f"group {gid}: kept indices must be sorted, unique, within [0, {g.size})")
    layers = layer_plan(dg, keep, dict(model.named_modules()))
    apply_layer_plan(model, layers)
    return layers


def masked_model(model: nn.Module, dg: DependencyGraph, keep: Dict[int, List[int]]) -> fx.GraphModule:
    """The original model with the removed channels zeroed after every operation (the reference for equivalence).

    Zeroing after each channel-wise op equals zeroing after the last activation of each chain, because
    BatchNorm, activations and depthwise convs act per channel and only the consumer convolution mixes channels.
    """
    from compress.depgraph import _Tracer

    graph = _Tracer(()).trace(model)
    gm = fx.GraphModule(model, graph)
    # Recompute the segments of every node by rebuilding the graph on the same trace.
    seg_by_name = _node_segments(model, dg)
    masks: Dict[str, torch.Tensor] = {}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        segs = seg_by_name.get(node.name)
        if segs is None:
            continue
        total = sum(n for _, n in segs)
        kept = dg.indices(segs, keep)
        if kept is None or len(kept) == total:
            continue
        mask = torch.zeros(total)
        mask[kept] = 1.0
        attr = f"_prune_mask_{len(masks)}"
        gm.register_buffer(attr, mask)
        masks[attr] = mask
        with gm.graph.inserting_after(node):
            get = gm.graph.get_attr(attr)
        with gm.graph.inserting_after(get):
            mul = gm.graph.call_function(mask_channels, (node, get))
        node.replace_all_uses_with(mul, delete_user_cb=lambda u: u is not mul)
    gm.graph.lint()
    gm.recompile()
    return gm


def mask_channels(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multiply channel axis 1 of ``x`` (any rank >= 2) by ``mask``."""
    return x * mask.view((1, -1) + (1,) * (x.dim() - 2))


def _node_segments(model: nn.Module, dg: DependencyGraph) -> Dict[str, Any]:
    env = getattr(dg, "_env_ref", {})
    return {n.name: s for n, s in env.items() if s is not None}


# -- plan files ------------------------------------------------------------------------------------------------

def make_plan(model_meta: Dict[str, Any], layers: Dict[str, Dict], dg: DependencyGraph, keep: Dict[int, List[int]],
              method: str, target: Dict[str, Any], round_to: int, achieved: Dict[str, Any],
              removed_layers: Optional[List[str]] = None, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    groups = []
    for g in dg.prunable_groups():
        groups.append({"group": g.gid, "channels": g.size, "kept": len(keep.get(g.gid, range(g.size))),
                       "producers": g.producers})
    layer_fields = bool(removed_layers) or bool((extra or {}).get("resconv_layers"))
    plan = {
        "format": PLAN_FORMAT, "format_version": PLAN_VERSION if layer_fields else 1, "method": method,
        "target": target,
        "round_to": round_to, "model": model_meta, "layers": layers, "groups": groups,
        "removed_layers": list(removed_layers or []), "achieved": achieved,
    }
    if extra:
        plan.update(extra)
    return plan


def save_plan(plan: Dict[str, Any], path: os.PathLike | str) -> None:
    from compress.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(plan, indent=1).encode())


def load_plan(path: os.PathLike | str) -> Dict[str, Any]:
    path = Path(path)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{path}: plan file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not a JSON prune plan ({exc})") from None
    validate_plan(plan, str(path))
    return plan


def validate_plan(plan: Any, where: str = "plan") -> None:
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise PlanError(f"{where}: not a jetson-compress prune plan (missing format marker)")
    version = plan.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PlanError(f"{where}: plan format_version {version!r} is not a version number (this code reads "
                        f"{PLAN_VERSION})")
    if version > PLAN_VERSION:
        raise PlanError(f"{where}: plan format {version} is newer than this code ({PLAN_VERSION})")
    layers = plan.get("layers")
    if not isinstance(layers, dict):
        raise PlanError(f"{where}: 'layers' missing")
    for key in ("removed_layers", "resconv_layers"):
        names = plan.get(key) or []
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise PlanError(f"{where}: '{key}' must be a list of module names")
        if names and plan.get("format_version", 1) < 2:
            raise PlanError(f"{where}: '{key}' needs plan format_version 2, the plan says {plan.get('format_version')}")
    for name, spec in layers.items():
        if not isinstance(spec, dict):
            raise PlanError(f"{where}: layer {name}: expected a mapping, got {type(spec).__name__}")
        for key in ("kind", "in", "out", "keep_in", "keep_out"):
            if key not in spec:
                raise PlanError(f"{where}: layer {name} lacks '{key}'")
        for key in ("in", "out"):
            if not _is_int(spec[key]) or spec[key] < 1:
                raise PlanError(f"{where}: layer {name} '{key}' must be a positive channel count, got {spec[key]!r}")
        for key, bound in (("keep_in", spec["in"]), ("keep_out", spec["out"])):
            idx = spec[key]
            if idx is not None and (not isinstance(idx, list) or not idx or not all(_is_int(i) for i in idx)
                                    or min(idx) < 0 or max(idx) >= bound or sorted(set(idx)) != idx):
                raise PlanError(f"{where}: layer {name} '{key}' must be sorted unique indices in [0, {bound})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def apply_plan_structure(model: nn.Module, plan: Dict[str, Any]) -> nn.Module:
    """Give a freshly built dense model the pruned shapes of ``plan`` (weights are loaded afterwards)."""
    validate_plan(plan)
    if plan.get("removed_layers") or plan.get("resconv_layers"):
        from compress.layer_pruning import LayerPruningError, apply_layer_structure

        try:
            apply_layer_structure(model, plan)
        except LayerPruningError as exc:
            raise PlanError(str(exc)) from None
    return apply_layer_plan(model, plan["layers"])
