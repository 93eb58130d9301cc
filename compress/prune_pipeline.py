"""Channel pruning of the detector end to end: scores -> keep ratios -> physical pruning -> compensation ->
fine-tuning, with the plan, the pruned checkpoint and a metrics JSON written atomically.

Used by ``jetson-compress prune``, ``benchmarks/prune_compare.py`` and the ``build`` pipeline.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from compress.augment import letterbox, to_tensor_layout
from compress.checkpoint import atomic_write_bytes, save_checkpoint
from compress.compensation import compensate
from compress.criteria import (activation_entropy, allocate, bn_gamma, channel_activations, filter_l1,
                               layer_richness, select_channels)
from compress.depgraph import build_dependency_graph
from compress.detector import Detector
from compress.flops import count_flops_params
from compress.pruning import make_plan, prune_groups, save_plan
from compress.voc import VOCDataset, load_image

METHODS = ("richness", "entropy", "l1", "bn")


def calibration_batch(dataset: VOCDataset, size: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` letterboxed training images (no augmentation), evenly spread over the split."""
    idx = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int)
    arrs = []
    for i in idx:
        ann = dataset[int(i)]
        img, _ = letterbox(load_image(ann.image_path, (ann.width, ann.height)), size)
        arrs.append(to_tensor_layout(img))
    return torch.from_numpy(np.stack(arrs))


def plan_pruning(
    model: Detector,
    method: str,
    target_reduction: float,
    calibration: Optional[torch.Tensor] = None,
    target_kind: str = "flops",
    round_to: int = 8,
    min_channels: int = 8,
    alpha: float = 0.5,
    channel_criterion: str = "l1",
) -> Dict[str, Any]:
    """Decide what to keep. Returns dg, keep (group -> indices), allocation info and per-group diagnostics."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {METHODS}")
    size = model.config.input_size
    model.eval()
    dg = build_dependency_graph(model, size)
    modules = dict(model.named_modules())
    richness = None
    entropy_scores = None
    if method in ("richness", "entropy") or channel_criterion == "entropy":
        if calibration is None:
            raise ValueError(f"method {method} needs calibration images")
        acts = channel_activations(model, dg, [calibration[i:i + 16] for i in range(0, len(calibration), 16)])
        entropy_scores = activation_entropy(acts, dg)
        richness = layer_richness(dg, modules, entropy_scores, alpha=1.0 if method == "entropy" else alpha)
    bn_scores = bn_gamma(dg, modules)
    alloc_method = {"l1": "uniform", "bn": "bn", "richness": "richness", "entropy": "entropy"}[method]
    counts, info = allocate(dg, modules, alloc_method, target_reduction, target_kind, round_to, min_channels,
                            richness=richness, bn_scores=bn_scores)
    if method == "bn":
        scores = bn_scores
    elif channel_criterion == "entropy":
        scores = entropy_scores
    else:
        scores = filter_l1(dg, modules)
    keep = select_channels(scores, counts)
    return {"dg": dg, "keep": keep, "counts": counts, "allocation": info, "richness": richness}


def prune_detector(
    model: Detector,
    decision: Dict[str, Any],
    method: str,
    target: Dict[str, Any],
    round_to: int,
    compensate_with: Optional[torch.Tensor] = None,
) -> Dict[str, Any]:
    """Physically prune a copy of ``model``; optionally compensate. Returns the pruned model and its plan."""
    dg, keep = decision["dg"], decision["keep"]
    pruned = copy.deepcopy(model).eval()
    layers = prune_groups(pruned, dg, keep)
    comp_report = None
    if compensate_with is not None:
        comp_report = compensate(model, pruned, layers, compensate_with)
    size = model.config.input_size
    base = count_flops_params(model, (1, 3, size, size))
    after = count_flops_params(pruned, (1, 3, size, size))
    achieved = {"macs": after.macs, "flops": after.flops, "params": after.params, "baseline_macs": base.macs,
                "baseline_flops": base.flops, "baseline_params": base.params,
                "flops_reduction": 1 - after.macs / base.macs, "params_reduction": 1 - after.params / base.params}
    meta = {"architecture": model.config.architecture, "input_size": size, "model_config": model.config.to_dict()}
    groups_diag = None
    if decision.get("richness"):
        groups_diag = {str(k): v for k, v in decision["richness"].items()}
    plan = make_plan(meta, layers, dg, keep, method, target, round_to, achieved,
                     extra={"richness": groups_diag} if groups_diag else None)
    return {"model": pruned, "plan": plan, "compensation": comp_report}


def run_prune(
    model: Detector,
    ckpt_meta: Dict[str, Any],
    train_set: VOCDataset,
    test_set: Optional[VOCDataset],
    out_dir: Path,
    *,
    method: str = "richness",
    target_reduction: float = 0.5,
    target_kind: str = "flops",
    round_to: int = 8,
    min_channels: int = 8,
    alpha: float = 0.5,
    compensate_flag: bool = False,
    finetune_epochs: int = 0,
    train_cfg: Optional[Dict[str, Any]] = None,
    eval_cfg: Optional[Dict[str, Any]] = None,
    resolved_config: Optional[Dict[str, Any]] = None,
    calibration_images: int = 64,
    sparsity_epochs: int = 0,
    sparsity_lambda: float = 1e-4,
    baseline_ap: Optional[Dict[str, float]] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """The whole ``prune`` command; writes ``pruned.pt``, ``plan.json`` and ``metrics.json`` into ``out_dir``."""
    from compress.inference import evaluate_model, summary_ap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = model.config.input_size
    timings: Dict[str, float] = {}
    metrics: Dict[str, Any] = {"method": method, "target": {"kind": target_kind, "reduction": target_reduction},
                               "compensate": compensate_flag, "finetune_epochs": finetune_epochs}

    t = time.perf_counter()
    calib = calibration_batch(train_set, size, calibration_images)
    timings["calibration_images"] = time.perf_counter() - t

    if test_set is not None and baseline_ap is None:
        t = time.perf_counter()
        baseline_ap = summary_ap(evaluate_model(model, test_set, size, eval_cfg))
        timings["eval_baseline"] = time.perf_counter() - t
    metrics["ap50_baseline"] = baseline_ap

    if sparsity_epochs > 0:
        # M4: adaptive-L1 sparsity training on BN scaling factors before deciding what to cut.
        from compress.depgraph import build_dependency_graph as _bdg
        from compress.sparsity import AdaptiveBNL1
        from compress.train import train

        t = time.perf_counter()
        model = copy.deepcopy(model)
        penalty = AdaptiveBNL1(model, _bdg(model.eval(), size), lambda0=sparsity_lambda)
        cfg = dict(train_cfg or {})
        cfg.update(epochs=sparsity_epochs, warmup_epochs=0)
        train(model, train_set, out_dir / "sparsity", cfg, resume=False, progress=progress, extra_loss=penalty,
              log=log)
        metrics["bn_sparsity_after"] = penalty.sparsity()
        timings["sparsity_training"] = time.perf_counter() - t

    t = time.perf_counter()
    decision = plan_pruning(model, method, target_reduction, calib, target_kind, round_to, min_channels, alpha)
    timings["analyse"] = time.perf_counter() - t
    t = time.perf_counter()
    result = prune_detector(model, decision, method, {"kind": target_kind, "reduction": target_reduction}, round_to,
                            compensate_with=calib[:32] if compensate_flag else None)
    timings["prune" + ("+compensate" if compensate_flag else "")] = time.perf_counter() - t
    pruned, plan = result["model"], result["plan"]
    metrics.update({k: plan["achieved"][k] for k in ("flops", "params", "baseline_flops", "baseline_params",
                                                     "flops_reduction", "params_reduction")})
    log(f"pruned with {method}: FLOPs {plan['achieved']['baseline_flops'] / 1e9:.3f} G -> "
        f"{plan['achieved']['flops'] / 1e9:.3f} G (-{100 * plan['achieved']['flops_reduction']:.1f}%), params "
        f"{plan['achieved']['baseline_params'] / 1e6:.3f} M -> {plan['achieved']['params'] / 1e6:.3f} M")

    if test_set is not None:
        t = time.perf_counter()
        metrics["ap50_before_finetune"] = summary_ap(evaluate_model(pruned, test_set, size, eval_cfg))
        timings["eval_pruned"] = time.perf_counter() - t
    if finetune_epochs > 0:
        from compress.train import train

        cfg = dict(train_cfg or {})
        cfg["epochs"] = finetune_epochs
        cfg.setdefault("warmup_epochs", 0)
        t = time.perf_counter()
        summary = train(pruned, train_set, out_dir / "finetune", cfg, eval_set=test_set, eval_cfg=eval_cfg,
                        resolved_config=resolved_config, resume=False, progress=progress,
                        checkpoint_extra={"prune_plan": plan}, log=log)
        timings["finetune"] = time.perf_counter() - t - (summary.get("eval", {}).get("timing", {}).get("seconds", 0))
        if "ap50" in summary:
            metrics["ap50_after_finetune"] = summary["ap50"]
    metrics["seconds"] = timings
    save_plan(plan, out_dir / "plan.json")
    save_checkpoint(out_dir / "pruned.pt", pruned, ckpt_meta.get("classes", ["person"]),
                    metrics={"ap50_voc07": metrics.get("ap50_after_finetune", metrics.get("ap50_before_finetune"))},
                    split_hashes=ckpt_meta.get("split_hashes"), config=resolved_config,
                    extra={"prune_plan": plan, "parent_checkpoint_sha256": ckpt_meta.get("_sha256")})
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=float).encode())
    return {"metrics": metrics, "plan": plan, "model": pruned}
