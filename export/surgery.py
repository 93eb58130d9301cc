"""Channel surgery on ONNX: a physically smaller ONNX file, from a prune plan or from the graph alone.

Two ways to decide what to remove, one way to remove it:

* ``surgery_with_plan(dense_onnx, plan, out)`` applies the compress stage's prune plan (`compress.pruning`) to
  the dense export of the pruned weights. Plan layers are matched to nodes by initializer name
  (``<module>.weight``) or, when the exporter folded BatchNorm into the Conv and renamed its weights
  (``onnx::Conv_1060``), by node name (``/backbone/features.0/features.0.0/Conv``). Folded BatchNorm layers need
  no node of their own: they share their Conv's output channels. Every kept index the graph's channel coupling
  implies is checked against the plan; a disagreement is an error, not a silent re-interpretation.
* ``surgery(in, out, ratio=R)`` (ONNX-native) analyses the graph (`export.onnx_graph`), and in every prunable
  channel group keeps the channels with the largest filter L1 norm (summed over the group's producers), a
  fraction ``1 - R`` rounded to a multiple of ``round_to``. Frozen groups are left alone and listed with reasons.

The slim model keeps opset, IR version, metadata and names; it must pass ``onnx.checker`` and strict shape
inference before it is written (atomically). ``verify_against_torch`` compares a slim detector with the physically
pruned torch checkpoint; `export.verify` compares any slim model with its masked original.

Host side: imports onnx and numpy; torch only inside ``verify_against_torch`` and plan loading.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import numpy as np
import onnx
from onnx import numpy_helper

from export.onnx_graph import ChannelGraph, ChannelGroup, SurgeryError, constants_to_initializers, node_label, \
    opset_of
from runtime.fileio import atomic_write_bytes, sha256_bytes

__all__ = ["CRITERIA", "SurgeryError", "SurgeryResult", "VerificationError", "count_macs_params", "prune_onnx",
           "surgery", "surgery_with_plan", "verify_against_torch"]

CRITERIA = ("l1",)
ModelLike = Union[onnx.ModelProto, str, os.PathLike]


class VerificationError(SurgeryError):
    """The slim model's outputs differ from the reference beyond the tolerance."""


@dataclass
class SurgeryResult:
    """The slim model, the JSON report, and the removed channels at every mask point (for `export.verify`)."""

    model: onnx.ModelProto
    report: Dict[str, Any]
    removed_channels: Dict[str, Dict[str, Any]] = field(default_factory=dict)


def _load(model: ModelLike) -> Tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "<model>"
    path = Path(model)
    if not path.is_file():
        raise SurgeryError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise SurgeryError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def _keep_count(n: int, ratio: float, round_to: int) -> int:
    """Channels kept of ``n`` when removing a fraction ``ratio``, rounded to a multiple of ``round_to``."""
    raw = n * (1.0 - ratio)
    keep = int(round(raw / round_to)) * round_to
    return int(min(n, max(keep, round_to, 1)))


# ------------------------------------------------------------------------------------------------- selection

def _select_by_ratio(cg: ChannelGraph, groups: List[ChannelGroup], ratio: float, round_to: int,
                     criterion: str) -> Tuple[Set[int], List[Dict[str, Any]]]:
    if criterion not in CRITERIA:
        raise SurgeryError(f"unknown criterion {criterion!r}; choose from {CRITERIA}")
    removed: Set[int] = set()
    rows: List[Dict[str, Any]] = []
    l1 = cg.l1_scores()
    for g in groups:
        row = _group_row(g)
        if not g.prunable:
            row.update(kept=g.size, status="left alone", reasons=g.frozen[:5] + (
                [f"... and {len(g.frozen) - 5} more"] if len(g.frozen) > 5 else []))
        else:
            keep = _keep_count(g.size, ratio, round_to)
            if keep >= g.size:
                row.update(kept=g.size, status="kept", reasons=[f"{g.size} channels: nothing to remove after "
                                                                f"rounding to {round_to}"])
            else:
                scores = np.array([l1[cg.components[root]].sum() for root in g.members])
                order = np.argsort(-scores, kind="stable")[:keep]
                kept_roots = {g.members[j] for j in order.tolist()}
                removed.update(r for r in g.members if r not in kept_roots)
                row.update(kept=keep, status="pruned")
        rows.append(row)
    return removed, rows


def _group_row(g: ChannelGroup) -> Dict[str, Any]:
    producers = g.producers if len(g.producers) <= 6 else g.producers[:6] + [f"... {len(g.producers) - 6} more"]
    return {"group": g.gid, "channels": g.size, "producers": producers}


def _select_by_plan(cg: ChannelGraph, groups: List[ChannelGroup], plan: Dict[str, Any],
                    source: str) -> Tuple[Set[int], List[Dict[str, Any]], Dict[str, Any]]:
    if plan.get("removed_layers"):
        # NOTE: layer removal changes the graph topology; it is applied in torch before export, not here.
        raise SurgeryError(f"{source}: the plan removes layers {plan['removed_layers'][:3]}: export the model with "
                           f"those layers removed; ONNX surgery only removes channels")
    by_path: Dict[str, List[int]] = {}
    for index, names in cg.layer_names().items():
        for name in names:
            by_path.setdefault(name, []).append(index)
    roots = cg.roots()
    removed: Set[int] = set()
    kept: Dict[int, str] = {}
    matched: Dict[str, int] = {}
    folded_bn: List[str] = []
    unmatched_unchanged: List[str] = []
    expected_kind = {"conv": ("conv",), "dwconv": ("dwconv",), "linear": ("gemm",), "bn": ("channelwise",)}
    for name, spec in plan["layers"].items():
        candidates = [i for i in by_path.get(name, []) if cg.node_kinds.get(i) in expected_kind.get(spec["kind"], ())]
        if len(candidates) > 1:
            raise SurgeryError(f"{source}: plan layer {name} matches {len(candidates)} nodes "
                               f"({[node_label(cg.nodes[i], i) for i in candidates[:3]]})")
        if not candidates:
            if spec["kind"] == "bn":
                folded_bn.append(name)
                continue
            if spec["keep_in"] is None and spec["keep_out"] is None:
                unmatched_unchanged.append(name)
                continue
            raise SurgeryError(f"{source}: plan layer {name} ({spec['kind']}) removes channels, but no "
                               f"{'/'.join(expected_kind.get(spec['kind'], ('?',)))} node matches it by initializer "
                               f"name '{name}.weight' or node name '/{name.replace('.', '/')}/...'")
        index = candidates[0]
        matched[name] = index
        node = cg.nodes[index]
        out_t = node.output[0] if spec["kind"] != "bn" else node.input[0]
        ids = cg.ids.get(out_t)
        n_out = len(ids) if ids is not None else None
        if n_out is not None and n_out != spec["out"]:
            raise SurgeryError(f"{source}: plan layer {name} has {spec['out']} output channels, node "
                               f"'{node_label(node, index)}' has {n_out}")
        if spec["kind"] in ("conv", "linear") and ids is not None:
            keep_set = set(spec["keep_out"]) if spec["keep_out"] is not None else set(range(len(ids)))
            for pos, root in enumerate(roots[ids].tolist()):
                if pos in keep_set:
                    kept[root] = name
                else:
                    removed.add(root)
    clash = sorted(r for r in removed if r in kept)
    if clash:
        r = clash[0]
        raise SurgeryError(f"{source}: the plan keeps a channel in layer {kept[r]} that is coupled in the ONNX graph "
                           f"to a channel it removes elsewhere ({len(clash)} such channels): plan and graph disagree")
    rows: List[Dict[str, Any]] = []
    for g in groups:
        gone = sum(1 for r in g.members if r in removed)
        row = _group_row(g)
        if gone and not g.prunable:
            raise SurgeryError(f"{source}: the plan removes channels of producers {g.producers[:3]}, which cannot be "
                               f"removed in this graph: {g.frozen[0]}")
        row.update(kept=g.size - gone, status="pruned" if gone else ("left alone" if not g.prunable else "kept"))
        if not g.prunable:
            row["reasons"] = g.frozen[:5]
        rows.append(row)
    info = {"matched_layers": len(matched), "folded_bn_layers": len(folded_bn),
            "unmatched_unchanged_layers": len(unmatched_unchanged), "_matched": matched}
    return removed, rows, info


def _check_plan_against_graph(cg: ChannelGraph, keep_of, plan: Dict[str, Any], matched: Dict[str, int],
                              source: str) -> None:
    """Every kept index the coupled graph implies must equal the plan's (keep_in of convs/linears included)."""
    for name, index in matched.items():
        spec = plan["layers"][name]
        node = cg.nodes[index]
        checks = []
        if spec["kind"] in ("conv", "linear"):
            checks = [("keep_in", node.input[0], spec["in"]), ("keep_out", node.output[0], spec["out"])]
        else:
            checks = [("keep_out", node.input[0] if spec["kind"] == "bn" else node.output[0], spec["out"])]
        for key, tensor, total in checks:
            mask = keep_of(tensor)
            if mask is None:
                continue
            got = np.flatnonzero(mask).tolist()
            want = spec[key] if spec[key] is not None else list(range(total))
            if len(mask) != total and key == "keep_in":
                continue  # flattened Gemm input: positions repeat per spatial cell; keep_out checks suffice
            if got != want:
                raise SurgeryError(f"{source}: layer {name} ({node_label(node, index)}): the plan keeps "
                                   f"{len(want)} {key[5:]}put channels, the graph's coupling keeps {len(got)} "
                                   f"(first difference at {next((a for a, b in zip(got, want) if a != b), '?')})")


# ------------------------------------------------------------------------------------------------- apply

class _Editor:
    """Replaces node inputs' initializers with sliced copies (shared initializers are copied, not mutated)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.index = {t.name: i for i, t in enumerate(self.graph.initializer)}
        self.uses = Counter(n for node in self.graph.node for n in node.input if n)
        self.uses.update(o.name for o in self.graph.output)

    def get(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.graph.initializer[self.index[name]])

    def set(self, node: onnx.NodeProto, slot: int, value: np.ndarray, node_index: int) -> None:
        name = node.input[slot]
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        if self.uses[name] == 1:
            self.graph.initializer[self.index[name]].CopyFrom(tensor)
            return
        new_name = f"{name}__slim_{node_index}"
        tensor.name = new_name
        self.uses[name] -= 1
        self.uses[new_name] += 1
        self.index[new_name] = len(self.graph.initializer)
        self.graph.initializer.append(tensor)
        node.input[slot] = new_name

    def add(self, name: str, value: np.ndarray) -> str:
        while name in self.index:
            name += "_"
        self.index[name] = len(self.graph.initializer)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name


def _set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _apply(cg: ChannelGraph, model: onnx.ModelProto, removed_roots: Set[int]) -> Dict[str, Dict[str, Any]]:
    """Slice ``model`` (the graph ``cg`` analysed) in place; returns the removed channels per mask point."""
    flag = np.zeros(len(cg.parent), dtype=bool)
    if removed_roots:
        flag[np.fromiter(removed_roots, dtype=np.int64)] = True
    roots = cg.roots()
    removed_by_id = flag[roots] if len(roots) else flag

    def keep_of(tensor: str) -> Optional[np.ndarray]:
        ids = cg.ids.get(tensor)
        return None if ids is None else ~removed_by_id[ids]

    ed = _Editor(model)
    nodes = model.graph.node
    mask_points: Dict[str, Dict[str, Any]] = {}

    def note_mask(tensor: str, keep: Optional[np.ndarray]) -> None:
        if keep is not None and not keep.all():
            mask_points[tensor] = {"channels": int(len(keep)), "rank": int(cg.rank(tensor) or 4),
                                   "removed": np.flatnonzero(~keep).tolist()}

    for edit in cg.edits:
        node = nodes[edit.index]
        info = edit.info
        if edit.kind in ("conv", "gemm"):
            k_in = keep_of(info["in"])
            k_out = keep_of(info["out"])
            in_axis, out_axis = (1, 0) if edit.kind == "conv" else (info["k_axis"], info["n_axis"])
            w = None
            if k_in is not None and not k_in.all():
                w = np.compress(k_in, ed.get(node.input[1]), axis=in_axis)
                note_mask(info["in"], k_in)
            if k_out is not None and not k_out.all():
                w = np.compress(k_out, w if w is not None else ed.get(node.input[1]), axis=out_axis)
                bias_slot = info["b"] if edit.kind == "conv" else info["c"]
                if bias_slot is not None:
                    axis = 0 if edit.kind == "conv" else info["c_axis"]
                    ed.set(node, bias_slot, np.compress(k_out, ed.get(node.input[bias_slot]), axis=axis), edit.index)
            if w is not None:
                ed.set(node, 1, w, edit.index)
        elif edit.kind == "dwconv":
            k = keep_of(info["t"])
            if k is not None and not k.all():
                ed.set(node, 1, ed.get(node.input[1])[k], edit.index)
                if info["b"] is not None:
                    ed.set(node, info["b"], ed.get(node.input[info["b"]])[k], edit.index)
                _set_attr(node, "group", int(k.sum()))
        elif edit.kind == "params":
            k = keep_of(info["t"])
            if k is not None and not k.all():
                for slot, axis in info["slices"]:
                    ed.set(node, slot, np.compress(k, ed.get(node.input[slot]), axis=axis), edit.index)
        elif edit.kind == "split":
            sizes = [int(keep_of(o).sum()) for o in node.output]
            if sizes != info["sizes"]:
                if cg.opset >= 13:
                    value = np.array(sizes, dtype=np.int64)
                    if len(node.input) > 1 and node.input[1]:
                        ed.set(node, 1, value, edit.index)
                    else:
                        name = ed.add(f"{node_label(node, edit.index)}_split", value)
                        if len(node.input) == 1:
                            node.input.append(name)
                        else:
                            node.input[1] = name
                else:
                    _set_attr(node, "split", sizes)
        elif edit.kind == "slice":
            k = keep_of(info["t"])
            if k is not None and not k.all():
                lo = int(k[:info["lo"]].sum())
                hi = lo + int(k[info["lo"]:info["hi"]].sum())
                j = info["k"]
                if cg.opset < 10:
                    starts, ends = list(_attr_ints(node, "starts")), list(_attr_ints(node, "ends"))
                    starts[j], ends[j] = lo, hi
                    _set_attr(node, "starts", starts)
                    _set_attr(node, "ends", ends)
                else:
                    for slot, value in ((1, lo), (2, hi)):
                        arr = ed.get(node.input[slot]).copy()
                        arr[j] = value
                        ed.set(node, slot, arr, edit.index)
        elif edit.kind == "resize_sizes":
            k = keep_of(info["t"])
            if k is not None and not k.all():
                arr = ed.get(node.input[3]).copy()
                arr[1] = int(k.sum())
                ed.set(node, 3, arr, edit.index)
        elif edit.kind == "reshape":
            k = keep_of(info["t"])
            if k is not None and not k.all():
                arr = ed.get(node.input[1]).copy()
                arr[1] = int(k.sum()) * int(info["per_channel"])
                ed.set(node, 1, arr, edit.index)
        else:  # pragma: no cover - every edit kind made by onnx_graph is handled above
            raise SurgeryError(f"internal: unknown edit kind {edit.kind!r}")
    _drop_unused_initializers(model)
    return mask_points


def _attr_ints(node: onnx.NodeProto, name: str) -> List[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return []


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    g = model.graph
    used = {n for node in g.node for n in node.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
    # NOTE: IR < 4 models list initializers among the graph inputs; keep those entries in step with the tensors.
    inits = {t.name: t for t in g.initializer}
    inputs = [vi for vi in g.input if vi.name in inits or vi.name in used]
    for vi in inputs:
        if vi.name in inits:
            t = inits[vi.name]
            vi.type.tensor_type.ClearField("shape")
            for d in t.dims:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    if len(inputs) != len(g.input):
        del g.input[:]
        g.input.extend(inputs)


# --------------------------------------------------------------------------------------------- statistics

def count_macs_params(model: onnx.ModelProto) -> Dict[str, int]:
    """Multiply-accumulates of Conv/Gemm/MatMul nodes (static shapes) and float parameters of a model."""
    from export.onnx_graph import _infer_shapes

    shapes = _infer_shapes(model)
    inits = {t.name: t for t in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            w = list(inits[node.input[1]].dims)
            out = shapes.get(node.output[0])
            if out is None or any(d < 0 for d in out):
                continue
            if node.op_type == "Conv":
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
            else:
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                macs += int(np.prod(out)) * int(w[1] if trans_b else w[0])
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats)
    return {"macs": macs, "params": params}


def _strict_shape_error(model: onnx.ModelProto) -> Optional[str]:
    """The error strict ONNX shape inference finds in ``model`` (None when it passes)."""
    from export.onnx_graph import _infer_shapes

    try:
        _infer_shapes(model, strict=True)
    except onnx.shape_inference.InferenceError as exc:
        return str(exc)
    return None


def _validate(model: onnx.ModelProto, source: str, strict_shapes: bool) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise SurgeryError(f"{source}: the slim model is invalid after surgery: {exc}") from None
    error = _strict_shape_error(model) if strict_shapes else None
    if error:
        raise SurgeryError(f"{source}: shapes are inconsistent after surgery: {error}")


# ------------------------------------------------------------------------------------------------- entry points

def _fold_constant_subgraphs(model: onnx.ModelProto, source: str) -> Optional[onnx.ModelProto]:
    """Fold constant subgraphs (Shape of static tensors included) with onnx-graphsurgeon when the graph has any,
    so that Resize scales, Reshape targets and Slice bounds computed in the graph become initializers.
    Returns the folded model, or None when there was nothing to fold."""
    consts = {t.name for t in model.graph.initializer}
    needs = any(n.op_type == "Shape" or (n.input and all(not i or i in consts for i in n.input))
                for n in model.graph.node)
    if not needs:
        return None
    import onnx_graphsurgeon as gs

    try:  # graphsurgeon folds Shape only where the tensor's shape is known
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without shapes, fewer Shape nodes fold; the analysis freezes what is left
        pass
    graph = gs.import_onnx(model)
    try:
        graph.fold_constants().cleanup().toposort()
    except Exception as exc:  # noqa: BLE001 - graphsurgeon raises many types; the analysis then freezes channels
        raise SurgeryError(f"{source}: constant folding before surgery failed ({type(exc).__name__}: {exc})") from None
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    del folded.metadata_props[:]
    folded.metadata_props.extend(model.metadata_props)
    folded.producer_name, folded.producer_version = model.producer_name, model.producer_version
    del folded.graph.value_info[:]
    return folded


def prune_onnx(model: ModelLike, *, ratio: Optional[float] = None, plan: Optional[Dict[str, Any]] = None,
               round_to: int = 8, criterion: str = "l1", validate: bool = True,
               source: Optional[str] = None) -> SurgeryResult:
    """Channel surgery in memory: exactly one of ``ratio`` (fraction of channels removed per group) or ``plan``."""
    started = time.perf_counter()
    original, loaded_from = _load(model)
    source = source or loaded_from
    if (ratio is None) == (plan is None):
        raise SurgeryError(f"{source}: give exactly one of ratio or plan")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise SurgeryError(f"{source}: ratio {ratio} must be in [0, 1) (the fraction of channels removed)")
    if round_to < 1:
        raise SurgeryError(f"{source}: round_to must be >= 1, got {round_to}")
    external = [t.name for t in original.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise SurgeryError(f"{source}: initializers stored as external data ({external[:3]}); load them first")
    work = onnx.ModelProto()
    work.CopyFrom(original)
    converted = constants_to_initializers(work)
    folded = _fold_constant_subgraphs(work, source)
    if folded:
        work = folded
        converted += constants_to_initializers(work)
    t0 = time.perf_counter()
    cg = ChannelGraph(work, source)
    groups = cg.groups()
    t_analyse = time.perf_counter() - t0
    plan_info: Dict[str, Any] = {}
    if plan is not None:
        removed, rows, plan_info = _select_by_plan(cg, groups, plan, source)
    else:
        removed, rows = _select_by_ratio(cg, groups, float(ratio), int(round_to), criterion)
    before = count_macs_params(work)  # after Constant -> initializer, so constant-node weights count too
    # NOTE: some exporters declare output shapes that strict inference rejects (a -1 batch dim); such a model is
    # checked after surgery with the checker and non-strict inference only, as it was before.
    strict_shapes = validate and _strict_shape_error(work) is None
    mask_points = _apply(cg, work, removed)
    if plan is not None:
        flag = np.zeros(len(cg.parent), dtype=bool)
        if removed:
            flag[np.fromiter(removed, dtype=np.int64)] = True
        removed_by_id = flag[cg.roots()] if cg.parent else flag
        _check_plan_against_graph(cg, lambda t: None if cg.ids.get(t) is None else ~removed_by_id[cg.ids[t]],
                                  plan, plan_info.pop("_matched"), source)
    del work.graph.value_info[:]
    if validate:
        _validate(work, source, strict_shapes)
    after = count_macs_params(work)
    left_alone = [r for r in rows if r["status"] == "left alone"]
    report: Dict[str, Any] = {
        "source": source,
        "mode": "plan" if plan is not None else "ratio",
        "ratio": ratio, "round_to": round_to, "criterion": criterion if plan is None else None,
        "opset": opset_of(work), "ir_version": int(work.ir_version),
        "constants_converted": converted, "constant_subgraphs_folded": folded is not None,
        "strict_shape_check": strict_shapes,
        "channels": {"total": int(sum(r["channels"] for r in rows)), "kept": int(sum(r["kept"] for r in rows))},
        "groups_total": len(rows), "groups_pruned": sum(r["status"] == "pruned" for r in rows),
        "groups_left_alone": len(left_alone),
        "left_alone": left_alone,
        "groups": rows,
        "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "mask_points": len(mask_points),
        "seconds_analyse": round(t_analyse, 4),
        "seconds": round(time.perf_counter() - started, 4),
    }
    report.update(plan_info)
    return SurgeryResult(work, report, mask_points)


def surgery(in_path: ModelLike, out_path: Union[str, os.PathLike], *, ratio: Optional[float] = None,
            plan: Optional[Union[Dict[str, Any], str, os.PathLike]] = None, round_to: int = 8,
            criterion: str = "l1", verify: bool = False, verify_inputs: Optional[List[Dict[str, np.ndarray]]] = None,
            atol: Optional[float] = None, report_path: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """Surgery from file to file (written atomically), optionally verified against the masked original."""
    started = time.perf_counter()
    original, source = _load(in_path)
    if plan is not None and not isinstance(plan, dict):
        from compress.pruning import PlanError, load_plan

        try:
            plan = load_plan(plan)
        except PlanError as exc:
            raise SurgeryError(str(exc)) from None
    result = prune_onnx(original, ratio=ratio, plan=plan, round_to=round_to, criterion=criterion, source=source)
    data = result.model.SerializeToString()
    report = result.report
    size_before = os.path.getsize(in_path) if not isinstance(in_path, onnx.ModelProto) else original.ByteSize()
    report.update(output=str(out_path), bytes_before=size_before, bytes_after=len(data),
                  sha256=sha256_bytes(data))
    if verify:
        from export.verify import verify_slim

        report["verify"] = verify_slim(original, result.model, result.removed_channels, inputs=verify_inputs,
                                       atol=atol, source=source)
    atomic_write_bytes(out_path, data)
    report["seconds_total"] = round(time.perf_counter() - started, 4)
    if report_path is not None:
        atomic_write_bytes(report_path, json.dumps(report, indent=2, default=float).encode())
    return report


def surgery_with_plan(dense_onnx_path: Union[str, os.PathLike], plan_path: Union[str, os.PathLike],
                      out_path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Apply the compress stage's prune plan to the dense ONNX export; write the slim ONNX atomically."""
    report = surgery(dense_onnx_path, out_path, plan=plan_path)
    report["plan"] = str(plan_path)
    return report


def verify_against_torch(slim_onnx_path: Union[str, os.PathLike], pruned_ckpt_path: Union[str, os.PathLike],
                         atol: float = 1e-4, n_inputs: int = 2, seed: int = 0) -> Dict[str, Any]:
    """Compare the slim ONNX (ONNX Runtime) with the physically pruned torch detector of ``pruned_ckpt_path``.

    Per output, ``max_rel = max|onnx - torch| / max(max|torch|, 1)``: absolute for outputs within [-1, 1]
    (scores), relative to the output's range above (boxes are in pixels, and ``centre - distance`` cancels, so an
    element-wise relative error would measure float32 cancellation, not surgery). ``ok`` when ``max_rel <= atol``
    for every output, else `VerificationError`. Returns max_abs, max_rel, ok and per-output figures.
    """
    import torch

    from compress.checkpoint import load_model
    from export.onnx_export import OUTPUT_NAMES, _export_state
    from export.verify import make_session

    model, _ = load_model(pruned_ckpt_path)
    session = make_session(onnx.load(str(slim_onnx_path)))
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    if model.config.input_size not in shape[2:]:
        raise VerificationError(f"{slim_onnx_path}: input shape {inp.shape} does not match the checkpoint's input "
                                f"size {model.config.input_size} ({pruned_ckpt_path})")
    rng = np.random.default_rng(seed)
    outputs: Dict[str, Dict[str, float]] = {}
    with _export_state(model), torch.no_grad():
        for _ in range(n_inputs):
            x = rng.standard_normal(shape).astype(np.float32)
            ref = model(torch.from_numpy(x))
            got = session.run(list(OUTPUT_NAMES), {inp.name: x})
            for name, r, g in zip(OUTPUT_NAMES, ref, got):
                r = r.numpy().astype(np.float64)
                if r.shape != g.shape:
                    raise VerificationError(f"{slim_onnx_path}: output {name!r} has shape {g.shape}, the pruned "
                                            f"torch model gives {r.shape}")
                d = np.abs(g.astype(np.float64) - r)
                row = outputs.setdefault(name, {"max_abs": 0.0, "max_abs_ref": 0.0})
                row["max_abs"] = max(row["max_abs"], float(d.max()))
                row["max_abs_ref"] = max(row["max_abs_ref"], float(np.abs(r).max()))
    for row in outputs.values():
        row["max_rel"] = row["max_abs"] / max(row["max_abs_ref"], 1.0)
    result = {"max_abs": max(o["max_abs"] for o in outputs.values()),
              "max_rel": max(o["max_rel"] for o in outputs.values()), "atol": atol, "inputs": n_inputs,
              "outputs": outputs, "reference": str(pruned_ckpt_path)}
    result["ok"] = bool(result["max_rel"] <= atol)
    if not result["ok"]:
        raise VerificationError(f"{slim_onnx_path}: differs from the pruned torch model {pruned_ckpt_path} by "
                                f"{result['max_rel']:.3g} (max|diff| / max(max|ref|, 1); tolerance {atol}); max abs "
                                f"{result['max_abs']:.3g}")
    return result
