"""Property test of ONNX channel surgery: on random CNN graphs, the slim model equals the masked original.

Graphs are built directly with ``onnx.helper`` (exporting hundreds of torch models would be far too slow):
convolutions (with bias or BatchNorm, every supported activation including SiLU as x*sigmoid(x) and PRelu),
depthwise convolutions, element-wise Add/Sub/Mul/Max between feature maps, per-channel constants, Concat,
Split and channel Slice, nearest Resize (Upsample at opset 9) followed by pooling, a graph output in the middle,
and a head of GlobalAveragePool -> Concat -> Flatten -> Gemm (or a spatial Flatten -> MatMul). Opsets 9, 11, 13
and 17. Hypothesis draws the structure; the weights come from a drawn seed.
"""
from __future__ import annotations

import math
from typing import Callable, List, Tuple

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from export.surgery import _keep_count, prune_onnx
from export.verify import verify_slim

Draw = Callable[[int, int], int]


class GraphBuilder:
    """Builds a random NCHW CNN as an ONNX model; ``live`` holds (tensor, channels, spatial) not yet consumed."""

    def __init__(self, draw: Draw, seed: int, opset: int, dtype=np.float32) -> None:
        self.draw, self.opset, self.dtype = draw, opset, dtype
        self.rng = np.random.default_rng(seed)
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self.extra_outputs: List[Tuple[str, int, int]] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: List[str], n_out: int = 1, **attrs) -> List[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(f"n{op}"), **attrs))
        return outs

    def act(self, x: str, c: int) -> str:
        kind = self.draw(0, 9)
        if kind == 0:
            return x
        if kind == 1:
            return self.node("Relu", [x])[0]
        if kind == 2:
            if self.opset < 11:
                return self.node("Clip", [x], min=0.0, max=6.0)[0]
            return self.node("Clip", [x, self.const(np.array(0.0)), self.const(np.array(6.0))])[0]
        if kind == 3:
            return self.node("LeakyRelu", [x], alpha=0.1)[0]
        if kind == 4:
            return self.node("Sigmoid", [x])[0]
        if kind == 5:
            return self.node("HardSigmoid", [x])[0]
        if kind == 6:
            return self.node("Tanh", [x])[0]
        if kind == 7:  # SiLU / Swish
            return self.node("Mul", [x, self.node("Sigmoid", [x])[0]])[0]
        if kind == 8:
            slope = self.rng.uniform(0.05, 0.3, (c, 1, 1))
            return self.node("PRelu", [x, self.const(slope, "slope")])[0]
        return self.node("Relu", [x])[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1) -> str:
        w = self.rng.standard_normal((cout, cin // group, k, k)) * math.sqrt(2.0 / (cin // group * k * k))
        use_bn = self.draw(0, 1) == 1
        inputs = [x, self.const(w, "w")]
        if not use_bn:
            inputs.append(self.const(self.rng.standard_normal(cout) * 0.1, "b"))
        y = self.node("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)[0]
        if use_bn:
            params = [self.rng.uniform(0.5, 1.5, cout), self.rng.standard_normal(cout) * 0.1,
                      self.rng.standard_normal(cout) * 0.1, self.rng.uniform(0.5, 1.5, cout)]
            y = self.node("BatchNormalization", [y] + [self.const(p, "bn") for p in params], epsilon=1e-5)[0]
        return self.act(y, cout)

    def split(self, x: str, c: int, sizes: List[int]) -> List[str]:
        if self.opset >= 13:
            return self.node("Split", [x, self.const(np.array(sizes, dtype=np.int64))], n_out=len(sizes), axis=1)
        return self.node("Split", [x], n_out=len(sizes), axis=1, split=sizes)

    def channel_slice(self, x: str, lo: int, hi: int) -> str:
        if self.opset < 10:
            return self.node("Slice", [x], starts=[lo], ends=[hi], axes=[1])[0]
        ints = lambda v: self.const(np.array([v], dtype=np.int64))  # noqa: E731
        return self.node("Slice", [x, ints(lo), ints(hi), ints(1)])[0]

    def resize2x(self, x: str) -> str:
        scales = np.array([1.0, 1.0, 2.0, 2.0], dtype=np.float32)
        s = self.name("scales")
        self.inits.append(numpy_helper.from_array(scales, s))  # scales stay float32 in every model
        if self.opset < 10:
            return self.node("Upsample", [x, s], mode="nearest")[0]
        if self.opset < 11:
            return self.node("Resize", [x, s], mode="nearest")[0]
        if self.opset < 13:  # roi is a required input before opset 13
            roi = self.name("roi")
            self.inits.append(numpy_helper.from_array(np.zeros(0, dtype=np.float32), roi))
            return self.node("Resize", [x, roi, s], mode="nearest")[0]
        return self.node("Resize", [x, "", s], mode="nearest")[0]

    def model(self, inputs: List[Tuple[str, List[int]]], outputs: List[Tuple[str, List[int]]]) -> onnx.ModelProto:
        et = TensorProto.FLOAT16 if self.dtype == np.float16 else TensorProto.FLOAT
        graph = helper.make_graph(self.nodes, "random_cnn",
                                  [helper.make_tensor_value_info(n, et, s) for n, s in inputs],
                                  [helper.make_tensor_value_info(n, et, s) for n, s in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 7 if self.opset <= 13 else 8
        onnx.checker.check_model(model)
        return model


def random_cnn(draw: Draw, seed: int, opset: int, size: int = 8) -> onnx.ModelProto:
    b = GraphBuilder(draw, seed, opset)
    c0 = draw(1, 3)
    c1 = draw(2, 16)
    live: List[Tuple[str, int, int]] = [(b.conv("input", c0, c1, k=3), c1, size)]
    for _ in range(draw(2, 9)):
        kind = draw(0, 8)
        t, c, s = live[draw(0, len(live) - 1)]
        if kind == 0:  # plain conv
            cout = draw(2, 16)
            live.append((b.conv(t, c, cout, k=draw(0, 1) * 2 + 1), cout, s))
        elif kind == 1:  # depthwise conv
            live.append((b.conv(t, c, c, k=3, group=c), c, s))
        elif kind == 2:  # element-wise between two feature maps (residual-style)
            y = b.conv(t, c, c, k=1)
            op = ["Add", "Sub", "Mul", "Max"][draw(0, 3)]
            live.append((b.node(op, [t, y])[0], c, s))
        elif kind == 3:  # concat of two maps at the same spatial size
            others = [(u, cu, su) for (u, cu, su) in live if su == s]
            u, cu, _ = others[draw(0, len(others) - 1)]
            if u == t:
                u = b.conv(t, c, cu, k=1)
            live.append((b.node("Concat", [t, u], axis=1)[0], c + cu, s))
        elif kind == 4 and c >= 2:  # split or channel slice, both parts used
            cut = draw(1, c - 1)
            if draw(0, 1):
                p, q = b.split(t, c, [cut, c - cut])
            else:
                p, q = b.channel_slice(t, 0, cut), b.channel_slice(t, cut, c)
            cout = draw(2, 12)
            live.append((b.conv(p, cut, cout, k=1), cout, s))
            live.append((q, c - cut, s))
        elif kind == 5:  # resize then pool back
            up = b.resize2x(t)
            pool = ["MaxPool", "AveragePool"][draw(0, 1)]
            live.append((b.node(pool, [up], kernel_shape=[2, 2], strides=[2, 2])[0], c, s))
        elif kind == 6:  # per-channel constant
            shape = (c, 1, 1) if draw(0, 1) else (1, c, 1, 1)
            op = ["Mul", "Add", "Div"][draw(0, 2)]
            value = b.rng.uniform(0.5, 1.5, shape)
            live.append((b.node(op, [t, b.const(value, "pc")])[0], c, s))
        elif kind == 7 and not b.extra_outputs:  # an intermediate graph output: its channels must be left alone
            b.extra_outputs.append((t, c, s))
            cout = draw(2, 8)
            live.append((b.conv(t, c, cout, k=1), cout, s))
        else:
            live.append((b.node("Relu", [t])[0], c, s))
    used = {i for node in b.nodes for i in node.input}
    ends = [(t, c, s) for (t, c, s) in live if t not in used]
    n_cls = draw(2, 6)
    if draw(0, 3) == 0 and len(ends) == 1:  # spatial flatten into MatMul (channels repeat over H*W columns)
        t, c, s = ends[0]
        pooled = b.node("MaxPool", [t], kernel_shape=[s // 2, s // 2], strides=[s // 2, s // 2])[0]
        flat = b.node("Flatten", [pooled], axis=1)[0]
        w = b.rng.standard_normal((c * 4, n_cls)) / math.sqrt(c * 4)
        logits = b.node("MatMul", [flat, b.const(w, "fc")])[0]
    else:
        pooled = [b.node("GlobalAveragePool", [t])[0] for t, _, _ in ends]
        cat = b.node("Concat", pooled, axis=1)[0] if len(pooled) > 1 else pooled[0]
        feat = sum(c for _, c, _ in ends)
        flat = b.node("Flatten", [cat], axis=1)[0]
        trans_b = draw(0, 1)
        w = b.rng.standard_normal((n_cls, feat) if trans_b else (feat, n_cls)) / math.sqrt(feat)
        logits = b.node("Gemm", [flat, b.const(w, "fc"), b.const(b.rng.standard_normal(n_cls) * 0.1, "fcb")],
                        transB=trans_b)[0]
    outputs = [(logits, [1, n_cls])] + [(t, [1, c, s, s]) for t, c, s in b.extra_outputs]
    return b.model([("input", [1, c0, size, size])], outputs)


def _check_one(data, max_opset_choice: int = 3) -> None:
    opset = [9, 11, 13, 17][data.draw(st.integers(0, max_opset_choice), label="opset")]
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    draw: Draw = lambda lo, hi: data.draw(st.integers(lo, hi))  # noqa: E731
    model = random_cnn(draw, seed, opset)
    ratio = data.draw(st.sampled_from([0.25, 0.5, 0.75]), label="ratio")
    round_to = data.draw(st.sampled_from([1, 2, 4]), label="round_to")
    result = prune_onnx(model, ratio=ratio, round_to=round_to)
    report = result.report
    # Every prunable group keeps exactly the rounded count; left-alone groups keep everything and say why.
    for row in report["groups"]:
        if row["status"] == "pruned":
            assert row["kept"] == _keep_count(row["channels"], ratio, round_to) < row["channels"]
        elif row["status"] == "left alone":
            assert row["kept"] == row["channels"] and row["reasons"]
    assert report["params_after"] <= report["params_before"]
    assert report["opset"] == opset
    check = verify_slim(model, result.model, result.removed_channels, n_random=1, seed=seed,
                        raise_on_failure=False)
    assert check["ok"], (check, report["groups"])
    assert check["max_rel"] <= 1e-4


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_slim_equals_masked_on_random_graphs(data) -> None:
    _check_one(data)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_slim_equals_masked_on_random_graphs_slow(data) -> None:
    _check_one(data)


def test_random_graphs_are_pruned_and_not_trivially_equal() -> None:
    """The property is not vacuous: over fixed seeds, most graphs lose channels, and masking changes outputs."""
    pruned = changed = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        draw: Draw = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
        model = random_cnn(draw, seed, 13)
        result = prune_onnx(model, ratio=0.5, round_to=1)
        check = verify_slim(model, result.model, result.removed_channels, n_random=1)
        assert check["max_rel"] <= 1e-4
        pruned += result.report["params_after"] < result.report["params_before"]
        changed += check["masked_vs_original_max_abs"] > 1e-3
    assert pruned >= 18
    assert changed >= 15
