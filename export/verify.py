"""Verification of channel surgery: the slim model against the original with the removed channels masked.

The reference is the *original* graph with a ``Mul`` by a 0/1 channel mask inserted in front of every
channel-mixing consumer (non-grouped Conv, Gemm, MatMul) whose input lost channels, i.e. after the whole
per-channel chain (BN, activation, depthwise conv, pooling, resize, add) of those channels. That is exactly what
the slim model computes: a removed channel contributes nothing to any mixing op, and never reaches an output
(graph outputs are frozen by the analysis). Masking the producer's weights instead would not be equivalent
(``act(BN(0))`` is not 0). ``masked_vs_original`` in the result shows the masks did change the outputs, so a
pass is not vacuous.

Tolerances: per output, ``max_rel = max|slim - masked| / max(max|masked|, 1)`` -- absolute for outputs within
[-1, 1], relative to the output's range above (an element-wise relative error would measure float cancellation).
fp32: 1e-4. fp16 models: 1e-2 -- fp16 has a unit roundoff of 4.9e-4; removing channels changes the blocking
and the summation order of every mixing op, so each layer may move a result by a few ulps, and those differences
compound over depth; 1e-2 is about 20 ulps at 1, still far below the effect of a wrong channel (the masked
channels change outputs by O(1)).

Host side: imports onnx, onnxruntime, numpy (cv2 only for real images). Never torch.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper

from export.onnx_graph import SurgeryError

__all__ = ["FP16_TOLERANCE", "FP32_TOLERANCE", "image_inputs", "make_session", "masked_model", "random_inputs",
           "verify_slim"]

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
_NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
             onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def make_session(model: Union[onnx.ModelProto, str, os.PathLike], threads: int = 0):
    """An ONNX Runtime CPU session (``threads=0``: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # NOTE: graph optimisations and weight pre-packing cost 1-2 s per session on a 45 MB model (layout transforms
    # of every conv weight) and buy nothing for a handful of runs; unoptimised execution also keeps the two models
    # op-for-op comparable. Spinning threads only steal CPU from the other session on a shared 2-core host.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _graph_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _float_dtype(model: onnx.ModelProto) -> Any:
    """float16 when most float weights are fp16 (an fp16 model), else float32."""
    kinds = [t.data_type for t in model.graph.initializer
             if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    return np.float16 if kinds and kinds.count(onnx.TensorProto.FLOAT16) * 2 > len(kinds) else np.float32


def random_inputs(model: onnx.ModelProto, n: int = 2, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    """``n`` feeds of standard-normal values; symbolic dims are set to 1 (the batch)."""
    rng = np.random.default_rng(seed)
    feeds: List[Dict[str, np.ndarray]] = []
    for _ in range(n):
        feed: Dict[str, np.ndarray] = {}
        for vi in _graph_inputs(model):
            t = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
            dtype = _NP_TYPES.get(t.elem_type)
            if dtype is None:
                raise SurgeryError(f"input '{vi.name}' has element type {t.elem_type}: pass inputs explicitly")
            value = rng.standard_normal(dims)
            feed[vi.name] = value.astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(dims, dtype)
        feeds.append(feed)
    return feeds


def image_inputs(model: onnx.ModelProto, paths: Sequence[Union[str, os.PathLike]]) -> List[Dict[str, np.ndarray]]:
    """Real images as feeds for a single NCHW 3-channel input: letterboxed to the input size, RGB, normalised
    with the model's ``mean``/``std`` metadata when present (else scaled to [0, 1])."""
    import json

    import cv2

    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise SurgeryError(f"image inputs need a model with one input, this one has {len(inputs)}")
    vi = inputs[0]
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or dims[2] <= 0 or dims[3] <= 0:
        raise SurgeryError(f"input '{vi.name}' has shape {dims}: images need a static (N, 3, H, W) input")
    meta = {p.key: p.value for p in model.metadata_props}
    mean = np.array(json.loads(meta["mean"]) if "mean" in meta else [0.0] * 3, dtype=np.float32)
    std = np.array(json.loads(meta["std"]) if "std" in meta else [1.0] * 3, dtype=np.float32)
    h, w = dims[2], dims[3]
    dtype = _NP_TYPES.get(vi.type.tensor_type.elem_type, np.float32)
    feeds = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SurgeryError(f"{path}: not a readable image")
        scale = min(h / img.shape[0], w / img.shape[1])
        nh, nw = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
        canvas = np.full((h, w, 3), 114, dtype=np.uint8)
        top, left = (h - nh) // 2, (w - nw) // 2
        canvas[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        x = (canvas[:, :, ::-1].astype(np.float32) / 255.0 - mean) / std
        feeds.append({vi.name: np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(dtype)})
    return feeds


def masked_model(original: onnx.ModelProto, removed_channels: Dict[str, Dict[str, Any]]) -> onnx.ModelProto:
    """A copy of ``original`` where every tensor in ``removed_channels`` is multiplied by its 0/1 channel mask
    before any node reads it (``{tensor: {"channels": C, "rank": r, "removed": [...]}}``)."""
    masked = onnx.ModelProto()
    masked.CopyFrom(original)
    g = masked.graph
    dtype = _float_dtype(original)
    new_nodes: List[onnx.NodeProto] = []
    renamed: Dict[str, str] = {}
    for k, (tensor, spec) in enumerate(sorted(removed_channels.items())):
        mask = np.ones(spec["channels"], dtype=dtype)
        mask[spec["removed"]] = 0
        mask = mask.reshape((1, -1) + (1,) * (int(spec["rank"]) - 2))
        mask_name, out_name = f"__surgery_mask_{k}", f"{tensor}__masked"
        g.initializer.append(numpy_helper.from_array(mask, mask_name))
        new_nodes.append(onnx.helper.make_node("Mul", [tensor, mask_name], [out_name], name=f"__surgery_mask_mul_{k}"))
        renamed[tensor] = out_name
    nodes = list(g.node)
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    # Each Mul goes right after the producer of its tensor (or first, for graph inputs), keeping the order valid.
    producer_pos = {o: i for i, node in enumerate(nodes) for o in node.output}
    ordered: List[onnx.NodeProto] = []
    by_pos: Dict[int, List[onnx.NodeProto]] = {}
    for mul in new_nodes:
        by_pos.setdefault(producer_pos.get(mul.input[0], -1), []).append(mul)
    ordered.extend(by_pos.get(-1, []))
    for i, node in enumerate(nodes):
        ordered.append(node)
        ordered.extend(by_pos.get(i, []))
    del g.node[:]
    g.node.extend(ordered)
    del g.value_info[:]
    return masked


def _compare(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], acc: Dict[str, Dict[str, float]]) -> None:
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape:
            raise SurgeryError(f"output '{name}': slim shape {g.shape}, original shape {r.shape}")
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        d = np.abs(g64 - r64)
        row = acc.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "max_abs_ref": 0.0})
        if d.size:
            row["max_abs"] = max(row["max_abs"], float(np.nanmax(d)))
            row["max_abs_ref"] = max(row["max_abs_ref"], float(np.nanmax(np.abs(r64))))
        row["max_rel"] = row["max_abs"] / max(row["max_abs_ref"], 1.0)
        if not np.isfinite(g64).all() and np.isfinite(r64).all():
            row["max_rel"] = row["max_abs"] = float("inf")


def verify_slim(original: Union[onnx.ModelProto, str, os.PathLike], slim: Union[onnx.ModelProto, str, os.PathLike],
                removed_channels: Dict[str, Dict[str, Any]], inputs: Optional[List[Dict[str, np.ndarray]]] = None,
                n_random: int = 2, seed: int = 0, atol: Optional[float] = None, threads: int = 0,
                source: str = "<model>", raise_on_failure: bool = True) -> Dict[str, Any]:
    """Run the slim model and the masked original on ONNX Runtime (random inputs, plus ``inputs`` if given);
    report max abs / rel differences per output and fail (`VerificationError`) above the tolerance."""
    from export.surgery import VerificationError

    if not isinstance(original, onnx.ModelProto):
        source = str(original)
        original = onnx.load(str(original))
    if not isinstance(slim, onnx.ModelProto):
        slim = onnx.load(str(slim))
    dtype = _float_dtype(original)
    tol = float(atol if atol is not None else (FP16_TOLERANCE if dtype == np.float16 else FP32_TOLERANCE))
    feeds = random_inputs(original, n_random, seed) + list(inputs or [])
    reference = make_session(masked_model(original, removed_channels), threads)
    candidate = make_session(slim, threads)
    plain = make_session(original, threads) if removed_channels else None
    names = [o.name for o in reference.get_outputs()]
    acc: Dict[str, Dict[str, float]] = {}
    effect: Dict[str, Dict[str, float]] = {}
    for k, feed in enumerate(feeds):
        ref = dict(zip(names, reference.run(names, feed)))
        _compare(ref, dict(zip(names, candidate.run(names, feed))), acc)
        if plain is not None and k == 0:  # the effect of the masks, on the first input only (it is a sanity figure)
            _compare(ref, dict(zip(names, plain.run(names, feed))), effect)
    result: Dict[str, Any] = {
        "max_abs": max((o["max_abs"] for o in acc.values()), default=0.0),
        "max_rel": max((o["max_rel"] for o in acc.values()), default=0.0),
        "tolerance": tol, "dtype": np.dtype(dtype).name, "inputs": len(feeds), "random_inputs": n_random,
        "outputs": acc, "mask_points": len(removed_channels),
        "masked_vs_original_max_abs": max((o["max_abs"] for o in effect.values()), default=0.0),
    }
    result["ok"] = bool(result["max_rel"] <= tol)
    if not result["ok"] and raise_on_failure:
        worst = max(acc, key=lambda n: acc[n]["max_rel"])
        raise VerificationError(f"{source}: slim model differs from the masked original at output '{worst}' by "
                                f"{acc[worst]['max_rel']:.3g} (max|diff| / max(max|ref|, 1); tolerance {tol})")
    return result
