"""Channel analysis of an ONNX graph: which channels are coupled, which may be removed, and what to edit.

`ChannelGraph(model)` walks the nodes once in topological order and gives every channel position (axis 1 of
every NCHW / (N, C) tensor) a *channel id*. A Conv or Gemm output makes fresh ids (one per filter); ops that act
per channel pass ids through; Concat concatenates them; Split/Slice select them; element-wise ops between two
feature maps **couple** their ids (a union-find merges them); a depthwise Conv couples its input with its output.
A connected set of ids is one *coupled channel*: removing it means removing one filter of every producer in it and
the matching input column of every consumer. Coupled channels with the same producers and the same Split/Slice
regions form a *channel group*, the unit a ratio is applied to.

Channels that cannot be removed safely are *frozen* with a reason: graph inputs and outputs, the inputs of an op
the analysis does not follow (Transpose, Softmax, Reduce*, ...), a Reshape that moves channels into other axes,
grouped (non-depthwise) convolutions, non-constant weights. Everything coupled to a frozen id is left alone;
the rest of the graph is still pruned.

While walking, the analysis records *edits* (which initializer or attribute of which node must be sliced with the
kept-channel mask of which tensor); `export.surgery` applies them. This module only reads the model.

Host side: imports onnx and numpy (never torch). Device code must not import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["ChannelGraph", "ChannelGroup", "Edit", "SurgeryError", "node_label", "opset_of", "constants_to_initializers"]

# Per-channel unary ops: output channel c depends only on input channel c.
UNARY_OPS = frozenset({
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign",
    "HardSwish", "Mish", "ThresholdedRelu", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Erf", "Identity",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Gelu",
})
# Spatial ops that keep channels apart.
POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"})
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


class SurgeryError(ValueError):
    """Channel surgery failed; the message names the file, the node or layer, and what is wrong."""


def opset_of(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A name for messages: the node name, or ``OpType#index`` for unnamed nodes."""
    return node.name or f"{node.op_type}#{index}"


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Replace default-domain Constant nodes by initializers and bypass Identity nodes of constants (in place), so
    every constant is sliceable the same way. Returns how many nodes were removed."""
    graph = model.graph
    keep: List[onnx.NodeProto] = []
    new_inits: List[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            a = node.attribute[0]
            value: Optional[np.ndarray] = None
            if a.name == "value":
                value = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_floats"):
                value = np.array(onnx.helper.get_attribute_value(a), dtype=np.float32)
            elif a.name in ("value_int", "value_ints"):
                value = np.array(onnx.helper.get_attribute_value(a), dtype=np.int64)
            if value is not None:
                new_inits.append(numpy_helper.from_array(np.asarray(value), node.output[0]))
                continue
        keep.append(node)
    # Identity of a constant (the exporter without constant folding routes weights through them): read the
    # constant directly, so that Conv weights are initializers again.
    const_names = {t.name for t in graph.initializer} | {t.name for t in new_inits}
    outputs = {o.name for o in graph.output}
    alias: Dict[str, str] = {}
    kept_nodes: List[onnx.NodeProto] = []
    for node in keep:
        if node.op_type == "Identity" and node.input[0] in const_names and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
            continue
        kept_nodes.append(node)
    if alias:
        for node in kept_nodes:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
    if new_inits or alias:
        del graph.node[:]
        graph.node.extend(kept_nodes)
        graph.initializer.extend(new_inits)
    return len(new_inits) + len(alias)


@dataclass
class Edit:
    """One change the surgery makes to node ``index``; ``kind`` selects the handler in `export.surgery`."""

    kind: str
    index: int
    info: Dict[str, Any]


@dataclass
class ChannelGroup:
    """Coupled channels pruned together: ``members`` are union-find roots, in producer channel order."""

    gid: int
    members: List[int]
    producers: List[str]
    frozen: List[str] = field(default_factory=list)
    tags: List[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def prunable(self) -> bool:
        return not self.frozen


class ChannelGraph:
    """Channel ids, coupling, frozen reasons and edit recipes for one ONNX model (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, source: str = "<model>") -> None:
        self.model = model
        self.source = source
        self.graph = model.graph
        self.opset = opset_of(model)
        if self.opset and not 7 <= self.opset <= 21:
            raise SurgeryError(f"{source}: opset {self.opset} is not supported (9-17 are tested)")
        self.inits: Dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self._const_cache: Dict[str, np.ndarray] = {}
        self.shapes = _infer_shapes(model)
        self.parent: List[int] = []
        self.frozen: Dict[int, str] = {}
        self.tags: Dict[int, Set[str]] = {}
        self.producer: List[Optional[Tuple[int, int]]] = []  # id -> (node index, filter index)
        self.ids: Dict[str, Optional[np.ndarray]] = {}
        self.edits: List[Edit] = []
        self.node_kinds: Dict[int, str] = {}
        self.nodes = list(self.graph.node)
        self.components: Dict[int, List[int]] = {}
        self._l1_cache: Dict[int, np.ndarray] = {}
        self._analyse()

    # ----------------------------------------------------------------------------------------- basic helpers

    def const(self, name: str) -> Optional[np.ndarray]:
        if not name or name not in self.inits:
            return None
        if name not in self._const_cache:
            self._const_cache[name] = numpy_helper.to_array(self.inits[name])
        return self._const_cache[name]

    def rank(self, name: str) -> Optional[int]:
        shape = self.shapes.get(name)
        if shape is not None:
            return len(shape)
        c = self.const(name)
        return None if c is None else c.ndim

    def dim(self, name: str, axis: int) -> Optional[int]:
        shape = self.shapes.get(name)
        if shape is None or axis >= len(shape) or shape[axis] < 0:
            return None
        return shape[axis]

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def _union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def _fresh(self, n: int, producer: Optional[int] = None, frozen: Optional[str] = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if producer is None:
            self.producer.extend([None] * n)
        else:
            self.producer.extend((producer, j) for j in range(n))
        if frozen:
            for i in range(start, start + n):
                self.frozen[i] = frozen
        return np.arange(start, start + n, dtype=np.int64)

    def _freeze(self, ids: Optional[np.ndarray], reason: str) -> None:
        if ids is None:
            return
        for i in ids.tolist():
            self.frozen.setdefault(i, reason)

    def _tag(self, ids: np.ndarray, tag: str) -> None:
        for i in ids.tolist():
            self.tags.setdefault(i, set()).add(tag)

    def _ids_or_frozen(self, name: str, reason: str) -> Optional[np.ndarray]:
        """The ids of a tensor; for an untracked tensor of known channel count, fresh frozen ids."""
        ids = self.ids.get(name)
        if ids is not None:
            return ids
        c = self.dim(name, 1)
        if c is None and self.const(name) is not None and self.const(name).ndim >= 2:
            c = int(self.const(name).shape[1])
        return None if c is None else self._fresh(c, frozen=reason)

    def _freeze_node(self, index: int, reason: str) -> None:
        node = self.nodes[index]
        self.node_kinds[index] = "frozen"
        for name in node.input:
            self._freeze(self.ids.get(name), reason)
        for name in node.output:
            self.ids[name] = None

    # ------------------------------------------------------------------------------------------------ analysis

    def _analyse(self) -> None:
        for vi in self.graph.input:
            if vi.name in self.inits:
                continue
            c = self.dim(vi.name, 1)
            r = self.rank(vi.name)
            self.ids[vi.name] = self._fresh(c, frozen=f"graph input '{vi.name}'") if c and r and r >= 2 else None
        handlers = {
            "Conv": self._conv, "BatchNormalization": self._bn, "InstanceNormalization": self._bn,
            "PRelu": self._prelu, "Concat": self._concat, "Split": self._split, "Slice": self._slice,
            "Resize": self._resize, "Upsample": self._resize, "Flatten": self._flatten, "Reshape": self._reshape,
            "Squeeze": self._squeeze, "Unsqueeze": self._squeeze, "Gemm": self._gemm, "MatMul": self._gemm,
            "Dropout": self._unary, "Cast": self._cast,
        }
        for index, node in enumerate(self.nodes):
            label = node_label(node, index)
            if node.domain not in ("", "ai.onnx"):
                self._freeze_node(index, f"custom-domain op {node.domain}::{node.op_type} '{label}'")
                continue
            if not any(self.ids.get(n) is not None for n in node.input) and node.op_type not in ("Conv", "Gemm",
                                                                                                 "MatMul"):
                # Nothing tracked flows in (constant or shape subgraph, or downstream of a frozen op).
                self.node_kinds[index] = "untracked"
                for name in node.output:
                    self.ids[name] = None
                continue
            if node.op_type in UNARY_OPS:
                self._unary(index, node, label)
            elif node.op_type in POOL_OPS:
                self._pool(index, node, label)
            elif node.op_type in BINARY_OPS:
                self._binary(index, node, label)
            elif node.op_type in handlers:
                handlers[node.op_type](index, node, label)
            else:
                self._freeze_node(index, f"{node.op_type} '{label}' is not followed by the channel analysis")
        for vi in self.graph.output:
            self._freeze(self.ids.get(vi.name), f"graph output '{vi.name}'")

    def _unary(self, index: int, node: onnx.NodeProto, label: str) -> None:
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            return self._freeze_node(index, f"Dropout '{label}' with a mask output")
        self.node_kinds[index] = "passthrough"
        self.ids[node.output[0]] = self.ids.get(node.input[0])

    def _cast(self, index: int, node: onnx.NodeProto, label: str) -> None:
        if _attr(node, "to") not in FLOAT_TYPES:
            return self._freeze_node(index, f"Cast '{label}' to a non-float type")
        self._unary(index, node, label)

    def _pool(self, index: int, node: onnx.NodeProto, label: str) -> None:
        if len(node.output) > 1 and node.output[1]:
            return self._freeze_node(index, f"{node.op_type} '{label}' with an Indices output")
        self._unary(index, node, label)

    def _conv(self, index: int, node: onnx.NodeProto, label: str) -> None:
        w = self.const(node.input[1])
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if w is None or (bias is not None and self.const(bias) is None):
            return self._freeze_node(index, f"Conv '{label}' has weights or bias that are not initializers")
        group = int(_attr(node, "group", 1))
        cout, cin_per_group = int(w.shape[0]), int(w.shape[1])
        x = node.input[0]
        x_ids = self.ids.get(x)
        if x_ids is not None and len(x_ids) != cin_per_group * group:
            return self._freeze_node(index, f"Conv '{label}': input has {len(x_ids)} channels, weights expect "
                                            f"{cin_per_group * group}")
        if group == 1:
            self.node_kinds[index] = "conv"
            self.ids[node.output[0]] = self._fresh(cout, producer=index)
            self.edits.append(Edit("conv", index, {"w": 1, "b": 2 if bias else None, "in": x, "out": node.output[0]}))
        elif cin_per_group == 1 and cout == group:
            self.node_kinds[index] = "dwconv"
            self.ids[node.output[0]] = x_ids
            if x_ids is not None:
                self.edits.append(Edit("dwconv", index, {"w": 1, "b": 2 if bias else None, "t": node.output[0]}))
        else:
            self._freeze_node(index, f"grouped Conv '{label}' (group={group}, {cin_per_group} input and "
                                     f"{cout // group} output channels per group) is not depthwise")
            self.ids[node.output[0]] = self._fresh(cout, frozen=f"output of grouped Conv '{label}'")

    def _bn(self, index: int, node: onnx.NodeProto, label: str) -> None:
        params = list(range(1, len(node.input)))
        if any(self.const(node.input[i]) is None for i in params) or (len(node.output) > 1 and any(node.output[1:])):
            return self._freeze_node(index, f"{node.op_type} '{label}' with non-constant parameters or training "
                                            f"outputs")
        self.node_kinds[index] = "channelwise"
        self.ids[node.output[0]] = self.ids.get(node.input[0])
        self.edits.append(Edit("params", index, {"t": node.input[0], "slices": [(i, 0) for i in params]}))

    def _prelu(self, index: int, node: onnx.NodeProto, label: str) -> None:
        self._binary(index, node, label)

    def _binary(self, index: int, node: onnx.NodeProto, label: str) -> None:
        out = node.output[0]
        r = self.rank(out)
        if r is None or r < 2:
            return self._freeze_node(index, f"{node.op_type} '{label}': output rank unknown or below 2")
        full: List[str] = []
        slices: List[Tuple[int, int]] = []
        channels: Optional[int] = None
        for i, name in enumerate(node.input):
            c = self.const(name)
            if c is not None:
                axis = 1 - (r - c.ndim)
                if axis >= 0 and c.shape[axis] != 1:
                    slices.append((i, axis))
                continue
            if self.rank(name) != r:
                return self._freeze_node(index, f"{node.op_type} '{label}': inputs of different ranks")
            n = self.ids[name].shape[0] if self.ids.get(name) is not None else self.dim(name, 1)
            if n is None:
                return self._freeze_node(index, f"{node.op_type} '{label}': channel count of '{name}' unknown")
            if n == 1 and (self.dim(out, 1) or 1) > 1:
                self._freeze(self.ids.get(name), f"broadcast along channels in {node.op_type} '{label}'")
                continue
            full.append(name)
            channels = n
        if node.op_type == "Pow" and (len(full) != 1 or full[0] != node.input[0]):
            return self._freeze_node(index, f"Pow '{label}' with a feature-map exponent")
        if not full:
            return self._freeze_node(index, f"{node.op_type} '{label}' has no full feature-map input")
        if any(self.ids.get(n) is None for n in full):
            return self._freeze_node(index, f"{node.op_type} '{label}' combines untracked tensors")
        if len({self.ids[n].shape[0] for n in full}) != 1:
            return self._freeze_node(index, f"{node.op_type} '{label}': feature maps with different channel counts")
        for i, axis in slices:
            name = node.input[i]
            if self.const(name).shape[axis] != channels:
                return self._freeze_node(index, f"{node.op_type} '{label}': constant '{name}' does not match "
                                                f"{channels} channels")
        first = self.ids[full[0]]
        for name in full[1:]:
            self._union(first, self.ids[name])
        self.node_kinds[index] = "elementwise"
        self.ids[out] = first
        if slices:
            self.edits.append(Edit("params", index, {"t": out, "slices": slices}))

    def _axis(self, node: onnx.NodeProto, name: str, default: int) -> Optional[int]:
        axis = int(_attr(node, "axis", default))
        r = self.rank(name)
        if axis < 0:
            if r is None:
                return None
            axis += r
        return axis

    def _concat(self, index: int, node: onnx.NodeProto, label: str) -> None:
        axis = self._axis(node, node.output[0], 0)
        if axis is None or (self.rank(node.output[0]) or 0) < 2:
            return self._freeze_node(index, f"Concat '{label}': axis or rank unknown")
        parts = [self._ids_or_frozen(n, f"constant or untracked input '{n}' of Concat '{label}'") for n in node.input]
        if any(p is None for p in parts):
            return self._freeze_node(index, f"Concat '{label}': channel count of an input unknown")
        self.node_kinds[index] = "concat"
        if axis == 1:
            self.ids[node.output[0]] = np.concatenate(parts)
            return
        if len({len(p) for p in parts}) != 1:
            return self._freeze_node(index, f"Concat '{label}': inputs with different channel counts")
        for p in parts[1:]:
            self._union(parts[0], p)
        self.ids[node.output[0]] = parts[0]

    def _split(self, index: int, node: onnx.NodeProto, label: str) -> None:
        x = node.input[0]
        ids = self.ids[x]
        axis = self._axis(node, x, 0)
        if axis is None:
            return self._freeze_node(index, f"Split '{label}': axis unknown")
        if axis != 1:
            self.node_kinds[index] = "passthrough"
            for o in node.output:
                self.ids[o] = ids
            return
        if len(node.input) > 1 and node.input[1]:
            sizes = self.const(node.input[1])
            if sizes is None:
                return self._freeze_node(index, f"Split '{label}': split sizes are not constant")
            sizes = [int(s) for s in sizes.reshape(-1)]
        elif _attr(node, "split") is not None:
            sizes = [int(s) for s in _attr(node, "split")]
        else:
            n = len(node.output)
            if len(ids) % n:
                return self._freeze_node(index, f"Split '{label}': {len(ids)} channels do not split evenly")
            sizes = [len(ids) // n] * n
        if sum(sizes) != len(ids):
            return self._freeze_node(index, f"Split '{label}': sizes {sizes} do not add up to {len(ids)}")
        self.node_kinds[index] = "split"
        start = 0
        for k, (o, s) in enumerate(zip(node.output, sizes)):
            part = ids[start:start + s]
            self._tag(part, f"{label}:{k}")
            self.ids[o] = part
            start += s
        self.edits.append(Edit("split", index, {"sizes": sizes}))

    def _slice(self, index: int, node: onnx.NodeProto, label: str) -> None:
        x, out = node.input[0], node.output[0]
        ids = self.ids[x]
        r = self.rank(x)
        if self.opset < 10:
            starts, ends = _attr(node, "starts"), _attr(node, "ends")
            axes = _attr(node, "axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            vals = [self.const(node.input[i]) if len(node.input) > i and node.input[i] else None for i in range(1, 5)]
            if vals[0] is None or vals[1] is None or (len(node.input) > 3 and node.input[3] and vals[2] is None) or \
                    (len(node.input) > 4 and node.input[4] and vals[3] is None):
                return self._freeze_node(index, f"Slice '{label}': starts/ends/axes/steps are not constant")
            starts, ends = vals[0].tolist(), vals[1].tolist()
            axes = vals[2].tolist() if vals[2] is not None else list(range(len(starts)))
            steps = vals[3].tolist() if vals[3] is not None else [1] * len(starts)
        if any(a < 0 for a in axes) and r is None:
            return self._freeze_node(index, f"Slice '{label}': rank unknown")
        axes = [a + r if a < 0 else a for a in axes]
        if 1 not in axes:
            self.node_kinds[index] = "passthrough"
            self.ids[out] = ids
            return
        k = axes.index(1)
        if steps[k] != 1:
            return self._freeze_node(index, f"Slice '{label}' on the channel axis with step {steps[k]}")
        positions = range(len(ids))[slice(int(starts[k]), int(ends[k]))]
        if len(positions) == 0:
            return self._freeze_node(index, f"Slice '{label}' selects no channel")
        lo, hi = positions.start, positions.stop
        part = ids[lo:hi]
        self._tag(part, f"{label}")
        self.node_kinds[index] = "slice"
        self.ids[out] = part
        self.edits.append(Edit("slice", index, {"t": x, "k": k, "lo": lo, "hi": hi}))

    def _resize(self, index: int, node: onnx.NodeProto, label: str) -> None:
        scales_name = None
        sizes_name = None
        if node.op_type == "Upsample" or self.opset < 11:
            scales_name = node.input[1] if len(node.input) > 1 else None
            scales = _attr(node, "scales") if scales_name is None else self.const(scales_name)
        else:
            scales_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
            sizes_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
            scales = self.const(scales_name) if scales_name else None
        if scales is not None and len(np.asarray(scales).reshape(-1)) > 1:
            if float(np.asarray(scales).reshape(-1)[1]) != 1.0:
                return self._freeze_node(index, f"{node.op_type} '{label}' scales the channel axis")
        elif sizes_name:
            if self.const(sizes_name) is None:
                return self._freeze_node(index, f"Resize '{label}': sizes are not constant")
            self.edits.append(Edit("resize_sizes", index, {"t": node.input[0], "input": 3}))
        elif scales_name and scales is None:
            return self._freeze_node(index, f"{node.op_type} '{label}': scales are not constant")
        self.node_kinds[index] = "passthrough"
        self.ids[node.output[0]] = self.ids[node.input[0]]

    def _flatten(self, index: int, node: onnx.NodeProto, label: str) -> None:
        x = node.input[0]
        shape = self.shapes.get(x)
        if int(_attr(node, "axis", 1)) != 1 or shape is None or any(d < 0 for d in shape[2:]):
            return self._freeze_node(index, f"Flatten '{label}': not axis 1 with static spatial size")
        spatial = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        self.node_kinds[index] = "flatten"
        self.ids[node.output[0]] = np.repeat(self.ids[x], spatial)

    def _reshape(self, index: int, node: onnx.NodeProto, label: str) -> None:
        x, out = node.input[0], node.output[0]
        sin, sout = self.shapes.get(x), self.shapes.get(out)
        target = self.const(node.input[1])
        if sin is None or sout is None or target is None or any(d < 0 for d in sin + sout):
            return self._freeze_node(index, f"Reshape '{label}': shapes or target not static")
        ids = self.ids[x]
        if len(sout) >= 2 and sout[:2] == sin[:2] and int(np.prod(sout[2:])) == int(np.prod(sin[2:])):
            self.node_kinds[index] = "reshape"
            self.ids[out] = ids
            if target[1] > 0:
                self.edits.append(Edit("reshape", index, {"t": x, "per_channel": 1}))
            return
        if len(sout) == 2 and sout[0] == sin[0] and sout[1] == int(np.prod(sin[1:])):
            spatial = int(np.prod(sin[2:])) if len(sin) > 2 else 1
            self.node_kinds[index] = "reshape"
            self.ids[out] = np.repeat(ids, spatial)
            if target[1] > 0:
                self.edits.append(Edit("reshape", index, {"t": x, "per_channel": spatial}))
            return
        self._freeze_node(index, f"Reshape '{label}' moves channels into other axes ({sin} -> {sout})")

    def _squeeze(self, index: int, node: onnx.NodeProto, label: str) -> None:
        x, out = node.input[0], node.output[0]
        sin, sout = self.shapes.get(x), self.shapes.get(out)
        if sin is None or sout is None or len(sin) < 2 or len(sout) < 2 or sin[:2] != sout[:2]:
            return self._freeze_node(index, f"{node.op_type} '{label}' touches the batch or channel axis")
        self.node_kinds[index] = "passthrough"
        self.ids[out] = self.ids[x]

    def _gemm(self, index: int, node: onnx.NodeProto, label: str) -> None:
        a, b = node.input[0], node.input[1]
        w = self.const(b)
        if node.op_type == "MatMul":
            trans_a, trans_b = 0, 0
            if w is None or w.ndim != 2 or self.rank(a) != 2:
                return self._freeze_node(index, f"MatMul '{label}' is not a 2-D input times a constant matrix")
        else:
            trans_a, trans_b = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))
            if w is None or trans_a:
                return self._freeze_node(index, f"Gemm '{label}': B not constant, or transA=1")
        c = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        if c is not None and self.const(c) is None:
            return self._freeze_node(index, f"Gemm '{label}': C is not constant")
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        a_ids = self.ids.get(a)
        if a_ids is not None and len(a_ids) != w.shape[k_axis]:
            return self._freeze_node(index, f"{node.op_type} '{label}': input has {len(a_ids)} features, B "
                                            f"expects {w.shape[k_axis]}")
        n = int(w.shape[n_axis])
        c_axis = None
        if c is not None:
            cv = self.const(c)
            if cv.ndim >= 1 and cv.shape[-1] == n and n > 1:
                c_axis = cv.ndim - 1
        self.node_kinds[index] = "gemm"
        self.ids[node.output[0]] = self._fresh(n, producer=index)
        self.edits.append(Edit("gemm", index, {"in": a, "out": node.output[0], "k_axis": k_axis, "n_axis": n_axis,
                                               "c": 2 if c_axis is not None else None, "c_axis": c_axis}))

    # ------------------------------------------------------------------------------------------- groups, scores

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)

    def l1_scores(self) -> np.ndarray:
        """`filter_l1` of every id, as one array."""
        scores = np.zeros(len(self.parent))
        for i, prod in enumerate(self.producer):
            if prod is not None:
                scores[i] = self.filter_l1(i)
        return scores

    def filter_l1(self, id_: int) -> float:
        """L1 norm of the filter that produces id ``id_`` (0 for ids without a producer)."""
        prod = self.producer[id_]
        if prod is None:
            return 0.0
        index, j = prod
        if index not in self._l1_cache:
            node = self.nodes[index]
            w = np.abs(self.const(node.input[1]).astype(np.float64))
            if node.op_type == "Conv":
                self._l1_cache[index] = w.reshape(w.shape[0], -1).sum(axis=1)
            else:
                trans_b = int(_attr(node, "transB", 0)) if node.op_type == "Gemm" else 0
                self._l1_cache[index] = w.sum(axis=1) if trans_b else w.sum(axis=0)
        return float(self._l1_cache[index][j])

    def groups(self) -> List[ChannelGroup]:
        """Channel groups: coupled channels with the same producers, Split/Slice regions and frozen state."""
        roots = self.roots()
        members: Dict[int, List[int]] = {}
        for i, r in enumerate(roots.tolist()):
            members.setdefault(r, []).append(i)
        self.components = members
        by_key: Dict[Tuple, ChannelGroup] = {}
        order: List[Tuple] = []
        for root in sorted(members):
            ids = members[root]
            producers = sorted({node_label(self.nodes[self.producer[i][0]], self.producer[i][0])
                                for i in ids if self.producer[i] is not None})
            tags = sorted({t for i in ids for t in self.tags.get(i, ())})
            frozen = sorted({self.frozen[i] for i in ids if i in self.frozen})
            key = (tuple(producers), tuple(tags), bool(frozen))
            if key not in by_key:
                by_key[key] = ChannelGroup(len(by_key), [], producers, [], tags)
                order.append(key)
            g = by_key[key]
            g.members.append(root)
            for reason in frozen:
                if reason not in g.frozen:
                    g.frozen.append(reason)
        return [by_key[k] for k in order]

    def layer_names(self) -> Dict[int, Set[str]]:
        """Candidate torch module paths for each Conv/Gemm/MatMul/BN node: from its weight initializer name
        (``<path>.weight``) and from its node name (``/a/b.1/b.1.0/Conv`` -> ``a.b.1.0``)."""
        out: Dict[int, Set[str]] = {}
        for index, node in enumerate(self.nodes):
            if node.op_type not in ("Conv", "Gemm", "MatMul", "BatchNormalization"):
                continue
            names: Set[str] = set()
            if len(node.input) > 1:
                for suffix in (".weight", ".scale"):
                    if node.input[1].endswith(suffix):
                        names.add(node.input[1][: -len(suffix)])
            scoped = module_path_from_node_name(node.name)
            if scoped:
                names.add(scoped)
            out[index] = names
        return out


def module_path_from_node_name(name: str) -> Optional[str]:
    """``/backbone/features.1/conv/conv.0/conv.0.0/Conv`` -> ``backbone.features.1.conv.0.0``.

    The TorchScript exporter names a node by its module scopes; a scope that extends the previous one
    (``conv`` -> ``conv.0``) is the child of a container, so only the new suffix is appended.
    """
    if not name.startswith("/"):
        return None
    parts = name.strip("/").split("/")[:-1]
    if not parts:
        return None
    path: List[str] = []
    previous = ""
    for part in parts:
        if previous and part.startswith(previous + "."):
            path.append(part[len(previous) + 1:])
        else:
            path.append(part)
        previous = part
    return ".".join(path)


def weightless_copy(model: onnx.ModelProto, max_elements: int = 4096) -> onnx.ModelProto:
    """The model with every large initializer replaced by a graph input of the same type and shape: shape
    inference gives the same result (only small constants such as Reshape targets carry shape information) without
    serialising megabytes of weights."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = max(model.ir_version, 4)
    skeleton.opset_import.extend(model.opset_import)
    g = skeleton.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.output.extend(model.graph.output)
    large = set()
    for t in model.graph.initializer:
        if int(np.prod(t.dims)) > max_elements:
            large.add(t.name)
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    g.input.extend(vi for vi in model.graph.input if vi.name not in large)
    return skeleton


def _infer_shapes(model: onnx.ModelProto, strict: bool = False) -> Dict[str, List[int]]:
    """Static shapes (unknown dims as -1) of every tensor ONNX shape inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless_copy(model), strict_mode=strict)
    except Exception:  # noqa: BLE001 - inference failures only cost precision: unknown shapes freeze channels
        if strict:
            raise
        inferred = model
    shapes: Dict[str, List[int]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    return shapes

