"""TensorRT 8.2 compatibility lint for ONNX models (host side): will the Jetson Nano's parser take this file?

`lint_onnx(model_or_path)` returns a `LintReport` of `Finding`s (rule, severity, node, op, message). Errors are
what TensorRT 8.2 refuses or what this project forbids (jetson-nano.md); warnings are legal but suspicious. Rules:

=================  ==========================================================================================
opset              default-domain opset > 13 (or none imported)
custom-domain      a node outside the default ONNX domain (plugins are not used by this project)
unsupported-op     an operator the 8.2 parser has no importer for (e.g. HardSwish, LayerNormalization)
forbidden-op       NonMaxSuppression, NonZero, RoiAlign, Mod
dynamic-shape      a graph input or output without a fully static shape (symbolic or unknown dims)
conv-weight        Conv/ConvTranspose weights that are not an initializer or Constant; kernels not 2D/3D
constant-input     Slice/Squeeze/Unsqueeze axes, TopK K, CumSum axis, Clip min/max, ... not constant
resize-constant    Resize/Upsample scales or sizes computed in the graph
resize-mode        Resize mode not nearest/linear, or an unsupported coordinate transformation / nearest mode
pooling            pooling that is not 2D/3D, or MaxPool with an Indices output
external-data      tensors stored outside the .onnx file
dtype              element types other than float32/float16/int64 (int32/bool/int8: warning)
shape-subgraph     (warning) Shape/Size/Gather/Range/ConstantOfShape left: fold constants before export
onnx-checker       the ONNX checker rejects the model
=================  ==========================================================================================

Host side: imports onnx (never torch). Device code must not import it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple, Union

import onnx
from onnx import defs

from export import trt82_ops
from runtime.fileio import atomic_write_bytes

__all__ = ["ERROR", "WARNING", "Finding", "LintError", "LintReport", "RULES", "lint_onnx"]

ERROR = "error"
WARNING = "warning"
RULES = (
    "opset", "custom-domain", "unsupported-op", "forbidden-op", "dynamic-shape", "conv-weight", "constant-input",
    "resize-constant", "resize-mode", "pooling", "external-data", "dtype", "shape-subgraph", "onnx-checker",
)
MODEL = "<model>"  # node name used for findings about the whole model or its inputs/outputs
_SHAPE_OPS = ("Shape", "Size", "Gather", "Range", "ConstantOfShape")


class LintError(ValueError):
    """The file could not be read as an ONNX model at all (the message names it)."""


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "error" | "warning"
    message: str
    node: str = MODEL  # node name (or "<model>", or "input:NAME" / "output:NAME" / "initializer:NAME")
    op: str = ""

    def format(self) -> str:
        where = f"{self.node} ({self.op})" if self.op else self.node
        return f"{self.severity:<7} {self.rule:<16} {where}: {self.message}"


@dataclass
class LintReport:
    path: str
    opset: int
    ir_version: int
    ops: Dict[str, int]
    findings: List[Finding] = field(default_factory=list)

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def rules(self, severity: Optional[str] = None) -> Set[str]:
        return {f.rule for f in self.findings if severity is None or f.severity == severity}

    def to_dict(self) -> Dict[str, Any]:
        return {
            "path": self.path,
            "target": "TensorRT 8.2 (Jetson Nano, JetPack 4.6)",
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "opset": self.opset,
            "ir_version": self.ir_version,
            "ops": self.ops,
            "findings": [asdict(f) for f in self.findings],
        }

    def format(self) -> str:
        nodes = sum(self.ops.values())
        head = (f"{self.path}: {'OK' if self.ok else 'FAILED'} for TensorRT 8.2 — {len(self.errors)} error(s), "
                f"{len(self.warnings)} warning(s) (opset {self.opset}, {nodes} nodes)")
        ordered = self.errors + self.warnings
        return "\n".join([head] + ["  " + f.format() for f in ordered])


# ----------------------------------------------------------------------------------------------------- helpers

def _type_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def _node_label(node: onnx.NodeProto, index: int, prefix: str) -> str:
    return prefix + (node.name or f"#{index}")


class _Scope:
    """One (sub)graph: the names TensorRT 8.2 imports as weights there, and its initializers by name."""

    def __init__(self, graph: onnx.GraphProto, outer: Set[str]) -> None:
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.constants = _constant_names(graph, outer)


def _walk(graph: onnx.GraphProto, prefix: str = "",
          outer: Optional[Set[str]] = None) -> Iterator[Tuple[_Scope, onnx.NodeProto, str]]:
    """Every node with the scope of the graph it lives in, subgraphs (If/Loop/Scan bodies) included."""
    scope = _Scope(graph, outer or set())
    for index, node in enumerate(graph.node):
        label = _node_label(node, index, prefix)
        yield scope, node, label
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g, f"{label}/{attr.name}/", scope.constants)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for k, sub in enumerate(attr.graphs):
                    yield from _walk(sub, f"{label}/{attr.name}[{k}]/", scope.constants)


def _constant_names(graph: onnx.GraphProto, outer: Iterable[str] = ()) -> Set[str]:
    """Names TensorRT 8.2 imports as weights: initializers, Constant outputs, and Identity of either."""
    names = set(outer) | {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            names.update(node.output)
        elif node.op_type == "Identity" and node.input and node.input[0] in names:
            names.update(node.output)
    return names


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _shape_dims(vi: onnx.ValueInfoProto) -> Optional[List[Union[int, str, None]]]:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    dims: List[Union[int, str, None]] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


# ---------------------------------------------------------------------------------------------------- the rules

def _check_opset(model: onnx.ModelProto, out: List[Finding]) -> int:
    opset = 0
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = int(entry.version)
    if opset == 0:
        out.append(Finding("opset", ERROR, "the model imports no default-domain opset"))
    elif opset > trt82_ops.MAX_OPSET:
        out.append(Finding("opset", ERROR, f"opset {opset} > {trt82_ops.MAX_OPSET}: TensorRT 8.2 parses operators up "
                                           f"to opset 13; export with opset_version=13 (torch.onnx.export "
                                           f"dynamo=False)"))
    return opset


def _check_op(node: onnx.NodeProto, label: str, opset: int, out: List[Finding]) -> None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        out.append(Finding("custom-domain", ERROR, f"operator of domain {node.domain!r}: TensorRT 8.2 would need a "
                                                   f"plugin for it", label, op))
        return
    if op in trt82_ops.FORBIDDEN_OPS:
        out.append(Finding("forbidden-op", ERROR, trt82_ops.FORBIDDEN_OPS[op], label, op))
        return
    if op not in trt82_ops.SUPPORTED_OPS:
        try:
            defs.get_schema(op, trt82_ops.MAX_OPSET)
            why = f"{op} has no importer in TensorRT 8.2's ONNX parser"
        except defs.SchemaError:
            why = f"{op} is newer than opset 13, so TensorRT 8.2 cannot parse it"
        out.append(Finding("unsupported-op", ERROR, f"{why}; rewrite it with supported operators", label, op))
    if op in _SHAPE_OPS:
        out.append(Finding("shape-subgraph", WARNING, f"{op} left in the graph: fold constants (onnx-graphsurgeon "
                                                      f"fold_constants) so TensorRT sees static shapes", label, op))


def _origin(name: str, producers: Dict[str, str]) -> str:
    return f"computed by {producers[name]}" if name in producers else "a graph input"


def _check_constant_inputs(node: onnx.NodeProto, label: str, opset: int, constants: Set[str],
                           producers: Dict[str, str], out: List[Finding]) -> None:
    op = node.op_type
    for rule_op, index, what in trt82_ops.CONSTANT_INPUTS:
        if op != rule_op:
            continue
        name = _input(node, index)
        if not name or name in constants:
            continue
        rule = "conv-weight" if op in ("Conv", "ConvTranspose") else "constant-input"
        out.append(Finding(rule, ERROR, f"{what} ({name!r}) is {_origin(name, producers)}: TensorRT 8.2 needs an "
                                        f"initializer or Constant; fold constants or store it as a weight", label, op))
    if op == "Range" and not all(n in constants for n in node.input):
        out.append(Finding("constant-input", WARNING, "Range with computed inputs: TensorRT 8.2 accepts "
                                                      "floating-point Range only from initializers", label, op))


def _check_spatial(node: onnx.NodeProto, label: str, graph_init: Dict[str, onnx.TensorProto],
                   out: List[Finding]) -> None:
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        kernel = _attr(node, "kernel_shape")
        weight = graph_init.get(_input(node, 1))
        rank = len(kernel) if kernel else (len(weight.dims) - 2 if weight is not None else None)
        if rank is not None and rank not in trt82_ops.SPATIAL_RANKS:
            out.append(Finding("conv-weight", ERROR, f"{rank}D convolution: TensorRT 8.2 supports 2D or 3D only",
                               label, op))
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attr(node, "kernel_shape") or []
        if len(kernel) not in trt82_ops.SPATIAL_RANKS:
            out.append(Finding("pooling", ERROR, f"{len(kernel)}D pooling: TensorRT 8.2 supports 2D or 3D only",
                               label, op))
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            out.append(Finding("pooling", ERROR, "MaxPool Indices output is not supported by TensorRT 8.2", label, op))


def _check_resize(node: onnx.NodeProto, label: str, opset: int, constants: Set[str], producers: Dict[str, str],
                  out: List[Finding]) -> None:
    op = node.op_type
    if op == "Upsample":
        scales = _input(node, 1)
        if scales and scales not in constants:
            out.append(Finding("resize-constant", ERROR, f"scales ({scales!r}) are {_origin(scales, producers)}: "
                                                         f"use constant scales", label, op))
        return
    if op != "Resize":
        return
    # opset 10: (X, scales); opset 11+: (X, roi, scales, sizes)
    shape_inputs = [(_input(node, 1), "scales")] if opset <= 10 else [(_input(node, 2), "scales"),
                                                                      (_input(node, 3), "sizes")]
    given = [(name, what) for name, what in shape_inputs if name]
    for name, what in given:
        if name not in constants:
            out.append(Finding("resize-constant", ERROR, f"{what} ({name!r}) is {_origin(name, producers)}: "
                                                         f"TensorRT 8.2 needs constant scales; fold the Shape "
                                                         f"subgraph (fold_constants().cleanup().toposort())", label,
                               op))
    if not given:
        out.append(Finding("resize-constant", ERROR, "Resize without scales or sizes", label, op))
    mode = _attr(node, "mode", "nearest")
    if mode not in trt82_ops.RESIZE_MODES:
        out.append(Finding("resize-mode", ERROR, f"mode {mode!r}: TensorRT 8.2 supports nearest and linear", label,
                           op))
    coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if coord not in trt82_ops.RESIZE_COORDINATE_MODES:
        out.append(Finding("resize-mode", ERROR, f"coordinate_transformation_mode {coord!r} is not supported by "
                                                 f"TensorRT 8.2", label, op))
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in trt82_ops.RESIZE_NEAREST_MODES:
        out.append(Finding("resize-mode", ERROR, f"nearest_mode {nearest!r} is not supported", label, op))


def _check_io_shapes(graph: onnx.GraphProto, out: List[Finding]) -> None:
    initializers = {t.name for t in graph.initializer}
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for vi in values:
            if kind == "input" and vi.name in initializers:
                continue  # old-style weight listed as an input: a constant, not a binding
            dims = _shape_dims(vi)
            where = f"{kind}:{vi.name}"
            if dims is None:
                out.append(Finding("dynamic-shape", ERROR, f"graph {kind} {vi.name!r} has no shape: export with a "
                                                           f"static input shape", where))
                continue
            bad = [d for d in dims if not isinstance(d, int) or d <= 0]
            if bad:
                out.append(Finding("dynamic-shape", ERROR, f"graph {kind} {vi.name!r} has shape {dims}: dims {bad} "
                                                           f"are not fixed; export without dynamic_axes", where))


def _check_external(model: onnx.ModelProto, out: List[Finding]) -> None:
    def tensors() -> Iterator[Tuple[str, onnx.TensorProto]]:
        for graph, node, label in _walk(model.graph):
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield label, a.t
        stack = [model.graph]
        while stack:
            g = stack.pop()
            for t in g.initializer:
                yield f"initializer:{t.name}", t
            for node in g.node:
                for a in node.attribute:
                    stack.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))

    external = [where for where, t in tensors() if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        files = set()
        for where, t in tensors():
            for entry in t.external_data:
                if entry.key == "location":
                    files.add(entry.value)
        out.append(Finding("external-data", ERROR, f"{len(external)} tensor(s) stored in external file(s) "
                                                   f"{sorted(files)} (first: {external[0]}): embed the weights in the "
                                                   f".onnx file (torch.onnx.export dynamo=False, onnx.save without "
                                                   f"save_as_external_data)"))


def _check_types(model: onnx.ModelProto, out: List[Finding]) -> None:
    seen: Dict[str, str] = {}  # type name -> first place it was seen

    def note(elem_type: int, where: str) -> None:
        if elem_type:
            seen.setdefault(_type_name(elem_type), where)

    graph = model.graph
    for vi in list(graph.input) + list(graph.output):
        note(vi.type.tensor_type.elem_type, vi.name)
    for t in graph.initializer:
        note(t.data_type, f"initializer:{t.name}")
    for _, node, label in _walk(graph):
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                note(a.t.data_type, label)
        if node.op_type == "Cast":
            note(int(_attr(node, "to", 0)), label)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        for vi in inferred.graph.value_info:
            note(vi.type.tensor_type.elem_type, vi.name)
    except Exception:  # noqa: BLE001 - inference is a best effort; the checker rule reports broken models
        pass
    for type_name, where in sorted(seen.items()):
        if type_name in trt82_ops.PLAIN_TYPES:
            continue
        if type_name in trt82_ops.TOLERATED_TYPES:
            out.append(Finding("dtype", WARNING, f"{type_name} tensors (first: {where}): TensorRT 8.2 handles them, "
                                                 f"but an exported detector should be float32/float16/int64"))
        else:
            out.append(Finding("dtype", ERROR, f"{type_name} tensors (first: {where}): TensorRT 8.2 takes float32, "
                                               f"float16 and int64 (cast to int32); convert before export"))


def _check_onnx_checker(model: onnx.ModelProto, out: List[Finding]) -> None:
    if any(f.rule == "external-data" for f in out):
        return  # the checker would try to open the external files; that finding says enough
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        out.append(Finding("onnx-checker", ERROR, f"the ONNX checker rejects the model: {first}"))


# ----------------------------------------------------------------------------------------------------- the lint

def load_for_lint(path: os.PathLike | str) -> onnx.ModelProto:
    """Read an ONNX file without following external data references (the lint reports them instead)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    if path.stat().st_size == 0:
        raise LintError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise LintError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.HasField("graph") and not model.opset_import:
        # Some garbage happens to decode as a protobuf message with none of a model's fields.
        raise LintError(f"{path}: not a readable ONNX model (no graph and no opset in the file)")
    return model


def lint_onnx(model: onnx.ModelProto | os.PathLike | str, path: Optional[str] = None) -> LintReport:
    """Check a model (or an ONNX file) against TensorRT 8.2's ONNX parser and this project's rules."""
    if not isinstance(model, onnx.ModelProto):
        path = path or str(model)
        model = load_for_lint(model)
    findings: List[Finding] = []
    opset = _check_opset(model, findings)
    producers = {o: f"node {label} ({node.op_type})" for _, node, label in _walk(model.graph) for o in node.output}
    ops: Dict[str, int] = {}
    for scope, node, label in _walk(model.graph):
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        _check_op(node, label, opset, findings)
        if node.domain not in ("", "ai.onnx"):
            continue
        _check_constant_inputs(node, label, opset, scope.constants, producers, findings)
        _check_spatial(node, label, scope.initializers, findings)
        _check_resize(node, label, opset, scope.constants, producers, findings)
    _check_io_shapes(model.graph, findings)
    _check_external(model, findings)
    _check_types(model, findings)
    _check_onnx_checker(model, findings)
    return LintReport(path=path or "<in-memory model>", opset=opset, ir_version=int(model.ir_version),
                      ops=dict(sorted(ops.items())), findings=findings)


def write_report(report: LintReport, json_path: os.PathLike | str) -> None:
    atomic_write_bytes(json_path, (json.dumps(report.to_dict(), indent=2) + "\n").encode())
