"""The slim ONNX of a pruned checkpoint, made by channel surgery on the dense export — never by a re-export.

    pruned checkpoint (weights + prune plan)
      -> dense model: the plan's layer structure (ResConv, removed layers) at full width, the pruned weights
         scattered back into it (removed channels zero)
      -> fuse (conv-BN folding, ResConv -> one conv; exact)        -> dense ONNX (opset 13, static shape)
      -> channel surgery with the plan's channel part              -> slim ONNX
      -> verified against the physically pruned torch model (ONNX Runtime vs torch, <= 1e-4)

Used by ``jetson-compress export`` (variants that carry a plan) and by the ``build`` pipeline.
Host side: torch, onnx, onnxruntime.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from runtime.fileio import atomic_write_bytes


def channel_plan(plan: Dict[str, Any]) -> Dict[str, Any]:
    """The channel part of a plan, for surgery on a dense graph whose layer structure already follows the plan.

    Layer removal cannot be done on an ONNX graph (the maths changes: a removed block becomes the identity), so it
    happens in torch before export; what is left for surgery is the per-layer kept channels of the layers that
    still exist.
    """
    out = copy.deepcopy(plan)
    removed = list(out.pop("removed_layers", None) or [])
    out.pop("resconv_layers", None)
    out["removed_layers"] = []
    out["format_version"] = 1
    out["layers"] = {name: spec for name, spec in out["layers"].items()
                     if not any(name == r or name.startswith(r + ".") for r in removed)}
    return out


def densify(pruned: torch.nn.Module, plan: Dict[str, Any]) -> torch.nn.Module:
    """The pruned weights scattered back into a full-width model with the plan's layer structure.

    Removed channels get zero weights, bias and BN shift (running variance 1), so the dense model computes exactly
    the pruned model on the kept channels and zero on the removed ones.
    """
    from compress.detector import Detector

    dense = Detector(pruned.config).eval()
    if plan.get("removed_layers") or plan.get("resconv_layers"):
        from compress.layer_pruning import apply_layer_structure

        apply_layer_structure(dense, plan)
        dense.eval()
    dstate = dense.state_dict()
    pstate = pruned.state_dict()
    missing = sorted(set(dstate) ^ set(pstate))
    if missing:
        raise ValueError(f"the pruned model and its plan's dense structure disagree on parameters: {missing[:5]}")
    new = {}
    for key, dval in dstate.items():
        layer, _, field = key.rpartition(".")
        spec = plan["layers"].get(layer)
        pval = pstate[key]
        if spec is None or pval.shape == dval.shape:
            new[key] = pval.clone()
            continue
        out = torch.ones_like(dval) if field == "running_var" else torch.zeros_like(dval)
        idx_out = spec["keep_out"] if spec["keep_out"] is not None else list(range(spec["out"]))
        if dval.dim() >= 2 and spec["kind"] in ("conv", "linear"):
            idx_in = spec["keep_in"] if spec["keep_in"] is not None else list(range(spec["in"]))
            out[np.ix_(idx_out, idx_in)] = pval
        elif dval.dim() >= 1 and len(idx_out) == pval.shape[0]:
            out[idx_out] = pval
        else:
            raise ValueError(f"layer {layer}: {field} has shape {tuple(pval.shape)} in the pruned model, which the "
                             f"plan ({len(idx_out)} of {spec['out']} channels kept) does not explain")
        new[key] = out
    dense.load_state_dict(new)
    return dense


def slim_onnx_from_checkpoint(pruned_ckpt: os.PathLike | str, out_path: os.PathLike | str,
                              work_dir: os.PathLike | str, *, opset: int = 13, atol: float = 1e-4,
                              log=print) -> Dict[str, Any]:
    """Write the slim ONNX of ``pruned_ckpt`` to ``out_path``; returns the surgery report and the verification.

    ``work_dir`` receives the intermediate dense ONNX and the channel plan. Raises `export.surgery.SurgeryError`
    (or `VerificationError`) naming the file when a step fails; ``out_path`` is then not written.
    """
    from compress.checkpoint import load_model
    from compress.fusion import fuse_model
    from export.onnx_export import export_onnx
    from export.surgery import SurgeryError, surgery_with_plan, verify_against_torch

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    pruned, meta = load_model(pruned_ckpt)
    plan = meta.get("prune_plan")
    if not plan:
        raise SurgeryError(f"{pruned_ckpt}: the checkpoint carries no prune plan, so there is nothing for channel "
                           f"surgery to apply; export it directly")
    dense = fuse_model(densify(pruned, plan))
    dense_onnx = work / "dense.onnx"
    info = export_onnx(dense, dense_onnx, pruned.config.input_size, opset=opset, classes=meta["classes"],
                       mean=meta.get("mean"), std=meta.get("std"))
    plan_path = work / "channel_plan.json"
    atomic_write_bytes(plan_path, json.dumps(channel_plan(plan), indent=1).encode())
    report = surgery_with_plan(dense_onnx, plan_path, out_path)
    try:
        check = verify_against_torch(out_path, pruned_ckpt, atol=atol)
    except Exception:
        Path(out_path).unlink(missing_ok=True)  # an unverified slim model must not be left for a later stage
        raise
    log(f"slim ONNX {out_path}: {report['params_before'] / 1e6:.2f} M -> {report['params_after'] / 1e6:.2f} M params, "
        f"matches the pruned torch model to {check['max_rel']:.2g} (tolerance {atol})")
    return {"dense_export": {k: info.get(k) for k in ("opset", "parity", "folding")}, "surgery": report,
            "verify": check, "removed_layers": list(plan.get("removed_layers") or [])}

