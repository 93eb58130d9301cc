"""Shared fixtures for the export, lint and bundle tests: detectors with non-trivial random weights, one cached
full-size export, and tiny ONNX models built with onnx.helper (no test functions here)."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from compress.detector import Detector, DetectorConfig
from tests.nets import TINY_DETECTOR, torch_threads

# A narrow detector that exports in a fraction of a second (same graph structure as the default one).
SMALL = {**TINY_DETECTOR, "input_size": 128}


def randomized_detector(seed: int = 0, **config: Any) -> Detector:
    """A Detector whose outputs are not degenerate: random BN statistics and prediction heads (a fresh model's
    heads output ~0, which would make any parity check trivially pass)."""
    torch.manual_seed(seed)
    model = Detector(DetectorConfig(**config), pretrained_backbone=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        for head in model.heads:
            head.pred.weight.normal_(0.0, 0.05)
            head.pred.bias.normal_(0.0, 0.5)
    return model.eval()


_TMP_ROOT: List[Path] = []


def scratch_dir() -> Path:
    """A folder that lives for the whole test session (removed at exit)."""
    if not _TMP_ROOT:
        root = Path(tempfile.mkdtemp(prefix="jc-export-tests-"))
        atexit.register(shutil.rmtree, root, True)
        _TMP_ROOT.append(root)
    return Path(tempfile.mkdtemp(dir=_TMP_ROOT[0]))


@functools.lru_cache(maxsize=None)
def exported_default() -> Tuple[Path, Dict[str, Any], Detector]:
    """The default-size detector (320, 2100 points) exported once per session: (onnx path, info, model)."""
    from export.onnx_export import export_onnx

    with torch_threads(1):
        model = randomized_detector(seed=1)
        path = scratch_dir() / "detector.onnx"
        info = export_onnx(model, path, 320)
    return path, info, model


# ------------------------------------------------------------------------------------------ tiny ONNX models

def make_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], initializers: Sequence[onnx.TensorProto] = (),
               opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "tiny", list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def f32(name: str, shape: Optional[Sequence[Any]]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def clean_conv_model(opset: int = 13) -> onnx.ModelProto:
    """Conv (initializer weights) + Relu + nearest Resize with constant scales: passes the lint."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["y"], name="up", mode="nearest"),
    ]
    inits = [const("w", rng.normal(size=(4, 3, 3, 3))), const("b", np.zeros(4)),
             const("scales", [1.0, 1.0, 2.0, 2.0])]
    return make_model(nodes, [f32("x", [1, 3, 8, 8])], [f32("y", [1, 4, 16, 16])], inits, opset)


def _unary(op: str, opset: int = 13, name: Optional[str] = None, **attrs: Any) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name=name or op.lower(), **attrs)
    return make_model([node], [f32("x", [1, 3, 8, 8])], [f32("y", [1, 3, 8, 8])], opset=opset)


def bad_models() -> Dict[str, Tuple[onnx.ModelProto, set, str]]:
    """name -> (model, error rules it must trigger, name of the offending node or '<model>' / 'input:x')."""
    models: Dict[str, Tuple[onnx.ModelProto, set, str]] = {}

    models["opset17"] = (_unary("Relu", opset=17), {"opset"}, "<model>")

    nonzero = make_model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [f32("x", [1, 3, 8, 8])],
                         [helper.make_tensor_value_info("y", TensorProto.INT64, [4, 5])])
    models["nonzero"] = (nonzero, {"forbidden-op"}, "nz")

    nms = make_model(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou", "score"], ["sel"], name="nms")],
        [f32("boxes", [1, 100, 4]), f32("scores", [1, 1, 100])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, [10, 3])],
        [const("k", [10], np.int64), const("iou", [0.5]), const("score", [0.3])])
    models["nms"] = (nms, {"forbidden-op"}, "nms")

    dynamic = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [f32("x", ["N", 3, 8, 8])],
                         [f32("y", ["N", 3, 8, 8])])
    models["dynamic_batch"] = (dynamic, {"dynamic-shape"}, "input:x")

    conv_input = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv_w_input",
                                              kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                            [f32("x", [1, 3, 8, 8]), f32("w", [4, 3, 3, 3])], [f32("y", [1, 4, 8, 8])])
    models["conv_weight_input"] = (conv_input, {"conv-weight"}, "conv_w_input")

    computed = make_model(
        [helper.make_node("Shape", ["x"], ["s"], name="shape"),
         helper.make_node("Cast", ["s"], ["sf"], name="cast", to=TensorProto.FLOAT),
         helper.make_node("Div", ["two_x", "sf"], ["ratio"], name="ratio"),
         helper.make_node("Mul", ["ratio", "sf"], ["scales"], name="scales_mul"),
         helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize_computed", mode="nearest")],
        [f32("x", [1, 3, 8, 8])], [f32("y", [1, 3, 16, 16])], [const("two_x", [1.0, 1.0, 2.0, 2.0])])
    models["resize_computed_scales"] = (computed, {"resize-constant"}, "resize_computed")

    mod = make_model([helper.make_node("Mod", ["x", "m"], ["y"], name="mod", fmod=1)], [f32("x", [1, 3, 8, 8])],
                     [f32("y", [1, 3, 8, 8])], [const("m", [2.0])])
    models["mod"] = (mod, {"forbidden-op"}, "mod")

    models["hardswish_opset14"] = (_unary("HardSwish", opset=14, name="hswish"), {"opset", "unsupported-op"},
                                   "hswish")

    cubic = make_model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="cubic", mode="cubic")],
                       [f32("x", [1, 3, 8, 8])], [f32("y", [1, 3, 16, 16])], [const("scales", [1, 1, 2, 2])])
    models["resize_cubic"] = (cubic, {"resize-mode"}, "cubic")

    slice_axes = make_model([helper.make_node("Slice", ["x", "st", "en", "axes"], ["y"], name="slice_dyn_axes")],
                            [f32("x", [1, 3, 8, 8]), helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
                            [f32("y", [1, 3, 8, 4])], [const("st", [0], np.int64), const("en", [4], np.int64)])
    models["slice_axes_input"] = (slice_axes, {"constant-input"}, "slice_dyn_axes")

    topk = make_model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_dyn", axis=-1)],
                      [f32("x", [1, 100]), helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
                      [f32("v", [1, 10]), helper.make_tensor_value_info("i", TensorProto.INT64, [1, 10])])
    models["topk_k_input"] = (topk, {"constant-input"}, "topk_dyn")

    double = make_model([helper.make_node("Add", ["x", "d"], ["y"], name="add_double")],
                        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 4])],
                        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 4])],
                        [const("d", [1.0, 2.0, 3.0, 4.0], np.float64)])
    models["double"] = (double, {"dtype"}, "<model>")

    layernorm = make_model([helper.make_node("LayerNormalization", ["x", "g"], ["y"], name="ln", axis=-1)],
                           [f32("x", [1, 8])], [f32("y", [1, 8])], [const("g", np.ones(8))], opset=17)
    models["layernorm_opset17"] = (layernorm, {"opset", "unsupported-op"}, "ln")

    custom = make_model([helper.make_node("MyPlugin", ["x"], ["y"], name="plugin", domain="com.example")],
                        [f32("x", [1, 3])], [f32("y", [1, 3])])
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    models["custom_domain"] = (custom, {"custom-domain"}, "plugin")
    return models


def save_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return path
