"""Dependency graph of coupled channels, derived by tracing a model with ``torch.fx``.

Every convolution (or linear layer) that creates channels opens a *channel space*. Channel-wise operations
(BatchNorm, activations, depthwise convolutions, pooling, nearest upsampling) carry a tensor's spaces through
unchanged; ``torch.cat`` along channels concatenates them (the consumers see them at offsets); an element-wise add
between feature maps couples the spaces of its inputs channel by channel. Coupled spaces form a **group**: the same
channel indices must be removed from all of them (a residual stream, a depthwise conv and its input, ...).

A group is prunable unless one of its spaces reaches a graph output, the network input, or an operation the graph
does not understand (then it is frozen, with the reason recorded).

Host side: imports torch.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

# A tensor's channel axis as an ordered list of whole spaces: [(space_id, length), ...]; None = unknown layout.
Segments = Optional[List[Tuple[int, int]]]

CHANNELWISE_MODULES = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Tanh,
    nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Upsample, nn.GELU,
)
CHANNELWISE_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, nn.functional.relu, nn.functional.relu6, nn.functional.silu,
    nn.functional.hardswish, nn.functional.leaky_relu, nn.functional.max_pool2d, nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d, nn.functional.interpolate, nn.functional.dropout, torch.clamp,
}
CHANNELWISE_METHODS = {"relu", "sigmoid", "clamp", "contiguous", "clone", "float", "half"}
ADD_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub, operator.mul, torch.mul}


class UnionFind:
    def __init__(self) -> None:
        self.parent: List[int] = []

    def make(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class LayerInfo:
    """A module that touches channels: what layout its input and output have."""

    name: str
    kind: str  # "conv", "dwconv", "gconv", "bn", "linear"
    in_segments: Segments
    out_segments: Segments
    out_hw: Tuple[int, int] = (1, 1)
    kernel: Tuple[int, int] = (1, 1)


@dataclass
class ChannelGroup:
    gid: int
    size: int
    spaces: List[int]
    producers: List[str] = field(default_factory=list)  # convs/linears whose output opens one of the spaces
    frozen_reason: Optional[str] = None

    @property
    def prunable(self) -> bool:
        return self.frozen_reason is None


class DependencyGraph:
    """Channel groups of a model. Build with :meth:`build`."""

    def __init__(self) -> None:
        self.uf = UnionFind()
        self.space_len: List[int] = []
        self.space_producer: List[Optional[str]] = []
        self.frozen: Dict[int, str] = {}
        self.layers: Dict[str, LayerInfo] = {}
        self.groups: Dict[int, ChannelGroup] = {}
        self.module_types: Dict[str, type] = {}

    # -- construction ---------------------------------------------------------------------------------------
    def _new_space(self, length: int, producer: Optional[str]) -> int:
        sid = self.uf.make()
        self.space_len.append(length)
        self.space_producer.append(producer)
        return sid

    def _freeze(self, segs: Segments, reason: str) -> None:
        for sid, _ in segs or []:
            self.frozen.setdefault(sid, reason)

    @classmethod
    def build(cls, model: nn.Module, example: torch.Tensor,
              leaf_modules: Sequence[type] = ()) -> "DependencyGraph":
        """Trace ``model`` (its training-mode ``forward``) on ``example`` and derive the channel groups."""
        dg = cls()
        tracer = _Tracer(tuple(leaf_modules))
        graph = tracer.trace(model)
        gm = fx.GraphModule(model, graph)
        modules = dict(model.named_modules())
        shapes = _shapes(gm, example)
        env: Dict[fx.Node, Segments] = {}
        dg._env_ref = env

        def segs_of(arg) -> Segments:
            return env.get(arg) if isinstance(arg, fx.Node) else None

        for node in graph.nodes:
            out_shape = shapes.get(node.name)
            if node.op == "placeholder":
                c = out_shape[1] if out_shape is not None and len(out_shape) >= 2 else 0
                sid = dg._new_space(c, None)
                dg.frozen[sid] = "network input"
                env[node] = [(sid, c)]
            elif node.op == "call_module":
                env[node] = dg._module(node, modules[node.target], segs_of(node.args[0]), out_shape)
            elif node.op == "call_function" or node.op == "call_method":
                env[node] = dg._function(node, [segs_of(a) for a in node.args], out_shape)
            elif node.op == "output":
                for arg in _flatten_args(node.args):
                    dg._freeze(segs_of(arg), "reaches a graph output")
            elif node.op == "get_attr":
                env[node] = None
        dg._make_groups()
        return dg

    def _module(self, node: fx.Node, mod: nn.Module, in_segs: Segments, out_shape) -> Segments:
        name = node.target
        self.module_types[name] = type(mod)
        if isinstance(mod, nn.Conv2d):
            hw = (out_shape[2], out_shape[3]) if out_shape is not None else (1, 1)
            if mod.groups == 1:
                sid = self._new_space(mod.out_channels, name)
                out = [(sid, mod.out_channels)]
                self.layers[name] = LayerInfo(name, "conv", in_segs, out, hw, tuple(mod.kernel_size))
                if in_segs is None:
                    pass  # input layout unknown: its input channels are simply not pruned
                return out
            if mod.groups == mod.in_channels == mod.out_channels:
                self.layers[name] = LayerInfo(name, "dwconv", in_segs, in_segs, hw, tuple(mod.kernel_size))
                return in_segs
            # Grouped (not depthwise): channel structure per group is not modelled; freeze around it.
            self._freeze(in_segs, f"input of grouped conv {name}")
            sid = self._new_space(mod.out_channels, name)
            self.frozen[sid] = f"output of grouped conv {name}"
            out = [(sid, mod.out_channels)]
            self.layers[name] = LayerInfo(name, "gconv", in_segs, out, hw, tuple(mod.kernel_size))
            return out
        if isinstance(mod, nn.Linear):
            sid = self._new_space(mod.out_features, name)
            out = [(sid, mod.out_features)]
            self.layers[name] = LayerInfo(name, "linear", in_segs, out)
            return out
        if isinstance(mod, nn.BatchNorm2d):
            self.layers[name] = LayerInfo(name, "bn", in_segs, in_segs)
            return in_segs
        if isinstance(mod, CHANNELWISE_MODULES):
            return in_segs
        if isinstance(mod, nn.Flatten):
            return in_segs if _spatial_is_one(out_shape, in_segs) else self._opaque(in_segs, f"flatten {name}")
        return self._opaque(in_segs, f"unsupported module {name} ({type(mod).__name__})")

    def _opaque(self, in_segs: Segments, reason: str) -> Segments:
        self._freeze(in_segs, reason)
        return None

    def _function(self, node: fx.Node, arg_segs: List[Segments], out_shape) -> Segments:
        target = node.target
        tensor_args = [s for a, s in zip(node.args, arg_segs) if isinstance(a, fx.Node)]
        if node.op == "call_function" and target in (torch.cat, torch.concat):
            parts = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            segs = self._lookup_list(node, parts)
            if dim in (1, -3) and all(s is not None for s in segs):
                return [seg for s in segs for seg in s]
            for s in segs:
                self._freeze(s, f"cat along dim {dim} at {node.name}")
            return None
        if node.op == "call_function" and target in ADD_FUNCTIONS:
            tensors = [s for a, s in zip(node.args, arg_segs) if isinstance(a, fx.Node)]
            if len(tensors) == 1:
                return tensors[0]  # with a scalar: channel-wise
            a, b = tensors[0], tensors[1]
            if a is not None and b is not None and [n for _, n in a] == [n for _, n in b]:
                for (sa, _), (sb, _) in zip(a, b):
                    self.uf.union(sa, sb)
                return a
            self._freeze(a, f"element-wise op with mismatched layouts at {node.name}")
            self._freeze(b, f"element-wise op with mismatched layouts at {node.name}")
            return None
        if node.op == "call_function" and target in CHANNELWISE_FUNCTIONS:
            return tensor_args[0] if tensor_args else None
        if node.op == "call_method" and target in CHANNELWISE_METHODS:
            return tensor_args[0] if tensor_args else None
        if (node.op == "call_method" and target == "flatten") or (
                node.op == "call_function" and target is torch.flatten):
            src = tensor_args[0] if tensor_args else None
            return src if _spatial_is_one(out_shape, src) else self._opaque(src, f"flatten at {node.name}")
        if node.op == "call_function" and target is operator.getitem:
            src = tensor_args[0] if tensor_args else None
            return self._opaque(src, f"indexing at {node.name}")
        for s in tensor_args:
            self._freeze(s, f"unsupported operation {getattr(target, '__name__', target)} at {node.name}")
        return None

    def _lookup_list(self, node: fx.Node, parts) -> List[Segments]:
        # torch.cat's first argument is a list of nodes; their segments were stored by the caller's env.
        return [self._env_ref.get(p) if isinstance(p, fx.Node) else None for p in parts]

    def _make_groups(self) -> None:
        by_root: Dict[int, ChannelGroup] = {}
        for sid in range(len(self.space_len)):
            root = self.uf.find(sid)
            g = by_root.setdefault(root, ChannelGroup(root, self.space_len[sid], []))
            if self.space_len[sid] != g.size:
                g.frozen_reason = "coupled spaces of different lengths"
            g.spaces.append(sid)
            if self.space_producer[sid]:
                g.producers.append(self.space_producer[sid])
            if sid in self.frozen and g.frozen_reason is None:
                g.frozen_reason = self.frozen[sid]
        self.groups = {gid: g for gid, g in enumerate(by_root.values())}
        self.space_group = {}
        for gid, g in self.groups.items():
            g.gid = gid
            for sid in g.spaces:
                self.space_group[sid] = gid

    # -- queries ----------------------------------------------------------------------------------------------
    def prunable_groups(self) -> List[ChannelGroup]:
        return [g for g in self.groups.values() if g.prunable and g.size > 0 and g.producers]

    def group_of_space(self, sid: int) -> ChannelGroup:
        return self.groups[self.space_group[sid]]

    def indices(self, segs: Segments, keep: Dict[int, List[int]]) -> Optional[List[int]]:
        """Kept channel indices along a tensor's channel axis, given kept indices per group id."""
        if segs is None:
            return None
        out, offset = [], 0
        for sid, n in segs:
            gid = self.space_group[sid]
            kept = keep.get(gid)
            out.extend(offset + i for i in (kept if kept is not None else range(n)))
            offset += n
        return out

    def describe(self) -> List[Dict]:
        return [
            {"group": g.gid, "channels": g.size, "producers": g.producers, "prunable": g.prunable,
             "frozen_reason": g.frozen_reason}
            for g in self.groups.values() if g.size > 0
        ]


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: Tuple[type, ...]) -> None:
        super().__init__()
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, qualname)


def _flatten_args(args) -> List:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten_args(a))
        elif isinstance(a, dict):
            out.extend(_flatten_args(list(a.values())))
        else:
            out.append(a)
    return out


def _spatial_is_one(out_shape, in_segs: Segments) -> bool:
    if out_shape is None or in_segs is None:
        return False
    return len(out_shape) == 2 and out_shape[1] == sum(n for _, n in in_segs)


def _shapes(gm: fx.GraphModule, example: torch.Tensor) -> Dict[str, Tuple[int, ...]]:
    """Output shape of every node, by running the graph once (no grad, eval mode, restored afterwards)."""
    shapes: Dict[str, Tuple[int, ...]] = {}

    class _Interp(fx.Interpreter):
        def run_node(self, n: fx.Node):
            res = super().run_node(n)
            if isinstance(res, torch.Tensor):
                shapes[n.name] = tuple(res.shape)
            return res

    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            _Interp(gm).run(example)
    finally:
        for m, t in modes.items():
            m.train(t)
    return shapes


def build_dependency_graph(model: nn.Module, input_size: int = 320, in_channels: int = 3,
                           example: Optional[torch.Tensor] = None) -> DependencyGraph:
    if example is None:
        example = torch.zeros(1, in_channels, input_size, input_size)
    return DependencyGraph.build(model, example)
