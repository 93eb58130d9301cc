"""torch -> ONNX for TensorRT 8.2 (host side): the dense detector as a static-shape, self-contained ONNX file.

`export_onnx` runs the TorchScript exporter (``dynamo=False``: the dynamo exporter ignores ``opset_version`` and
writes external ``.onnx.data`` files), asserts the opset that was written, folds every constant subgraph, checks
that no shape arithmetic is left, stores the preprocessing contract in ``metadata_props``, checks the ONNX Runtime
output against the torch export-mode output, and writes the file atomically. The trace of the detector leaves
Shape -> Slice -> Concat -> Reshape chains for ``Detector.flatten`` and Constant/Expand/Cast chains for the grid
centres of ``Detector.decode`` (``torch.arange``/``meshgrid`` of static sizes); folding turns them into
initializers, so the detector itself needs no export-specific code.

Constant folding uses onnx-graphsurgeon (``fold_constants().cleanup().toposort()``) when it is installed, else the
small folder in this module (ONNX Runtime evaluates the constant part of the graph once); the info dict says which.

Host side: imports torch, onnx, onnxruntime, numpy (onnx-graphsurgeon optional). Device code must not import it.
Conv-BN folding is a separate stage (``compress``); this module exports whatever model it is given.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from jetson_compress.version import __version__
from runtime.fileio import atomic_write_bytes, sha256_bytes, sha256_file

__all__ = [
    "ExportError",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "METADATA_FORMAT",
    "METADATA_FORMAT_VERSION",
    "SUPPORTED_OPSETS",
    "SHAPE_OPS",
    "export_onnx",
    "fold_constants",
    "load_onnx",
    "onnx_opset",
    "read_metadata",
    "resolve_export_meta",
    "run_onnxruntime",
    "sha256_file",
]

METADATA_FORMAT = "jetson-compress-onnx"
METADATA_FORMAT_VERSION = 1
SUPPORTED_OPSETS = (11, 13)
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores")
# Shape arithmetic that must not survive export: on TensorRT it becomes shape tensors and blocks layer fusion.
SHAPE_OPS = frozenset({"Shape", "Size", "Gather", "Range", "ConstantOfShape"})
# Never folded by the built-in folder: their value is not a function of their inputs.
_NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                                   "Bernoulli", "Multinomial"})
_MAX_FOLD_ELEMENTS = 1 << 24


class ExportError(ValueError):
    """Export failed; the message names the output file and what went wrong."""

    def __init__(self, path: os.PathLike | str, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


def resolve_export_meta(
    model: torch.nn.Module,
    classes: Optional[Sequence[str]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    strides: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """Fill the preprocessing/decoding metadata from the model where not given, and check it fits the model."""
    from compress.augment import IMAGENET_MEAN, IMAGENET_STD

    config = getattr(model, "config", None)
    num_classes = int(getattr(config, "num_classes", 1))
    if classes is None:
        if num_classes != 1:
            raise ValueError(f"the model predicts {num_classes} classes: pass their names (classes=...)")
        classes = ["person"]
    classes = [str(c) for c in classes]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names {classes} for a model that predicts {num_classes} classes")
    model_strides = [int(s) for s in getattr(model, "strides", strides or ())]
    strides = [int(s) for s in (strides if strides is not None else model_strides)]
    if model_strides and strides != model_strides:
        raise ValueError(f"strides {strides} differ from the model's {model_strides}")
    if not strides:
        raise ValueError("strides unknown: pass strides=...")
    mean = [float(v) for v in (mean if mean is not None else IMAGENET_MEAN)]
    std = [float(v) for v in (std if std is not None else IMAGENET_STD)]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean {mean} and std {std} must be 3 values each (RGB), std > 0")
    return {"classes": classes, "mean": mean, "std": std, "strides": strides}


def onnx_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset a model imports (0 when it imports none)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def read_metadata(model: onnx.ModelProto) -> Dict[str, Any]:
    """The metadata written by `export_onnx`, JSON values decoded."""
    out: Dict[str, Any] = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except ValueError:
            out[prop.key] = prop.value
    return out


@contextlib.contextmanager
def _export_state(model: torch.nn.Module) -> Iterator[None]:
    """eval() + export_mode for the duration, restoring every module's flags afterwards (also on error)."""
    training = [(m, m.training) for m in model.modules()]
    had_export_mode = hasattr(model, "export_mode")
    export_mode = getattr(model, "export_mode", None)
    try:
        model.eval()
        if had_export_mode:
            model.export_mode = True
        yield
    finally:
        for module, flag in training:
            module.training = flag
        if had_export_mode:
            model.export_mode = export_mode


def _torch_export(model: torch.nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # NOTE: the TorchScript exporter is deprecated in torch >= 2.9 but is the only one that honours opset 11/13
        # and writes a single self-contained file.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            do_constant_folding=True,
            export_params=True,
            dynamic_axes=None,
        )


# ----------------------------------------------------------------------------------------------- constant folding

def fold_constants(model: onnx.ModelProto, method: str = "auto") -> Tuple[onnx.ModelProto, str]:
    """Fold constant subgraphs (static Shape included), drop dead nodes, sort. Returns (model, folder used).

    ``method``: "auto" (onnx-graphsurgeon when installed, else built-in), "graphsurgeon" or "builtin".
    """
    if method not in ("auto", "graphsurgeon", "builtin"):
        raise ValueError(f"unknown folding method {method!r}: auto, graphsurgeon or builtin")
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    if method in ("auto", "graphsurgeon"):
        try:
            import onnx_graphsurgeon as gs
        except ImportError:
            if method == "graphsurgeon":
                raise ImportError("onnx-graphsurgeon is not installed: pip install onnx-graphsurgeon") from None
        else:
            graph = gs.import_onnx(inferred)
            graph.fold_constants(error_ok=False).cleanup().toposort()
            folded = gs.export_onnx(graph)
            return _restore_model_fields(folded, model), f"onnx-graphsurgeon {gs.__version__}"
    return _restore_model_fields(_fold_builtin(inferred), model), "builtin"


def _restore_model_fields(folded: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    folded.ir_version = original.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(original.opset_import)
    # Intermediate shapes from inference are not part of the contract; keep the graph lean.
    del folded.graph.value_info[:]
    return folded


def _static_shapes(graph: onnx.GraphProto) -> Dict[str, List[int]]:
    shapes: Dict[str, List[int]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[vi.name] = dims
    return shapes


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name in ("value_float", "value_int"):
        return np.array(onnx.helper.get_attribute_value(attr),
                        dtype=np.float32 if attr.name == "value_float" else np.int64)
    if attr.name in ("value_floats", "value_ints"):
        return np.array(list(onnx.helper.get_attribute_value(attr)),
                        dtype=np.float32 if attr.name == "value_floats" else np.int64)
    raise ValueError(f"Constant node {node.name!r}: attribute {attr.name!r} is not supported by the folder")


def _fold_builtin(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding without onnx-graphsurgeon: static Shape -> constant, then ONNX Runtime evaluates every node
    whose inputs are all constant, in one session."""
    import onnxruntime as ort

    graph = model.graph
    shapes = _static_shapes(graph)
    constants: Dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    foldable: List[onnx.NodeProto] = []
    folded_names: set = set()
    kept: List[onnx.NodeProto] = []
    for node in graph.node:
        default_domain = node.domain in ("", "ai.onnx")
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if default_domain and node.op_type == "Constant":
            constants[node.output[0]] = _constant_node_value(node)
            continue
        if default_domain and node.op_type == "Shape" and node.input[0] in shapes:
            dims = shapes[node.input[0]]
            start = end = None
            for a in node.attribute:
                if a.name == "start":
                    start = a.i
                elif a.name == "end":
                    end = a.i
            constants[node.output[0]] = np.array(dims[start:end], dtype=np.int64)
            continue
        inputs_constant = all(not name or name in constants or name in folded_names for name in node.input)
        if (default_domain and not has_subgraph and inputs_constant and node.op_type not in _NONDETERMINISTIC_OPS
                and all(int(np.prod(shapes.get(o, [0]))) <= _MAX_FOLD_ELEMENTS for o in node.output)):
            foldable.append(node)
            folded_names.update(o for o in node.output if o)
            continue
        kept.append(node)

    needed = [name for node in kept for name in node.input if name in folded_names]
    needed += [o.name for o in graph.output if o.name in folded_names]
    needed = list(dict.fromkeys(needed))
    if needed:
        fold_graph = onnx.helper.make_graph(
            foldable, "fold",
            inputs=[],
            outputs=[onnx.helper.make_empty_tensor_value_info(n) for n in needed],
            initializer=[numpy_helper.from_array(np.asarray(constants[n]), n)
                         for n in dict.fromkeys(i for node in foldable for i in node.input) if n in constants],
        )
        fold_model = onnx.helper.make_model(fold_graph, opset_imports=list(model.opset_import))
        fold_model.ir_version = model.ir_version
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(fold_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        constants.update(zip(needed, session.run(needed, {})))

    used = {name for node in kept for name in node.input if name}
    used.update(o.name for o in graph.output)
    const_outputs = [o.name for o in graph.output if o.name in constants]
    if const_outputs:
        raise ValueError(f"graph outputs {const_outputs} are constant: the model does not depend on its input")
    new_graph = onnx.helper.make_graph(
        kept, graph.name, list(graph.input), list(graph.output),
        initializer=[numpy_helper.from_array(np.asarray(constants[n]), n) for n in constants if n in used],
    )
    out = onnx.helper.make_model(new_graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    return out


# ---------------------------------------------------------------------------------------------------- verification

def run_onnxruntime(model: onnx.ModelProto | os.PathLike | str, inputs: Dict[str, np.ndarray],
                    optimize: bool = True) -> Dict[str, np.ndarray]:
    """Run a model once on ONNX Runtime's CPU provider; outputs by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _parity(model: torch.nn.Module, onnx_model: onnx.ModelProto, input_size: int, seed: int) -> Dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, input_size, input_size, generator=generator)
    with torch.no_grad():
        ref_boxes, ref_scores = model(x)
    got = run_onnxruntime(onnx_model, {INPUT_NAME: x.numpy()})
    result: Dict[str, float] = {}
    for name, ref in zip(OUTPUT_NAMES, (ref_boxes.numpy(), ref_scores.numpy())):
        if got[name].shape != ref.shape:
            raise ValueError(f"output {name!r}: ONNX shape {got[name].shape}, torch shape {ref.shape}")
        diff = np.abs(got[name].astype(np.float64) - ref.astype(np.float64))
        result[f"{name}_max_abs_diff"] = float(diff.max())
        result[f"{name}_max_abs_ref"] = float(np.abs(ref).max())
    result["max_abs_diff"] = max(result[f"{n}_max_abs_diff"] for n in OUTPUT_NAMES)
    return result


def _tensor_shape(vi: onnx.ValueInfoProto) -> List[Any]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


# ------------------------------------------------------------------------------------------------------- the export

def export_onnx(
    model: torch.nn.Module,
    path: os.PathLike | str,
    input_size: int,
    opset: int = 13,
    classes: Optional[Sequence[str]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    strides: Optional[Sequence[int]] = None,
    *,
    fold: str = "auto",
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> Dict[str, Any]:
    """Export ``model`` (a `compress.detector.Detector`) to a static-shape ONNX file at ``path``.

    Input ``images`` (1, 3, S, S) float32; outputs ``boxes`` (1, N, 4) xyxy in input pixels and ``scores`` (1, N, C)
    sigmoid — the model's export mode. The model's train/eval and export_mode flags are restored afterwards.

    ``verify`` runs ONNX Runtime on a seeded random input and requires ``|onnx - torch| <= atol + rtol * |torch|``
    for both outputs (the max abs difference is reported in ``info["parity"]``; ``|torch|`` is the output's largest
    magnitude). ``rtol`` is 1e-4 because the boxes come out of ``exp``: the float32 rounding of a deep network's
    regression logits, which differs between ONNX Runtime's and torch's kernels and between CPUs, becomes a relative
    error of the boxes (1.6e-5 measured on an AMD EPYC for a randomly initialised detector whose boxes reach 2248 px;
    below 1e-5 on the Intel Xeon the bound was set on). An export bug moves them by far more. Nothing is written at
    ``path`` if any check fails. Returns an info dict (opset, shapes, ops, sha256, bytes, parity, folding method,
    metadata).
    """
    started = time.perf_counter()
    path = Path(path)
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(path, f"opset {opset} is not supported: use one of {SUPPORTED_OPSETS} (TensorRT 8.2 "
                                f"parses up to opset 13)")
    try:
        meta = resolve_export_meta(model, classes, mean, std, strides)
    except ValueError as exc:
        raise ExportError(path, str(exc)) from None
    input_size = int(input_size)
    if input_size <= 0 or input_size % max(meta["strides"]):
        raise ExportError(path, f"input size {input_size} must be a positive multiple of the largest stride "
                                f"{max(meta['strides'])}")
    reference = next(model.parameters(), None)
    if reference is not None and reference.dtype != torch.float32:
        raise ExportError(path, f"model weights are {reference.dtype}: export a float32 model (TensorRT builds FP16 "
                                f"from FP32 weights)")
    device = reference.device if reference is not None else torch.device("cpu")
    if device.type != "cpu":
        raise ExportError(path, f"model is on {device}: move it to the CPU before export")

    path.parent.mkdir(parents=True, exist_ok=True)
    with _export_state(model), tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        _torch_export(model, torch.zeros(1, 3, input_size, input_size), raw_path, opset)
        extra_files = sorted(p.name for p in Path(tmp).iterdir() if p.name != raw_path.name)
        if extra_files:
            raise ExportError(path, f"the exporter wrote external data files {extra_files}: weights must be embedded")
        raw = onnx.load(str(raw_path), load_external_data=False)
        written = onnx_opset(raw)
        if written != opset:
            raise ExportError(path, f"asked for opset {opset} but the exporter wrote opset {written}")

        try:
            folded, folder = fold_constants(raw, fold)
        except Exception as exc:  # folding errors come from several libraries; report them with the file
            raise ExportError(path, f"constant folding failed ({type(exc).__name__}: {exc})") from exc
        if onnx_opset(folded) != opset:
            raise ExportError(path, f"opset changed to {onnx_opset(folded)} during constant folding")
        left = sorted({f"{n.op_type} ({n.name})" for n in folded.graph.node if n.op_type in SHAPE_OPS})
        if left:
            raise ExportError(path, f"shape arithmetic left after constant folding: {', '.join(left)}; the graph "
                                    f"must be fully static for TensorRT 8.2")
        _check_embedded(folded, path)

        folded.producer_name = "jetson-compress"
        folded.producer_version = __version__
        folded.doc_string = "pedestrian detector exported by jetson-compress for TensorRT 8.2 (Jetson Nano)"
        metadata = {
            "format": METADATA_FORMAT,
            "format_version": METADATA_FORMAT_VERSION,
            "code_version": __version__,
            "classes": meta["classes"],
            "input_size": input_size,
            "mean": meta["mean"],
            "std": meta["std"],
            "strides": meta["strides"],
            "exporter": f"torch.onnx TorchScript (dynamo=False), torch {torch.__version__}",
        }
        onnx.helper.set_model_props(folded, {k: json.dumps(v) for k, v in metadata.items()})
        try:
            onnx.checker.check_model(folded, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(path, f"the ONNX checker rejects the exported model: {exc}") from None

        parity: Dict[str, Any] = {}
        if verify:
            try:
                parity = _parity(model, folded, input_size, seed)
            except ValueError as exc:
                raise ExportError(path, f"ONNX Runtime check: {exc}") from None
            parity.update({"atol": atol, "rtol": rtol, "seed": seed})
            for name in OUTPUT_NAMES:
                if parity[f"{name}_max_abs_diff"] > atol + rtol * parity[f"{name}_max_abs_ref"]:
                    raise ExportError(path, f"ONNX Runtime output {name!r} differs from torch by "
                                            f"{parity[f'{name}_max_abs_diff']:.3g} (tolerance {atol} + {rtol} x |ref|)")

        data = folded.SerializeToString()
        atomic_write_bytes(path, data)

    outputs = {o.name: _tensor_shape(o) for o in folded.graph.output}
    return {
        "path": str(path),
        "opset": opset,
        "ir_version": int(folded.ir_version),
        "input": {"name": INPUT_NAME, "shape": _tensor_shape(folded.graph.input[0])},
        "outputs": outputs,
        "num_points": int(outputs["boxes"][1]),
        "ops": dict(sorted(Counter(n.op_type for n in folded.graph.node).items())),
        "nodes": len(folded.graph.node),
        "folding": folder,
        "parity": parity,
        "metadata": metadata,
        "sha256": sha256_bytes(data),
        "bytes": len(data),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _check_embedded(model: onnx.ModelProto, path: Path) -> None:
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(path, f"initializers stored as external data: {external[:5]}")


def load_onnx(path: os.PathLike | str) -> onnx.ModelProto:
    """Load without pulling external data (a model that has any is rejected by the lint, not silently read)."""
    return onnx.load(str(path), load_external_data=False)
